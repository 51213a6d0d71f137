"""Quarantining a credential whose live secret was reported leaked."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..audit import audit_record
from ..models import AuditEvent, Credential
from .notifications import notification_queue

logger = logging.getLogger(__name__)

#: Where a secret was found (a URL, a file's location), as the audit trail and the notification keep it.
MAX_FOUND_AT_LENGTH = 512


def credential_quarantine(
    *, acting: Any, credential: Credential, secret_role: str, found_at: str = "", source: str = ""
) -> bool:
    """
    Quarantine the credential one of whose live secrets (`secret_role`: "current" or
    "grace") was reported leaked, at once: its status becomes compromised, every secret of
    it is refused (invalid_client) until it is rotated, and every access token issued with
    it so far is inactive, for good (rotating does not bring those back). One audit event
    names `acting` (who reported it), `found_at` (where) and `source` (what kind of place);
    a notification for the agent's owner is queued in the same transaction
    (credentials.services.notifications). Return whether it was quarantined now: False if
    it already was, or is gone.

    One transaction, the credential's row locked: if the database fails, nothing changed
    and the caller's report fails with it.
    """
    with transaction.atomic():
        locked = Credential.objects.select_for_update().select_related("agent").filter(pk=credential.pk).first()
        if locked is None or locked.is_key or locked.is_compromised:
            return False
        now = timezone.now()
        locked.compromised_at = now
        locked.tokens_not_before = now
        locked.save(update_fields=["compromised_at", "tokens_not_before"])
        details = {
            "clientId": locked.client_id,
            "secret": secret_role,
            "foundAt": found_at[:MAX_FOUND_AT_LENGTH],
            "source": source[:64],
        }
        event = audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_COMPROMISED,
            agent_id=locked.agent_id,
            credential_id=locked.id,
            details=details,
        )
        notification_queue(
            event="credential.compromised",
            payload={
                "event": "credential.compromised",
                "occurredAt": now.isoformat().replace("+00:00", "Z"),
                "agentId": str(locked.agent_id),
                "agentName": locked.agent.name,
                "owner": locked.agent.owner,
                "credentialId": str(locked.id),
                "clientId": locked.client_id,
                "reportedBy": event.actor_label,
                **{name: details[name] for name in ("secret", "foundAt", "source")},
            },
        )
    logger.warning(
        "credential quarantined, its secret was reported leaked credential_id=%s agent_id=%s secret=%s reported_by=%s",
        locked.id,
        locked.agent_id,
        secret_role,
        event.actor_label,
    )
    return True
