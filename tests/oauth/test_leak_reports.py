"""
Where leaked secrets are reported: GitHub's signed partner call, a GitHub alert webhook,
GitLab's token revocation API and the anonymous self-report; and each one's refusals.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from credentials.models import AuditEvent, Credential
from tests.conftest import basic_auth, form_post
from tests.factories import make_credential, near_miss, wrong_secret
from tests.oauth.conftest import TOKEN_URL, assert_oauth_error

GITHUB_URL = "/api/v1/secret-scanning/github"
ALERTS_URL = "/api/v1/secret-scanning/github/alerts"
LEAKS_URL = "/api/v1/leaks"
GITLAB_TYPES_URL = "/api/v1/secret-scanning/gitlab/revocable_token_types"
GITLAB_REVOKE_URL = "/api/v1/secret-scanning/gitlab/revoke_tokens"
WEBHOOK_SECRET = "webhook-secret-for-tests"
GITLAB_TOKEN = "gitlab-pre-shared-token"


class GitHubKeys:
    """Two secret-scanning keys, as GitHub publishes them, and a signer for each."""

    def __init__(self) -> None:
        self.private = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("old-key", "current-key")}

    def document(self) -> str:
        return json.dumps(
            {
                "public_keys": [
                    {
                        "key_identifier": kid,
                        "key": key.public_key()
                        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                        .decode(),
                        "is_current": kid == "current-key",
                    }
                    for kid, key in self.private.items()
                ]
            }
        )

    def sign(self, body: bytes, kid: str = "current-key") -> str:
        return base64.b64encode(self.private[kid].sign(body, ec.ECDSA(hashes.SHA256()))).decode()


@pytest.fixture
def github(settings) -> GitHubKeys:
    keys = GitHubKeys()
    settings.AGENTIDP_GITHUB_SECRET_SCANNING_KEYS = keys.document()
    return keys


def partner_call(client, body: bytes, *, kid: str | None = "current-key", signature: str | None = None):
    headers = {}
    if kid is not None:
        headers["HTTP_GITHUB_PUBLIC_KEY_IDENTIFIER"] = kid
    if signature is not None:
        headers["HTTP_GITHUB_PUBLIC_KEY_SIGNATURE"] = signature
    return client.post(GITHUB_URL, body, content_type="application/json", **headers)


def matches(*tokens: str) -> bytes:
    return json.dumps(
        [
            {
                "token": t,
                "type": "agentidp_client_secret",
                "url": "https://github.com/o/r/blob/abc/.env",
                "source": "commit",
            }
            for t in tokens
        ]
    ).encode()


def token_status(client, issued) -> int:
    auth = basic_auth(issued.credential.client_id, issued.client_secret)
    return form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=auth).status_code


# --- GitHub's partner call ------------------------------------------------------------------


def test_a_signed_partner_call_labels_each_token_and_quarantines_the_live_one_in_that_request(client, github, issued):
    assert token_status(client, issued) == 200
    body = matches(issued.client_secret, wrong_secret(), "aidp_not_ours")

    response = partner_call(client, body, signature=github.sign(body))

    assert response.status_code == 200, response.content
    assert [(entry["token_raw"], entry["label"]) for entry in response.json()] == [
        (issued.client_secret, "true_positive"),
        (json.loads(body)[1]["token"], "false_positive"),
        ("aidp_not_ours", "false_positive"),
    ]
    assert response.json()[0]["token_type"] == "agentidp_client_secret"
    assert token_status(client, issued) == 401
    event = AuditEvent.objects.get(action=AuditEvent.Action.CREDENTIAL_COMPROMISED)
    assert (event.actor_label, event.details["foundAt"]) == (
        "GitHub secret scanning",
        "https://github.com/o/r/blob/abc/.env",
    )


def test_an_older_key_of_githubs_still_verifies(client, github, issued):
    body = matches(issued.client_secret)

    assert partner_call(client, body, kid="old-key", signature=github.sign(body, "old-key")).status_code == 200


@pytest.mark.parametrize(
    "case",
    ["no signature", "no key id", "unknown key id", "signed by another key", "body changed", "not base64", "empty"],
)
def test_a_forged_or_unsigned_partner_call_is_401_and_changes_nothing(client, github, issued, case):
    body = matches(issued.client_secret)
    stranger = ec.generate_private_key(ec.SECP256R1())
    kid, signature, sent = "current-key", github.sign(body), body
    if case == "no signature":
        signature = None
    elif case == "no key id":
        kid = None
    elif case == "unknown key id":
        kid = "someone-elses"
    elif case == "signed by another key":
        signature = base64.b64encode(stranger.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
    elif case == "body changed":
        sent = body.replace(b"commit", b"commiT")
    elif case == "not base64":
        signature = "%%%"
    else:
        signature = ""

    response = partner_call(client, sent, kid=kid, signature=signature)

    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"
    assert not Credential.objects.get(pk=issued.credential.pk).is_compromised
    assert token_status(client, issued) == 200


def test_a_replayed_partner_call_is_refused(client, github, issued):
    body = matches(wrong_secret())
    signature = github.sign(body)

    assert partner_call(client, body, signature=signature).status_code == 200
    replayed = partner_call(client, body, signature=signature)

    assert replayed.status_code == 401 and "replay" in replayed.json()["message"]


def test_a_replay_under_the_signatures_twin_is_refused_too(client, github, issued):
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    body = matches(wrong_secret())
    signature = github.sign(body)
    r, s = decode_dss_signature(base64.b64decode(signature))
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's n
    twin = base64.b64encode(encode_dss_signature(r, order - s)).decode()
    assert twin != signature

    assert partner_call(client, body, signature=signature).status_code == 200
    replayed = partner_call(client, body, signature=twin)

    assert replayed.status_code == 401 and "replay" in replayed.json()["message"]


def test_without_githubs_keys_configured_every_call_is_401(client, settings, issued):
    settings.AGENTIDP_GITHUB_SECRET_SCANNING_KEYS = ""
    body = matches(issued.client_secret)

    assert partner_call(client, body, signature="MEUCIQ==").status_code == 401


@pytest.mark.parametrize(
    "body",
    [b"{}", b"[1]", b'[{"token": 7}]', b"not json", b'[{"token": "' + b"a" * 5000 + b'"}]'],
)
def test_a_signed_call_that_is_not_a_list_of_matches_is_400(client, github, body):
    response = partner_call(client, body, signature=github.sign(body))

    assert response.status_code == 400 and response.json()["code"] == "VALIDATION_ERROR"


def test_a_partner_call_of_thousands_of_tokens_costs_one_lookup_and_one_store_check_per_live_secret(
    client, github, agent, monkeypatch, django_assert_max_num_queries
):
    """What the work is bounded by; its time and memory are measured by bench/leak_reports.py."""
    import bcrypt

    live = make_credential(agent)
    strangers = [*(wrong_secret() for _ in range(2000)), *(near_miss(wrong_secret()) for _ in range(2000))]
    body = matches(*strangers, live.client_secret)
    checks = []
    original = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checks.append(1) or original(password, hashed))

    with django_assert_max_num_queries(12):
        response = partner_call(client, body, signature=github.sign(body))

    assert response.status_code == 200
    labels = [entry["label"] for entry in response.json()]
    assert labels == ["false_positive"] * 4000 + ["true_positive"]
    assert len(checks) == 1


def test_a_partner_call_over_the_body_limit_is_413(client, github, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = matches(*(wrong_secret() for _ in range(50)))

    assert partner_call(client, body, signature=github.sign(body)).status_code == 413


# --- The self-report ------------------------------------------------------------------------


def self_report(client, secret, **extra):
    return client.post(LEAKS_URL, json.dumps({"secret": secret}), content_type="application/json", **extra)


def test_the_management_api_shows_a_compromised_credential_and_rotation_brings_it_back(client, api, issued):
    path = f"/api/v1/agents/{issued.credential.agent_id}/credentials/{issued.credential.id}"
    self_report(client, issued.client_secret)

    shown = api.get(path).json()
    with_grace = api.post(path + "/rotate", {"gracePeriodSeconds": 60}, format="json")
    rotated = api.post(path + "/rotate", {}, format="json")

    assert shown["status"] == "compromised"
    assert with_grace.status_code == 400 and with_grace.json()["code"] == "VALIDATION_ERROR"
    assert rotated.status_code == 200 and rotated.json()["status"] == "active"
    auth = basic_auth(issued.credential.client_id, rotated.json()["clientSecret"])
    assert (
        form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=auth).status_code == 200
    )


def test_a_self_report_is_always_the_same_202_and_quarantines_a_live_secret(client, issued):
    answers = [self_report(client, s) for s in (wrong_secret(), "hello", near_miss(issued.client_secret))]
    live = self_report(client, issued.client_secret)

    for response in [*answers, live]:
        assert (response.status_code, response.content) == (202, live.content)
    assert Credential.objects.get(pk=issued.credential.pk).is_compromised
    event = AuditEvent.objects.get(action=AuditEvent.Action.CREDENTIAL_COMPROMISED)
    assert (event.actor_type, event.actor_id) == ("reporter", "127.0.0.1")
    assert token_status(client, issued) == 401


def test_self_reports_are_rate_limited_per_address_and_other_addresses_go_on(client, settings, db):
    settings.AGENTIDP_LEAK_REPORTS_PER_ADDRESS = 3
    for _ in range(3):
        assert self_report(client, wrong_secret(), REMOTE_ADDR="203.0.113.5").status_code == 202

    limited = self_report(client, wrong_secret(), REMOTE_ADDR="203.0.113.5")

    assert limited.status_code == 429 and limited.json()["code"] == "RATE_LIMITED" and limited["Retry-After"]
    assert self_report(client, wrong_secret(), REMOTE_ADDR="203.0.113.6").status_code == 202


@pytest.mark.parametrize("body", [b"{}", b'{"secret": 7}', b"[]", b"nope", b'{"secret": ""}'])
def test_a_malformed_self_report_is_400(client, body):
    response = client.post(LEAKS_URL, body, content_type="application/json")

    assert response.status_code == 400 and response.json()["code"] == "VALIDATION_ERROR"


def test_a_self_report_while_vault_is_down_is_still_the_same_202(client, vault_enabled, agent):
    issued = make_credential(agent)
    vault_enabled.require_server().go_down()

    response = self_report(client, issued.client_secret)

    assert response.status_code == 202 and response.json() == {"status": "received"}
    vault_enabled.require_server().recover()
    assert not Credential.objects.get(pk=issued.credential.pk).is_compromised


# --- A GitHub organisation's secret-scanning alert webhook -----------------------------------


class FakeGitHubApi:
    """GitHub's REST API for one thing: an alert with its secret."""

    def __init__(self) -> None:
        self.alerts: dict[str, dict] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append((self.path, self.headers.get("Authorization", "")))
                if self.path in api.redirects:
                    self.send_response(301)
                    self.send_header("Location", api.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                alert = api.alerts.get(self.path)
                body = json.dumps(alert or {"message": "Not Found"}).encode()
                self.send_response(200 if alert else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def github_api(settings):
    api = FakeGitHubApi()
    settings.AGENTIDP_GITHUB_API_URL = api.url
    settings.AGENTIDP_GITHUB_API_TOKEN = "ghp_test_token"
    settings.AGENTIDP_GITHUB_WEBHOOK_SECRET = WEBHOOK_SECRET
    yield api
    api.server.shutdown()


def alert_delivery(client, payload: dict, *, delivery="d-1", secret=WEBHOOK_SECRET, event="secret_scanning_alert"):
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return client.post(
        ALERTS_URL,
        body,
        content_type="application/json",
        HTTP_X_GITHUB_EVENT=event,
        HTTP_X_GITHUB_DELIVERY=delivery,
        HTTP_X_HUB_SIGNATURE_256=signature,
    )


def alert_payload(number=7, action="created"):
    return {
        "action": action,
        "alert": {"number": number, "secret_type": "custom_pattern", "url": "http://169.254.169.254/latest"},
        "repository": {"full_name": "example/service"},
    }


def test_an_alert_delivery_reads_the_secret_from_github_and_quarantines_it(client, github_api, issued):
    path = "/repos/example/service/secret-scanning/alerts/7"
    github_api.alerts[path] = {
        "secret": issued.client_secret,
        "html_url": "https://github.com/example/service/security/7",
    }

    response = alert_delivery(client, alert_payload())

    assert response.status_code == 200 and response.json() == {"status": "checked", "live": True}
    # Read from the configured API, never from the URL the payload names.
    assert github_api.requests == [(path, "Bearer ghp_test_token")]
    event = AuditEvent.objects.get(action=AuditEvent.Action.CREDENTIAL_COMPROMISED)
    assert event.details["foundAt"] == "https://github.com/example/service/security/7"
    assert event.actor_label == "GitHub secret-scanning alert (example/service)"


@pytest.mark.parametrize("case", ["no signature", "wrong secret", "body changed"])
def test_an_alert_delivery_without_the_right_hmac_is_401(client, github_api, issued, case):
    github_api.alerts["/repos/example/service/secret-scanning/alerts/7"] = {"secret": issued.client_secret}
    body = json.dumps(alert_payload()).encode()
    good = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"HTTP_X_GITHUB_EVENT": "secret_scanning_alert", "HTTP_X_GITHUB_DELIVERY": "d-9"}
    if case == "wrong secret":
        headers["HTTP_X_HUB_SIGNATURE_256"] = "sha256=" + hmac.new(b"guess", body, hashlib.sha256).hexdigest()
    elif case == "body changed":
        headers["HTTP_X_HUB_SIGNATURE_256"] = good
        body = body.replace(b"created", b"reopened")

    response = client.post(ALERTS_URL, body, content_type="application/json", **headers)

    assert response.status_code == 401
    assert github_api.requests == []
    assert not Credential.objects.get(pk=issued.credential.pk).is_compromised


def test_a_replayed_alert_delivery_is_refused(client, github_api, db):
    github_api.alerts["/repos/example/service/secret-scanning/alerts/7"] = {"secret": wrong_secret()}

    assert alert_delivery(client, alert_payload()).status_code == 200
    assert alert_delivery(client, alert_payload()).status_code == 401
    # The delivery id is not signed: another one does not make the same delivery new.
    assert alert_delivery(client, alert_payload(), delivery="d-2").status_code == 401


def test_an_alert_github_cannot_show_is_503_and_may_be_delivered_again(client, github_api, issued):
    assert alert_delivery(client, alert_payload()).status_code == 503

    github_api.alerts["/repos/example/service/secret-scanning/alerts/7"] = {"secret": issued.client_secret}

    assert alert_delivery(client, alert_payload()).status_code == 200
    assert Credential.objects.get(pk=issued.credential.pk).is_compromised


def test_githubs_api_token_never_follows_a_redirect(client, github_api, issued):
    elsewhere = FakeGitHubApi()
    moved = "/repos/example/service/secret-scanning/alerts/7"
    github_api.redirects[moved] = elsewhere.url + moved
    elsewhere.alerts[moved] = {"secret": issued.client_secret}
    try:
        response = alert_delivery(client, alert_payload())
    finally:
        elsewhere.server.shutdown()

    assert response.status_code == 503
    assert elsewhere.requests == []
    assert not Credential.objects.get(pk=issued.credential.pk).is_compromised


def test_pings_and_resolved_alerts_are_taken_without_reading_anything(client, github_api):
    assert alert_delivery(client, {"zen": "Keep it logically awesome."}, event="ping").json() == {"status": "pong"}
    assert alert_delivery(client, alert_payload(action="resolved")).json() == {"status": "ignored"}
    assert github_api.requests == []


# --- GitLab's token revocation API ----------------------------------------------------------


@pytest.fixture
def gitlab(settings):
    settings.AGENTIDP_GITLAB_REVOCATION_TOKEN = GITLAB_TOKEN


def test_gitlab_learns_the_token_type_and_revokes_a_live_secret(client, gitlab, issued):
    types = client.get(GITLAB_TYPES_URL, HTTP_AUTHORIZATION=GITLAB_TOKEN)
    body = json.dumps(
        [
            {
                "type": types.json()["types"][0],
                "token": issued.client_secret,
                "location": "https://gitlab.example/p/-/blob/x",
            },
            {"type": types.json()["types"][0], "token": wrong_secret(), "location": ""},
        ]
    )

    response = client.post(GITLAB_REVOKE_URL, body, content_type="application/json", HTTP_AUTHORIZATION=GITLAB_TOKEN)

    assert types.json() == {"types": ["gitleaks_rule_id_aidp_client_secret"]}
    assert response.status_code == 204
    assert token_status(client, issued) == 401


@pytest.mark.parametrize("header", [None, "wrong-token", "Bearer " + GITLAB_TOKEN])
def test_gitlab_calls_without_the_pre_shared_token_are_401(client, gitlab, issued, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    body = json.dumps([{"type": "gitleaks_rule_id_aidp_client_secret", "token": issued.client_secret}])

    assert client.get(GITLAB_TYPES_URL, **extra).status_code == 401
    assert client.post(GITLAB_REVOKE_URL, body, content_type="application/json", **extra).status_code == 401
    assert token_status(client, issued) == 200


def test_gitlab_sending_a_type_it_was_not_offered_is_400(client, gitlab):
    body = json.dumps([{"type": "gitleaks_rule_id_gitlab_personal_access_token", "token": "glpat-x"}])

    response = client.post(GITLAB_REVOKE_URL, body, content_type="application/json", HTTP_AUTHORIZATION=GITLAB_TOKEN)

    assert response.status_code == 400


def test_a_compromised_secret_is_refused_with_the_same_answer_as_a_wrong_one(client, issued):
    self_report(client, issued.client_secret)
    auth = basic_auth(issued.credential.client_id, issued.client_secret)

    response = form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=auth)

    assert_oauth_error(response, 401, "invalid_client")
    assert response.json()["error_description"] == "Client authentication failed."
