"""
Every change to agents and credentials, and the check of a presented client secret.

The API, the admin, bootstrap_admin and migrate_to_vault all call these functions; there
is one implementation of each lifecycle step. Each takes `acting` (a staff user, an
authenticated agent, or None for the system) and writes one audit event per change.
Plaintext secrets exist only in the IssuedCredential these functions return.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from agentidp.errors import AgentNotFound, Conflict, CredentialNotFound, ValidationFailed
from vaultstore.backends import StoredSecret, get_backend, get_backend_for, get_default_backend
from vaultstore.exceptions import SecretMissing, SecretStoreError, SecretWriteError

from . import selectors
from .audit import audit_record
from .models import Agent, AuditEvent, Credential, GraceSecret, SecretPurge, agent_name_key
from .scopes import normalize_scopes
from .verified import Trusted, remember_verified, verified_recently

logger = logging.getLogger(__name__)

#: The longest grace period a rotation may ask for (one day).
MAX_GRACE_PERIOD_SECONDS = 86400
#: At most this many previous secrets stay valid at once (KV v2 keeps ten versions: these and the current one).
MAX_GRACE_SECRETS = 9

AGENT_UPDATABLE_FIELDS = ("description", "owner", "scopes", "status")
NAME_MAX_LENGTH = Agent._meta.get_field("name").max_length

#: A purge that failed waits this long before its next automatic attempt, doubling each time...
PURGE_FIRST_DELAY_SECONDS = 30
#: ...up to this.
PURGE_MAX_DELAY_SECONDS = 3600
#: How many due purges a successful write to an outside store also works off.
PURGE_BATCH_AFTER_WRITE = 5


@dataclasses.dataclass(frozen=True)
class IssuedCredential:
    """A credential with the plaintext secret it was just given, to be shown once and forgotten."""

    credential: Credential
    client_secret: str = dataclasses.field(repr=False)


class InvalidClient(Exception):
    """
    Client authentication failed. `reason` and `credential` (the one the clientId names, if
    any) are for logs and audit only; clients see invalid_client.
    """

    def __init__(self, reason: str, *, credential: Credential | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.credential = credential


class VerificationWithheld(Exception):
    """The caller forbade asking a store (its client is throttled), and no recent verification vouched for the secret."""


def generate_client_id() -> str:
    return secrets.token_hex(16)


def generate_client_secret() -> str:
    """Return 256 random bits, URL-safe: 43 characters, well inside bcrypt's 72 bytes."""
    return secrets.token_urlsafe(32)


# --- agents ---------------------------------------------------------------------------------


def _clean_scopes(scopes: Iterable[str]) -> list[str]:
    try:
        return normalize_scopes(scopes)
    except ValueError as exc:
        raise ValidationFailed(str(exc), details={"scopes": [str(exc)]}) from None


def _clean_name(name: str) -> str:
    """Return the name in NFKC form (as Django normalises usernames), which is how it is kept and shown."""
    name = unicodedata.normalize("NFKC", name)
    if not 1 <= len(name) <= NAME_MAX_LENGTH:
        message = f"name is 1 to {NAME_MAX_LENGTH} characters once normalised (NFKC)."
        raise ValidationFailed(message, details={"name": [message]})
    return name


def _name_taken(name: str) -> bool:
    return Agent.objects.filter(name_key=agent_name_key(name)).exists()


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"An agent named {name!r} already exists.", details={"name": ["Already taken."]})


def _lock_agent(agent: Agent) -> Agent:
    """Return the agent's row, locked until the transaction ends; raise AgentNotFound if it is gone."""
    locked = Agent.objects.select_for_update().filter(pk=agent.pk).first()
    if locked is None:
        raise AgentNotFound()
    return locked


def agent_create(
    *, acting: Any, name: str, description: str = "", owner: str = "", scopes: Iterable[str] = ()
) -> Agent:
    """
    Register an agent.

    The name is kept in NFKC form. Raises Conflict if another agent has the same name,
    compared in that form and without case, Unicode's full case folding ("Straße" is
    "STRASSE"), on every database (also when two requests race: the unique index on the
    key decides).
    """
    name = _clean_name(name)
    agent = Agent(name=name, description=description, owner=owner, scopes=_clean_scopes(scopes))
    if _name_taken(name):
        raise _name_conflict(name)
    try:
        with transaction.atomic():
            agent.save(force_insert=True)
            audit_record(
                acting=acting,
                action=AuditEvent.Action.AGENT_CREATED,
                agent_id=agent.id,
                details={"name": agent.name, "scopes": agent.scopes},
            )
    except IntegrityError:
        raise _name_conflict(name) from None
    logger.info("agent created agent_id=%s", agent.id)
    return agent


def agent_update(*, acting: Any, agent: Agent, **changes: Any) -> Agent:
    """
    Change an agent's description, owner, scopes or status.

    Suspending an agent stops its credentials from authenticating and makes its access
    tokens inactive at once. Narrowing its scopes narrows what its existing tokens allow.
    """
    unknown = sorted(set(changes) - set(AGENT_UPDATABLE_FIELDS))
    if unknown:
        raise ValidationFailed(f"{unknown[0]!r} cannot be changed.")
    if "scopes" in changes:
        changes["scopes"] = _clean_scopes(changes["scopes"])
    if "status" in changes and changes["status"] not in Agent.Status.values:
        raise ValidationFailed("status is 'active' or 'suspended'.", details={"status": ["Not a valid choice."]})

    with transaction.atomic():
        agent = _lock_agent(agent)
        changed: dict[str, Any] = {}
        for field, value in changes.items():
            old = getattr(agent, field)
            if old != value:
                setattr(agent, field, value)
                # Free text is named, not copied, into the trail; status and scopes are kept in full.
                changed[field] = {"from": old, "to": value} if field in ("status", "scopes") else True
        if changed:
            agent.updated_at = timezone.now()
            agent.save(update_fields=[*changed, "updated_at"])
            audit_record(
                acting=acting,
                action=AuditEvent.Action.AGENT_UPDATED,
                agent_id=agent.id,
                details={"changed": changed},
            )
    if changed:
        logger.info("agent updated agent_id=%s fields=%s", agent.id, ",".join(changed))
    return agent


def agent_delete(*, acting: Any, agent: Agent) -> None:
    """
    Delete an agent and, first, each of its credentials exactly as credential_delete does.

    One transaction: if anything fails, the agent and all its credentials remain. The
    destruction of their Vault entries is queued in it and attempted after the commit.
    """
    with transaction.atomic():
        agent = _lock_agent(agent)
        for credential in Credential.objects.filter(agent=agent).order_by("created_at", "id"):
            credential_delete(acting=acting, credential=credential)
        agent_id = agent.id
        agent.delete()
        audit_record(
            acting=acting,
            action=AuditEvent.Action.AGENT_DELETED,
            agent_id=agent_id,
            details={"name": agent.name},
        )
    logger.info("agent deleted agent_id=%s", agent_id)


# --- credentials ----------------------------------------------------------------------------


def _check_capacity(agent: Agent) -> None:
    limit = settings.AGENTIDP_MAX_ACTIVE_CREDENTIALS
    if selectors.credential_active_count(agent=agent) >= limit:
        raise Conflict(f"This agent already has {limit} active credentials, the most allowed.")


# --- destroying secrets kept outside the database ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class PurgeReport:
    """What a run of the purge queue did: jobs finished and jobs still pending after a failure."""

    purged: int = 0
    failed: int = 0


def _purges_record(
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


def _purge_after_commit(purge_ids: list[int]) -> None:
    """Once the transaction commits, destroy the secrets just queued (failures stay queued for the retries)."""
    if purge_ids:
        transaction.on_commit(lambda: secret_purges_run(purge_ids=purge_ids), robust=True)


def _discard_unrecorded_write(
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
            purge_ids = _purges_record(
                stored=[location], reason=reason, agent_id=credential.agent_id, credential_id=credential.id
            )
        report = secret_purges_run(purge_ids=purge_ids)
        if unconfirmed or report.failed:
            with transaction.atomic():
                for purge_id in _purges_record(
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
    try:
        stored = backend.store(owner=credential, secret=secret)
    except SecretWriteError as exc:
        if exc.maybe_written:
            _discard_unrecorded_write(
                credential=credential, stored=backend.location(owner=credential), unconfirmed=True
            )
        raise
    try:
        with transaction.atomic():
            # Lock the agent so that concurrent creates cannot overshoot the limit together.
            _lock_agent(agent)
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
    except BaseException:
        # Vault confirmed this write, so nothing of it can land later: one destruction suffices.
        _discard_unrecorded_write(credential=credential, stored=stored, unconfirmed=False)
        raise
    logger.info("credential created credential_id=%s agent_id=%s storage=%s", credential.id, agent.id, stored.storage)
    return issued


class StorageChanged(Conflict):
    """The credential's secret is no longer in the store the caller expected (it moved meanwhile)."""


def credential_rotate(
    *,
    acting: Any,
    credential: Credential,
    grace_period_seconds: int = 0,
    from_storage: str | None = None,
    client_secret: str | None = None,
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
    caller hands the secret on before the old one can stop working: migrate_to_vault
    records it in its output file, the API renders its response. For migrate_to_vault
    too: `from_storage` rotates only a credential whose secret is still in that store
    (else StorageChanged, and nothing changes); `client_secret` keeps a secret that was
    already handed out by an interrupted run instead of a new one.

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
    if not 0 <= grace_period_seconds <= MAX_GRACE_PERIOD_SECONDS:
        raise ValidationFailed(
            f"gracePeriodSeconds is from 0 to {MAX_GRACE_PERIOD_SECONDS}.",
            details={"gracePeriodSeconds": [f"Must be from 0 to {MAX_GRACE_PERIOD_SECONDS}."]},
        )
    backend = get_default_backend()
    secret = client_secret or generate_client_secret()
    unrecorded: StoredSecret | None = None  # a write into a new location, until the commit records it
    unconfirmed = False
    try:
        with transaction.atomic():
            try:
                locked = (
                    Credential.objects.select_related("agent").select_for_update(of=("self",)).get(pk=credential.pk)
                )
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
            try:
                new = backend.store(owner=locked, secret=secret, replacing=old)
            except SecretWriteError as exc:
                unrecorded, unconfirmed = (moving_in, True) if exc.maybe_written else (None, False)
                raise
            unrecorded = new if moving_in is not None else None
            still_used = [new, *(grace.stored_secret for grace in live_grace)]
            if grace_period_seconds:
                grace = GraceSecret(
                    credential=locked, valid_until=now + datetime.timedelta(seconds=grace_period_seconds)
                )
                grace.set_stored_secret(old)
                grace.save(force_insert=True)
                still_used.append(old)
            expired = list(locked.grace_secrets.filter(valid_until__lte=now))
            locked.grace_secrets.filter(pk__in=[grace.pk for grace in expired]).delete()
            locked.set_stored_secret(new)
            locked.rotated_at = now
            locked.save(update_fields=[*Credential.LOCATION_FIELDS, "rotated_at"])
            _queue_released(locked, dropped=[old, *(grace.stored_secret for grace in expired)], still_used=still_used)
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
    except BaseException:
        if unrecorded is not None:
            _discard_unrecorded_write(
                credential=credential, stored=unrecorded, unconfirmed=unconfirmed, reason="rotate_failed"
            )
        raise
    logger.info(
        "credential rotated credential_id=%s storage=%s grace_period_seconds=%s",
        locked.id,
        new.storage,
        grace_period_seconds,
    )
    return issued


def _queue_released(
    credential: Credential, *, dropped: Iterable[StoredSecret], still_used: Iterable[StoredSecret]
) -> None:
    """Queue for destruction the dropped secrets' outside locations that nothing still used refers to."""
    used = {(item.storage, item.vault_path) for item in still_used if item.kept_outside_database}
    released = [item for item in dropped if item.kept_outside_database and (item.storage, item.vault_path) not in used]
    _purge_after_commit(
        _purges_record(stored=released, reason="moved", agent_id=credential.agent_id, credential_id=credential.id)
    )


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
            _queue_released(
                locked, dropped=[g.stored_secret for g in expired], still_used=[locked.stored_secret, *live]
            )
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
        _purge_after_commit(
            _purges_record(
                stored=stored, reason="credential_deleted", agent_id=locked.agent_id, credential_id=credential_id
            )
        )
    logger.info("credential deleted credential_id=%s agent_id=%s", credential_id, locked.agent_id)


def credential_authenticate(*, client_id: str, client_secret: str, store_allowed: bool = True) -> Credential:
    """
    Return the credential that this client id and secret authenticate, or raise InvalidClient.

    An unknown client id pays what a known one with a wrong secret pays: one dummy
    verification in the default store (a bcrypt check, or a Vault read) and the query for
    previous secrets. A known one is verified before its expiry or its agent's status is
    looked at, so the time taken does not tell a wrong secret from an expired or suspended
    credential. (A right secret verified lately is matched from the verified-secret cache,
    so refusing it for expiry or suspension is quicker; that tells only a holder of the
    right secret something.) The current secret is tried first, then previous secrets
    still inside their grace period; each is verified by the store that holds it, so
    bcrypt credentials keep working while Vault is down.

    A secret that a store verified (not the cache) is checked once more against the row
    as it is now: a rotation or deletion that committed during a slow verification
    refuses the request instead of letting the old secret through.

    With `store_allowed=False` (the client is throttled) no store is asked: a secret the
    verified-secret cache vouches for still authenticates, anything else raises
    VerificationWithheld, an unknown client id included.
    Raises SecretStoreError (SecretReadError) when the store that holds this credential's
    secret cannot answer: the token endpoint's 503 temporarily_unavailable, not invalid_client.
    Raises SecretMissing (a SecretReadError) when the store answers that it does not hold the
    current secret the row still trusts (Vault restarted empty, restored from an old backup,
    asked in the wrong namespace): the store lost it, so the client is not refused for it. That
    is reported once per secret (credential_secret_missing). A store that lost only a
    previous secret in its grace period is reported too, but the request is answered as if
    that secret did not match: it can no longer be checked, and the current one did not match.
    """
    credential = selectors.credential_find_by_client_id(client_id=client_id)
    if credential is None:
        # What a known clientId with a wrong secret pays, throttled or not: a look in the
        # cache, the store (unless withheld), the grace query.
        backend = get_default_backend()
        verified_recently(
            trusted=Trusted(NO_CREDENTIAL_ID, StoredSecret(storage=backend.name), since=EPOCH), secret=client_secret
        )
        if store_allowed:
            backend.verify_dummy(secret=client_secret)
        selectors.grace_secrets_live(credential_id=NO_CREDENTIAL_ID)
        if not store_allowed:
            raise VerificationWithheld()
        raise InvalidClient("unknown_client")
    matched, by_store = _secret_matching(credential, client_secret, store_allowed=store_allowed)
    if matched is None:
        raise InvalidClient("wrong_secret", credential=credential)
    current = matched.stored == credential.stored_secret
    if by_store:
        credential = _still_trusting(credential, matched, was_current=current)
    if credential.is_expired():
        raise InvalidClient("credential_expired", credential=credential)
    if not credential.agent.is_active:
        raise InvalidClient("agent_suspended", credential=credential)
    _note_use(credential)
    if matched.stored == credential.stored_secret:
        _upgrade_on_use(credential, client_secret)
    return credential


#: The id no credential has, and a moment none was trusted since, for the unknown client's share of the work.
NO_CREDENTIAL_ID = uuid.UUID(int=0)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _secret_matching(
    credential: Credential, secret: str, *, store_allowed: bool = True
) -> tuple[Trusted | None, bool]:
    """
    Return which of the credential's secrets `secret` is (the current one or a previous one in its grace
    period), and whether a store said so (False: the verified-secret cache did).

    A secret the store verified within AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS matches
    without asking it again (credentials.verified). A store that cannot answer does not
    stop the others from being asked (a bcrypt secret in its grace period still works
    while Vault is down); its error is raised only when nothing else matched, since the
    secret might be the one it holds. Without `store_allowed`, only the cache is asked,
    and VerificationWithheld is raised when it does not vouch for the secret.

    A secret the store says it does not hold (SecretMissing) is checked against the row as
    it is now (_secrets_lost): a deletion or rotation that committed meanwhile destroys the
    old entry, and is the usual invalid_client. One the row still trusts is reported; if
    it is the current secret and nothing matched, SecretMissing is raised.
    """
    unavailable: SecretStoreError | None = None
    missing: list[Trusted] = []
    for trusted in _candidate_secrets(credential):
        stored = trusted.stored
        if verified_recently(trusted=trusted, secret=secret):
            _secrets_lost(credential, missing)
            return trusted, False
        if not store_allowed:
            continue
        try:
            if get_backend_for(stored).verify_trusted(stored=stored, secret=secret):
                remember_verified(trusted=trusted, secret=secret)
                _secrets_lost(credential, missing)
                return trusted, True
        except SecretMissing:
            missing.append(trusted)
        except SecretStoreError as exc:
            unavailable = unavailable or exc
    if not store_allowed:
        raise VerificationWithheld()
    lost = _secrets_lost(credential, missing)
    if unavailable is not None:
        raise unavailable
    current = _current_secret(credential)
    if current in lost:
        raise SecretMissing("The secret store does not hold this credential's current secret.")
    if current in missing:
        raise InvalidClient("rotated_during_verification", credential=credential)
    return None, False


def _secrets_lost(credential: Credential, missing: list[Trusted]) -> list[Trusted]:
    """
    Return which of the secrets a store said it does not hold the credential still trusts, and report those.

    The row is read again first: a deletion or a rotation that committed while the store
    was asked destroys (or stops trusting) the entry it asked for, which is no loss.
    Raises InvalidClient("deleted_during_verification") when the credential is gone.
    """
    if not missing:
        return []
    now = selectors.credential_find_by_client_id(client_id=credential.client_id)
    if now is None or now.pk != credential.pk:
        raise InvalidClient("deleted_during_verification")
    trusted_now = set(_candidate_secrets(now))
    lost = [trusted for trusted in missing if trusted in trusted_now]
    for trusted in lost:
        credential_secret_missing(acting=None, credential=now, trusted=trusted, detected_by="authentication")
    return lost


def _still_trusting(credential: Credential, matched: Trusted, *, was_current: bool) -> Credential:
    """
    Return the credential's row as it is now if it still trusts `matched`; else raise InvalidClient.

    It does if the secret is where it was verified (the current secret, or a previous one
    still in its grace period), or if it was the current secret and has only moved to
    another store meanwhile (upgrade on use, by a concurrent request): a move keeps the
    moment the credential came to trust its secret, a rotation never does. Without that,
    every request racing a move would be refused with the right secret.
    """
    now = selectors.credential_find_by_client_id(client_id=credential.client_id)
    if now is None or now.pk != credential.pk:
        raise InvalidClient("deleted_during_verification")
    if now.stored_secret == matched.stored:
        return now
    if was_current and _current_secret(now).since == matched.since:
        return now
    if matched.stored not in [grace.stored_secret for grace in selectors.grace_secrets_live(credential_id=now.pk)]:
        raise InvalidClient("rotated_during_verification", credential=now)
    return now


def _note_use(credential: Credential) -> None:
    """Record the authentication in last_used_at, at most once per LAST_USED_RESOLUTION per credential."""
    now = timezone.now()
    since = now - Credential.LAST_USED_RESOLUTION
    if credential.last_used_at is not None and credential.last_used_at > since:
        return
    # Conditional, so that processes racing here write once between them.
    Credential.objects.filter(pk=credential.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=since)
    ).update(last_used_at=now)
    credential.last_used_at = now


#: Set (in the Django cache) while moves on use are paused after one failed.
UPGRADE_PAUSED_CACHE_KEY = "agentidp:upgrade-on-use:paused"


def _upgrade_on_use(credential: Credential, secret: str) -> None:
    """
    Move a just-verified current secret to the default store, if it is kept elsewhere.

    Never fails the authentication: a failure is logged and pauses moves for
    AGENTIDP_UPGRADE_RETRY_SECONDS, so that an unavailable store does not slow every
    request while it is down.
    """
    if not settings.AGENTIDP_UPGRADE_ON_USE or credential.storage == get_default_backend().name:
        return
    if cache.get(UPGRADE_PAUSED_CACHE_KEY):
        return
    try:
        credential_move_to_default(acting=None, credential=credential, secret=secret)
    except Exception as exc:
        cache.set(UPGRADE_PAUSED_CACHE_KEY, True, settings.AGENTIDP_UPGRADE_RETRY_SECONDS)
        logger.warning(
            "moving a secret on use failed; moves pause for %ss credential_id=%s error=%s",
            settings.AGENTIDP_UPGRADE_RETRY_SECONDS,
            credential.id,
            type(exc).__name__,
        )


def credential_move_to_default(*, acting: Any, credential: Credential, secret: str) -> bool:
    """
    Keep the credential's current secret, `secret` (just verified), in the default store instead.

    The secret itself does not change, so nothing changes for the agent: this is the
    upgrade on use that moves bcrypt credentials into Vault one authentication at a
    time. Previous secrets in their grace period stay where they are. Returns False when
    there was nothing to do (already moved, rotated meanwhile, or another request is
    moving it now).

    Failure order (the secret keeps working throughout):
    1. The row is locked (skipped if another transaction holds it) and must still trust
       the secret that was verified.
    2. The secret is stored in the default store. If that fails, nothing changed; a write
       Vault may still apply is queued for destruction.
    3. The row, the release of the old location and the audit event are written in one
       transaction. If the database fails, the row still trusts the old location, and
       the new entry is queued for destruction.
    """
    backend = get_default_backend()
    written: StoredSecret | None = None
    unconfirmed = False
    try:
        with transaction.atomic():
            locked = Credential.objects.select_for_update(skip_locked=True).filter(pk=credential.pk).first()
            if locked is None or locked.stored_secret != credential.stored_secret or locked.storage == backend.name:
                return False
            old = locked.stored_secret
            try:
                new = backend.store(owner=locked, secret=secret, replacing=old)
            except SecretWriteError as exc:
                written, unconfirmed = (backend.location(owner=locked), True) if exc.maybe_written else (None, False)
                raise
            written = new
            locked.set_stored_secret(new)
            locked.save(update_fields=list(Credential.LOCATION_FIELDS))
            live = [grace.stored_secret for grace in selectors.grace_secrets_live(credential_id=locked.pk)]
            _queue_released(locked, dropped=[old], still_used=[new, *live])
            audit_record(
                acting=acting,
                action=AuditEvent.Action.CREDENTIAL_MOVED,
                agent_id=locked.agent_id,
                credential_id=locked.id,
                details={"from": old.storage, "to": new.storage, "trigger": "authentication"},
            )
    except BaseException:
        if written is not None and written.kept_outside_database:
            _discard_unrecorded_write(
                credential=credential, stored=written, unconfirmed=unconfirmed, reason="move_failed"
            )
        raise
    credential.set_stored_secret(new)
    logger.info("credential moved on use credential_id=%s from=%s to=%s", credential.id, old.storage, new.storage)
    return True


def _current_secret(credential: Credential) -> Trusted:
    return Trusted(credential.id, credential.stored_secret, since=credential.rotated_at or credential.created_at)


def _candidate_secrets(credential: Credential) -> Iterator[Trusted]:
    """Yield the current secret, then (queried only if asked for) the previous ones still in their grace period."""
    yield _current_secret(credential)
    for grace in selectors.grace_secrets_live(credential_id=credential.pk):
        yield Trusted(credential.id, grace.stored_secret, since=grace.created_at)


# --- secrets a store no longer holds ----------------------------------------------------------

#: /readyz reports a credential whose trusted secret a store lost until this long after it was last seen lost.
SECRET_MISSING_REPORT_SECONDS = 600
#: A lost secret seen again within this long is not reported again (no ERROR line, no look at the trail).
SECRET_MISSING_REPEAT_SECONDS = 60
#: In the Django cache: one key per lost secret, set while it was reported lately...
SECRET_MISSING_SEEN_PREFIX = "agentidp:secret-missing:"
#: ...and one per store: {credentialId: when a secret of it was last seen lost (epoch seconds)}, for /readyz.
SECRETS_MISSING_PREFIX = "agentidp:secrets-missing:"


def _which(credential: Credential, trusted: Trusted) -> str:
    return "current" if trusted == _current_secret(credential) else "grace"


def credential_secret_missing(*, acting: Any, credential: Credential, trusted: Trusted, detected_by: str) -> bool:
    """
    Record that a store does not hold a secret the credential trusts: an ERROR line, an audit event, /readyz's report.

    The audit event (`credential.secret_missing`) is written once per trusted secret: its
    path, its version and the moment the credential came to trust it (Vault numbers
    versions from 1 again once a key is gone, so a later secret at the same path and
    version is another one), however often and by whom the loss is seen. The ERROR line
    and the refresh of /readyz's report come at most once per SECRET_MISSING_REPEAT_SECONDS
    for each lost secret (per Django cache), so a client retrying cannot flood the log.
    The row is locked and read again before the event is written: a secret the credential
    no longer trusts (rotated or deleted meanwhile) is not reported. Returns whether an
    event was written.

    Failure order: never raises. The caller's answer (a 503, or the command's listing)
    matters more than the report: a cache or database failure is logged and the report
    is tried again the next time the loss is seen.
    """
    stored = trusted.stored
    seen_key = SECRET_MISSING_SEEN_PREFIX + hashlib.sha256(trusted.name.encode()).hexdigest()
    try:
        if cache.get(seen_key):
            return False
    except Exception as exc:
        logger.warning("cache unavailable for a lost secret's report error=%s", type(exc).__name__)
    written = False
    try:
        with transaction.atomic():
            locked = Credential.objects.select_for_update().filter(pk=credential.pk).first()
            if locked is None or trusted not in set(_candidate_secrets(locked)):
                return False
            which = _which(locked, trusted)
            logger.error(
                "the secret store %s does not hold a secret the database trusts credential_id=%s agent_id=%s "
                "secret=%s path=%s version=%s detected_by=%s; restore it or rotate the credential, "
                "and run manage.py check_secrets",
                stored.storage,
                locked.id,
                locked.agent_id,
                which,
                stored.vault_path or "-",
                stored.vault_version or "-",
                detected_by,
            )
            details = {
                "storage": stored.storage,
                "vaultPath": stored.vault_path,
                "vaultVersion": stored.vault_version,
                "trustedSince": trusted.since.isoformat(),
            }
            reported = AuditEvent.objects.filter(
                action=AuditEvent.Action.CREDENTIAL_SECRET_MISSING,
                credential_id=locked.id,
                **{f"details__{name}": value for name, value in details.items()},
            )
            if not reported.exists():
                audit_record(
                    acting=acting,
                    action=AuditEvent.Action.CREDENTIAL_SECRET_MISSING,
                    agent_id=locked.agent_id,
                    credential_id=locked.id,
                    details={"clientId": locked.client_id, "secret": which, **details, "detectedBy": detected_by},
                )
                written = True
    except Exception:
        logger.exception("could not record a lost secret in the audit trail credential_id=%s", credential.id)
        return False
    try:
        _secrets_missing_note(storage=stored.storage, credential_id=credential.id)
        cache.set(seen_key, True, SECRET_MISSING_REPEAT_SECONDS)
    except Exception as exc:
        logger.warning("cache unavailable for a lost secret's report error=%s", type(exc).__name__)
    return written


def _secrets_missing_lately(storage: str) -> dict[str, float]:
    """Return {credentialId: when last seen lost} for the store, without the entries older than the report lasts."""
    kept = cache.get(SECRETS_MISSING_PREFIX + storage)
    if not isinstance(kept, dict):
        return {}
    since = time.time() - SECRET_MISSING_REPORT_SECONDS
    return {key: seen for key, seen in kept.items() if isinstance(seen, int | float) and seen > since}


def _secrets_missing_note(*, storage: str, credential_id: uuid.UUID) -> None:
    # Read, change, write: two processes writing at once may drop one credential until it is seen again.
    lately = _secrets_missing_lately(storage)
    lately[str(credential_id)] = time.time()
    cache.set(SECRETS_MISSING_PREFIX + storage, lately, SECRET_MISSING_REPORT_SECONDS)


def secrets_missing_count(*, storage: str) -> int:
    """
    Return how many credentials had a secret that this store lost seen lately (within SECRET_MISSING_REPORT_SECONDS).

    One cache read, for /readyz. An approximate count: what authentications and
    `check_secrets --record` saw, never a scan; `check_secrets` gives the exact list.
    """
    return len(_secrets_missing_lately(storage))


def secrets_missing_forget(
    *, storage: str, credential_ids: Iterable[uuid.UUID] | None = None, keeping: Iterable[uuid.UUID] = ()
) -> None:
    """Drop credentials from /readyz's report of lost secrets: these, or (None) every one but `keeping`."""
    lately = _secrets_missing_lately(storage)
    if credential_ids is None:
        kept = {str(credential_id) for credential_id in keeping}
        lately = {key: seen for key, seen in lately.items() if key in kept}
    else:
        for credential_id in credential_ids:
            lately.pop(str(credential_id), None)
    if lately:
        cache.set(SECRETS_MISSING_PREFIX + storage, lately, SECRET_MISSING_REPORT_SECONDS)
    else:
        cache.delete(SECRETS_MISSING_PREFIX + storage)


@dataclasses.dataclass(frozen=True)
class SecretCheck:
    """Whether a store holds one secret a credential trusts: True, False (lost), or None (the store did not answer)."""

    trusted: Trusted
    which: str  # "current" or "grace"
    held: bool | None
    error: str = ""


def credential_secrets_check(*, credential: Credential, record: bool = False, acting: Any = None) -> list[SecretCheck]:
    """
    Ask each store whether it still holds the credential's current secret and each previous one in its grace period.

    No secret is read out of the store or compared: `holds` asks for the trusted version
    only. With `record`, each secret found lost is reported as an authentication that
    meets it reports it (credential_secret_missing: ERROR line, one audit event per
    secret, /readyz's report). Uses the credential's prefetched `live_grace_secrets` when
    the caller set it, else queries them.
    """
    graces = getattr(credential, "live_grace_secrets", None)
    if graces is None:
        graces = selectors.grace_secrets_live(credential_id=credential.pk)
    candidates = [_current_secret(credential)]
    candidates += [Trusted(credential.id, grace.stored_secret, since=grace.created_at) for grace in graces]
    checks = []
    for index, trusted in enumerate(candidates):
        which = "current" if index == 0 else "grace"
        try:
            held = get_backend_for(trusted.stored).holds(stored=trusted.stored)
        except SecretStoreError as exc:
            checks.append(SecretCheck(trusted, which, None, str(exc)))
            continue
        checks.append(SecretCheck(trusted, which, held))
        if not held and record:
            credential_secret_missing(
                acting=acting, credential=credential, trusted=trusted, detected_by="check_secrets"
            )
    return checks
