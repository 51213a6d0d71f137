"""POST /api/v1/token for credentials whose secrets Vault keeps, and while Vault is unavailable."""

import logging

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from credentials import services
from tests.conftest import assert_logs_keep, basic_auth, form_post
from tests.credentials.helpers import end_grace_periods
from tests.factories import AgentFactory, make_credential
from tests.oauth.conftest import TOKEN_URL, assert_oauth_error, client_auth, failure_cases, unverified_claims

GRANT = {"grant_type": "client_credentials"}
OUTAGES = ["down", "sealed", "slow", "403", "500", "garbled"]


@pytest.fixture
def vault_issued(db, vault_enabled):
    """A credential made with Vault enabled: its secret is in Vault."""
    issued = make_credential(AgentFactory())
    assert issued.credential.storage == "vault"
    return issued


@pytest.fixture
def bcrypt_issued(issued, vault_enabled):
    """A credential made before Vault was enabled (`issued` is set up first): its secret is a bcrypt hash."""
    assert issued.credential.storage == "bcrypt"
    return issued


def token_request(client, client_id: str, client_secret: str):
    return form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, client_secret))


def assert_temporarily_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "error_description", "code"}
    assert body["error"] == "temporarily_unavailable"
    assert body["code"] == "VAULT_READ_ERROR"
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert int(response["Retry-After"]) > 0
    assert response["Cache-Control"] == "no-store"


def test_vault_credential_gets_a_token(client, vault_issued, vault, caplog):
    caplog.set_level(logging.DEBUG)

    response = form_post(client, TOKEN_URL, GRANT, **client_auth(vault_issued))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert unverified_claims(body["access_token"])["client_id"] == vault_issued.credential.client_id
    assert response["Cache-Control"] == "no-store"
    assert_logs_keep(caplog, vault_issued.client_secret, vault.app_token)


def test_wrong_secret_for_a_vault_credential_is_invalid_client(client, vault_issued, vault, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = vault_issued.client_secret[:-1] + ("A" if vault_issued.client_secret[-1] != "A" else "B")

    response = token_request(client, vault_issued.credential.client_id, wrong)

    assert_oauth_error(response, 401, "invalid_client")
    assert response["WWW-Authenticate"].startswith("Basic")
    assert_logs_keep(caplog, vault_issued.client_secret, wrong, vault.app_token)


@pytest.mark.parametrize("outage", OUTAGES)
def test_vault_outage_is_503_for_vault_credentials_and_unknown_clients_while_bcrypt_ones_get_tokens(
    client, bcrypt_issued, vault_issued, vault, outage, caplog
):
    server = vault.require_server()
    caplog.set_level(logging.DEBUG)
    unknown_secret = "unknown-client-secret-" + "x" * 21
    server.fail(outage)

    refused = form_post(client, TOKEN_URL, GRANT, **client_auth(vault_issued))
    bcrypt = form_post(client, TOKEN_URL, GRANT, **client_auth(bcrypt_issued))
    unknown = token_request(client, "no-such-client", unknown_secret)

    assert_temporarily_unavailable(refused)
    assert bcrypt.status_code == 200, bcrypt.content
    assert unverified_claims(bcrypt.json()["access_token"])["client_id"] == bcrypt_issued.credential.client_id
    # An unknown client's dummy verification fails like a Vault credential's: the answer does not tell them apart.
    assert_temporarily_unavailable(unknown)
    for response in (refused, unknown):
        assert vault.app_token not in response.content.decode()
        assert vault_issued.client_secret not in response.content.decode()
    server.recover()
    assert form_post(client, TOKEN_URL, GRANT, **client_auth(vault_issued)).status_code == 200
    assert_logs_keep(caplog, vault_issued.client_secret, bcrypt_issued.client_secret, unknown_secret, vault.app_token)


def test_previous_vault_version_gets_tokens_during_its_grace_period_and_not_after(client, vault_issued, vault, caplog):
    caplog.set_level(logging.DEBUG)
    credential = vault_issued.credential
    rotated = services.credential_rotate(acting=None, credential=credential, grace_period_seconds=3600)
    assert rotated.credential.vault_version == 2

    during = token_request(client, credential.client_id, vault_issued.client_secret)
    current = token_request(client, credential.client_id, rotated.client_secret)
    end_grace_periods(credential)
    after = token_request(client, credential.client_id, vault_issued.client_secret)

    assert during.status_code == 200, during.content
    assert current.status_code == 200, current.content
    assert_oauth_error(after, 401, "invalid_client")
    assert token_request(client, credential.client_id, rotated.client_secret).status_code == 200
    assert_logs_keep(caplog, vault_issued.client_secret, rotated.client_secret, vault.app_token)


@pytest.mark.parametrize("transport", ["basic", "body"])
def test_with_vault_every_failed_authentication_answers_alike(client, db, vault_enabled, transport):
    answers = {}
    for reason, (client_id, secret) in failure_cases().items():
        if transport == "basic":
            response = token_request(client, client_id, secret)
        else:
            response = form_post(client, TOKEN_URL, {**GRANT, "client_id": client_id, "client_secret": secret})
        answers[reason] = (response.status_code, response.content, sorted(response.headers.items()))

    assert len({repr(answer) for answer in answers.values()}) == 1, answers
    assert answers["unknown_client"][0] == 401


def test_with_vault_an_unknown_client_and_a_wrong_secret_cost_the_same_queries_and_vault_reads(client, db, vault):
    server = vault.require_server()
    cases = {}
    with override_settings(VAULTSTORE=vault.vaultstore_setting()):
        cases = failure_cases()
        costs = {}
        for reason in ("unknown_client", "wrong_secret"):
            client_id, secret = cases[reason]
            server.clear_requests()
            with CaptureQueriesContext(connection) as queries:
                assert token_request(client, client_id, secret).status_code == 401
            reads = [r for r in server.requests if r.method == "GET" and "/data/agentidp/" in r.path]
            costs[reason] = (len(queries), len(reads))

    assert costs["unknown_client"] == costs["wrong_secret"] == (2, 1)
