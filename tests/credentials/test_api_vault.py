"""The management API with Vault in front of bcrypt: where secrets go, and what Vault failures look like."""

import logging

import pytest
from django.core.management import call_command

from credentials.models import Credential, SecretPurge
from tests.conftest import assert_logs_keep, basic_auth, form_post
from tests.credentials.helpers import CREDENTIAL_KEYS, ISSUED_KEYS
from tests.oauth.conftest import INTROSPECT_URL, TOKEN_URL, assert_oauth_error
from tests.vault_fixtures import SLOW_SECONDS

VAULT_FAULTS = ["down", "sealed", "slow", "403", "500"]
GRANT = {"grant_type": "client_credentials"}


@pytest.fixture
def admin_api(api, vault_enabled):
    """
    The admin APIClient, then Vault switched on.

    `api` comes first on purpose: the admin credential is made while bcrypt is still the
    default, so the admin can still authenticate (introspection) while Vault is down.
    """
    return api


@pytest.fixture
def legacy(issued, admin_api):
    """A credential of `agent` made before Vault was enabled: its secret is a bcrypt hash."""
    assert issued.credential.storage == "bcrypt"
    return issued


# --- helpers ----------------------------------------------------------------------------------


def credentials_url(agent_id, credential_id=None) -> str:
    base = f"/api/v1/agents/{agent_id}/credentials"
    return base if credential_id is None else f"{base}/{credential_id}"


def rotate_url(agent_id, credential_id) -> str:
    return f"{credentials_url(agent_id, credential_id)}/rotate"


def documented_path(vault, agent_id, credential_id) -> str:
    """The contract's Vault layout, spelled out independently of the code under test."""
    return f"{vault.mount}/data/agentidp/agents/{agent_id}/credentials/{credential_id}"


def create(api, agent_id) -> dict:
    response = api.post(credentials_url(agent_id), {"description": "ci"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def token_response(client, client_id: str, client_secret: str):
    return form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, client_secret))


def introspection(client, caller, token: str) -> dict:
    response = form_post(
        client,
        INTROSPECT_URL,
        {"token": token},
        HTTP_AUTHORIZATION=basic_auth(caller.credential.client_id, caller.client_secret),
    )
    assert response.status_code == 200, response.content
    return response.json()


def secrets_sent_to(server) -> list[str]:
    """Every client secret the app sent to the test server (to check that none leaks into a response)."""
    return [
        request.json["data"]["clientSecret"]
        for request in list(server.requests)
        if request.method in ("POST", "PUT") and isinstance(request.json, dict) and "data" in request.json
    ]


def assert_nothing_leaks(response, *values: str) -> None:
    """Assert that no value appears in the response body or in any header."""
    exposed = response.content.decode("utf-8", "replace") + "\n".join(
        f"{name}: {value}" for name, value in response.headers.items()
    )
    for value in values:
        assert value and value not in exposed


def assert_vault_write_error(response) -> dict:
    assert response.status_code == 503, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == "VAULT_WRITE_ERROR"
    assert isinstance(body["message"], str) and body["message"]
    assert int(response["Retry-After"]) > 0
    return body


# --- the happy path ---------------------------------------------------------------------------


def test_create_returns_the_secret_once_and_vault_holds_it_at_the_documented_path(admin_api, vault, agent, client):
    response = admin_api.post(credentials_url(agent.id), {"description": "ci"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == ISSUED_KEYS
    assert body["storage"] == "vault"
    assert body["agentId"] == str(agent.id)
    path = documented_path(vault, agent.id, body["credentialId"])
    assert vault.read(path) == {"clientSecret": body["clientSecret"]}
    assert vault.metadata(path)["current_version"] == 1
    assert token_response(client, body["clientId"], body["clientSecret"]).status_code == 200
    assert_nothing_leaks(response, vault.app_token)


def test_get_and_list_never_show_the_secret_or_where_vault_keeps_it(admin_api, vault, agent):
    created = create(admin_api, agent.id)
    path = documented_path(vault, agent.id, created["credentialId"])

    detail = admin_api.get(credentials_url(agent.id, created["credentialId"]))
    listing = admin_api.get(credentials_url(agent.id))

    assert detail.status_code == 200
    assert set(detail.json()) == CREDENTIAL_KEYS
    assert detail.json()["storage"] == "vault"
    assert listing.status_code == 200
    assert [set(item) for item in listing.json()["results"]] == [CREDENTIAL_KEYS]
    for response in (detail, listing):
        assert_nothing_leaks(response, created["clientSecret"], vault.app_token, path, "agentidp/agents")
        text = response.content.decode()
        assert "vault_path" not in text and "vaultPath" not in text
        assert "vault_version" not in text and "vaultVersion" not in text


def test_rotate_keeps_the_ids_and_writes_the_new_secret_as_a_new_vault_version(admin_api, vault, agent, client):
    created = create(admin_api, agent.id)
    path = documented_path(vault, agent.id, created["credentialId"])

    response = admin_api.post(rotate_url(agent.id, created["credentialId"]), {}, format="json")

    assert response.status_code == 200, response.content
    rotated = response.json()
    assert set(rotated) == ISSUED_KEYS
    assert (rotated["credentialId"], rotated["clientId"]) == (created["credentialId"], created["clientId"])
    assert rotated["storage"] == "vault"
    assert rotated["clientSecret"] != created["clientSecret"]
    assert vault.metadata(path)["current_version"] == 2
    assert vault.read(path) == {"clientSecret": rotated["clientSecret"]}
    assert vault.read(path, version=1) == {"clientSecret": created["clientSecret"]}
    assert token_response(client, rotated["clientId"], rotated["clientSecret"]).status_code == 200
    old = token_response(client, created["clientId"], created["clientSecret"])
    assert_oauth_error(old, 401, "invalid_client")
    assert_nothing_leaks(response, created["clientSecret"], vault.app_token)


def test_delete_answers_204_and_destroys_every_version_in_vault(
    admin_api, vault, agent, client, django_capture_on_commit_callbacks
):
    created = create(admin_api, agent.id)
    admin_api.post(rotate_url(agent.id, created["credentialId"]), {}, format="json")
    path = documented_path(vault, agent.id, created["credentialId"])
    assert vault.metadata(path)["current_version"] == 2

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.delete(credentials_url(agent.id, created["credentialId"]))

    assert response.status_code == 204
    assert vault.metadata(path) is None
    assert vault.keys_of_agent(agent.id) == []
    assert not SecretPurge.objects.exists()
    assert admin_api.get(credentials_url(agent.id, created["credentialId"])).status_code == 404


# --- Vault failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", VAULT_FAULTS)
def test_create_is_503_and_leaves_no_credential_and_nothing_in_vault_when_vault_fails(
    admin_api, vault, agent, fault, caplog
):
    server = vault.require_server()
    caplog.set_level(logging.DEBUG)
    before = admin_api.get(credentials_url(agent.id)).json()
    server.fail(fault)

    response = admin_api.post(credentials_url(agent.id), {"description": "ci"}, format="json")

    assert_vault_write_error(response)
    server.recover()
    assert admin_api.get(credentials_url(agent.id)).json() == before
    assert not Credential.objects.filter(agent=agent).exists()
    assert vault.keys_of_agent(agent.id) == []
    assert_nothing_leaks(response, vault.app_token, *secrets_sent_to(server))
    assert_logs_keep(caplog, vault.app_token, *secrets_sent_to(server))


def test_create_leaves_nothing_in_vault_when_a_timed_out_write_lands_after_the_cleanup(admin_api, vault, agent):
    server = vault.require_server()
    # Only the write is slow: the app's clean-up delete reaches Vault before the write is applied.
    server.inject("slow", delay=SLOW_SECONDS, method="POST", path="/data/agentidp/", times=1)

    response = admin_api.post(credentials_url(agent.id), {"description": "ci"}, format="json")

    assert_vault_write_error(response)
    server.recover()  # the late write has landed now
    assert not Credential.objects.filter(agent=agent).exists()
    call_command("purge_secrets", verbosity=0)  # what an operator (or cron) runs to finish every clean-up
    assert vault.keys_of_agent(agent.id) == []


@pytest.mark.parametrize("fault", VAULT_FAULTS)
def test_rotate_is_503_and_the_old_secret_keeps_working_when_vault_fails(
    admin_api, vault, agent, client, fault, caplog
):
    server = vault.require_server()
    caplog.set_level(logging.DEBUG)
    created = create(admin_api, agent.id)
    path = documented_path(vault, agent.id, created["credentialId"])
    server.clear_requests()
    server.fail(fault)

    response = admin_api.post(rotate_url(agent.id, created["credentialId"]), {}, format="json")

    assert_vault_write_error(response)
    server.recover()
    attempted = secrets_sent_to(server)
    assert_nothing_leaks(response, created["clientSecret"], vault.app_token, *attempted)
    unchanged = admin_api.get(credentials_url(agent.id, created["credentialId"])).json()
    assert unchanged["rotatedAt"] is None
    assert unchanged["storage"] == "vault"
    assert Credential.objects.get(pk=created["credentialId"]).vault_version == 1
    assert vault.read(path, version=1) == {"clientSecret": created["clientSecret"]}
    assert token_response(client, created["clientId"], created["clientSecret"]).status_code == 200
    for secret in attempted:  # a write that landed after the timeout is never trusted
        assert_oauth_error(token_response(client, created["clientId"], secret), 401, "invalid_client")
    assert_logs_keep(caplog, created["clientSecret"], vault.app_token, *attempted)


def test_delete_while_vault_is_down_takes_effect_at_once_and_vault_is_purged_later(
    admin_api, admin_issued, vault, agent, client, django_capture_on_commit_callbacks, settings
):
    # The admin's bcrypt credential introspects while Vault is down, so it must not move there on use.
    settings.AGENTIDP_UPGRADE_ON_USE = False
    server = vault.require_server()
    created = create(admin_api, agent.id)
    path = documented_path(vault, agent.id, created["credentialId"])
    token = token_response(client, created["clientId"], created["clientSecret"]).json()["access_token"]
    assert introspection(client, admin_issued, token)["active"] is True
    server.go_down()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.delete(credentials_url(agent.id, created["credentialId"]))

    assert response.status_code == 204
    gone = admin_api.get(credentials_url(agent.id, created["credentialId"]))
    assert gone.status_code == 404
    assert gone.json()["code"] == "CREDENTIAL_NOT_FOUND"
    # Refused like an unknown client: 503 while Vault, where its dummy read goes, is down.
    refused = token_response(client, created["clientId"], created["clientSecret"])
    assert refused.status_code == 503 and refused.json()["code"] == "VAULT_READ_ERROR"
    # The admin's credential is bcrypt (see admin_api), so it can introspect while Vault is down.
    assert introspection(client, admin_issued, token) == {"active": False}
    assert SecretPurge.objects.filter(vault_path=path).exists()

    server.come_up()
    assert vault.metadata(path) is not None  # nothing reached Vault while it was down
    call_command("purge_secrets", verbosity=0)
    assert vault.metadata(path) is None
    assert not SecretPurge.objects.exists()


def test_delete_agent_while_vault_is_down_answers_204_and_its_secrets_are_purged_later(
    admin_api, vault, agent, django_capture_on_commit_callbacks
):
    server = vault.require_server()
    first, second = create(admin_api, agent.id), create(admin_api, agent.id)
    server.go_down()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.delete(f"/api/v1/agents/{agent.id}")

    assert response.status_code == 204
    gone = admin_api.get(f"/api/v1/agents/{agent.id}")
    assert gone.status_code == 404
    assert gone.json()["code"] == "AGENT_NOT_FOUND"
    assert not Credential.objects.filter(agent_id=agent.id).exists()
    server.come_up()
    assert sorted(vault.keys_of_agent(agent.id)) == sorted([first["credentialId"], second["credentialId"]])
    call_command("purge_secrets", verbosity=0)
    assert vault.keys_of_agent(agent.id) == []


# --- moving from bcrypt to Vault ------------------------------------------------------------------


def test_bcrypt_credential_made_before_vault_moves_to_vault_when_rotated(legacy, admin_api, vault, agent, client):
    credential = legacy.credential
    before = admin_api.get(credentials_url(agent.id, credential.id))
    assert before.json()["storage"] == "bcrypt"

    response = admin_api.post(rotate_url(agent.id, credential.id), {}, format="json")

    assert response.status_code == 200, response.content
    rotated = response.json()
    assert rotated["storage"] == "vault"
    assert rotated["clientId"] == credential.client_id
    assert admin_api.get(credentials_url(agent.id, credential.id)).json()["storage"] == "vault"
    path = documented_path(vault, agent.id, credential.id)
    assert vault.read(path) == {"clientSecret": rotated["clientSecret"]}
    credential.refresh_from_db()
    assert credential.secret_hash == ""
    assert token_response(client, credential.client_id, rotated["clientSecret"]).status_code == 200
    assert_oauth_error(token_response(client, credential.client_id, legacy.client_secret), 401, "invalid_client")
    assert_nothing_leaks(response, legacy.client_secret, vault.app_token)
