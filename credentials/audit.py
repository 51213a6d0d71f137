"""Write the audit trail: one event per lifecycle change, naming who made it."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Protocol, runtime_checkable

from .models import AuditEvent


@runtime_checkable
class AuditActor(Protocol):
    """Anything that can act on AgentIdP and say who it is (an authenticated agent, say)."""

    def audit_actor(self) -> Actor: ...


@dataclasses.dataclass(frozen=True)
class Actor:
    type: str
    id: str = ""
    label: str = ""


SYSTEM = Actor(type=AuditEvent.ActorType.SYSTEM, label="system")


def actor_of(acting: Any) -> Actor:
    """Describe `acting`: a staff user, anything with audit_actor() (an agent), an Actor, or None (system)."""
    if acting is None:
        return SYSTEM
    if isinstance(acting, Actor):
        return acting
    if isinstance(acting, AuditActor):
        return acting.audit_actor()
    if getattr(acting, "is_authenticated", False) and hasattr(acting, "get_username"):
        return Actor(type=AuditEvent.ActorType.USER, id=str(acting.pk), label=acting.get_username())
    raise TypeError(f"cannot audit an action by {type(acting).__name__}")


def audit_record(
    *,
    acting: Any,
    action: str,
    agent_id: uuid.UUID | None,
    credential_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    actor = actor_of(acting)
    return AuditEvent.objects.create(
        action=action,
        actor_type=actor.type,
        actor_id=actor.id[:64],
        actor_label=actor.label[:256],
        agent_id=agent_id,
        credential_id=credential_id,
        details=details or {},
    )
