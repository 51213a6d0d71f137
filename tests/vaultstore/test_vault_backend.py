"""
The Vault backend on its own: where it writes, what it asks Vault, and how it fails.

The backend is built the way AgentIdP builds it (VAULTSTORE -> get_backend("vault")) and talks
over real HTTP to the in-process test server, or to a real Vault when VAULT_ADDR and VAULT_TOKEN
name one. Tests that inject faults or read the recorded requests take the `server` fixture,
which skips them on a real Vault.
"""

import hmac
import json
import logging
import re
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import hvac
import hvac.exceptions
import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from vaultstore.backends import StoredSecret, get_backend
from vaultstore.backends.vault import DUMMY_KEY, SECRET_KEY, VaultSecretBackend, key_for, policy
from vaultstore.backends.vault_token import TOKEN_RETRY_SECONDS
from vaultstore.checks import VAULT_BACKEND, check_vault_transport, check_vaultstore_configuration
from vaultstore.exceptions import SecretReadError, SecretStoreUnavailable, SecretWriteError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

SECRET = "cs-first-Zq9vR2mK7xT4wB8nL1pD6sF3hJ5"
OTHER = "cs-second-Yt2kP8wQ4zN6rV1mB9xC3dL7fH0"
THIRD = "cs-third-Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8Ii9Jj0"
#: Fault injection aims at AgentIdP's keys (data and metadata), not at the token self-service.
AGENTIDP_KEYS = "/agentidp/"
LOGGER = "vaultstore.backends.vault"
TOKEN_LOGGER = "vaultstore.backends.vault_token"


@pytest.fixture
def backend(vault_enabled) -> VaultSecretBackend:
    """The vault backend as AgentIdP builds it from VAULTSTORE."""
    built = get_backend("vault")
    assert isinstance(built, VaultSecretBackend)
    return built


@pytest.fixture
def server(vault):
    """The test server, for fault injection and recorded requests (skips against a real Vault)."""
    return vault.require_server()


def make_owner() -> SimpleNamespace:
    return SimpleNamespace(id=uuid.uuid4(), agent_id=uuid.uuid4())


def sent(server, *, token: str, method: str | None = None, contains: str = "") -> list:
    """The requests `token` sent, oldest first, of one method and to paths containing `contains`."""
    return [
        request
        for request in server.requests
        if {name.lower(): value for name, value in request.headers.items()}.get("x-vault-token") == token
        and method in (None, request.method)
        and contains in request.path
    ]


def cas_sent(server, *, token: str, vault_path: str) -> list:
    """The check-and-set value of every write `token` sent to `vault_path`."""
    return [
        r.json["options"].get("cas") for r in sent(server, token=token, method="POST", contains=f"/v1/{vault_path}")
    ]


def assert_nothing_leaks(error: BaseException, caplog, *needles: str) -> None:
    """Neither the error, nor what it was raised from, nor its traceback, nor any log line shows a needle."""
    assert error.__cause__ is None and error.__suppress_context__, "raise ... from None"
    chain, link = [], error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    texts = [caplog.text, "".join(traceback.format_exception(error))]
    texts += [f"{link!s} {link!r} {getattr(link, 'text', '')}" for link in chain]
    for needle in needles:
        assert not [text for text in texts if needle in text]


class FakeClock:
    """A monotonic clock that moves only when told, in place of time.monotonic."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- faults -----------------------------------------------------------------------------------


def break_vault(server, fault: str) -> None:
    server.fail(fault, path=AGENTIDP_KEYS)


# --- store: where and how a secret is written -------------------------------------------------


def test_store_writes_the_secret_at_the_owner_path_under_client_secret(vault, backend, owner):
    stored = backend.store(owner=owner, secret=SECRET)

    path = f"{vault.mount}/data/agentidp/agents/{owner.agent_id}/credentials/{owner.id}"
    assert stored == StoredSecret(storage="vault", vault_path=path, vault_version=1)
    assert stored.kept_outside_database and stored.secret_hash == ""
    assert vault.read(path) == {"clientSecret": SECRET}
    assert backend.location(owner=owner) == StoredSecret(storage="vault", vault_path=path)


def test_rotation_writes_the_next_version_and_the_previous_one_still_reads(vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    second = backend.store(owner=owner, secret=OTHER, replacing=first)
    third = backend.store(owner=owner, secret=THIRD, replacing=second)

    assert first.vault_path == second.vault_path == third.vault_path
    assert [first.vault_version, second.vault_version, third.vault_version] == [1, 2, 3]
    assert [vault.read(first.vault_path, version) for version in (1, 2, 3)] == [
        {SECRET_KEY: SECRET},
        {SECRET_KEY: OTHER},
        {SECRET_KEY: THIRD},
    ]


def test_store_sends_the_version_the_database_trusts_as_check_and_set(server, vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    second = backend.store(owner=owner, secret=OTHER, replacing=first)
    backend.store(owner=owner, secret=THIRD, replacing=second)

    assert cas_sent(server, token=vault.app_token, vault_path=first.vault_path) == [0, 1, 2]


@pytest.mark.parametrize(
    "replacing",
    [
        StoredSecret(storage="bcrypt", secret_hash="$2b$04$" + "a" * 53),
        StoredSecret(storage="vault", vault_path="secret/data/agentidp/agents/a/credentials/b", vault_version=4),
        None,
    ],
    ids=["bcrypt-secret", "vault-secret-at-another-path", "new-credential"],
)
def test_store_creates_the_key_with_check_and_set_zero_unless_it_replaces_a_secret_at_the_same_path(
    server, vault, backend, owner, replacing
):
    stored = backend.store(owner=owner, secret=SECRET, replacing=replacing)

    assert stored.vault_version == 1
    assert cas_sent(server, token=vault.app_token, vault_path=stored.vault_path) == [0]


def test_rotation_writes_after_versions_the_database_never_recorded(vault, backend, owner, caplog):
    caplog.set_level(logging.DEBUG)
    first = backend.store(owner=owner, secret=SECRET)
    stray = vault.write(first.vault_path, {SECRET_KEY: "stray-Kq3Wm8Xz1Vb5"})

    rotated = backend.store(owner=owner, secret=OTHER, replacing=first)

    assert (stray, rotated.vault_version) == (2, 3)
    assert vault.read(first.vault_path, 3) == {SECRET_KEY: OTHER}
    assert backend.verify(stored=first, secret=SECRET) is True
    [warning] = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert first.vault_path in warning.getMessage()
    for secret in (SECRET, OTHER, "stray-Kq3Wm8Xz1Vb5", vault.app_token):
        assert secret not in caplog.text


def test_rotation_over_an_unrecorded_version_reads_the_newest_and_writes_after_it(server, vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    vault.write(first.vault_path, {SECRET_KEY: "stray"})
    server.clear_requests()

    backend.store(owner=owner, secret=OTHER, replacing=first)

    data = f"/v1/{first.vault_path}"
    assert [(r.method, r.path, r.query) for r in sent(server, token=vault.app_token, contains=data)] == [
        ("POST", data, {}),
        ("GET", data, {}),  # the newest version, from a data read: the policy grants no metadata read
        ("POST", data, {}),
    ]
    assert cas_sent(server, token=vault.app_token, vault_path=first.vault_path) == [1, 2]


def test_a_new_credential_writes_after_a_version_left_by_a_rolled_back_attempt(vault, backend, owner):
    left_over = vault.write(backend.location(owner=owner).vault_path, {SECRET_KEY: "rolled back"})

    stored = backend.store(owner=owner, secret=SECRET)

    assert (left_over, stored.vault_version) == (1, 2)
    assert backend.verify(stored=stored, secret=SECRET) is True


def test_store_refuses_to_write_when_vault_is_behind_the_version_the_database_trusts(vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    ahead = StoredSecret(storage="vault", vault_path=first.vault_path, vault_version=5)

    with pytest.raises(SecretWriteError) as excinfo:
        backend.store(owner=owner, secret=OTHER, replacing=ahead)

    assert excinfo.value.maybe_written is False
    assert vault.metadata(first.vault_path)["current_version"] == 1
    assert backend.verify(stored=first, secret=SECRET) is True


def test_rotation_writes_after_an_unrecorded_version_that_was_destroyed(vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    stray = vault.write(first.vault_path, {SECRET_KEY: "stray"})
    vault.root.secrets.kv.v2.destroy_secret_versions(
        path=vault.key_of(first.vault_path), versions=[stray], mount_point=vault.mount
    )

    rotated = backend.store(owner=owner, secret=OTHER, replacing=first)

    assert rotated.vault_version == 3
    assert backend.verify(stored=rotated, secret=OTHER) is True


# --- what the backend asks Vault --------------------------------------------------------------


def test_the_backend_never_reads_metadata_and_only_deletes_it(server, vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    vault.write(first.vault_path, {SECRET_KEY: "stray"})  # makes the rotation look up the newest version
    second = backend.store(owner=owner, secret=OTHER, replacing=first)
    backend.verify(stored=first, secret=SECRET)
    backend.verify(stored=second, secret="wrong")
    backend.verify(stored=StoredSecret(storage="vault", vault_path=first.vault_path, vault_version=9), secret=OTHER)
    backend.verify_dummy(secret=SECRET)
    backend.check()
    backend.delete(stored=[first, second])

    requests = sent(server, token=vault.app_token)
    metadata = [(r.method, r.path) for r in requests if f"/v1/{vault.mount}/metadata/" in r.path]
    assert metadata == [("DELETE", f"/v1/{vault.mount}/metadata/{key_for(owner)}")]
    assert {r.method for r in requests} <= {"GET", "POST", "DELETE"}


# --- verify -----------------------------------------------------------------------------------


def test_verify_accepts_the_secret_and_refuses_others(backend, owner):
    stored = backend.store(owner=owner, secret=SECRET)

    assert backend.verify(stored=stored, secret=SECRET) is True
    assert backend.verify(stored=stored, secret=OTHER) is False
    assert backend.verify(stored=stored, secret=SECRET + " ") is False
    assert backend.verify(stored=stored, secret=SECRET[:-1]) is False
    assert backend.verify(stored=stored, secret="") is False


def test_each_version_verifies_only_with_its_own_stored_secret(backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    second = backend.store(owner=owner, secret=OTHER, replacing=first)
    latest = StoredSecret(storage="vault", vault_path=first.vault_path, vault_version=None)

    assert backend.verify(stored=first, secret=SECRET) is True
    assert backend.verify(stored=first, secret=OTHER) is False
    assert backend.verify(stored=second, secret=OTHER) is True
    assert backend.verify(stored=second, secret=SECRET) is False
    assert backend.verify(stored=latest, secret=OTHER) is False  # "any version" is no version to trust


@pytest.mark.parametrize(
    "presented",
    ["\ud800", "a\udfffb", "caf\u00e9", "\U0001f511", "\x00", SECRET + "\x00", "y" * 10_000],
    ids=["lone-surrogate", "embedded-surrogate", "accented", "emoji", "nul", "trailing-nul", "long"],
)
def test_verify_of_odd_presented_secrets_is_false_without_an_exception(backend, owner, presented):
    stored = backend.store(owner=owner, secret=SECRET)

    assert backend.verify(stored=stored, secret=presented) is False


def test_verify_accepts_a_non_ascii_secret_it_stored(backend, owner):
    stored = backend.store(owner=owner, secret="caf\u00e9-\U0001f511")

    assert backend.verify(stored=stored, secret="caf\u00e9-\U0001f511") is True
    assert backend.verify(stored=stored, secret="cafe-\U0001f511") is False


@pytest.mark.parametrize(
    "change",
    [{"storage": "bcrypt"}, {"vault_version": None}, {"vault_version": 0}],
    ids=["other-storage", "no-version", "version-zero"],
)
def test_verify_of_a_secret_it_does_not_keep_is_false(backend, owner, change):
    stored = backend.store(owner=owner, secret=SECRET)
    fields = {"storage": stored.storage, "vault_path": stored.vault_path, "vault_version": stored.vault_version}

    assert backend.verify(stored=StoredSecret(**{**fields, **change}), secret=SECRET) is False


def _destroy_key(vault, stored):
    vault.destroy(stored.vault_path)


def _destroy_version(vault, stored):
    vault.root.secrets.kv.v2.destroy_secret_versions(
        path=vault.key_of(stored.vault_path), versions=[stored.vault_version], mount_point=vault.mount
    )


def _soft_delete_version(vault, stored):
    vault.root.secrets.kv.v2.delete_secret_versions(
        path=vault.key_of(stored.vault_path), versions=[stored.vault_version], mount_point=vault.mount
    )


def _trust_an_unwritten_version(vault, stored):
    return StoredSecret(storage="vault", vault_path=stored.vault_path, vault_version=stored.vault_version + 7)


@pytest.mark.parametrize(
    "lose",
    [_destroy_key, _destroy_version, _soft_delete_version, _trust_an_unwritten_version],
    ids=["key-destroyed", "version-destroyed", "version-soft-deleted", "version-never-written"],
)
def test_verify_of_a_version_vault_does_not_have_is_false(vault, backend, owner, lose):
    stored = backend.store(owner=owner, secret=SECRET)

    stored = lose(vault, stored) or stored

    assert backend.verify(stored=stored, secret=SECRET) is False


@pytest.mark.parametrize(
    "path",
    [
        "{mount}/data/other/agents/a/credentials/b",
        "{mount}/data/agentidpx/agents/a/credentials/b",
        "{mount}/metadata/agentidp/agents/a/credentials/b",
        "elsewhere/data/agentidp/agents/a/credentials/b",
        "agentidp/agents/a/credentials/b",
        "",
    ],
    ids=["outside-prefix", "prefix-lookalike", "metadata-path", "other-mount", "no-mount", "empty"],
)
def test_verify_refuses_a_path_outside_the_agentidp_keys_of_its_mount(vault, backend, path):
    stored = StoredSecret(storage="vault", vault_path=path.format(mount=vault.mount), vault_version=1)

    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)


def test_verify_and_delete_refuse_a_path_that_climbs_out_with_dot_segments_without_asking_vault(server, vault, backend):
    climbing = StoredSecret(
        storage="vault", vault_path=f"{vault.mount}/data/agentidp/../../../sys/policy/agentidp", vault_version=1
    )
    backend.check()  # the token look-up is done
    server.clear_requests()

    with pytest.raises(SecretReadError):
        backend.verify(stored=climbing, secret=SECRET)
    with pytest.raises(SecretWriteError):
        backend.delete(stored=[climbing])

    assert [(r.method, r.path) for r in server.requests] == []


def test_verify_compares_in_constant_time(backend, owner):
    stored = backend.store(owner=owner, secret=SECRET)

    with mock.patch("hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        assert backend.verify(stored=stored, secret=SECRET) is True

    compare.assert_called_once_with(SECRET.encode(), SECRET.encode())


# --- faults: store, verify and delete translate every failure ---------------------------------

#: fault -> (maybe_written, what Vault holds afterwards; mock.ANY when it may or may not hold it)
STORE_FAULTS = {
    "down": (False, None),
    "sealed": (False, None),
    "403": (False, None),
    "429": (False, None),
    "slow": (True, mock.ANY),
    "500": (True, None),
    "502": (True, None),
    "reset": (True, None),
    "garbled": (True, None),
    "applied_then_dropped": (True, {SECRET_KEY: SECRET}),
}


@pytest.mark.parametrize("fault, maybe_written, kept", [(f, *v) for f, v in STORE_FAULTS.items()], ids=STORE_FAULTS)
def test_store_failure_is_a_write_error_saying_whether_vault_may_have_applied_it(
    server, vault, backend, owner, caplog, fault, maybe_written, kept
):
    caplog.set_level(logging.DEBUG)
    break_vault(server, fault)

    with pytest.raises(SecretWriteError) as excinfo:
        backend.store(owner=owner, secret=SECRET)

    error = excinfo.value
    assert (error.code, error.retry_after, error.maybe_written) == ("VAULT_WRITE_ERROR", 5, maybe_written)
    assert_nothing_leaks(error, caplog, SECRET, vault.app_token)
    server.recover()
    assert vault.read(backend.location(owner=owner).vault_path) == kept


VERIFY_FAULTS = ["down", "slow", "sealed", "403", "500", "502", "429", "garbled", "missing_key", "reset"]


@pytest.mark.parametrize("fault", VERIFY_FAULTS)
def test_verify_failure_is_a_read_error_not_a_mismatch(server, vault, backend, owner, caplog, fault):
    caplog.set_level(logging.DEBUG)
    stored = backend.store(owner=owner, secret=SECRET)
    break_vault(server, fault)

    with pytest.raises(SecretReadError) as excinfo:
        backend.verify(stored=stored, secret=SECRET)

    assert (excinfo.value.code, excinfo.value.retry_after) == ("VAULT_READ_ERROR", 5)
    assert_nothing_leaks(excinfo.value, caplog, SECRET, vault.app_token)
    server.recover()
    assert backend.verify(stored=stored, secret=SECRET) is True


DELETE_FAULTS = {
    "down": SecretStoreUnavailable,
    "sealed": SecretStoreUnavailable,
    "reset": SecretStoreUnavailable,
    "slow": SecretWriteError,
    "403": SecretWriteError,
    "500": SecretWriteError,
    "502": SecretWriteError,
    "429": SecretWriteError,
}


@pytest.mark.parametrize("fault, raised", DELETE_FAULTS.items(), ids=DELETE_FAULTS)
def test_delete_failure_raises_so_that_the_caller_retries(server, vault, backend, owner, caplog, fault, raised):
    caplog.set_level(logging.DEBUG)
    stored = backend.store(owner=owner, secret=SECRET)
    break_vault(server, fault)

    with pytest.raises(raised) as excinfo:
        backend.delete(stored=[stored])

    assert type(excinfo.value) is raised
    assert excinfo.value.retry_after == 5
    assert_nothing_leaks(excinfo.value, caplog, SECRET, vault.app_token)
    server.recover()
    backend.delete(stored=[stored])
    assert vault.metadata(stored.vault_path) is None


# --- the "upgrading" 400 is retried once ------------------------------------------------------


def test_store_is_retried_once_while_the_kv_mount_upgrades(server, vault, backend, owner):
    server.inject("upgrading", path=AGENTIDP_KEYS, method="POST", times=1)

    stored = backend.store(owner=owner, secret=SECRET)

    assert stored.vault_version == 1
    assert cas_sent(server, token=vault.app_token, vault_path=stored.vault_path) == [0, 0]
    assert vault.read(stored.vault_path) == {SECRET_KEY: SECRET}


def test_verify_is_retried_once_while_the_kv_mount_upgrades(server, vault, backend, owner):
    stored = backend.store(owner=owner, secret=SECRET)
    server.inject("upgrading", path=AGENTIDP_KEYS, method="GET", times=1)

    assert backend.verify(stored=stored, secret=SECRET) is True
    assert len(sent(server, token=vault.app_token, method="GET", contains=stored.vault_path)) == 2


def test_an_upgrade_outlasting_the_one_retry_fails_the_store_without_writing(server, vault, backend, owner):
    server.inject("upgrading", path=AGENTIDP_KEYS, method="POST", times=2)

    with pytest.raises(SecretWriteError) as excinfo:
        backend.store(owner=owner, secret=SECRET)

    assert excinfo.value.maybe_written is False
    assert len(sent(server, token=vault.app_token, method="POST", contains=AGENTIDP_KEYS)) == 2
    assert vault.metadata(backend.location(owner=owner).vault_path) is None


# --- verify_dummy -----------------------------------------------------------------------------


def test_verify_dummy_reads_the_dummy_key_and_plants_an_entry_there_once(server, vault, backend):
    for _ in range(3):
        assert backend.verify_dummy(secret=SECRET) is None

    dummy = f"/v1/{vault.mount}/data/{DUMMY_KEY}"
    calls = [(r.method, r.path, r.query) for r in sent(server, token=vault.app_token, contains=DUMMY_KEY)]
    assert calls == [("GET", dummy, {"version": "1"}), ("POST", dummy, {})] + [("GET", dummy, {"version": "1"})] * 2
    # Later dummy reads find an entry, as a real verification does: Vault answers them alike.
    planted = vault.read(f"{vault.mount}/data/{DUMMY_KEY}", 1)
    assert set(planted) == {SECRET_KEY} and len(planted[SECRET_KEY]) == 43


@pytest.mark.parametrize("fault", ["down", "sealed", "403", "500", "429", "reset", "garbled"])
def test_verify_dummy_fails_as_a_verification_would_on_every_vault_failure(server, vault, backend, caplog, fault):
    caplog.set_level(logging.DEBUG)
    break_vault(server, fault)

    with pytest.raises(SecretReadError) as excinfo:
        backend.verify_dummy(secret=SECRET)
    assert excinfo.value.code == "VAULT_READ_ERROR"
    assert SECRET not in str(excinfo.value) and vault.app_token not in str(excinfo.value)
    assert SECRET not in caplog.text and vault.app_token not in caplog.text


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """Hold time.monotonic still, which the breaker and the token renewal read, until the test moves it."""
    fake = FakeClock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


def breaker_backend(vault, **options) -> VaultSecretBackend:
    """A backend of its own with `options`, for a test that moves the `clock`."""
    return VaultSecretBackend(**vault.backend_options(**options))


def requests_to_keys(server) -> int:
    return len([request for request in server.requests if AGENTIDP_KEYS in request.path])


OUTAGE_KINDS = ["down", "slow", "sealed", "403", "429", "500", "502", "garbled", "shapeless", "reset"]


@pytest.mark.parametrize("fault", OUTAGE_KINDS)
def test_after_three_outages_in_a_row_every_operation_fails_fast_without_asking_vault(
    server, vault, owner, fault, clock
):
    backend = breaker_backend(vault, breaker_failures=3, breaker_seconds=5)
    stored = backend.store(owner=owner, secret=SECRET)
    break_vault(server, fault)
    for _ in range(3):
        with pytest.raises(SecretReadError):
            backend.verify(stored=stored, secret=SECRET)
    asked = requests_to_keys(server)

    with pytest.raises(SecretReadError) as read:
        backend.verify(stored=stored, secret=SECRET)
    with pytest.raises(SecretReadError):
        backend.verify_dummy(secret=SECRET)
    with pytest.raises(SecretWriteError) as write:
        backend.store(owner=owner, secret=OTHER, replacing=stored)
    with pytest.raises(SecretStoreUnavailable):
        backend.delete(stored=[stored])
    problems = backend.check()

    assert requests_to_keys(server) == asked
    assert write.value.maybe_written is False
    assert read.value.retry_after == write.value.retry_after == 5
    assert problems == ["Vault failed repeatedly and is not asked again for 5 s."]
    clock.advance(3.2)
    with pytest.raises(SecretReadError) as later:
        backend.verify(stored=stored, secret=SECRET)
    assert later.value.retry_after == 2


def test_once_its_period_passes_one_probe_is_let_through_and_a_success_closes_the_breaker(server, vault, owner, clock):
    backend = breaker_backend(vault, breaker_failures=2, breaker_seconds=5)
    stored = backend.store(owner=owner, secret=SECRET)
    server.go_down()
    for _ in range(2):
        with pytest.raises(SecretReadError):
            backend.verify(stored=stored, secret=SECRET)
    server.come_up()
    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)  # still open: Vault is back, but not asked yet

    clock.advance(5)

    assert backend.verify(stored=stored, secret=SECRET) is True
    assert backend.verify(stored=stored, secret=OTHER) is False
    assert not backend.breaker.is_open


def test_a_failed_probe_opens_the_breaker_again_at_once(server, vault, owner, clock):
    backend = breaker_backend(vault, breaker_failures=3, breaker_seconds=5)
    stored = backend.store(owner=owner, secret=SECRET)
    server.fail("500", path=AGENTIDP_KEYS)
    for _ in range(3):
        with pytest.raises(SecretReadError):
            backend.verify(stored=stored, secret=SECRET)
    clock.advance(5)
    asked = requests_to_keys(server)

    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)  # the probe: it reaches Vault, which is still down
    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)  # open again after one failure, not three

    assert requests_to_keys(server) == asked + 1


def test_while_a_probe_is_out_the_other_callers_fail_fast(server, vault, owner, clock):
    backend = breaker_backend(vault, breaker_failures=1, breaker_seconds=5)
    stored = backend.store(owner=owner, secret=SECRET)
    server.fail("500", path=AGENTIDP_KEYS, times=1)
    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)
    clock.advance(5)
    server.inject("slow", path=AGENTIDP_KEYS, delay=0.3, times=1)
    probe = threading.Thread(target=backend.verify, kwargs={"stored": stored, "secret": SECRET})
    probe.start()
    deadline = time.perf_counter() + 5  # time.monotonic is the test's clock, held still
    while requests_to_keys(server) == 2 and time.perf_counter() < deadline:
        time.sleep(0.01)

    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)
    probe.join(5)
    assert backend.verify(stored=stored, secret=SECRET) is True
    assert requests_to_keys(server) == 4  # the store, the failure, the probe, the last verification


@pytest.mark.parametrize("answer", ["missing key", "cas mismatch"])
@pytest.mark.usefixtures("clock")
def test_answers_about_one_key_are_not_outages(vault, owner, answer):
    backend = breaker_backend(vault, breaker_failures=1)
    stored = backend.store(owner=owner, secret=SECRET)
    for _ in range(3):
        if answer == "missing key":
            assert (
                backend.verify(
                    stored=StoredSecret(storage="vault", vault_path=stored.vault_path, vault_version=9), secret=SECRET
                )
                is False
            )
        else:
            vault.write(stored.vault_path, {SECRET_KEY: "written by hand"})  # the row trusts version 1 no more
            backend.store(owner=owner, secret=OTHER, replacing=stored)

    assert not backend.breaker.is_open
    assert backend.verify(stored=stored, secret=SECRET) is True


def _write_entry(data):
    """Write `data` as the entry at a new credential's path, as an operator could (any map Vault accepts)."""

    def write(vault, backend):
        path = backend.location(owner=make_owner()).vault_path
        return StoredSecret(storage="vault", vault_path=path, vault_version=vault.write(path, data))

    return write


def _write_raw_entry(data):
    """Write `data` as the entry, unchecked: a value the HTTP API would refuse (not a map, or null)."""

    def write(vault, backend):
        server = vault.require_server("writes an entry that Vault's HTTP API refuses")
        path = backend.location(owner=make_owner()).vault_path
        return StoredSecret(
            storage="vault", vault_path=path, vault_version=server.write_secret(vault.key_of(path), data)
        )

    return write


def _lose_version(lose):
    def write(vault, backend):
        stored = backend.store(owner=make_owner(), secret=SECRET)
        lose(vault, stored)
        return stored

    return write


#: entry -> (how it is made, what verifying it gives: the error it raises, or its answer)
MALFORMED_ENTRIES = {
    "no-client-secret": (_write_entry({"other": "kept-Qm4Zr8Xw2Lp6"}), SecretReadError),
    "client-secret-a-number": (_write_entry({SECRET_KEY: 42}), SecretReadError),
    "client-secret-null": (_write_entry({SECRET_KEY: None}), SecretReadError),
    "client-secret-a-map": (_write_entry({SECRET_KEY: {"value": "kept-Qm4Zr8Xw2Lp6"}}), SecretReadError),
    "data-a-list": (_write_raw_entry(["kept-Qm4Zr8Xw2Lp6"]), SecretReadError),
    "data-a-string": (_write_raw_entry("kept-Qm4Zr8Xw2Lp6"), SecretReadError),
    "data-null": (_write_raw_entry(None), SecretReadError),
    "version-soft-deleted": (_lose_version(_soft_delete_version), False),
    "version-destroyed": (_lose_version(_destroy_version), False),
}


@pytest.mark.parametrize("make, outcome", MALFORMED_ENTRIES.values(), ids=MALFORMED_ENTRIES)
@pytest.mark.usefixtures("clock")
def test_malformed_entries_fail_their_own_verification_and_never_open_the_breaker(vault, owner, caplog, make, outcome):
    caplog.set_level(logging.DEBUG)
    backend = breaker_backend(vault, breaker_failures=3, breaker_seconds=5)
    good = backend.store(owner=owner, secret=SECRET)
    malformed = [make(vault, backend) for _ in range(3)]

    for stored in malformed:
        for _ in range(4):
            if outcome is False:
                assert backend.verify(stored=stored, secret=SECRET) is False
            else:
                with pytest.raises(outcome) as excinfo:
                    backend.verify(stored=stored, secret=SECRET)
                assert (excinfo.value.code, excinfo.value.retry_after) == ("VAULT_READ_ERROR", 5)
                assert_nothing_leaks(excinfo.value, caplog, "kept-Qm4Zr8Xw2Lp6", SECRET, vault.app_token)
    asked = [r for r in vault.server.requests if good.vault_path in r.path] if vault.is_server else []

    assert not backend.breaker.is_open
    assert backend.verify(stored=good, secret=SECRET) is True
    if vault.is_server:
        assert len([r for r in vault.server.requests if good.vault_path in r.path]) == len(asked) + 1
    for stored in malformed:
        assert stored.vault_path in caplog.text
    assert "kept-Qm4Zr8Xw2Lp6" not in caplog.text


@pytest.mark.parametrize("fault", ["garbled", "shapeless"])
@pytest.mark.usefixtures("clock")
def test_an_answer_that_is_not_vaults_counts_as_an_outage(server, vault, owner, fault):
    backend = breaker_backend(vault, breaker_failures=3, breaker_seconds=5)
    stored = backend.store(owner=owner, secret=SECRET)
    server.fail(fault, path=stored.vault_path, times=3)
    for _ in range(3):
        with pytest.raises(SecretReadError):
            backend.verify(stored=stored, secret=SECRET)
    asked = requests_to_keys(server)

    with pytest.raises(SecretReadError) as excinfo:
        backend.verify(stored=stored, secret=SECRET)

    assert backend.breaker.is_open
    assert excinfo.value.retry_after == 5
    assert requests_to_keys(server) == asked


@pytest.mark.usefixtures("clock")
def test_breaker_failures_zero_never_opens(server, vault, owner):
    backend = breaker_backend(vault, breaker_failures=0)
    stored = backend.store(owner=owner, secret=SECRET)
    server.go_down()
    for _ in range(5):
        with pytest.raises(SecretReadError):
            backend.verify(stored=stored, secret=SECRET)
    server.come_up()

    assert backend.verify(stored=stored, secret=SECRET) is True


# --- a token file --------------------------------------------------------------------------------


def test_a_token_from_a_file_is_read_again_when_vault_refuses_it_so_an_expired_token_recovers_without_a_restart(
    server, vault, owner, tmp_path, clock
):
    token_file = tmp_path / "vault-token"
    token_file.write_text(server.create_token(policies=("agentidp",)) + "\n")
    backend = breaker_backend(vault, token="", token_file=str(token_file), breaker_failures=3)
    stored = backend.store(owner=owner, secret=SECRET)
    server.revoke_token(token_file.read_text().strip())  # as an expired token: 403 from now on

    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)
    token_file.write_text(server.create_token(policies=("agentidp",)))  # Vault Agent writes a new one
    clock.advance(1)

    assert backend.verify(stored=stored, secret=SECRET) is True
    assert backend.store(owner=owner, secret=OTHER, replacing=stored).vault_version == 2


@pytest.mark.usefixtures("clock")
def test_the_token_file_is_not_read_again_while_vault_accepts_the_token(server, vault, owner, tmp_path):
    token_file = tmp_path / "vault-token"
    token_file.write_text(server.create_token(policies=("agentidp",)))
    backend = breaker_backend(vault, token="", token_file=str(token_file))
    stored = backend.store(owner=owner, secret=SECRET)
    token_file.write_text("hvs.not-a-token-vault-knows")

    assert backend.verify(stored=stored, secret=SECRET) is True


@pytest.mark.parametrize("options", [{"token": "", "token_file": ""}, {"token": "hvs.x", "token_file": "/run/token"}])
def test_exactly_one_of_token_and_token_file_is_set(options):
    with pytest.raises(ImproperlyConfigured, match="exactly one of 'token' and 'token_file'"):
        VaultSecretBackend(**{**GOOD_OPTIONS, **options})


# --- delete -----------------------------------------------------------------------------------


def test_delete_destroys_every_version_and_the_metadata(vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    second = backend.store(owner=owner, secret=OTHER, replacing=first)

    backend.delete(stored=[second])

    assert vault.metadata(first.vault_path) is None
    assert (vault.read(first.vault_path, 1), vault.read(first.vault_path, 2)) == (None, None)
    assert backend.verify(stored=first, secret=SECRET) is False
    assert backend.verify(stored=second, secret=OTHER) is False


def test_delete_is_idempotent(vault, backend, owner):
    stored = backend.store(owner=owner, secret=SECRET)

    backend.delete(stored=[stored])
    backend.delete(stored=[stored])
    backend.delete(stored=[backend.location(owner=make_owner())])  # never written

    assert vault.metadata(stored.vault_path) is None


def test_delete_touches_only_the_paths_given(vault, backend, owner):
    gone = backend.store(owner=owner, secret=SECRET)
    gone_too = backend.store(owner=owner, secret=OTHER, replacing=gone)
    kept = backend.store(owner=make_owner(), secret=THIRD)
    bcrypt_secret = StoredSecret(storage="bcrypt", secret_hash="$2b$04$" + "a" * 53)

    backend.delete(stored=[gone, gone_too, bcrypt_secret])

    assert vault.metadata(gone.vault_path) is None
    assert vault.metadata(kept.vault_path)["current_version"] == 1
    assert backend.verify(stored=kept, secret=THIRD) is True


def test_delete_sends_one_metadata_delete_per_path(server, vault, backend, owner):
    first = backend.store(owner=owner, secret=SECRET)
    second = backend.store(owner=owner, secret=OTHER, replacing=first)
    other = backend.location(owner=make_owner())
    server.clear_requests()

    backend.delete(stored=[second, first, other, StoredSecret(storage="bcrypt", secret_hash="x")])

    assert sorted((r.method, r.path) for r in sent(server, token=vault.app_token)) == sorted(
        [
            ("DELETE", f"/v1/{vault.mount}/metadata/{key_for(owner)}"),
            ("DELETE", "/v1/" + other.vault_path.replace("/data/", "/metadata/", 1)),
        ]
    )


def test_delete_refuses_a_path_outside_the_agentidp_keys(vault, backend):
    outside = StoredSecret(storage="vault", vault_path=f"{vault.mount}/data/other/key")

    with pytest.raises(SecretWriteError):
        backend.delete(stored=[outside])


# --- check() ----------------------------------------------------------------------------------


def test_check_reports_nothing_when_vault_is_healthy(backend):
    assert backend.check() == []


def _sealed(server, vault):
    server.seal()
    return vault.app_token


def _down(server, vault):
    server.go_down()
    return vault.app_token


def _revoked(server, vault):
    server.revoke_token(vault.app_token)
    return vault.app_token


def _without_the_policy(server, vault):
    return server.create_token(policies=("default",))


@pytest.mark.parametrize(
    "break_it, mentions",
    [(_sealed, "sealed"), (_down, "reached"), (_revoked, "refused"), (_without_the_policy, "refused")],
    ids=["sealed", "down", "token-revoked", "token-without-policy"],
)
def test_check_reports_one_problem_without_the_token(server, vault, settings, break_it, mentions):
    token = break_it(server, vault)
    settings.VAULTSTORE = vault.vaultstore_setting(token=token)

    problems = get_backend("vault").check()

    assert len(problems) == 1
    assert mentions in problems[0]
    assert token not in problems[0]


@pytest.mark.parametrize("fault", ["down", "sealed", "403", "429", "500", "garbled"])
@pytest.mark.usefixtures("clock")
def test_failed_checks_never_count_towards_the_breaker(server, vault, owner, fault):
    backend = breaker_backend(vault, breaker_failures=1, breaker_seconds=5)
    stored = backend.store(owner=owner, secret=SECRET)
    server.fail(fault)
    for _ in range(5):
        assert len(backend.check()) == 1
    server.clear_faults()
    server.unseal()
    server.come_up()
    asked = requests_to_keys(server)

    assert backend.verify(stored=stored, secret=SECRET) is True
    assert requests_to_keys(server) == asked + 1
    assert not backend.breaker.is_open


def test_a_check_once_the_open_period_passes_leaves_the_probe_to_a_real_request(server, vault, owner, clock):
    backend = breaker_backend(vault, breaker_failures=1, breaker_seconds=5)
    stored = backend.store(owner=owner, secret=SECRET)
    server.fail("500", path=AGENTIDP_KEYS, times=1)
    with pytest.raises(SecretReadError):
        backend.verify(stored=stored, secret=SECRET)
    assert backend.check() == ["Vault failed repeatedly and is not asked again for 5 s."]
    clock.advance(5)

    assert backend.check() == []  # Vault is asked again, and answers
    assert backend.verify(stored=stored, secret=SECRET) is True  # the probe
    assert not backend.breaker.is_open


# --- token renewal ----------------------------------------------------------------------------


class FakeTimers:
    """Stands in for threading.Timer, with which the backend renews its token: records the timers; a test fires one."""

    def __init__(self) -> None:
        self.armed: list[SimpleNamespace] = []

    def __call__(self, delay: float, function) -> SimpleNamespace:
        timer = SimpleNamespace(delay=delay, function=function, cancelled=False, start=lambda: None)
        timer.cancel = lambda: setattr(timer, "cancelled", True)
        self.armed.append(timer)
        return timer

    @property
    def live(self) -> list[SimpleNamespace]:
        return [timer for timer in self.armed if not timer.cancelled]


@pytest.fixture
def timers(monkeypatch) -> FakeTimers:
    fake = FakeTimers()
    monkeypatch.setattr(threading, "Timer", fake)
    return fake


def token_backend(server, vault, **token_options) -> tuple[VaultSecretBackend, str]:
    """A backend with its own token (made with `token_options`), for a test that holds the `clock` and the `timers`."""
    token = server.create_token(**token_options)
    return VaultSecretBackend(**vault.backend_options(token=token)), token


def token_calls(server, token: str) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in sent(server, token=token, contains="/v1/auth/token/")]


@pytest.mark.usefixtures("timers")
def test_a_renewable_token_is_renewed_on_first_use_and_after_two_thirds_of_its_lease(server, vault, clock):
    backend, token = token_backend(server, vault, ttl=60, renewable=True)

    backend.verify_dummy(secret=SECRET)
    assert [r.path for r in sent(server, token=token)] == [  # renewed before the operation
        "/v1/auth/token/lookup-self",
        "/v1/auth/token/renew-self",
        f"/v1/{vault.mount}/data/{DUMMY_KEY}",
        f"/v1/{vault.mount}/data/{DUMMY_KEY}",  # the dummy entry planted
    ]
    assert server.token_info(token)["renewals"] == 1

    backend.verify_dummy(secret=SECRET)
    clock.advance(39)  # two thirds of 60 s is 40 s
    backend.verify_dummy(secret=SECRET)
    assert token_calls(server, token) == ["lookup-self", "renew-self"]
    assert server.token_info(token)["renewals"] == 1

    clock.advance(2)
    backend.verify_dummy(secret=SECRET)
    assert token_calls(server, token) == ["lookup-self", "renew-self", "renew-self"]
    assert server.token_info(token)["renewals"] == 2


@pytest.mark.usefixtures("timers")
def test_a_non_renewable_token_with_a_ttl_is_never_renewed_and_a_warning_says_so(server, vault, caplog, clock):
    caplog.set_level(logging.DEBUG)
    backend, token = token_backend(server, vault, ttl=60, renewable=False)

    backend.verify_dummy(secret=SECRET)
    clock.advance(10_000)
    backend.verify_dummy(secret=SECRET)

    assert token_calls(server, token) == ["lookup-self"]
    assert server.token_info(token)["renewals"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == TOKEN_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not renewable" in warnings[0]
    assert token not in caplog.text


@pytest.mark.usefixtures("timers")
def test_a_token_without_ttl_is_never_renewed(server, vault, clock):
    backend, token = token_backend(server, vault, ttl=None, renewable=True)

    backend.verify_dummy(secret=SECRET)
    clock.advance(10_000)
    backend.verify_dummy(secret=SECRET)

    assert token_calls(server, token) == ["lookup-self"]
    assert server.token_info(token)["renewals"] == 0


@pytest.mark.usefixtures("timers")
def test_a_failed_renewal_does_not_fail_the_operation_and_is_tried_again_later(server, vault, owner, caplog, clock):
    caplog.set_level(logging.DEBUG)
    backend, token = token_backend(server, vault, ttl=60, renewable=True)
    server.inject("status", path="renew-self", status=500, times=1)

    stored = backend.store(owner=owner, secret=SECRET)
    clock.advance(TOKEN_RETRY_SECONDS - 1)
    assert backend.verify(stored=stored, secret=SECRET) is True

    assert token_calls(server, token) == ["lookup-self", "renew-self"]
    assert server.token_info(token)["renewals"] == 0
    assert any("could not renew" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    clock.advance(1)
    assert backend.verify(stored=stored, secret=SECRET) is True
    assert token_calls(server, token) == ["lookup-self", "renew-self", "renew-self"]
    assert server.token_info(token)["renewals"] == 1
    assert token not in caplog.text


def test_an_idle_process_renews_its_token_from_a_timer_at_two_thirds_of_the_lease(server, vault, timers, clock):
    backend, token = token_backend(server, vault, ttl=60, renewable=True)
    backend.verify_dummy(secret=SECRET)  # first use: looked up and renewed
    [timer] = timers.live
    assert timer.delay == pytest.approx(40)

    clock.advance(40)
    timer.function()  # the timer fires; no request is being served

    assert token_calls(server, token) == ["lookup-self", "renew-self", "renew-self"]
    assert server.token_info(token)["renewals"] == 2
    [next_timer] = timers.live  # the fired one is replaced by the next
    assert next_timer is not timer and next_timer.delay == pytest.approx(40)


def test_a_use_that_renews_the_token_rearms_the_timer_instead_of_adding_one(server, vault, timers, clock):
    backend, token = token_backend(server, vault, ttl=60, renewable=True)
    backend.verify_dummy(secret=SECRET)
    clock.advance(41)
    backend.verify_dummy(secret=SECRET)

    assert server.token_info(token)["renewals"] == 2
    assert len(timers.armed) == 2 and len(timers.live) == 1


@pytest.mark.parametrize("token_options", [{"ttl": None, "renewable": True}, {"ttl": 60, "renewable": False}])
@pytest.mark.usefixtures("clock")
def test_no_timer_is_armed_for_a_token_that_is_never_renewed(server, vault, timers, token_options):
    backend, _token = token_backend(server, vault, **token_options)

    backend.verify_dummy(secret=SECRET)

    assert timers.armed == []


def test_closing_the_backend_stops_its_renewal_timer(server, vault, timers, clock):
    backend, token = token_backend(server, vault, ttl=60, renewable=True)
    backend.verify_dummy(secret=SECRET)
    [timer] = timers.live

    backend.close()
    clock.advance(40)
    timer.function()  # a timer that fires anyway changes nothing

    assert timer.cancelled
    assert server.token_info(token)["renewals"] == 1
    assert timers.live == []


def test_a_settings_change_closes_the_backends_built_before(vault, settings):
    settings.VAULTSTORE = vault.vaultstore_setting()
    old = get_backend("vault")

    settings.VAULTSTORE = vault.vaultstore_setting(read_timeout=1.0)

    assert old.token_keeper.closed is True
    assert get_backend("vault") is not old


def test_the_renewal_timer_is_a_daemon_thread(server, vault, monkeypatch):
    started = []

    class RecordedTimer(threading.Timer):
        def start(self) -> None:
            started.append(self)
            super().start()

    monkeypatch.setattr(threading, "Timer", RecordedTimer)
    token = server.create_token(ttl=60, renewable=True)
    backend = VaultSecretBackend(**vault.backend_options(token=token))
    try:
        backend.verify_dummy(secret=SECRET)
        timer = started[-1] if started else None
        assert timer is not None and timer.daemon and timer.is_alive()
    finally:
        backend.close()
    timer.join(1)
    assert not timer.is_alive()


# --- options ----------------------------------------------------------------------------------

GOOD_OPTIONS = {"url": "https://vault.example:8200", "token": "hvs.options-test-token"}

BAD_OPTIONS = {
    "url-without-scheme": ("url", "vault.example:8200"),
    "url-ftp": ("url", "ftp://vault.example"),
    "url-without-host": ("url", "https://"),
    "url-empty": ("url", ""),
    "token-empty": ("token", ""),
    "token-not-a-string": ("token", None),
    "mount-leading-slash": ("mount", "/secret"),
    "mount-trailing-slash": ("mount", "secret/"),
    "mount-empty": ("mount", ""),
    "namespace-not-a-string": ("namespace", None),
    "verify-empty": ("verify", ""),
    "verify-number": ("verify", 1),
    "connect-timeout-zero": ("connect_timeout", 0),
    "connect-timeout-negative": ("connect_timeout", -1.0),
    "connect-timeout-bool": ("connect_timeout", True),
    "read-timeout-over-60": ("read_timeout", 60.5),
    "read-timeout-string": ("read_timeout", "3"),
    "breaker-failures-negative": ("breaker_failures", -1),
    "breaker-failures-float": ("breaker_failures", 2.5),
    "breaker-seconds-zero": ("breaker_seconds", 0),
    "breaker-seconds-bool": ("breaker_seconds", True),
}


@pytest.mark.parametrize("option, value", BAD_OPTIONS.values(), ids=BAD_OPTIONS)
def test_a_bad_option_is_improperly_configured_naming_it(option, value):
    with pytest.raises(ImproperlyConfigured, match=f"'{option}'") as excinfo:
        VaultSecretBackend(**{**GOOD_OPTIONS, option: value})

    assert GOOD_OPTIONS["token"] not in str(excinfo.value)


def test_an_unknown_option_is_improperly_configured_naming_it():
    with pytest.raises(ImproperlyConfigured, match="'role_id'"):
        VaultSecretBackend(**GOOD_OPTIONS, role_id="agentidp")


def test_unset_options_take_their_defaults():
    assert VaultSecretBackend(**GOOD_OPTIONS).options == {
        **GOOD_OPTIONS,
        "token_file": "",
        "mount": "secret",
        "namespace": "",
        "verify": True,
        "connect_timeout": 1.0,
        "read_timeout": 3.0,
        "breaker_failures": 3,
        "breaker_seconds": 5.0,
    }


@pytest.mark.parametrize(
    "option, value",
    [
        ("breaker_failures", 0),
        ("breaker_seconds", 0.5),
        ("url", "http://127.0.0.1:8200"),
        ("mount", "kv/agentidp"),
        ("namespace", "team-a"),
        ("verify", False),
        ("verify", "/etc/ssl/vault-ca.pem"),
        ("connect_timeout", 60),
        ("read_timeout", 0.05),
    ],
)
def test_good_options_are_kept(option, value):
    assert VaultSecretBackend(**{**GOOD_OPTIONS, option: value}).options[option] == value


def test_each_thread_gets_its_own_client(vault, backend):
    mine = backend._client()
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(backend._client()))
    thread.start()
    thread.join(10)

    assert backend._client() is mine
    assert len(theirs) == 1 and theirs[0] is not mine
    assert mine.url == theirs[0].url == vault.url


# --- the policy -------------------------------------------------------------------------------


def parse_policy(hcl: str) -> dict[str, set[str]]:
    blocks = re.findall(r'path "([^"]+)" \{\s*capabilities = \[([^\]]*)\]\s*\}', hcl)
    assert len(blocks) == hcl.count("path "), hcl
    return {path: set(re.findall(r'"([^"]+)"', capabilities)) for path, capabilities in blocks}


@pytest.mark.parametrize("mount", ["secret", "kv/apps"])
def test_the_policy_grants_exactly_what_the_backend_needs(mount):
    assert parse_policy(policy(mount)) == {
        f"{mount}/data/agentidp/*": {"create", "read", "update", "delete"},
        f"{mount}/metadata/agentidp/*": {"delete"},
    }


def test_the_app_token_may_use_agentidp_keys_and_nothing_else(vault):
    app = hvac.Client(url=vault.url, token=vault.app_token, namespace=vault.namespace or None, timeout=10)
    kv, mount = app.secrets.kv.v2, vault.mount
    key = key_for(make_owner())

    kv.create_or_update_secret(path=key, secret={SECRET_KEY: SECRET}, cas=0, mount_point=mount)
    kv.create_or_update_secret(path=key, secret={SECRET_KEY: OTHER}, cas=1, mount_point=mount)
    read = kv.read_secret_version(path=key, version=1, mount_point=mount, raise_on_deleted_version=True)
    assert read["data"]["data"] == {SECRET_KEY: SECRET}
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.read_secret_metadata(path=key, mount_point=mount)
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.list_secrets(path="agentidp/", mount_point=mount)
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.destroy_secret_versions(path=key, versions=[1], mount_point=mount)
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.create_or_update_secret(path=f"other/{uuid.uuid4()}", secret={"x": "y"}, mount_point=mount)
    kv.delete_metadata_and_all_versions(path=key, mount_point=mount)
    assert vault.metadata(f"{mount}/data/{key}") is None


# --- settings from the environment ------------------------------------------------------------


def vaultstore_from_environment(**environ: str) -> dict:
    """VAULTSTORE as agentidp/settings.py builds it from exactly this environment, in a fresh interpreter."""
    code = "import json; from django.conf import settings; print(json.dumps(settings.VAULTSTORE))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"DJANGO_SETTINGS_MODULE": "agentidp.settings", "SECRET_KEY": "x", **environ},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_without_vault_addr_only_bcrypt_is_configured():
    config = vaultstore_from_environment(VAULT_TOKEN="hvs.ignored", VAULT_MOUNT="kv")

    assert config["DEFAULT"] == "bcrypt"
    assert list(config["BACKENDS"]) == ["bcrypt"]


def test_vault_addr_puts_vault_first_with_every_vault_variable():
    config = vaultstore_from_environment(
        VAULT_ADDR="https://vault.internal:8200",
        VAULT_TOKEN="hvs.from-env",
        VAULT_MOUNT="/kv-agentidp/",
        VAULT_NAMESPACE="team-a",
        VAULT_CACERT="/etc/ssl/vault-ca.pem",
        VAULT_CONNECT_TIMEOUT="0.25",
        VAULT_READ_TIMEOUT="2.5",
        VAULT_BREAKER_FAILURES="5",
        VAULT_BREAKER_SECONDS="10",
    )

    assert config["DEFAULT"] == "vault"
    assert config["BACKENDS"]["bcrypt"]["BACKEND"] == "vaultstore.backends.bcrypt.BcryptSecretBackend"
    assert config["BACKENDS"]["vault"] == {
        "BACKEND": VAULT_BACKEND,
        "OPTIONS": {
            "url": "https://vault.internal:8200",
            "token": "hvs.from-env",
            "token_file": "",
            "mount": "kv-agentidp",
            "namespace": "team-a",
            "verify": "/etc/ssl/vault-ca.pem",
            "connect_timeout": 0.25,
            "read_timeout": 2.5,
            "breaker_failures": 5,
            "breaker_seconds": 10.0,
        },
    }


@pytest.mark.parametrize(
    "environ, verify",
    [({}, True), ({"VAULT_SKIP_VERIFY": "false"}, True), ({"VAULT_SKIP_VERIFY": "true"}, False)],
    ids=["default", "skip-verify-false", "skip-verify-true"],
)
def test_vault_addr_alone_takes_the_defaults(environ, verify):
    config = vaultstore_from_environment(VAULT_ADDR="https://vault.internal:8200", **environ)

    assert config["BACKENDS"]["vault"]["OPTIONS"] == {
        "url": "https://vault.internal:8200",
        "token": "",
        "token_file": "",
        "mount": "secret",
        "namespace": "",
        "verify": verify,
        "connect_timeout": 1.0,
        "read_timeout": 3.0,
        "breaker_failures": 3,
        "breaker_seconds": 5.0,
    }


# --- system checks ----------------------------------------------------------------------------


def vault_setting(**options) -> dict:
    return {
        "DEFAULT": "vault",
        "BACKENDS": {
            "bcrypt": {"BACKEND": "vaultstore.backends.bcrypt.BcryptSecretBackend", "OPTIONS": {"rounds": 4}},
            "vault": {"BACKEND": VAULT_BACKEND, "OPTIONS": {**GOOD_OPTIONS, **options}},
        },
    }


def ids(messages) -> list[str]:
    return [message.id for message in messages]


def test_system_check_e001_when_vault_has_no_token(settings):
    settings.VAULTSTORE = vault_setting(token="")

    assert ids(check_vaultstore_configuration()) == ["vaultstore.E001"]


@pytest.mark.parametrize(
    "option, value", [("url", "vault.internal:8200"), ("mount", "/secret/"), ("read_timeout", 0), ("verify", "")]
)
def test_system_check_e010_names_the_broken_option(settings, option, value):
    settings.VAULTSTORE = vault_setting(**{option: value})

    errors = check_vaultstore_configuration()

    assert ids(errors) == ["vaultstore.E010"]
    assert f"'{option}'" in errors[0].msg
    assert GOOD_OPTIONS["token"] not in errors[0].msg


def test_system_check_passes_a_good_vault_configuration(settings):
    settings.VAULTSTORE = vault_setting()

    assert check_vaultstore_configuration() == []


TRANSPORTS = {
    "https-verified": ({}, []),
    "https-ca-bundle": ({"verify": "/etc/ssl/vault-ca.pem"}, []),
    "http": ({"url": "http://vault.internal:8200"}, ["vaultstore.W001"]),
    "verify-off": ({"verify": False}, ["vaultstore.W002"]),
    "http-and-verify-off": (
        {"url": "http://vault.internal:8200", "verify": False},
        ["vaultstore.W001", "vaultstore.W002"],
    ),
}


@pytest.mark.parametrize("options, expected", TRANSPORTS.values(), ids=TRANSPORTS)
def test_deploy_check_warns_about_an_unprotected_vault_transport(settings, options, expected):
    settings.VAULTSTORE = vault_setting(**options)

    assert ids(check_vault_transport()) == expected


def test_deploy_check_has_nothing_to_say_without_vault():
    assert check_vault_transport() == []


def test_vault_checks_run_with_django_checks(settings):
    settings.VAULTSTORE = vault_setting(url="http://vault.internal:8200", verify=False)
    deploy = set(ids(run_checks(include_deployment_checks=True)))
    settings.VAULTSTORE = vault_setting(token="")
    plain = set(ids(run_checks()))

    assert {"vaultstore.W001", "vaultstore.W002"} <= deploy
    assert "vaultstore.E001" in plain


def test_the_documented_policy_is_exactly_the_one_the_backend_needs():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "devops" / "vault-setup.md").read_text()

    # Both the quickstart and the production section show it, for the default mount.
    assert docs.count(policy("secret")) == 2
