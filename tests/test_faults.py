"""
What AgentIdP answers while Vault or the database fails, and that nothing is lost meanwhile.

Each Vault fault is shown to the token endpoint, create, rotate and delete, against the
in-process Vault test server (on SQLite and PostgreSQL): the contract's answer, a bcrypt
credential that keeps getting tokens, the same call working once Vault is back, and Vault and
the database agreeing afterwards (tests.concurrency). Losing the database connection between
a Vault write and its commit needs PostgreSQL, where another session can end the app's.
"""

from collections.abc import Callable

import pytest
import urllib3.util.connection
from django.db import connection

from credentials.models import Credential, SecretPurge
from tests.concurrency import InThread, assert_store_consistent, backend_pid, terminate_backend, wait_until
from tests.factories import make_credential
from tests.faultlab import LabBase, assert_read_error, assert_write_error
from tests.oauth.conftest import assert_oauth_error
from tests.vault_fixtures import SLOW_SECONDS
from vaultstore.backends import get_default_backend

#: Every way Vault fails that the matrix shows each operation ("expired_token": the app's token ran out, 403).
FAULTS = ["down", "slow", "sealed", "500", "502", "429", "expired_token", "garbled", "applied_then_dropped"]
#: Consecutive failures after which the Vault backend stops asking Vault for a while (its default).
BREAKER_FAILURES = 3


# Every test here injects faults into the Vault test server; none runs against a real Vault.
pytestmark = pytest.mark.parametrize("vault", ["server"], indirect=True)
pg_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="ends the app's PostgreSQL session from another (pg_terminate_backend)"
)


class Lab(LabBase):
    """AgentIdP with Vault in front of bcrypt, and the Vault test server's faults."""

    def __init__(self, *, vault, settings, client, api, capture) -> None:
        self.vault = vault
        self.server = vault.require_server()
        self.fault = ""
        super().__init__(settings=settings, client=client, api=api, capture=capture)

    def start(self, fault: str) -> None:
        self.fault = fault
        self.backend = get_default_backend()
        if fault == "expired_token":
            token = self.server.create_token(ttl=0.5, renewable=False)
            self.configure(token=token)
            assert get_default_backend().check() == []  # the token works, then runs out
            wait_until(lambda: not self.server.token_info(token)["valid"], "the app's Vault token expired")
        else:
            self.server.fail(fault, delay=SLOW_SECONDS)

    def recover(self) -> None:
        """End the outage, with the backend that saw it (a token that ran out cannot come back: a fresh one is set)."""
        self.server.recover()
        if self.fault == "expired_token":
            self.configure()
        else:
            assert get_default_backend() is self.backend, "recovering needed a new backend"


@pytest.fixture
def lab(api, vault, settings, client, django_capture_on_commit_callbacks) -> Lab:
    # `api` first: the admin's credential is bcrypt, so managing works while Vault is down.
    return Lab(vault=vault, settings=settings, client=client, api=api, capture=django_capture_on_commit_callbacks)


# --- Vault faults, operation by operation ---------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_token_request_for_a_vault_credential_is_503_during_a_vault_fault_and_works_after_recovery(lab, agent, fault):
    issued = make_credential(agent)
    lab.start(fault)

    refused = lab.token_for(issued)
    meanwhile = lab.token_for(lab.bcrypt)

    assert_read_error(refused)
    assert meanwhile.status_code == 200, meanwhile.content
    lab.recover()
    assert lab.token_for(issued).status_code == 200
    assert lab.token_for(lab.bcrypt).status_code == 200
    assert_store_consistent(lab.vault)


@pytest.mark.parametrize("fault", FAULTS)
def test_create_is_503_during_a_vault_fault_leaves_nothing_behind_and_works_after_recovery(lab, agent, fault):
    lab.start(fault)

    refused = lab.create(agent)
    meanwhile = lab.token_for(lab.bcrypt)

    assert_write_error(refused)
    assert meanwhile.status_code == 200, meanwhile.content
    lab.recover()
    assert not Credential.objects.filter(agent=agent).exists()
    assert_store_consistent(lab.vault)
    assert lab.vault.keys_of_agent(agent.id) == []
    created = lab.create(agent)
    assert created.status_code == 201, created.content
    assert created.json()["storage"] == "vault"
    assert lab.token(created.json()["clientId"], created.json()["clientSecret"]).status_code == 200


@pytest.mark.parametrize("fault", FAULTS)
def test_rotate_is_503_during_a_vault_fault_keeps_the_old_secret_and_works_after_recovery(lab, agent, fault):
    issued = make_credential(agent)
    lab.start(fault)

    refused = lab.rotate(issued.credential)
    meanwhile = lab.token_for(lab.bcrypt)

    assert_write_error(refused)
    assert meanwhile.status_code == 200, meanwhile.content
    lab.recover()
    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.storage, row.vault_version, row.rotated_at) == ("vault", 1, None)
    assert lab.vault.read(row.vault_path, version=row.vault_version) == {"clientSecret": issued.client_secret}
    assert lab.token_for(issued).status_code == 200
    assert_store_consistent(lab.vault)
    rotated = lab.rotate(issued.credential)
    assert rotated.status_code == 200, rotated.content
    assert lab.token(issued.credential.client_id, rotated.json()["clientSecret"]).status_code == 200
    assert_oauth_error(lab.token_for(issued), 401, "invalid_client")


@pytest.mark.parametrize("fault", FAULTS)
def test_delete_answers_204_at_once_during_a_vault_fault_and_vault_is_purged_after_recovery(lab, agent, fault):
    issued = make_credential(agent)
    path = lab.path(issued.credential)
    lab.start(fault)

    response = lab.delete(issued.credential)
    refused = lab.token_for(issued)
    unknown = lab.token("no-such-client", issued.client_secret)
    meanwhile = lab.token_for(lab.bcrypt)

    assert response.status_code == 204, response.content
    # Gone at once: answered as an unknown client is (503 while Vault cannot pay its dummy read).
    assert refused.status_code in (401, 503), refused.content
    assert (refused.status_code, refused.json()["error"]) == (unknown.status_code, unknown.json()["error"])
    assert meanwhile.status_code == 200, meanwhile.content
    assert SecretPurge.objects.filter(vault_path=path).exists()  # Vault did not confirm: the job stays
    lab.recover()
    assert_store_consistent(lab.vault)
    assert lab.vault.metadata(path) is None
    other = make_credential(agent)
    assert lab.delete(other.credential).status_code == 204
    assert lab.vault.metadata(lab.path(other.credential)) is None
    assert not SecretPurge.objects.exists()


# --- no hot retry loop: the circuit breaker ---------------------------------------------------------


def failed_connections_to(server, monkeypatch) -> Callable[[], int]:
    """Count the app's connection attempts to `server` that failed (a refused one never reaches its record)."""
    original = urllib3.util.connection.create_connection
    port = int(server.url.rsplit(":", 1)[1])
    failed = []

    def create_connection(address, *args, **kwargs):
        try:
            return original(address, *args, **kwargs)
        except OSError:
            if address[1] == port:
                failed.append(address)
            raise

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return lambda: len(failed)


@pytest.mark.parametrize("fault", ["down", "500", "sealed"])
def test_token_requests_during_a_vault_outage_reach_vault_a_bounded_number_of_times(lab, agent, fault, monkeypatch):
    issued = make_credential(agent)  # the backend has looked at its token by now
    failed_connections = failed_connections_to(lab.server, monkeypatch)
    lab.server.clear_requests()
    lab.start(fault)

    responses = [lab.token_for(issued) for _ in range(20)]

    for response in responses:
        assert_read_error(response)
    assert 1 <= len(lab.server.requests) + failed_connections() <= BREAKER_FAILURES


def test_token_requests_during_a_slow_vault_answer_503_without_waiting_once_the_breaker_opens(lab, agent):
    issued = make_credential(agent)
    lab.server.clear_requests()
    lab.start("slow")

    responses = [lab.token_for(issued) for _ in range(6)]
    waited_for = len(lab.server.requests)

    lab.recover()
    for response in responses:
        assert_read_error(response)
    assert 1 <= waited_for <= BREAKER_FAILURES


def test_vault_answering_again_is_asked_only_after_the_open_period_and_one_probe_closes_the_breaker(lab, agent):
    issued = make_credential(agent)
    backend = get_default_backend()
    lab.start("500")
    for _ in range(BREAKER_FAILURES):
        assert_read_error(lab.token_for(issued))
    lab.server.clear_faults()  # Vault answers again, but the breaker's open period has not passed
    lab.server.clear_requests()

    still_open = lab.token_for(issued)
    lab.recover()  # the open period passes (tests.vault_fixtures lets the breaker probe)
    probe = lab.token_for(issued)

    assert_read_error(still_open)
    assert 1 <= int(still_open["Retry-After"]) <= 5  # the seconds left of the open period
    assert probe.status_code == 200, probe.content
    assert [request.method for request in lab.server.requests] == ["GET"]  # only the probe reached Vault
    assert get_default_backend() is backend
    assert lab.token_for(make_credential(agent)).status_code == 200  # closed: the next asks Vault too


# --- the database connection lost between a Vault write and the commit (PostgreSQL) ---------------


def lose_connection_during_vault_write(lab: Lab, call: Callable[[], object]):
    """Make `call` in this thread; another session ends this thread's connection while Vault applies the write."""
    pid = backend_pid()
    lab.server.clear_requests()
    lab.server.inject("slow", delay=0.3, method="POST", path="/data/agentidp/", times=1)  # within the read timeout

    def terminate() -> bool:
        wait_until(lambda: any(r.method == "POST" for r in list(lab.server.requests)), "the Vault write arrived")
        return terminate_backend(pid)

    terminator = InThread(terminate)
    try:
        response = call()
    finally:
        connection.close()
    assert terminator.result().get() is True
    assert [r.status for r in lab.server.requests if r.method == "POST"] == [200]  # Vault applied the write
    return response


def trusted_locations() -> dict:
    return {
        row.pk: (row.storage, row.secret_hash, row.vault_path, row.vault_version) for row in Credential.objects.all()
    }


def connection_lost_case(lab: Lab, agent, operation: str):
    """Run `operation`, losing the connection after its Vault write: return the response, the secret that must
    still work, and what each row trusted before."""
    issued = {"create": None, "rotate": make_credential(agent), "rotate_into_vault": lab.bcrypt}[operation]
    before = trusted_locations()

    def call():
        return lab.create(agent) if issued is None else lab.rotate(issued.credential)

    return lose_connection_during_vault_write(lab, call), issued, before


@pg_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("operation", ["create", "rotate", "rotate_into_vault"])
def test_losing_the_database_connection_after_the_vault_write_answers_503(lab, agent, operation):
    response, _, _ = connection_lost_case(lab, agent, operation)

    assert response.status_code == 503, response.content
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert int(response["Retry-After"]) > 0


@pg_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("operation", ["create", "rotate", "rotate_into_vault"])
def test_losing_the_database_connection_after_the_vault_write_loses_no_secret_and_leaves_no_orphan(
    lab, agent, operation
):
    response, issued, before = connection_lost_case(lab, agent, operation)

    assert response.status_code >= 500, response.content
    assert trusted_locations() == before
    assert_store_consistent(lab.vault)
    if issued is not None:
        assert lab.token_for(issued).status_code == 200
