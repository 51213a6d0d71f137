"""
The purge outbox: destroying what a store keeps outside the database (Vault entries) once
no credential trusts it any more.

A destruction is queued as a SecretPurge row in the transaction that stops trusting the
secret, attempted after the commit, and retried with a growing delay until the store
confirms it. A write into a store that the database never came to record (a failure
between the two) is destroyed the same way: `unrecorded_write` wraps such a write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import transaction
from django.utils import timezone

from vaultstore.backends import BaseSecretBackend, StoredSecret, get_backend
from vaultstore.backends.base import SecretOwner
from vaultstore.exceptions import SecretStoreError, SecretWriteError

from ..models import Credential, GraceSecret, SecretPurge

logger = logging.getLogger(__name__)

#: A purge that failed waits this long before its next automatic attempt, doubling each time...
PURGE_FIRST_DELAY_SECONDS = 30
#: ...up to this.
PURGE_MAX_DELAY_SECONDS = 3600
#: How many due purges a successful write to an outside store also works off.
PURGE_BATCH_AFTER_WRITE = 5


@dataclasses.dataclass(frozen=True)
class PurgeReport:
    """What a run of the purge queue did: jobs finished and jobs still pending after a failure."""

    purged: int = 0
    failed: int = 0


def purges_record(
    *, stored: Iterable[StoredSecret], reason: str, agent_id: Any = None, credential_id: Any = None
) -> list[int]:
    """Queue the destruction of what a store keeps outside the database for these secrets; return the job ids."""
    ids = []
    for storage, vault_path in sorted({(s.storage, s.vault_path) for s in stored if s.kept_outside_database}):
        purge, _ = SecretPurge.objects.get_or_create(
            storage=storage,
            vault_path=vault_path,
            defaults={"reason": reason, "agent_id": agent_id, "credential_id": credential_id},
        )
        ids.append(purge.id)
    return ids


def secret_purge_attempt(*, purge_id: int) -> bool:
    """
    Ask the store to destroy one queued secret (every version); return whether the job is done.

    The job row is locked while the store is asked, so two workers never run one job. On
    success the row is deleted; on failure it records the attempt and waits twice as
    long as last time (from PURGE_FIRST_DELAY_SECONDS to PURGE_MAX_DELAY_SECONDS) before
    the automatic runs try again. A store that is not configured (Vault switched off)
    counts as a failure: the job waits until it is.

    A location that the database trusts again by now (a credential moved off Vault and
    back before its old entry was destroyed) is not destroyed: the job is dropped. The
    credential's row is locked first, so a rotation writing there waits for the purge,
    or the purge sees what the rotation committed.
    """
    with transaction.atomic():
        purge = SecretPurge.objects.select_for_update(skip_locked=True).filter(pk=purge_id).first()
        if purge is None:
            return True  # finished meanwhile, or another worker holds it
        if purge.credential_id is not None:
            Credential.objects.select_for_update().filter(pk=purge.credential_id).first()
        location = {"storage": purge.storage, "vault_path": purge.vault_path}
        if Credential.objects.filter(**location).exists() or GraceSecret.objects.filter(**location).exists():
            purge.delete()
            logger.info("secret purge dropped, the location is in use again path=%s", purge.vault_path)
            return True
        try:
            get_backend(purge.storage).delete(stored=[purge.stored_secret])
        except SecretStoreError as exc:
            purge.attempts += 1
            delay = min(PURGE_FIRST_DELAY_SECONDS * 2 ** (purge.attempts - 1), PURGE_MAX_DELAY_SECONDS)
            purge.next_attempt_at = timezone.now() + datetime.timedelta(seconds=delay)
            purge.last_error = type(exc).__name__
            purge.save(update_fields=["attempts", "next_attempt_at", "last_error"])
            logger.warning(
                "secret purge failed, will retry path=%s attempts=%s error=%s",
                purge.vault_path,
                purge.attempts,
                purge.last_error,
            )
            return False
        purge.delete()
    logger.info("secret purged path=%s credential_id=%s reason=%s", purge.vault_path, purge.credential_id, purge.reason)
    return True


def secret_purges_run(*, purge_ids: Iterable[int]) -> PurgeReport:
    """Attempt these queued purges now, whatever their schedule."""
    results = [secret_purge_attempt(purge_id=purge_id) for purge_id in purge_ids]
    return PurgeReport(purged=results.count(True), failed=results.count(False))


def secret_purges_run_due(*, limit: int = PURGE_BATCH_AFTER_WRITE) -> PurgeReport:
    """Attempt up to `limit` purges whose retry time has come, oldest first; stop at the first failure."""
    due = SecretPurge.objects.filter(next_attempt_at__lte=timezone.now()).values_list("id", flat=True)[:limit]
    purged = 0
    for purge_id in list(due):
        if not secret_purge_attempt(purge_id=purge_id):
            return PurgeReport(purged=purged, failed=1)  # the store is likely down: leave the rest for later
        purged += 1
    return PurgeReport(purged=purged)


def purge_after_commit(purge_ids: list[int]) -> None:
    """Once the transaction commits, destroy the secrets just queued (failures stay queued for the retries)."""
    if purge_ids:
        transaction.on_commit(lambda: secret_purges_run(purge_ids=purge_ids), robust=True)


def queue_released(
    credential: Credential, *, dropped: Iterable[StoredSecret], still_used: Iterable[StoredSecret]
) -> None:
    """Queue for destruction the dropped secrets' outside locations that nothing still used refers to."""
    used = {(item.storage, item.vault_path) for item in still_used if item.kept_outside_database}
    released = [item for item in dropped if item.kept_outside_database and (item.storage, item.vault_path) not in used]
    purge_after_commit(
        purges_record(stored=released, reason="moved", agent_id=credential.agent_id, credential_id=credential.id)
    )


def discard_unrecorded_write(
    *, credential: Credential, stored: StoredSecret, unconfirmed: bool, reason: str = "create_failed"
) -> None:
    """
    Destroy what a store may have kept from a write that the database never recorded.

    A purge job is queued for the location and attempted at once; the job destroys it
    only if nothing the database trusts refers to it (a new credential's location never
    is; a credential moving into Vault may still have a grace entry there). When the
    write was `unconfirmed` (a timeout, a connection lost after sending), the store may
    apply it after that first attempt, so the job is queued again, due once the write can
    no longer be in flight. If the database cannot take the job, the path is logged at
    ERROR for an operator.
    """
    if not stored.kept_outside_database:
        return
    location = get_backend(stored.storage).location(owner=credential)
    try:
        with transaction.atomic():
            purge_ids = purges_record(
                stored=[location], reason=reason, agent_id=credential.agent_id, credential_id=credential.id
            )
        report = secret_purges_run(purge_ids=purge_ids)
        if unconfirmed or report.failed:
            with transaction.atomic():
                for purge_id in purges_record(
                    stored=[location],
                    reason=reason,
                    agent_id=credential.agent_id,
                    credential_id=credential.id,
                ):
                    SecretPurge.objects.filter(pk=purge_id).update(
                        next_attempt_at=timezone.now() + datetime.timedelta(seconds=PURGE_FIRST_DELAY_SECONDS)
                    )
    except Exception:
        logger.exception(
            "could not queue the purge of an unrecorded secret; destroy it by hand path=%s", location.vault_path
        )
        return
    if unconfirmed or report.failed:
        logger.warning("unrecorded secret queued for purge path=%s", location.vault_path)


class UnrecordedWrite:
    """
    A write into a store that the database has not recorded yet (see `unrecorded_write`).

    `stored` is what the store may keep from it, and `unconfirmed` says the store did not
    confirm the write (a timeout, a connection lost after sending), so that it may still
    land later.
    """

    def __init__(self) -> None:
        self.stored: StoredSecret | None = None
        self.unconfirmed = False

    def store(
        self,
        backend: BaseSecretBackend,
        *,
        owner: SecretOwner,
        secret: str,
        replacing: StoredSecret | None = None,
        track: bool = True,
    ) -> StoredSecret:
        """
        Store `secret` for `owner` in `backend`, and remember what to destroy if the database never records it.

        With `track=False` (the write goes where the database already trusts a secret of the
        owner, so a version the row never names is harmless) nothing is remembered.
        """
        try:
            stored = backend.store(owner=owner, secret=secret, replacing=replacing)
        except SecretWriteError as exc:
            if track and exc.maybe_written:
                self.stored, self.unconfirmed = backend.location(owner=owner), True
            raise
        if track:
            self.stored, self.unconfirmed = stored, False
        return stored


@contextlib.contextmanager
def unrecorded_write(*, credential: Credential, reason: str) -> Iterator[UnrecordedWrite]:
    """
    Wrap a write into a store and the transaction that records it: if anything in the block
    raises, whatever the write may have left in the store is destroyed (discard_unrecorded_write),
    and the error propagates.
    """
    write = UnrecordedWrite()
    try:
        yield write
    except BaseException:
        if write.stored is not None:
            discard_unrecorded_write(
                credential=credential, stored=write.stored, unconfirmed=write.unconfirmed, reason=reason
            )
        raise
