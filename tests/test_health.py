"""/healthz and /readyz: liveness, and readiness of the database and the secret stores."""

from unittest import mock

import pytest
from django.db import DatabaseError

UNAVAILABLE_VAULTS = ["sealed", "down", "token revoked"]


def break_vault(vault, how: str) -> None:
    server = vault.require_server()
    if how == "token revoked":
        server.revoke_token(vault.app_token)
    else:
        server.fail(how)


def assert_never_cached(response) -> None:
    directives = {part.strip() for part in response["Cache-Control"].split(",")}
    assert {"no-cache", "no-store"} <= directives


def test_healthz_answers_ok_and_is_never_cached(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert_never_cached(response)


def test_readyz_without_vault_is_ready_with_the_database_and_bcrypt_ok(client, db):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": {"status": "ok"}, "bcrypt": {"status": "ok"}}}
    assert_never_cached(response)


def test_readyz_with_a_healthy_vault_is_ready_and_checks_vault(client, db, vault_enabled):
    response = client.get("/readyz")
    strict = client.get("/readyz?strict=true")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["vault"] == {"status": "ok"}
    assert body["checks"]["database"] == {"status": "ok"}
    assert (strict.status_code, strict.json()["status"]) == (200, "ready")
    assert vault_enabled.app_token not in response.content.decode()
    assert_never_cached(response)


@pytest.mark.parametrize("how", UNAVAILABLE_VAULTS)
def test_readyz_is_degraded_but_200_when_vault_is_unavailable(client, db, vault_enabled, how):
    break_vault(vault_enabled, how)

    response = client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == {"status": "ok"}
    assert body["checks"]["bcrypt"] == {"status": "ok"}
    vault = body["checks"]["vault"]
    assert vault["status"] == "unavailable"
    assert vault["problems"] and all(isinstance(problem, str) and problem for problem in vault["problems"])
    if how == "sealed":
        assert any("sealed" in problem for problem in vault["problems"])
    assert vault_enabled.app_token not in response.content.decode()
    assert_never_cached(response)


@pytest.mark.parametrize("how", UNAVAILABLE_VAULTS)
def test_strict_readyz_is_503_with_retry_after_when_vault_is_unavailable(client, db, vault_enabled, how):
    break_vault(vault_enabled, how)

    response = client.get("/readyz?strict=true")

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["vault"]["status"] == "unavailable"
    assert body["checks"]["database"] == {"status": "ok"}
    assert vault_enabled.app_token not in response.content.decode()
    assert_never_cached(response)


def test_readyz_is_503_when_the_database_fails(client, db):
    failing = mock.MagicMock()
    failing.cursor.side_effect = DatabaseError('FATAL: password authentication failed for user "agentidp"')

    with mock.patch("agentidp.health.connection", failing):
        response = client.get("/readyz")
        strict = client.get("/readyz?strict=true")

    for answer in (response, strict):
        assert answer.status_code == 503
        assert int(answer["Retry-After"]) > 0
        body = answer.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"]["status"] == "unavailable"
        assert body["checks"]["database"]["problems"]
        assert "password" not in answer.content.decode()
        assert_never_cached(answer)
    assert failing.cursor.called


def test_readyz_refuses_post_with_405(client, db):
    response = client.post("/readyz")

    assert response.status_code == 405
    assert "GET" in response["Allow"]
    assert "POST" not in response["Allow"]
    assert_never_cached(response)
