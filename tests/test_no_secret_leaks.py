"""
The whole life of agents and credentials, with every log record captured: no secret, hash,
Basic header, access token or Vault token in any log line, error body or exception text.
"""

import base64
import logging
import traceback

import pytest
from rest_framework.test import APIClient

from credentials.models import Credential, GraceSecret
from tests.conftest import basic_auth, form_post
from tests.factories import near_miss
from tests.oauth.conftest import INTROSPECT_URL, REVOKE_URL, TOKEN_URL

GRANT = {"grant_type": "client_credentials"}


class Everything(logging.Handler):
    """Keep every record any logger emits, at every level."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        parts = []
        for record in self.records:
            parts.append(record.getMessage())
            parts.append(repr(record.args))
            parts.append(
                repr(
                    {
                        k: v
                        for k, v in record.__dict__.items()
                        if k not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__
                    }
                )
            )
            if record.exc_info:
                parts.append("".join(traceback.format_exception(*record.exc_info)))
        return "\n".join(parts)


@pytest.fixture
def every_log_record():
    handler = Everything()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


class Seen:
    """Every sensitive value the flow handled, and every response body and header it got back."""

    def __init__(self) -> None:
        self.sensitive: set[str] = set()
        self.exposed: list[str] = []  # what must never carry a sensitive value: error bodies, headers

    def keep(self, *values: str) -> None:
        self.sensitive.update(value for value in values if value)

    def answer(self, response):
        """Keep the response's headers and, for an error, its body (successes may show what they issued)."""
        self.exposed.append("\n".join(f"{name}: {value}" for name, value in response.headers.items()))
        if response.status_code >= 400:
            self.exposed.append(response.content.decode("utf-8", "replace"))
        return response


def basic(seen: Seen, client_id: str, secret: str) -> str:
    header = basic_auth(client_id, secret)
    seen.keep(header, header.split(" ", 1)[1], base64.b64decode(header.split(" ", 1)[1]).decode())
    return header


def test_no_secret_hash_header_or_token_reaches_a_log_line_or_an_error(
    db, client, admin_issued, vault_enabled, every_log_record, django_capture_on_commit_callbacks, settings
):
    server = vault_enabled.require_server("takes the test server down")
    settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 3
    seen = Seen()
    seen.keep(admin_issued.client_secret, vault_enabled.app_token, vault_enabled.root.token)

    # The admin's token (client_secret_basic) and the management API.
    response = seen.answer(
        form_post(
            client,
            TOKEN_URL,
            GRANT,
            HTTP_AUTHORIZATION=basic(seen, admin_issued.credential.client_id, admin_issued.client_secret),
        )
    )
    admin_token = response.json()["access_token"]
    seen.keep(admin_token, "Bearer " + admin_token)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer " + admin_token)
    agent = seen.answer(
        api.post("/api/v1/agents", {"name": "leak-check", "scopes": ["reports:read"]}, format="json")
    ).json()
    base = f"/api/v1/agents/{agent['agentId']}/credentials"

    with django_capture_on_commit_callbacks(execute=True):
        created = seen.answer(api.post(base, {"description": "ci"}, format="json")).json()
    seen.keep(created["clientSecret"])
    credential_url = f"{base}/{created['credentialId']}"

    # Tokens both ways, introspection and revocation.
    token_basic = seen.answer(
        form_post(
            client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic(seen, created["clientId"], created["clientSecret"])
        )
    ).json()["access_token"]
    token_post = seen.answer(
        form_post(
            client, TOKEN_URL, {**GRANT, "client_id": created["clientId"], "client_secret": created["clientSecret"]}
        )
    ).json()["access_token"]
    seen.keep(token_basic, token_post)
    auth = {"HTTP_AUTHORIZATION": basic(seen, created["clientId"], created["clientSecret"])}
    seen.answer(form_post(client, INTROSPECT_URL, {"token": token_basic}, **auth))
    seen.answer(form_post(client, REVOKE_URL, {"token": token_post}, **auth))

    # A rotation with a grace period; the old and the new secret; wrong and swapped secrets, until throttled.
    with django_capture_on_commit_callbacks(execute=True):
        rotated = seen.answer(api.post(f"{credential_url}/rotate", {"gracePeriodSeconds": 60}, format="json")).json()
    seen.keep(rotated["clientSecret"])
    for secret in (created["clientSecret"], rotated["clientSecret"]):
        seen.answer(form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic(seen, created["clientId"], secret)))
    wrong = near_miss(rotated["clientSecret"])
    seen.keep(wrong)
    for _ in range(4):
        seen.answer(
            form_post(
                client,
                TOKEN_URL,
                GRANT,
                HTTP_AUTHORIZATION=basic(seen, created["clientId"], wrong),
                REMOTE_ADDR="203.0.113.66",
            )
        )
    # A client that swapped its id and secret presents its secret as the id.
    seen.answer(
        form_post(
            client, TOKEN_URL, {**GRANT, "client_id": rotated["clientSecret"], "client_secret": created["clientId"]}
        )
    )
    seen.answer(
        client.post(
            TOKEN_URL,
            "grant_type=client_credentials",
            content_type="application/x-www-form-urlencoded",
            HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"no-colon-" + rotated["clientSecret"].encode()).decode(),
        )
    )

    # Vault down: the token endpoint, a rotation and a deletion.
    server.fail("down")  # (the right secrets would be answered from the verified-secret cache)
    seen.answer(form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic(seen, created["clientId"], wrong)))
    seen.answer(api.post(f"{credential_url}/rotate", {}, format="json"))
    seen.keep(*(row.secret_hash for row in [*Credential.objects.all(), *GraceSecret.objects.all()]))
    with django_capture_on_commit_callbacks(execute=True):
        seen.answer(api.delete(credential_url))
    server.recover()

    sensitive = sorted(seen.sensitive)
    assert len(sensitive) >= 10
    logged = every_log_record.text()
    assert "client authentication outcome=success" in logged and "outcome=throttled" in logged
    assert "outcome=unavailable" in logged
    for value in sensitive:
        assert value not in logged, f"a sensitive value of length {len(value)} reached a log record"
        for exposed in seen.exposed:
            assert value not in exposed, f"a sensitive value of length {len(value)} reached a response"
