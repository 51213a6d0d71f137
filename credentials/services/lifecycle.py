"""
A credential's life: created with a secret, rotated to a new one (the old one kept for a
grace period if asked), deleted. Every secret goes to the default store; each step writes
one audit event, and the plaintext secret exists only in the IssuedCredential returned.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from vaultstore.backends import get_default_backend

from .. import selectors
from ..audit import audit_record
from ..errors import AgentNotFound, Conflict, CredentialNotFound, ValidationFailed
from ..models import Agent, AuditEvent, Credential, GraceSecret
from .purges import purge_after_commit, purges_record, queue_released, secret_purges_run_due, unrecorded_write

logger = logging.getLogger(__name__)

#: The longest grace period a rotation may ask for (one day).
MAX_GRACE_PERIOD_SECONDS = 86400
#: At most this many previous secrets stay valid at once (KV v2 keeps ten versions: these and the current one).
MAX_GRACE_SECRETS = 9


@dataclasses.dataclass(frozen=True)
class IssuedCredential:
    """A credential with the plaintext secret it was just given, to be shown once and forgotten."""

    credential: Credential
    client_secret: str = dataclasses.field(repr=False)


def generate_client_id() -> str:
    return secrets.token_hex(16)


def generate_client_secret() -> str:
    """Return 256 random bits, URL-safe: 43 characters, well inside bcrypt's 72 bytes."""
    return secrets.token_urlsafe(32)


def lock_agent(agent: Agent) -> Agent:
    """Return the agent's row, locked until the transaction ends; raise AgentNotFound if it is gone."""
    locked = Agent.objects.select_for_update().filter(pk=agent.pk).first()
    if locked is None:
        raise AgentNotFound()
    return locked


def _check_capacity(agent: Agent) -> None:
    limit = settings.AGENTIDP_MAX_ACTIVE_CREDENTIALS
    if selectors.credential_active_count(agent=agent) >= limit:
        raise Conflict(f"This agent already has {limit} active credentials, the most allowed.")


def credential_create(
    *,
    acting: Any,
    agent: Agent,
    description: str = "",
    expires_at: datetime.datetime | None = None,
    before_commit: Callable[[IssuedCredential], None] | None = None,
) -> IssuedCredential:
    """
    Give the agent a new credential in the default store and return it with its secret.

    `before_commit(issued)` runs inside the transaction that records the credential: the
    API renders its response there, so that a response that cannot be made rolls the
    credential back instead of leaving one whose secret nobody received.

    Failure order (no credential without a secret, no secret without a credential):
    1. The secret is stored (Vault: a new KV entry, written create-only). If the store
       fails, no row is written and SecretWriteError reaches the caller (the API's 503
       VAULT_WRITE_ERROR). If the write may have been applied although Vault did not
       confirm it (a timeout, a connection lost after sending), the entry is destroyed at
       once and a purge job is queued too, in case the write lands after that.
    2. The row and its audit event are written, and `before_commit` runs, in one
       transaction. If the database or `before_commit` fails, the stored secret is
       destroyed (or queued) the same way before the error propagates.
    Raises Conflict when the agent already has the most active credentials allowed.
    """
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("expiresAt must lie in the future.", details={"expiresAt": ["Must lie in the future."]})
    _check_capacity(agent)

    backend = get_default_backend()
    secret = generate_client_secret()
    credential = Credential(agent=agent, client_id=generate_client_id(), description=description, expires_at=expires_at)
    with unrecorded_write(credential=credential, reason="create_failed") as write:
        stored = write.store(backend, owner=credential, secret=secret)
        with transaction.atomic():
            # Lock the agent so that concurrent creates cannot overshoot the limit together.
            lock_agent(agent)
            _check_capacity(agent)
            credential.set_stored_secret(stored)
            credential.save(force_insert=True)
            audit_record(
                acting=acting,
                action=AuditEvent.Action.CREDENTIAL_CREATED,
                agent_id=agent.id,
                credential_id=credential.id,
                details={"clientId": credential.client_id, "storage": stored.storage},
            )
            issued = IssuedCredential(credential=credential, client_secret=secret)
            if before_commit is not None:
                before_commit(issued)
            if stored.kept_outside_database:
                transaction.on_commit(secret_purges_run_due, robust=True)
    logger.info("credential created credential_id=%s agent_id=%s storage=%s", credential.id, agent.id, stored.storage)
    return issued


class StorageChanged(Conflict):
    """The credential's secret is no longer in the store the caller expected (it moved meanwhile)."""


def credential_rotate(
    *,
    acting: Any,
    credential: Credential,
    grace_period_seconds: int = 0,
    before_commit: Callable[[IssuedCredential], None] | None = None,
) -> IssuedCredential:
    """
    Give the credential a new secret in the default store; keep clientId and credentialId.

    The old secret stops working when the transaction commits, or `grace_period_seconds`
    later. In Vault the new secret is a new KV version at the same path, and the grace
    entry trusts the previous version. A credential whose secret is in another store
    than the default moves to the default one: a bcrypt hash left behind is cleared (at
    the end of the grace period if one was asked for), a Vault entry left behind is
    queued for destruction.

    `before_commit(issued)` runs once the new secret is stored, before the commit, so the
    caller hands the secret on before the old one can stop working: the API renders its
    response there (and credential_migrate records the secret in its output file).

    Failure order (the old secret keeps working; the row never names an unwritten version):
    1. The row is locked, so rotations of one credential run one at a time.
    2. The new secret is stored (Vault: check-and-set on the version the row trusts). If
       the store fails, the transaction rolls back, nothing changed, and SecretWriteError
       reaches the caller (503 VAULT_WRITE_ERROR).
    3. The row (path, version the store confirmed, or hash), the grace entry and the audit
       event are written, and `before_commit` runs, in one transaction. If the database
       or `before_commit` fails, the row still trusts the old version or hash, which still
       works; a Vault version written in step 2 is never trusted, and the next rotation
       writes after it.
    A secret moving into Vault whose write is never recorded (step 2 unconfirmed, or step
    3 failed) leaves an entry no row trusts: it is queued for destruction, and the purge
    spares it if a grace entry of the credential still trusts that location.
    Raises CredentialNotFound if the credential was deleted meanwhile, and Conflict when
    more previous secrets would be valid at once than MAX_GRACE_SECRETS.
    """
    return replace_secret(
        acting=acting, credential=credential, grace_period_seconds=grace_period_seconds, before_commit=before_commit
    )


def replace_secret(
    *,
    acting: Any,
    credential: Credential,
    grace_period_seconds: int = 0,
    from_storage: str | None = None,
    client_secret: str | None = None,
    before_commit: Callable[[IssuedCredential], None] | None = None,
) -> IssuedCredential:
    """
    What credential_rotate does (see there), and what credential_migrate adds to it:
    `from_storage` replaces only the secret of a credential still kept by that store (else
    StorageChanged, and nothing changes); `client_secret` stores that secret instead of a
    new one.
    """
    if not 0 <= grace_period_seconds <= MAX_GRACE_PERIOD_SECONDS:
        raise ValidationFailed(
            f"gracePeriodSeconds is from 0 to {MAX_GRACE_PERIOD_SECONDS}.",
            details={"gracePeriodSeconds": [f"Must be from 0 to {MAX_GRACE_PERIOD_SECONDS}."]},
        )
    backend = get_default_backend()
    secret = client_secret or generate_client_secret()
    # A write into a new location (a move into Vault) leaves an entry no row trusts if it is never recorded.
    with unrecorded_write(credential=credential, reason="rotate_failed") as write, transaction.atomic():
        try:
            locked = Credential.objects.select_related("agent").select_for_update(of=("self",)).get(pk=credential.pk)
        except Credential.DoesNotExist:
            raise CredentialNotFound() from None
        if from_storage is not None and locked.storage != from_storage:
            raise StorageChanged(f"The credential's secret is no longer kept by {from_storage!r}.")
        now = timezone.now()
        live_grace = list(locked.grace_secrets.filter(valid_until__gt=now))
        if grace_period_seconds and len(live_grace) >= MAX_GRACE_SECRETS:
            raise Conflict(
                f"{MAX_GRACE_SECRETS} previous secrets of this credential are still in their grace period; "
                "wait for one to end, or rotate without a grace period."
            )
        old = locked.stored_secret
        moving_in = backend.location(owner=locked)
        if not moving_in.kept_outside_database or (old.storage, old.vault_path) == (
            moving_in.storage,
            moving_in.vault_path,
        ):
            moving_in = None
        new = write.store(backend, owner=locked, secret=secret, replacing=old, track=moving_in is not None)
        still_used = [new, *(grace.stored_secret for grace in live_grace)]
        if grace_period_seconds:
            grace = GraceSecret(credential=locked, valid_until=now + datetime.timedelta(seconds=grace_period_seconds))
            grace.set_stored_secret(old)
            grace.save(force_insert=True)
            still_used.append(old)
        expired = list(locked.grace_secrets.filter(valid_until__lte=now))
        locked.grace_secrets.filter(pk__in=[grace.pk for grace in expired]).delete()
        locked.set_stored_secret(new)
        locked.rotated_at = now
        locked.save(update_fields=[*Credential.LOCATION_FIELDS, "rotated_at"])
        queue_released(locked, dropped=[old, *(grace.stored_secret for grace in expired)], still_used=still_used)
        if new.kept_outside_database:
            transaction.on_commit(secret_purges_run_due, robust=True)
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_ROTATED,
            agent_id=locked.agent_id,
            credential_id=locked.id,
            details={"gracePeriodSeconds": grace_period_seconds, "from": old.storage, "to": new.storage},
        )
        issued = IssuedCredential(credential=locked, client_secret=secret)
        if before_commit is not None:
            before_commit(issued)
    logger.info(
        "credential rotated credential_id=%s storage=%s grace_period_seconds=%s",
        locked.id,
        new.storage,
        grace_period_seconds,
    )
    return issued


def grace_secrets_expire() -> int:
    """
    Delete the grace entries whose period has ended (with the bcrypt hashes they hold).

    A Vault entry that only such a grace entry still referred to (a credential moved off
    Vault) is queued for destruction in the same transaction. Returns how many entries
    were deleted. Rotations and deletions do this for their own credential; this does it
    for all of them, from `manage.py purge_secrets`.
    """
    deleted = 0
    credential_ids = GraceSecret.objects.filter(valid_until__lte=timezone.now()).values_list("credential_id", flat=True)
    for credential_id in sorted(set(credential_ids)):
        with transaction.atomic():
            locked = Credential.objects.select_for_update().filter(pk=credential_id).first()
            if locked is None:
                continue
            now = timezone.now()
            expired = list(locked.grace_secrets.filter(valid_until__lte=now))
            live = [grace.stored_secret for grace in locked.grace_secrets.filter(valid_until__gt=now)]
            locked.grace_secrets.filter(pk__in=[grace.pk for grace in expired]).delete()
            deleted += len(expired)
            queue_released(locked, dropped=[g.stored_secret for g in expired], still_used=[locked.stored_secret, *live])
    return deleted


def credential_delete(*, acting: Any, credential: Credential) -> None:
    """
    Delete the credential: its secrets stop working and its tokens turn inactive at once.

    Failure order (takes effect at once, leaves nothing in Vault):
    1. In one transaction: the row (with its grace entries) and the audit event are
       deleted and written, and the destruction of its Vault entry (every version and the
       metadata; with Vault on, also of the credential's Vault location when the row is
       on bcrypt, in case an interrupted move left an entry there) is queued as a
       SecretPurge row. If the database fails, nothing changed.
    2. After the commit the purge is attempted. If Vault does not confirm, the job stays
       queued and is retried with a growing delay after later Vault writes and by
       `manage.py purge_secrets`; the credential is gone either way.
    Raises CredentialNotFound if it was already deleted.
    """
    with transaction.atomic():
        try:
            locked = Credential.objects.select_for_update().get(pk=credential.pk)
        except Credential.DoesNotExist:
            raise CredentialNotFound() from None
        stored = [locked.stored_secret, *(grace.stored_secret for grace in locked.grace_secrets.all())]
        # Also where the default store would keep it: a move into Vault interrupted before its
        # commit (a killed migration) can leave an entry there that the row never recorded.
        stored.append(get_default_backend().location(owner=locked))
        credential_id = locked.id
        locked.delete()
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_DELETED,
            agent_id=locked.agent_id,
            credential_id=credential_id,
            details={"clientId": locked.client_id},
        )
        purge_after_commit(
            purges_record(
                stored=stored, reason="credential_deleted", agent_id=locked.agent_id, credential_id=credential_id
            )
        )
    logger.info("credential deleted credential_id=%s agent_id=%s", credential_id, locked.agent_id)
