"""
The notification outbox: signed webhooks to the agents' owners (AGENTIDP_NOTIFY_WEBHOOK_URL),
queued in the transaction that made the change and retried until the receiver takes them.

Each is a JSON POST with the headers

    X-AgentIdP-Event: credential.compromised
    X-AgentIdP-Delivery: <the notification's id: the same on every retry>
    X-AgentIdP-Timestamp: <Unix seconds of this attempt>
    X-AgentIdP-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed by AGENTIDP_NOTIFY_WEBHOOK_SECRET>

so a receiver checks the signature, refuses old timestamps, and drops a delivery id it saw.
The URL is the operator's setting, never a client's; no redirect is followed, no proxy from
the environment is used, and the time is bounded.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import outbound
from ..models import Notification

logger = logging.getLogger(__name__)

#: A delivery that failed waits this long before its next automatic attempt, doubling each time...
NOTIFY_FIRST_DELAY_SECONDS = 30
#: ...up to this.
NOTIFY_MAX_DELAY_SECONDS = 3600
SIGNATURE_HEADER = "X-AgentIdP-Signature"


def notification_queue(*, event: str, payload: dict[str, Any]) -> int | None:
    """
    Queue a notification in the caller's transaction, to be sent once it commits; return its
    id, or None when no webhook is configured (the change is in the audit trail either way).
    """
    if not settings.AGENTIDP_NOTIFY_WEBHOOK_URL:
        logger.info("no notification webhook configured, not queued event=%s", event)
        return None
    notification = Notification.objects.create(event=event, payload=payload)
    transaction.on_commit(lambda: _deliver_now(notification.id), robust=True)
    return notification.id


#: After a failed delivery, this process sends nothing more right away until then (time.monotonic()):
#: the requests that queue notifications must not each wait out a receiver that is down.
_receiver_down_until = 0.0


def _deliver_now(notification_id: int) -> None:
    if time.monotonic() >= _receiver_down_until:
        notification_deliver(notification_id=notification_id)


def signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """The X-AgentIdP-Signature value: "sha256=" and the HMAC-SHA256 of "<timestamp>.<body>"."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _post(notification: Notification) -> None:
    """Send one notification; raise OSError (or urllib's errors) unless the receiver answers 2xx."""
    body = json.dumps(notification.payload, sort_keys=True, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    request = urllib.request.Request(  # noqa: S310 (the operator's own URL, http or https)
        settings.AGENTIDP_NOTIFY_WEBHOOK_URL,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "AgentIdP",
            "X-AgentIdP-Event": notification.event,
            "X-AgentIdP-Delivery": str(notification.id),
            "X-AgentIdP-Timestamp": timestamp,
            SIGNATURE_HEADER: signature(secret=settings.AGENTIDP_NOTIFY_WEBHOOK_SECRET, timestamp=timestamp, body=body),
        },
    )
    with outbound.opener().open(request, timeout=settings.AGENTIDP_NOTIFY_WEBHOOK_TIMEOUT_SECONDS) as response:
        response.read(65536)
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(request.full_url, response.status, "not 2xx", response.headers, None)


def notification_deliver(*, notification_id: int) -> bool:
    """
    Send one queued notification; return whether it is done (delivered, or gone).

    The row is locked while it is sent, so two workers never send one twice at once. A
    failure (the receiver down, slow, or answering anything but 2xx) records the attempt
    and waits twice as long as last time, from NOTIFY_FIRST_DELAY_SECONDS up to
    NOTIFY_MAX_DELAY_SECONDS. A receiver may still see a delivery twice (it took it, but
    its answer was lost): the delivery id says so.
    """
    with transaction.atomic():
        notification = Notification.objects.select_for_update(skip_locked=True).filter(pk=notification_id).first()
        if notification is None:
            return True
        try:
            _post(notification)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            notification.attempts += 1
            delay = min(NOTIFY_FIRST_DELAY_SECONDS * 2 ** (notification.attempts - 1), NOTIFY_MAX_DELAY_SECONDS)
            notification.next_attempt_at = timezone.now() + datetime.timedelta(seconds=delay)
            status = getattr(exc, "code", None)
            notification.last_error = f"HTTP {status}" if isinstance(status, int) else type(exc).__name__
            notification.save(update_fields=["attempts", "next_attempt_at", "last_error"])
            global _receiver_down_until
            _receiver_down_until = time.monotonic() + NOTIFY_FIRST_DELAY_SECONDS
            logger.warning(
                "notification not delivered, will retry id=%s event=%s attempts=%s error=%s",
                notification.id,
                notification.event,
                notification.attempts,
                notification.last_error,
            )
            return False
        notification.delete()
    logger.info("notification delivered id=%s event=%s", notification_id, notification.event)
    return True


def notifications_deliver(*, notification_ids: Iterable[int]) -> tuple[int, int]:
    """Send these notifications now, whatever their schedule; return (delivered, failed)."""
    results = [notification_deliver(notification_id=pk) for pk in notification_ids]
    return results.count(True), results.count(False)


def notifications_deliver_due(*, limit: int = 100) -> tuple[int, int]:
    """Send up to `limit` notifications whose time has come, oldest first; stop at the first failure."""
    due = list(Notification.objects.filter(next_attempt_at__lte=timezone.now()).values_list("id", flat=True)[:limit])
    delivered = 0
    for notification_id in due:
        if not notification_deliver(notification_id=notification_id):
            return delivered, 1  # the receiver is likely down: leave the rest for later
        delivered += 1
    return delivered, 0
