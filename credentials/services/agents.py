"""Registering, changing and deleting agents (deleting one deletes its credentials and trust policies first)."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..audit import audit_record
from ..errors import Conflict, ValidationFailed
from ..models import Agent, AuditEvent, Credential, TrustPolicy, agent_name_key
from ..resources import normalize_resources
from ..scopes import normalize_scopes
from .lifecycle import credential_delete, lock_agent
from .policies import trust_policy_delete

logger = logging.getLogger(__name__)

AGENT_UPDATABLE_FIELDS = ("description", "owner", "scopes", "allowed_resources", "status")
#: Changes the audit trail keeps in full (free text is only named).
_AUDITED_IN_FULL = ("status", "scopes", "allowed_resources")
#: Fields as the audit trail names them: the API's names.
_AUDIT_NAMES = {"allowed_resources": "allowedResources"}
NAME_MAX_LENGTH = Agent._meta.get_field("name").max_length


def _clean_scopes(scopes: Iterable[str]) -> list[str]:
    try:
        return normalize_scopes(scopes)
    except ValueError as exc:
        raise ValidationFailed(str(exc), details={"scopes": [str(exc)]}) from None


def _clean_resources(resources: Iterable[str]) -> list[str]:
    try:
        return normalize_resources(resources)
    except ValueError as exc:
        raise ValidationFailed(str(exc), details={"allowedResources": [str(exc)]}) from None


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


def agent_create(
    *,
    acting: Any,
    name: str,
    description: str = "",
    owner: str = "",
    scopes: Iterable[str] = (),
    allowed_resources: Iterable[str] = (),
) -> Agent:
    """
    Register an agent.

    The name is kept in NFKC form. Raises Conflict if another agent has the same name,
    compared in that form and without case, Unicode's full case folding ("Straße" is
    "STRASSE"), on every database (also when two requests race: the unique index on the
    key decides).
    """
    name = _clean_name(name)
    agent = Agent(
        name=name,
        description=description,
        owner=owner,
        scopes=_clean_scopes(scopes),
        allowed_resources=_clean_resources(allowed_resources),
    )
    if _name_taken(name):
        raise _name_conflict(name)
    try:
        with transaction.atomic():
            agent.save(force_insert=True)
            audit_record(
                acting=acting,
                action=AuditEvent.Action.AGENT_CREATED,
                agent_id=agent.id,
                details={"name": agent.name, "scopes": agent.scopes, "allowedResources": agent.allowed_resources},
            )
    except IntegrityError:
        raise _name_conflict(name) from None
    logger.info("agent created agent_id=%s", agent.id)
    return agent


def agent_update(*, acting: Any, agent: Agent, **changes: Any) -> Agent:
    """
    Change an agent's description, owner, scopes, allowed resources or status.

    Suspending an agent stops its credentials from authenticating and makes its access
    tokens inactive at once. Narrowing its scopes narrows what its existing tokens allow;
    taking a resource from it makes its tokens for that resource inactive.
    """
    unknown = sorted(set(changes) - set(AGENT_UPDATABLE_FIELDS))
    if unknown:
        raise ValidationFailed(f"{unknown[0]!r} cannot be changed.")
    if "scopes" in changes:
        changes["scopes"] = _clean_scopes(changes["scopes"])
    if "allowed_resources" in changes:
        changes["allowed_resources"] = _clean_resources(changes["allowed_resources"])
    if "status" in changes and changes["status"] not in Agent.Status.values:
        raise ValidationFailed("status is 'active' or 'suspended'.", details={"status": ["Not a valid choice."]})

    with transaction.atomic():
        agent = lock_agent(agent)
        changed: dict[str, Any] = {}
        for field, value in changes.items():
            old = getattr(agent, field)
            if old != value:
                setattr(agent, field, value)
                # Free text is named, not copied, into the trail; what grants access is kept in full.
                changed[field] = {"from": old, "to": value} if field in _AUDITED_IN_FULL else True
        if changed:
            agent.updated_at = timezone.now()
            agent.save(update_fields=[*changed, "updated_at"])
            changed = {_AUDIT_NAMES.get(field, field): change for field, change in changed.items()}
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
    Delete an agent and, first, each of its credentials exactly as credential_delete does
    and each of its trust policies as trust_policy_delete does (one audit event each).

    One transaction: if anything fails, the agent, all its credentials and its policies
    remain. The destruction of their Vault entries is queued in it and attempted after the commit.
    """
    with transaction.atomic():
        agent = lock_agent(agent)
        # Every credential locked before the first is deleted: a deletion renews the database's
        # change token (credentials.rows), whose row a rotation of a later credential needs too,
        # so waiting for that rotation's row while holding the token would be a deadlock.
        credentials = list(Credential.objects.select_for_update().filter(agent=agent).order_by("created_at", "id"))
        for credential in credentials:
            credential_delete(acting=acting, credential=credential)
        for policy in TrustPolicy.objects.filter(agent=agent).order_by("created_at", "id"):
            trust_policy_delete(acting=acting, policy=policy)
        agent_id = agent.id
        agent.delete()
        audit_record(
            acting=acting,
            action=AuditEvent.Action.AGENT_DELETED,
            agent_id=agent_id,
            details={"name": agent.name},
        )
    logger.info("agent deleted agent_id=%s", agent_id)
