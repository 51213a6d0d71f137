"""POST /api/v1/token: the client credentials grant (RFC 6749 section 4.4)."""

import base64
import json
import logging
import secrets
from unittest import mock
from urllib.parse import quote_plus

import bcrypt
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from credentials import services
from credentials.models import Credential
from tests.conftest import basic_auth, form_post
from tests.factories import wrong_secret
from tests.oauth.conftest import TOKEN_URL, assert_oauth_error, client_auth, failure_cases, unverified_claims
from vaultstore.backends import get_default_backend

GRANT = {"grant_type": "client_credentials"}
TOKEN_KEYS = {"access_token", "token_type", "expires_in", "scope"}


def raw_basic(payload: bytes) -> str:
    return "Basic " + base64.b64encode(payload).decode()


def post_json(client, body: str, **extra):
    return client.post(TOKEN_URL, body, content_type="application/json", **extra)


def body_credentials(issued) -> dict[str, str]:
    return {"client_id": issued.credential.client_id, "client_secret": issued.client_secret}


def assert_token_response(response, *, scope: str) -> dict:
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == TOKEN_KEYS
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.AGENTIDP_ACCESS_TOKEN_TTL
    assert body["scope"] == scope
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2
    assert response["Cache-Control"] == "no-store"
    assert response["Pragma"] == "no-cache"
    return body


# --- success ---------------------------------------------------------------------------------


def test_client_secret_basic_gets_a_bearer_token_with_the_rfc_body_and_no_store_headers(client, issued):
    response = form_post(client, TOKEN_URL, GRANT, **client_auth(issued))

    body = assert_token_response(response, scope="reports:read reports:write")
    assert unverified_claims(body["access_token"])["client_id"] == issued.credential.client_id


def test_client_secret_post_in_the_form_body_gets_a_token(client, issued):
    response = form_post(client, TOKEN_URL, {**GRANT, **body_credentials(issued)})

    assert_token_response(response, scope="reports:read reports:write")


def test_json_body_with_client_secret_post_gets_a_token(client, issued):
    body = json.dumps({**GRANT, **body_credentials(issued)})

    response = post_json(client, body)

    assert_token_response(response, scope="reports:read reports:write")


def test_json_body_with_basic_authentication_gets_a_token(client, issued):
    response = post_json(client, json.dumps(GRANT), **client_auth(issued))

    assert_token_response(response, scope="reports:read reports:write")


def test_basic_scheme_name_is_case_insensitive(client, issued):
    header = basic_auth(issued.credential.client_id, issued.client_secret).replace("Basic", "bAsIc", 1)

    response = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=header)

    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(quote_plus, id="quote_plus"),
        pytest.param(lambda value: "".join(f"%{byte:02X}" for byte in value.encode()), id="every-byte-escaped"),
    ],
)
def test_basic_credentials_are_form_urldecoded_before_use(client, issued, encode):
    header = basic_auth(encode(issued.credential.client_id), encode(issued.client_secret))

    response = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=header)

    assert response.status_code == 200, response.content


def test_the_basic_password_is_form_urldecoded_so_a_plus_is_a_space(client, issued):
    # RFC 6749 section 2.3.1: the secret is form-urlencoded before base64, so '+' means a space.
    # AgentIdP's secrets are base62, which no encoding changes; an encoded one still decodes first.
    secret = issued.client_secret
    client_id = issued.credential.client_id
    escaped = "%" + format(ord(secret[0]), "02X") + secret[1:]
    plus = secret[:10] + "+" + secret[10:]

    encoded = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, escaped))
    spaced = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, plus))

    assert encoded.status_code == 200, encoded.content
    assert_oauth_error(spaced, 401, "invalid_client")


# --- scope -----------------------------------------------------------------------------------


def test_scope_defaults_to_every_scope_of_the_agent(client, issued):
    response = form_post(client, TOKEN_URL, GRANT, **client_auth(issued))

    body = assert_token_response(response, scope=" ".join(issued.credential.agent.scopes))
    assert unverified_claims(body["access_token"])["scope"] == "reports:read reports:write"


def test_empty_scope_parameter_counts_as_omitted(client, issued):
    response = form_post(client, TOKEN_URL, {**GRANT, "scope": ""}, **client_auth(issued))

    assert_token_response(response, scope="reports:read reports:write")


def test_requested_subset_of_the_agents_scopes_is_granted(client, issued):
    response = form_post(client, TOKEN_URL, {**GRANT, "scope": "reports:write"}, **client_auth(issued))

    body = assert_token_response(response, scope="reports:write")
    assert unverified_claims(body["access_token"])["scope"] == "reports:write"


def test_scope_the_agent_lacks_is_invalid_scope(client, issued):
    response = form_post(client, TOKEN_URL, {**GRANT, "scope": "reports:read agentidp:admin"}, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_scope")


@pytest.mark.parametrize(
    "scope",
    [
        "reports:read  reports:write",
        " reports:read",
        "reports:read ",
        '"reports:read"',
        "reports\\read",
        "reports:read\t",
    ],
)
def test_malformed_scope_parameter_is_invalid_scope(client, issued, scope):
    response = form_post(client, TOKEN_URL, {**GRANT, "scope": scope}, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_scope")


# --- request errors --------------------------------------------------------------------------


def test_missing_grant_type_is_invalid_request(client, issued):
    response = form_post(client, TOKEN_URL, {"scope": "reports:read"}, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "grant_type",
    [
        "authorization_code",
        "password",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "CLIENT_CREDENTIALS",
    ],
)
def test_other_grant_types_are_unsupported_grant_type(client, issued, grant_type):
    response = form_post(client, TOKEN_URL, {"grant_type": grant_type}, **client_auth(issued))

    assert_oauth_error(response, 400, "unsupported_grant_type")


@pytest.mark.parametrize(
    "in_body", [("client_id", "client_secret"), ("client_secret",)], ids=["id-and-secret", "secret-only"]
)
def test_basic_and_body_credentials_together_are_invalid_request(client, issued, in_body):
    params = {name: value for name, value in body_credentials(issued).items() if name in in_body}

    response = form_post(client, TOKEN_URL, {**GRANT, **params}, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize("repeated", ["grant_type", "client_id", "client_secret", "scope"])
def test_form_parameter_sent_twice_is_invalid_request(client, issued, repeated):
    params = {**GRANT, **body_credentials(issued), "scope": "reports:read"}
    pairs = [*params.items(), (repeated, params[repeated])]
    body = "&".join(f"{quote_plus(name)}={quote_plus(value)}" for name, value in pairs)

    response = client.post(TOKEN_URL, body, content_type="application/x-www-form-urlencoded")

    assert_oauth_error(response, 400, "invalid_request")


def test_json_key_sent_twice_is_invalid_request(client, issued):
    body = '{"grant_type": "client_credentials", "grant_type": "client_credentials"}'

    response = post_json(client, body, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


def test_client_secret_in_the_query_string_is_invalid_request(client, issued):
    url = f"{TOKEN_URL}?client_id={issued.credential.client_id}&client_secret={issued.client_secret}"

    response = client.post(url, "grant_type=client_credentials", content_type="application/x-www-form-urlencoded")

    assert_oauth_error(response, 400, "invalid_request")


def test_client_secret_in_the_query_string_is_refused_even_with_valid_basic_auth(client, issued):
    url = f"{TOKEN_URL}?client_secret={issued.client_secret}"

    response = client.post(
        url, "grant_type=client_credentials", content_type="application/x-www-form-urlencoded", **client_auth(issued)
    )

    assert_oauth_error(response, 400, "invalid_request")


def test_text_plain_body_is_invalid_request(client, issued):
    response = client.post(TOKEN_URL, "grant_type=client_credentials", content_type="text/plain", **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


def test_multipart_body_is_invalid_request(client, issued):
    # The test client's default encoding of a dict is multipart/form-data.
    response = client.post(TOKEN_URL, GRANT, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"grant_type": 1}', id="number"),
        pytest.param('{"grant_type": null}', id="null"),
        pytest.param('{"grant_type": true}', id="boolean"),
        pytest.param('{"grant_type": ["client_credentials"]}', id="array-value"),
        pytest.param('{"grant_type": {"value": "client_credentials"}}', id="object-value"),
        pytest.param('["grant_type", "client_credentials"]', id="array-body"),
        pytest.param('"client_credentials"', id="string-body"),
        pytest.param('{"grant_type": "client_credentials"', id="truncated"),
        pytest.param('{"grant_type": "client_credentials", "client_secret": "\\ud800"}', id="lone-surrogate"),
    ],
)
def test_json_body_that_is_not_an_object_of_strings_is_invalid_request(client, issued, body):
    response = post_json(client, body, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


def test_lone_surrogate_in_a_json_client_secret_is_a_client_error_not_a_crash(issued):
    client = Client(raise_request_exception=False)
    client_id = issued.credential.client_id
    body = '{"grant_type": "client_credentials", "client_id": "%s", "client_secret": "\\udfff"}' % client_id

    response = post_json(client, body)

    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_methods_other_than_post_get_405_with_allow_post_and_a_json_body(client, method):
    response = getattr(client, method)(TOKEN_URL)

    assert_oauth_error(response, 405, "invalid_request")
    assert response["Allow"] == "POST"


# --- client authentication errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Basic !!!not-base64!!!", id="not-base64"),
        pytest.param("Basic YWJjZA", id="missing-padding"),
        pytest.param(raw_basic(b"no-colon-here"), id="no-colon"),
        pytest.param(raw_basic(b":secret"), id="empty-id"),
        pytest.param(raw_basic(b"client:"), id="empty-secret"),
        pytest.param(raw_basic(b":"), id="colon-only"),
        pytest.param(raw_basic(b""), id="empty-payload"),
        pytest.param(raw_basic(b"\xff\xfe:\xfd\xfc"), id="not-utf8"),
        pytest.param("Basic", id="scheme-alone"),
        pytest.param("Basic ", id="scheme-and-space"),
        pytest.param("Basic YQ== YQ==", id="two-credentials"),
        pytest.param("Bearer x", id="bearer-scheme"),
        pytest.param("Digest username=x", id="digest-scheme"),
    ],
)
def test_malformed_authorization_header_is_invalid_client_with_a_basic_challenge(header):
    client = Client(raise_request_exception=False)

    response = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=header)

    assert_oauth_error(response, 401, "invalid_client")
    assert response["WWW-Authenticate"].startswith("Basic ")


def test_no_client_authentication_is_invalid_client(client, db):
    response = form_post(client, TOKEN_URL, GRANT)

    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize("half", ["client_id", "client_secret"])
def test_half_of_the_body_credentials_is_invalid_client(client, issued, half):
    params = {**GRANT, half: issued.credential.client_id if half == "client_id" else issued.client_secret}

    response = form_post(client, TOKEN_URL, params)

    assert_oauth_error(response, 401, "invalid_client")
    assert "WWW-Authenticate" not in response


def test_failed_client_secret_post_has_no_basic_challenge(client, issued):
    params = {**GRANT, "client_id": issued.credential.client_id, "client_secret": "wrong"}

    response = form_post(client, TOKEN_URL, params)

    assert_oauth_error(response, 401, "invalid_client")
    assert "WWW-Authenticate" not in response


def _answer(response) -> tuple:
    return (response.status_code, response.content, response.get("WWW-Authenticate"), response.get("Cache-Control"))


def test_unknown_client_wrong_secret_deleted_expired_and_suspended_answer_alike_over_basic(client, db):
    answers = {
        reason: _answer(form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, secret)))
        for reason, (client_id, secret) in failure_cases().items()
    }

    assert len(set(answers.values())) == 1, answers
    status, content, challenge, _ = answers["unknown_client"]
    assert status == 401
    assert json.loads(content)["error"] == "invalid_client"
    assert challenge.startswith("Basic ")


def test_unknown_client_wrong_secret_deleted_expired_and_suspended_answer_alike_in_the_body(client, db):
    answers = {
        reason: _answer(form_post(client, TOKEN_URL, {**GRANT, "client_id": client_id, "client_secret": secret}))
        for reason, (client_id, secret) in failure_cases().items()
    }

    assert len(set(answers.values())) == 1, answers
    status, content, challenge, _ = answers["unknown_client"]
    assert status == 401
    assert json.loads(content)["error"] == "invalid_client"
    assert challenge is None


@pytest.mark.parametrize(
    ("reason", "dummy_calls"),
    [
        ("unknown_client", 1),
        ("deleted_credential", 1),
        ("wrong_secret", 0),
        ("expired_credential", 0),
        ("suspended_agent", 0),
    ],
)
def test_every_failed_authentication_pays_exactly_one_verification(client, db, reason, dummy_calls):
    client_id, secret = failure_cases()[reason]
    backend = get_default_backend()

    with (
        mock.patch.object(backend, "verify_dummy", wraps=backend.verify_dummy) as verify_dummy,
        mock.patch.object(backend, "verify", wraps=backend.verify) as verify,
    ):
        response = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, secret))

    assert response.status_code == 401
    assert verify_dummy.call_count == dummy_calls
    # The dummy verification is one real verification of a hash at the configured cost.
    assert verify.call_count == 1


def test_unknown_client_pays_a_dummy_verification_with_the_presented_secret(client, db):
    backend = get_default_backend()

    secret = wrong_secret()
    with mock.patch.object(backend, "verify_dummy", wraps=backend.verify_dummy) as verify_dummy:
        response = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth("no-such-client", secret))

    assert response.status_code == 401
    verify_dummy.assert_called_once_with(secret=secret)


def test_stored_bcrypt_hash_presented_as_the_secret_is_invalid_client(client, issued):
    stored_hash = Credential.objects.get(pk=issued.credential.pk).secret_hash
    assert stored_hash.startswith("$2")

    header = basic_auth(issued.credential.client_id, stored_hash)

    response = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=header)

    assert_oauth_error(response, 401, "invalid_client")


def hostile_credentials(issued, case: str) -> dict[str, str]:
    client_id, secret = issued.credential.client_id, issued.client_secret
    client_id, secret = {
        "secret-over-72-bytes": (client_id, secret + "x" * 80),
        "secret-over-72-utf8-bytes": (client_id, "é" * 40),
        "secret-with-nul": (client_id, secret + "\x00"),
        "secret-nul-only": (client_id, "\x00"),
        "empty-secret": (client_id, ""),
        "huge-client-id": ("c" * 10_000, secret),
        "client-id-with-nul": (client_id + "\x00", secret),
        "nul-id-and-secret": ("\x00", "\x00"),
        "client-id-with-bidi-control": ("\u202e" + client_id, secret),
    }[case]
    return {"client_id": client_id, "client_secret": secret}


@pytest.mark.parametrize(
    "case",
    [
        "secret-over-72-bytes",
        "secret-over-72-utf8-bytes",
        "secret-with-nul",
        "secret-nul-only",
        "empty-secret",
        "huge-client-id",
        "client-id-with-nul",
        "nul-id-and-secret",
        "client-id-with-bidi-control",
    ],
)
@pytest.mark.parametrize("transport", ["form", "json", "basic"])
def test_hostile_client_ids_and_secrets_are_client_errors_never_500(issued, case, transport):
    client = Client(raise_request_exception=False)
    params = hostile_credentials(issued, case)

    if transport == "form":
        response = form_post(client, TOKEN_URL, {**GRANT, **params})
    elif transport == "json":
        response = post_json(client, json.dumps({**GRANT, **params}))
    else:
        header = basic_auth(quote_plus(params["client_id"]), quote_plus(params["client_secret"]))
        response = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=header)

    assert 400 <= response.status_code < 500, response.content
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] in {"invalid_client", "invalid_request"}
    assert "access_token" not in body


@pytest.mark.parametrize("limit", ["AGENTIDP_MAX_BODY_SIZE", "DATA_UPLOAD_MAX_MEMORY_SIZE"])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/json"])
def test_body_over_the_size_limit_is_413_in_the_oauth_shape(client, issued, settings, limit, content_type):
    # AgentIdP's own limit answers before the view; Django's is hit when the view reads the body.
    setattr(settings, limit, 256)
    body = "grant_type=client_credentials&pad=" + "x" * 300
    if content_type == "application/json":
        body = json.dumps({**GRANT, "pad": "x" * 300})

    response = client.post(TOKEN_URL, body, content_type=content_type, **client_auth(issued))

    assert_oauth_error(response, 413, "invalid_request")


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_with_a_grace_period_lets_both_secrets_get_tokens(client, issued):
    rotated = services.credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=300)
    client_id = issued.credential.client_id

    old = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, issued.client_secret))
    new = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, rotated.client_secret))

    assert rotated.client_secret != issued.client_secret
    assert_token_response(old, scope="reports:read reports:write")
    assert_token_response(new, scope="reports:read reports:write")


def test_rotation_without_a_grace_period_refuses_the_old_secret_at_once(client, issued):
    rotated = services.credential_rotate(acting=None, credential=issued.credential)
    client_id = issued.credential.client_id

    old = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, issued.client_secret))
    new = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, rotated.client_secret))

    assert_oauth_error(old, 401, "invalid_client")
    assert new.status_code == 200


# --- logs --------------------------------------------------------------------------------------


def test_failed_authentication_logs_neither_the_secret_nor_an_unknown_client_id(client, issued, caplog):
    caplog.set_level(logging.DEBUG)
    unknown_id = "unknown-" + secrets.token_hex(12)
    unknown_secret = "presented-" + secrets.token_hex(12)
    wrong_secret = "wrong-" + secrets.token_hex(12)

    form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(unknown_id, unknown_secret))
    form_post(client, TOKEN_URL, {**GRANT, "client_id": unknown_id, "client_secret": unknown_secret})
    form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, wrong_secret))

    messages = [record.getMessage() for record in caplog.records]
    assert any("client authentication outcome=failure" in message for message in messages), messages
    for message in messages:
        assert unknown_id not in message
        assert unknown_secret not in message
        assert wrong_secret not in message
        assert issued.client_secret not in message


def test_successful_authentication_logs_ids_but_not_the_secret_or_token(client, issued, caplog):
    caplog.set_level(logging.DEBUG)

    response = form_post(client, TOKEN_URL, GRANT, **client_auth(issued))

    token = response.json()["access_token"]
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert str(issued.credential.id) in messages
    assert issued.client_secret not in messages
    assert token not in messages


@pytest.mark.parametrize("change", ["truncated", "one-character-short", "upper-cased", "padded", "doubled"])
def test_a_secret_near_the_right_one_is_invalid_client(client, issued, change):
    secret = issued.client_secret
    presented = {
        "truncated": secret[:16],
        "one-character-short": secret[:-1],
        "upper-cased": secret.upper() if secret.upper() != secret else secret.lower(),
        "padded": f" {secret} ",
        "doubled": secret + secret,
    }[change]

    response = form_post(
        client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, presented)
    )

    assert_oauth_error(response, 401, "invalid_client")


def test_unknown_client_and_wrong_secret_cost_the_same_queries_and_verifications(client, db):
    cases = failure_cases()
    costs = {}
    for reason in ("unknown_client", "wrong_secret"):
        client_id, secret = cases[reason]
        with CaptureQueriesContext(connection) as queries, mock.patch("bcrypt.checkpw", wraps=bcrypt.checkpw) as checks:
            assert (
                form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, secret)).status_code == 401
            )
        costs[reason] = (len(queries), checks.call_count)

    assert costs["unknown_client"] == costs["wrong_secret"] == (2, 1)


# --- the endpoints' view decorations -----------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/token", "/api/v1/token/introspect", "/api/v1/token/revoke"])
def test_the_protocol_endpoints_are_csrf_exempt_and_keep_their_secrets_out_of_error_reports(url, client, db):
    from django.http import HttpResponse
    from django.urls import resolve
    from django.views.debug import SafeExceptionReporterFilter

    from oauth.views import OAuthEndpoint

    assert resolve(url).func.csrf_exempt is True
    seen = []
    with mock.patch.object(OAuthEndpoint, "post", lambda self, request: seen.append(request) or HttpResponse()):
        Client(enforce_csrf_checks=True).post(
            url, {"client_secret": "s3cret", "client_assertion": "a", "assertion": "b", "token": "t", "scope": "x"}
        )

    [request] = seen  # CSRF did not refuse it
    cleaned = SafeExceptionReporterFilter().get_post_parameters(request)
    assert {name for name, value in cleaned.items() if value != "s3cret" and "*" in value} == {
        "client_secret",
        "client_assertion",
        "assertion",
        "token",
    }
    assert cleaned["scope"] == "x"
