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
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agentidp.errors import AgentNotFound, Conflict, CredentialNotFound, ValidationFailed
from vaultstore.backends import StoredSecret, get_backend, get_backend_for, get_default_backend
from vaultstore.exceptions import SecretStoreError

from . import selectors
from .audit import audit_record
from .models import Agent, AuditEvent, Credential, GraceSecret
from .scopes import normalize_scopes

logger = logging.getLogger(__name__)

#: The longest grace period a rotation may ask for (one day).
MAX_GRACE_PERIOD_SECONDS = 86400
#: At most this many previous secrets stay valid at once (KV v2 keeps ten versions: these and the current one).
MAX_GRACE_SECRETS = 9

AGENT_UPDATABLE_FIELDS = ("description", "owner", "scopes", "status")


@dataclasses.dataclass(frozen=True)
class IssuedCredential:
    """A credential with the plaintext secret it was just given, to be shown once and forgotten."""

    credential: Credential
    client_secret: str = dataclasses.field(repr=False)


class InvalidClient(Exception):
    """Client authentication failed. `reason` is for logs and audit only; clients see invalid_client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def _name_taken(name: str) -> bool:
    return Agent.objects.filter(name__iexact=name).exists()


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

    Raises Conflict if another agent has the same name, compared without case (also when
    two requests race: the database's unique index decides).
    """
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

    One transaction: if anything fails, the agent and all its credentials remain.
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


def _discard_stored(*, owner: Credential, stored: Iterable[StoredSecret]) -> None:
    """Ask each store to remove what it keeps for these secrets; log what it could not."""
    by_storage: dict[str, list[StoredSecret]] = {}
    for item in stored:
        by_storage.setdefault(item.storage, []).append(item)
    for storage, items in by_storage.items():
        try:
            get_backend(storage).delete(owner=owner, stored=items)
        except SecretStoreError as exc:
            logger.error(
                "could not remove stored secrets credential_id=%s storage=%s error=%s",
                owner.id,
                storage,
                type(exc).__name__,
            )


def credential_create(
    *, acting: Any, agent: Agent, description: str = "", expires_at: datetime.datetime | None = None
) -> IssuedCredential:
    """
    Give the agent a new credential in the default store and return it with its secret.

    Failure order: the secret is stored first, then the row and its audit event are
    written in one transaction. If the store fails, nothing was written and its
    SecretStoreError reaches the caller. If the database fails after the store, whatever
    the store kept outside the database is removed again before the error propagates:
    no credential without a secret, no secret without a credential.
    Raises Conflict when the agent already has the most active credentials allowed.
    """
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("expiresAt must lie in the future.", details={"expiresAt": ["Must lie in the future."]})
    _check_capacity(agent)

    backend = get_default_backend()
    secret = generate_client_secret()
    credential = Credential(agent=agent, client_id=generate_client_id(), description=description, expires_at=expires_at)
    stored = backend.store(owner=credential, secret=secret)
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
    except BaseException:
        _discard_stored(owner=credential, stored=[stored])
        raise
    logger.info("credential created credential_id=%s agent_id=%s storage=%s", credential.id, agent.id, stored.storage)
    return IssuedCredential(credential=credential, client_secret=secret)


def credential_rotate(*, acting: Any, credential: Credential, grace_period_seconds: int = 0) -> IssuedCredential:
    """
    Give the credential a new secret in the default store; keep clientId and credentialId.

    The old secret stops working when the transaction commits, or `grace_period_seconds`
    later. A credential whose secret is in another store than the default moves to the
    default one; a bcrypt hash left behind is cleared, at the end of the grace period if
    one was asked for.

    Failure order: the row is locked, the new secret stored, then the row, the grace
    entry and the audit event are written in one transaction. If the store fails, the row
    is untouched and the old secret still works. If the database fails after the store,
    the row still names the old secret, which still works.
    Raises CredentialNotFound if the credential was deleted meanwhile, and Conflict when
    more previous secrets would be valid at once than MAX_GRACE_SECRETS.
    """
    if not 0 <= grace_period_seconds <= MAX_GRACE_PERIOD_SECONDS:
        raise ValidationFailed(
            f"gracePeriodSeconds is from 0 to {MAX_GRACE_PERIOD_SECONDS}.",
            details={"gracePeriodSeconds": [f"Must be from 0 to {MAX_GRACE_PERIOD_SECONDS}."]},
        )
    backend = get_default_backend()
    secret = generate_client_secret()
    with transaction.atomic():
        try:
            locked = Credential.objects.select_for_update().get(pk=credential.pk)
        except Credential.DoesNotExist:
            raise CredentialNotFound() from None
        now = timezone.now()
        live_grace = locked.grace_secrets.filter(valid_until__gt=now).count()
        if grace_period_seconds and live_grace >= MAX_GRACE_SECRETS:
            raise Conflict(
                f"{MAX_GRACE_SECRETS} previous secrets of this credential are still in their grace period; "
                "wait for one to end, or rotate without a grace period."
            )
        old = locked.stored_secret
        new = backend.store(owner=locked, secret=secret)
        if grace_period_seconds:
            grace = GraceSecret(credential=locked, valid_until=now + datetime.timedelta(seconds=grace_period_seconds))
            grace.set_stored_secret(old)
            grace.save(force_insert=True)
        locked.grace_secrets.filter(valid_until__lte=now).delete()
        locked.set_stored_secret(new)
        locked.rotated_at = now
        locked.save(update_fields=[*Credential.LOCATION_FIELDS, "rotated_at"])
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_ROTATED,
            agent_id=locked.agent_id,
            credential_id=locked.id,
            details={"gracePeriodSeconds": grace_period_seconds, "from": old.storage, "to": new.storage},
        )
    logger.info(
        "credential rotated credential_id=%s storage=%s grace_period_seconds=%s",
        locked.id,
        new.storage,
        grace_period_seconds,
    )
    locked.agent = credential.agent
    return IssuedCredential(credential=locked, client_secret=secret)


def credential_delete(*, acting: Any, credential: Credential) -> None:
    """
    Delete the credential: its secrets stop working and its tokens turn inactive at once.

    Failure order: the row (with its grace secrets) and the audit event go in one
    transaction; what a store keeps outside the database is removed after the commit, so
    a store that fails cannot keep a deleted credential alive.
    Raises CredentialNotFound if it was already deleted.
    """
    with transaction.atomic():
        try:
            locked = Credential.objects.select_for_update().get(pk=credential.pk)
        except Credential.DoesNotExist:
            raise CredentialNotFound() from None
        stored = [locked.stored_secret, *(grace.stored_secret for grace in locked.grace_secrets.all())]
        credential_id = locked.id
        locked.delete()
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_DELETED,
            agent_id=locked.agent_id,
            credential_id=credential_id,
            details={"clientId": locked.client_id},
        )
        locked.id = credential_id  # Model.delete() clears the pk; the stores need it.
        transaction.on_commit(lambda: _discard_stored(owner=locked, stored=stored))
    logger.info("credential deleted credential_id=%s agent_id=%s", credential_id, locked.agent_id)


def credential_authenticate(*, client_id: str, client_secret: str) -> Credential:
    """
    Return the credential that this client id and secret authenticate, or raise InvalidClient.

    An unknown client id pays one dummy verification, and a known one is verified before
    its expiry or its agent's status is looked at, so the time taken tells an attacker
    nothing about which case failed. The current secret is tried first, then previous
    secrets still inside their grace period.
    Raises SecretStoreError when the store that holds this credential's secret cannot answer.
    """
    credential = selectors.credential_find_by_client_id(client_id=client_id)
    if credential is None:
        get_default_backend().verify_dummy(secret=client_secret)
        raise InvalidClient("unknown_client")
    if not _secret_matches(credential, client_secret):
        raise InvalidClient("wrong_secret")
    if credential.is_expired():
        raise InvalidClient("credential_expired")
    if not credential.agent.is_active:
        raise InvalidClient("agent_suspended")
    return credential


def _secret_matches(credential: Credential, secret: str) -> bool:
    stored = credential.stored_secret
    if get_backend_for(stored).verify(stored=stored, secret=secret):
        return True
    for grace in selectors.grace_secrets_live(credential=credential):
        if get_backend_for(grace.stored_secret).verify(stored=grace.stored_secret, secret=secret):
            return True
    return False
