"""/healthz and /readyz: liveness, and readiness of the database and the secret stores."""

import threading
import uuid
from types import SimpleNamespace
from unittest import mock

import pytest
from django.db import DatabaseError, connections
from django.test import RequestFactory

from agentidp import health
from tests.dbfaults import failing
from vaultstore.backends import get_backend
from vaultstore.backends.vault import DUMMY_KEY
from vaultstore.exceptions import SecretReadError

UNAVAILABLE_VAULTS = ["sealed", "down", "token revoked"]
SECRET = "cs-health-Zq9vR2mK7xT4wB8nL1pD6sF3hJ5"
#: Longer than the readiness cache keeps a store's answer ("a second or two").
PAST_THE_CACHE = 5.0


class FakeClock:
    """A monotonic clock that moves only when told, standing in for the probe cache's."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    fake = FakeClock()
    with mock.patch("agentidp.health.monotonic", fake, create=True):
        yield fake
    health._checked.clear()  # answers timed by the fake clock mean nothing to a real one


def vault_checks(server) -> tuple[int, int]:
    """How many health requests and dummy-key reads Vault has had: the two halves of one check."""
    health_requests = [r for r in server.requests if r.path == "/v1/sys/health"]
    dummy_reads = [r for r in server.requests if DUMMY_KEY in r.path and r.method == "GET"]
    return len(health_requests), len(dummy_reads)


def a_vault_secret(**options):
    """Store a secret in the configured Vault backend; return the backend and what the database would record."""
    backend = get_backend("vault")
    return backend, backend.store(owner=SimpleNamespace(id=uuid.uuid4(), agent_id=uuid.uuid4()), secret=SECRET)


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
    refused = DatabaseError('FATAL: password authentication failed for user "agentidp"')

    with failing(r".", refused) as database:
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
    assert database.acted >= 2  # each request asked the database


def test_readyz_refuses_post_with_405(client, db):
    response = client.post("/readyz")

    assert response.status_code == 405
    assert "GET" in response["Allow"]
    assert "POST" not in response["Allow"]
    assert_never_cached(response)


# --- probes cost Vault little, and never open the breaker --------------------------------------


def test_a_flood_of_readyz_calls_asks_vault_once_per_interval(client, db, vault_enabled, clock):
    server = vault_enabled.require_server()

    first = [client.get("/readyz") for _ in range(50)]
    after_first = vault_checks(server)
    clock.advance(PAST_THE_CACHE)
    second = [client.get("/readyz") for _ in range(50)]

    assert {response.json()["status"] for response in first + second} == {"ready"}
    assert after_first == (1, 1)
    assert vault_checks(server) == (2, 2)


def test_concurrent_readyz_calls_share_one_vault_check(db, vault_enabled, clock):
    server = vault_enabled.require_server()
    server.inject("slow", path="/v1/sys/health", delay=0.3, times=1)
    answers = []

    def probe() -> None:
        try:
            answers.append(health.readiness(RequestFactory().get("/readyz")).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=probe) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert answers == [200] * 20
    assert vault_checks(server) == (1, 1)


@pytest.mark.parametrize("status", ["429", "500"])
def test_readyz_probes_that_vault_refuses_never_open_the_breaker_for_token_checks(
    client, db, vault_enabled, clock, status
):
    server = vault_enabled.require_server()
    backend, stored = a_vault_secret()
    server.fail(status)
    for _ in range(10):
        clock.advance(PAST_THE_CACHE)
        assert client.get("/readyz").json()["checks"]["vault"]["status"] == "unavailable"
    assert vault_checks(server) == (10, 10)
    server.clear_faults()
    asked = len([r for r in server.requests if stored.vault_path in r.path])

    assert backend.verify(stored=stored, secret=SECRET) is True
    assert len([r for r in server.requests if stored.vault_path in r.path]) == asked + 1
    assert not backend.breaker.is_open


def test_readyz_reports_an_open_breaker_without_asking_vault(client, db, vault_enabled, clock):
    server = vault_enabled.require_server()
    backend, stored = a_vault_secret()
    server.fail("500", path="/agentidp/")
    for _ in range(3):
        with pytest.raises(SecretReadError):
            backend.verify(stored=stored, secret=SECRET)
    server.clear_faults()
    server.clear_requests()

    response = client.get("/readyz")
    strict = client.get("/readyz?strict=true")

    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["vault"] == {
        "status": "unavailable",
        "problems": ["Vault failed repeatedly and is not asked again for 5 s."],
    }
    assert strict.status_code == 503
    assert server.requests == []
