"""
A credential's life: created with a secret or with public keys, rotated to a new secret or
new keys (the old ones kept for a grace period if asked), deleted. Every secret goes to the
default store; each step writes one audit event, and the plaintext secret exists only in the
IssuedCredential returned. A key credential (private_key_jwt) has no secret and no store.
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

from .. import secretformat, selectors
from ..audit import audit_record
from ..errors import AgentNotFound, Conflict, CredentialNotFound, ValidationFailed
from ..models import Agent, AuditEvent, Credential, GraceKeys, GraceSecret
from .keys import clean_key_location, key_summary
from .purges import purge_after_commit, purges_record, queue_released, secret_purges_run_due, unrecorded_write

logger = logging.getLogger(__name__)

#: The longest grace period a rotation may ask for (one day).
MAX_GRACE_PERIOD_SECONDS = 86400
#: At most this many previous secrets stay valid at once (KV v2 keeps ten versions: these and the current one).
MAX_GRACE_SECRETS = 9


@dataclasses.dataclass(frozen=True)
class IssuedCredential:
    """
    A credential with the plaintext secret it was just given, to be shown once and forgotten
    (None for a key credential, which has no secret).
    """

    credential: Credential
    client_secret: str | None = dataclasses.field(repr=False)


def generate_client_id() -> str:
    return secrets.token_hex(16)


def generate_client_secret(secret_ref: str) -> str:
    """
    Return a new secret of the credential whose secret reference is `secret_ref`: 256 random
    bits in AgentIdP's recognisable format (credentials.secretformat), 66 characters, well
    inside bcrypt's 72 bytes.
    """
    return secretformat.new_secret(secret_ref)


def lock_agent(agent: Agent) -> Agent:
    """Return the agent's row, locked until the transaction ends; raise AgentNotFound if it is gone."""
    locked = Agent.objects.select_for_update().filter(pk=agent.pk).first()
    if locked is None:
        raise AgentNotFound()
    return locked


def _check_grace_period(grace_period_seconds: int) -> None:
    if not 0 <= grace_period_seconds <= MAX_GRACE_PERIOD_SECONDS:
        raise ValidationFailed(
            f"gracePeriodSeconds is from 0 to {MAX_GRACE_PERIOD_SECONDS}.",
            details={"gracePeriodSeconds": [f"Must be from 0 to {MAX_GRACE_PERIOD_SECONDS}."]},
        )


def _check_grace_room(*, live: int, grace_period_seconds: int, what: str) -> None:
    """
    Refuse a rotation with a grace period when MAX_GRACE_SECRETS previous secrets (or key
    sets) are still valid: at most ten rotations fall inside one grace window, for either kind.
    """
    if grace_period_seconds and live >= MAX_GRACE_SECRETS:
        raise Conflict(
            f"{MAX_GRACE_SECRETS} previous {what} of this credential are still in their grace period; "
            "wait for one to end, or rotate without a grace period."
        )


def _lock_credential(credential: Credential) -> Credential:
    """Return the credential's row with its agent, locked until the transaction ends (CredentialNotFound if gone)."""
    try:
        return Credential.objects.select_related("agent").select_for_update(of=("self",)).get(pk=credential.pk)
    except Credential.DoesNotExist:
        raise CredentialNotFound() from None


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
    kind: str = Credential.Kind.SECRET,
    jwks: dict | None = None,
    jwks_uri: str | None = None,
    before_commit: Callable[[IssuedCredential], None] | None = None,
) -> IssuedCredential:
    """
    Give the agent a new credential in the default store and return it with its secret.

    With `kind` "key", the credential has the public keys `jwks` (a JWK Set) or the URL
    `jwks_uri` of them (exactly one) instead, and no secret: nothing is stored outside the
    database, and the IssuedCredential's secret is None. A key credential counts towards
    AGENTIDP_MAX_ACTIVE_CREDENTIALS as any credential does. Raises ValidationFailed for a
    private key, a URL the key fetcher refuses, or keys given for a secret credential.

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
    if kind not in Credential.Kind.values:
        raise ValidationFailed("kind is 'secret' or 'key'.", details={"kind": ["Not a valid choice."]})
    if kind == Credential.Kind.KEY:
        jwks, jwks_uri = clean_key_location(jwks=jwks, jwks_uri=jwks_uri, required=True)
        _check_capacity(agent)
        return _key_credential_create(
            acting=acting,
            agent=agent,
            description=description,
            expires_at=expires_at,
            jwks=jwks,
            jwks_uri=jwks_uri,
            before_commit=before_commit,
        )
    _refuse_keys_for_secret(jwks=jwks, jwks_uri=jwks_uri)
    _check_capacity(agent)

    backend = get_default_backend()
    credential = Credential(
        agent=agent,
        client_id=generate_client_id(),
        description=description,
        expires_at=expires_at,
        secret_ref=secretformat.new_secret_ref(),
    )
    secret = generate_client_secret(credential.secret_ref)
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
                details={"clientId": credential.client_id, "kind": credential.kind, "storage": stored.storage},
            )
            issued = IssuedCredential(credential=credential, client_secret=secret)
            if before_commit is not None:
                before_commit(issued)
            if stored.kept_outside_database:
                transaction.on_commit(secret_purges_run_due, robust=True)
    logger.info("credential created credential_id=%s agent_id=%s storage=%s", credential.id, agent.id, stored.storage)
    return issued


def _refuse_keys_for_secret(*, jwks: object, jwks_uri: object) -> None:
    if jwks is not None or jwks_uri is not None:
        message = "jwks and jwksUri belong to key credentials (kind 'key'); a secret credential has neither."
        raise ValidationFailed(
            message,
            details={name: [message] for name, value in (("jwks", jwks), ("jwksUri", jwks_uri)) if value}
            or {"jwks": [message]},
        )


def _key_credential_create(
    *,
    acting: Any,
    agent: Agent,
    description: str,
    expires_at: datetime.datetime | None,
    jwks: dict | None,
    jwks_uri: str | None,
    before_commit: Callable[[IssuedCredential], None] | None,
) -> IssuedCredential:
    """
    credential_create for a key credential: one transaction (the row, its audit event,
    `before_commit`), nothing outside the database. If it fails, no credential exists.
    """
    credential = Credential(
        agent=agent,
        kind=Credential.Kind.KEY,
        client_id=generate_client_id(),
        description=description,
        expires_at=expires_at,
    )
    credential.set_key_location(jwks=jwks, jwks_uri=jwks_uri)
    with transaction.atomic():
        lock_agent(agent)
        _check_capacity(agent)
        credential.save(force_insert=True)
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_CREATED,
            agent_id=agent.id,
            credential_id=credential.id,
            details={
                "clientId": credential.client_id,
                "kind": credential.kind,
                **key_summary(jwks=jwks, jwks_uri=jwks_uri),
            },
        )
        issued = IssuedCredential(credential=credential, client_secret=None)
        if before_commit is not None:
            before_commit(issued)
    logger.info("credential created credential_id=%s agent_id=%s kind=key", credential.id, agent.id)
    return issued


class StorageChanged(Conflict):
    """The credential's secret is no longer in the store the caller expected (it moved meanwhile)."""


def credential_rotate(
    *,
    acting: Any,
    credential: Credential,
    grace_period_seconds: int = 0,
    jwks: dict | None = None,
    jwks_uri: str | None = None,
    before_commit: Callable[[IssuedCredential], None] | None = None,
) -> IssuedCredential:
    """
    Give the credential a new secret in the default store; keep clientId and credentialId.

    A key credential gets the new public keys `jwks` or `jwks_uri` (exactly one) instead,
    and its old keys keep verifying for `grace_period_seconds` (a GraceKeys row; none
    for 0). One transaction: the row, the grace row, the audit event and `before_commit`;
    if it fails, the old keys stay current. Keys for a secret credential, or none for a
    key credential, raise ValidationFailed.

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
    more previous secrets (or key sets) would be valid at once than MAX_GRACE_SECRETS.
    """
    if credential.is_key:
        return _replace_keys(
            acting=acting,
            credential=credential,
            grace_period_seconds=grace_period_seconds,
            jwks=jwks,
            jwks_uri=jwks_uri,
            before_commit=before_commit,
        )
    _refuse_keys_for_secret(jwks=jwks, jwks_uri=jwks_uri)
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
    _check_grace_period(grace_period_seconds)
    backend = get_default_backend()
    # A write into a new location (a move into Vault) leaves an entry no row trusts if it is never recorded.
    with unrecorded_write(credential=credential, reason="rotate_failed") as write, transaction.atomic():
        locked = _lock_credential(credential)
        if locked.is_key:
            raise ValidationFailed("A key credential has no secret to replace; rotate it with new keys.")
        if from_storage is not None and locked.storage != from_storage:
            raise StorageChanged(f"The credential's secret is no longer kept by {from_storage!r}.")
        # A credential made before secrets carried a reference gets one with its first new secret.
        secret_ref = locked.secret_ref or secretformat.new_secret_ref()
        secret = client_secret or generate_client_secret(secret_ref)
        now = timezone.now()
        compromised = locked.is_compromised
        if compromised and grace_period_seconds:
            message = "A compromised credential's secrets stop working at once: rotate it without a grace period."
            raise ValidationFailed(message, details={"gracePeriodSeconds": [message]})
        # A compromised credential's previous secrets end with it: one of them may be the leaked one.
        live_grace = [] if compromised else list(locked.grace_secrets.filter(valid_until__gt=now))
        _check_grace_room(live=len(live_grace), grace_period_seconds=grace_period_seconds, what="secrets")
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
        expired = list(locked.grace_secrets.all() if compromised else locked.grace_secrets.filter(valid_until__lte=now))
        locked.grace_secrets.filter(pk__in=[grace.pk for grace in expired]).delete()
        locked.set_stored_secret(new)
        locked.rotated_at = now
        locked.secret_ref = secret_ref
        # The way back from quarantine; tokens issued before it stay inactive (tokens_not_before).
        locked.compromised_at = None
        locked.save(update_fields=[*Credential.LOCATION_FIELDS, "rotated_at", "secret_ref", "compromised_at"])
        queue_released(locked, dropped=[old, *(grace.stored_secret for grace in expired)], still_used=still_used)
        if new.kept_outside_database:
            transaction.on_commit(secret_purges_run_due, robust=True)
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_ROTATED,
            agent_id=locked.agent_id,
            credential_id=locked.id,
            details={
                "kind": locked.kind,
                "gracePeriodSeconds": grace_period_seconds,
                "from": old.storage,
                "to": new.storage,
                **({"wasCompromised": True} if compromised else {}),
            },
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


def _replace_keys(
    *,
    acting: Any,
    credential: Credential,
    grace_period_seconds: int,
    jwks: dict | None,
    jwks_uri: str | None,
    before_commit: Callable[[IssuedCredential], None] | None,
) -> IssuedCredential:
    """credential_rotate for a key credential (see there)."""
    _check_grace_period(grace_period_seconds)
    jwks, jwks_uri = clean_key_location(jwks=jwks, jwks_uri=jwks_uri, required=True)
    with transaction.atomic():
        locked = _lock_credential(credential)
        now = timezone.now()
        live = locked.grace_keys.filter(valid_until__gt=now).count()
        _check_grace_room(live=live, grace_period_seconds=grace_period_seconds, what="key sets")
        if grace_period_seconds:
            grace = GraceKeys(credential=locked, valid_until=now + datetime.timedelta(seconds=grace_period_seconds))
            grace.set_key_location(jwks=locked.jwks, jwks_uri=locked.jwks_uri)
            grace.save(force_insert=True)
        locked.grace_keys.filter(valid_until__lte=now).delete()
        locked.set_key_location(jwks=jwks, jwks_uri=jwks_uri)
        locked.rotated_at = now
        locked.save(update_fields=[*Credential.KEY_FIELDS, "rotated_at"])
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_ROTATED,
            agent_id=locked.agent_id,
            credential_id=locked.id,
            details={
                "kind": locked.kind,
                "gracePeriodSeconds": grace_period_seconds,
                **key_summary(jwks=jwks, jwks_uri=jwks_uri),
            },
        )
        issued = IssuedCredential(credential=locked, client_secret=None)
        if before_commit is not None:
            before_commit(issued)
    logger.info("credential rotated credential_id=%s kind=key grace_period_seconds=%s", locked.id, grace_period_seconds)
    return issued


def grace_keys_expire() -> int:
    """Delete the previous keys whose grace period has ended; return how many sets were deleted."""
    deleted, _ = GraceKeys.objects.filter(valid_until__lte=timezone.now()).delete()
    return deleted


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
    A key credential keeps nothing in a store: step 1 alone, its grace keys deleted with it.
    Raises CredentialNotFound if it was already deleted.
    """
    with transaction.atomic():
        try:
            locked = Credential.objects.select_for_update().get(pk=credential.pk)
        except Credential.DoesNotExist:
            raise CredentialNotFound() from None
        stored = []
        # A key credential keeps nothing in a store: no purge (its grace keys go with the row).
        if not locked.is_key:
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
            details={"clientId": locked.client_id, "kind": locked.kind},
        )
        purge_after_commit(
            purges_record(
                stored=stored, reason="credential_deleted", agent_id=locked.agent_id, credential_id=credential_id
            )
        )
    logger.info("credential deleted credential_id=%s agent_id=%s", credential_id, locked.agent_id)
