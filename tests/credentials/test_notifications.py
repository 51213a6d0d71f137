"""The notification outbox: a quarantined credential's owner hears of it, signed, however long the receiver is down."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from credentials.audit import Actor
from credentials.leaks import Reported, leaks_check
from credentials.models import AuditEvent, Notification
from credentials.services import notifications
from credentials.services.notifications import NOTIFY_FIRST_DELAY_SECONDS, notifications_deliver_due

SECRET = "notify-secret-for-tests"


class Receiver:
    """An owner's webhook receiver: it keeps what it was sent, and answers `status` (or is down)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, bytes]] = []
        self.status = 204
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/agentidp"


@pytest.fixture(autouse=True)
def _receiver_not_paused(monkeypatch):
    """Each test starts with no pause after an earlier test's failed delivery."""
    monkeypatch.setattr(notifications, "_receiver_down_until", 0.0)


@pytest.fixture
def receiver(settings):
    hook = Receiver()
    settings.AGENTIDP_NOTIFY_WEBHOOK_URL = hook.url
    settings.AGENTIDP_NOTIFY_WEBHOOK_SECRET = SECRET
    settings.AGENTIDP_NOTIFY_WEBHOOK_TIMEOUT_SECONDS = 1.0
    yield hook
    hook.server.shutdown()


def quarantine(issued, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        leaks_check(
            reported=[Reported(issued.client_secret, found_at="https://paste.example/x", source="self_report")],
            acting=Actor(type=AuditEvent.ActorType.REPORTER, id="203.0.113.9", label="leak report (anonymous)"),
        )


def test_the_owner_is_sent_a_signed_notification_naming_the_credential_and_no_secret(
    receiver, issued, django_capture_on_commit_callbacks
):
    quarantine(issued, django_capture_on_commit_callbacks)

    [(headers, body)] = receiver.received
    payload = json.loads(body)
    assert payload == {
        "event": "credential.compromised",
        "occurredAt": payload["occurredAt"],
        "agentId": str(issued.credential.agent_id),
        "agentName": issued.credential.agent.name,
        "owner": issued.credential.agent.owner,
        "credentialId": str(issued.credential.id),
        "clientId": issued.credential.client_id,
        "reportedBy": "leak report (anonymous)",
        "secret": "current",
        "foundAt": "https://paste.example/x",
        "source": "self_report",
    }
    assert issued.client_secret not in body.decode()
    timestamp = headers["x-agentidp-timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-agentidp-signature"] == "sha256=" + expected
    assert abs(int(timestamp) - time.time()) < 60
    assert headers["x-agentidp-event"] == "credential.compromised"
    assert not Notification.objects.exists()


def test_a_receiver_that_is_down_gets_it_later_with_the_same_delivery_id(
    receiver, issued, django_capture_on_commit_callbacks
):
    receiver.status = 503
    quarantine(issued, django_capture_on_commit_callbacks)
    [queued] = Notification.objects.all()
    assert (queued.attempts, queued.last_error) == (1, "HTTP 503")
    assert queued.next_attempt_at.timestamp() > time.time() + NOTIFY_FIRST_DELAY_SECONDS - 5

    assert notifications_deliver_due() == (0, 0)  # not due yet
    with pytest.raises(CommandError, match="still queued"):
        call_command("deliver_notifications", verbosity=0)
    receiver.status = 200
    call_command("deliver_notifications", verbosity=0)

    assert not Notification.objects.exists()
    deliveries = [headers["x-agentidp-delivery"] for headers, _ in receiver.received]
    assert deliveries == [str(queued.id)] * 3


def test_after_a_failed_delivery_the_next_ones_wait_instead_of_each_waiting_out_the_receiver(
    receiver, agent, django_capture_on_commit_callbacks
):
    from tests.factories import make_credential

    receiver.status = 500
    first, second = make_credential(agent), make_credential(agent)
    quarantine(first, django_capture_on_commit_callbacks)
    quarantine(second, django_capture_on_commit_callbacks)

    assert len(receiver.received) == 1  # the second was queued, not sent: the receiver had just failed
    assert sorted(Notification.objects.values_list("attempts", flat=True)) == [0, 1]
    receiver.status = 200
    call_command("deliver_notifications", verbosity=0)
    assert not Notification.objects.exists() and len(receiver.received) == 3


def test_a_receiver_that_is_unreachable_keeps_the_notification_queued(
    settings, issued, django_capture_on_commit_callbacks
):
    settings.AGENTIDP_NOTIFY_WEBHOOK_URL = "http://127.0.0.1:9/unreachable"
    settings.AGENTIDP_NOTIFY_WEBHOOK_SECRET = SECRET

    quarantine(issued, django_capture_on_commit_callbacks)

    [queued] = Notification.objects.all()
    assert queued.attempts == 1 and queued.last_error


def test_without_a_webhook_nothing_is_queued_and_the_audit_trail_has_it(issued, django_capture_on_commit_callbacks):
    quarantine(issued, django_capture_on_commit_callbacks)

    assert not Notification.objects.exists()
    assert AuditEvent.objects.filter(action=AuditEvent.Action.CREDENTIAL_COMPROMISED).count() == 1
