"""
The credential services with Vault as the default store: each step of their failure orders.

Every test talks to Vault over HTTP (the in-process test server, or a real Vault when
VAULT_ADDR/VAULT_TOKEN are set); tests that inject faults or read the server's state call
`vault.require_server()` first. Each failure is checked for what the caller sees and for
what must remain true: the old secret works, no row names an unwritten secret, and no
secret stays in Vault without a credential (nor a queued purge that will destroy it).
"""

import contextlib
import datetime
import logging
import types
from io import StringIO
from unittest import mock

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import DatabaseError
from django.utils import timezone

from credentials.clientauth import InvalidClient
from credentials.clientauth.secret import credential_authenticate
from credentials.errors import Conflict, CredentialNotFound
from credentials.models import Agent, AuditEvent, Credential, GraceSecret, SecretPurge
from credentials.services import (
    MAX_GRACE_SECRETS,
    PURGE_FIRST_DELAY_SECONDS,
    PURGE_MAX_DELAY_SECONDS,
    PurgeReport,
    agent_delete,
    agent_update,
    credential_create,
    credential_delete,
    credential_rotate,
    generate_client_secret,
    grace_secrets_expire,
    secret_purge_attempt,
    secret_purges_run_due,
)
from tests.credentials.helpers import authenticates, end_grace_periods, events, expire, reason
from tests.dbfaults import failing, inserts
from tests.factories import make_credential, wrong_secret
from vaultstore.backends import get_default_backend
from vaultstore.backends.vault import DUMMY_KEY
from vaultstore.exceptions import SecretReadError, SecretStoreError, SecretWriteError

#: A well-formed secret no credential has: a failure that reaches the store.
WRONG = wrong_secret()

#: Substring of every KV data path AgentIdP writes (the faults below hit only those writes).
DATA = "/data/agentidp/"


# --- helpers --------------------------------------------------------------------------------


def path_for(vault, owner) -> str:
    """The vault_path the contract gives a credential: `{mount}/data/agentidp/agents/{agentId}/credentials/{id}`."""
    return f"{vault.mount}/data/agentidp/agents/{owner.agent_id}/credentials/{owner.id}"


def versions_in_server(vault, path: str) -> dict | None:
    """The test server's own view of a key (also while it refuses connections)."""
    return vault.server.secret_versions(vault.key_of(path))


@contextlib.contextmanager
def store_spy():
    """Record the owners the default backend is asked to store for, and what it confirmed."""
    backend = get_default_backend()
    real_store = backend.store
    spy = types.SimpleNamespace(owners=[], written=[])

    def store(*, owner, secret, replacing=None):
        spy.owners.append(owner)
        stored = real_store(owner=owner, secret=secret, replacing=replacing)
        spy.written.append(stored)
        return stored

    with mock.patch.object(backend, "store", store):
        yield spy


@contextlib.contextmanager
def secrets_spy():
    """Record every client secret the default backend is given to store (also by operations that fail)."""
    backend = get_default_backend()
    real_store = backend.store
    made = []

    def store(*, owner, secret, replacing=None):
        made.append(secret)
        return real_store(owner=owner, secret=secret, replacing=replacing)

    with mock.patch.object(backend, "store", store):
        yield made


#: Ways a write to Vault fails, on AgentIdP's data writes only. "slow" answers after the client
#: gave up and then applies the write; "applied_then_dropped" applies it and drops the connection.
WRITE_FAULTS = ("down", "sealed", "slow", "403", "500", "reset", "applied_then_dropped")


def break_writes(server, fault: str) -> None:
    once = fault in ("slow", "reset", "applied_then_dropped")
    server.fail(fault, path=DATA, method="POST", times=1 if once else None)


#: Faults after which Vault holds a version that AgentIdP never got an answer for.
WRITE_LANDS = {"slow", "applied_then_dropped"}


def delete_while_down(vault, issued, capture) -> str:
    """Delete the credential while Vault refuses connections (after-commit purge run); return its path."""
    path = Credential.objects.get(pk=issued.credential.pk).vault_path
    vault.server.go_down()
    with capture(execute=True):
        credential_delete(acting=None, credential=issued.credential)
    return path


def run_every_queued_purge() -> None:
    """Run the purge queue now, whatever its schedule, as `manage.py purge_secrets` does."""
    call_command("purge_secrets", stdout=StringIO(), stderr=StringIO())


def assert_next_attempt_in(purge: SecretPurge, seconds: int, before, after) -> None:
    delay = datetime.timedelta(seconds=seconds)
    assert before + delay <= purge.next_attempt_at <= after + delay


# --- A. credential_create -------------------------------------------------------------------


def test_create_stores_the_secret_in_vault_at_the_credentials_own_path(vault_enabled, agent):
    issued = credential_create(acting=None, agent=agent)

    row = Credential.objects.get(pk=issued.credential.pk)
    assert row.storage == "vault"
    assert row.vault_path == path_for(vault_enabled, row)
    assert row.vault_version == 1
    assert row.secret_hash == ""
    assert vault_enabled.read(row.vault_path, 1) == {"clientSecret": issued.client_secret}
    [event] = events(AuditEvent.Action.CREDENTIAL_CREATED)
    assert event.credential_id == row.id
    assert event.details == {"clientId": row.client_id, "kind": "secret", "storage": "vault"}
    assert authenticates(row.client_id, issued.client_secret)


@pytest.mark.parametrize("fault", ["down", "sealed", "slow", "403", "500", "reset"])
def test_create_leaves_no_row_no_event_and_no_vault_entry_when_the_vault_write_fails(vault_enabled, agent, fault):
    server = vault_enabled.require_server()
    break_writes(server, fault)
    before = timezone.now()

    with store_spy() as spy, pytest.raises(SecretWriteError) as excinfo:
        credential_create(acting=None, agent=agent)

    after = timezone.now()
    assert excinfo.value.code == "VAULT_WRITE_ERROR"
    assert excinfo.value.retry_after == 5
    assert not Credential.objects.exists()
    assert not events(AuditEvent.Action.CREDENTIAL_CREATED)
    [owner] = spy.owners
    path = path_for(vault_enabled, owner)
    # A write Vault may still apply (no answer, a 500) is purged once more later; a refused one needs nothing.
    purges = list(SecretPurge.objects.all())
    if excinfo.value.maybe_written:
        [purge] = purges
        assert (purge.vault_path, purge.reason, purge.credential_id) == (path, "create_failed", owner.id)
        assert_next_attempt_in(purge, PURGE_FIRST_DELAY_SECONDS, before, after)
    else:
        assert purges == []
    assert excinfo.value.maybe_written == (fault in ("slow", "500", "reset"))
    server.recover()
    if fault == "slow":
        assert versions_in_server(vault_enabled, path) is not None  # it landed after the immediate clean-up

    run_every_queued_purge()

    assert vault_enabled.metadata(path) is None
    assert vault_enabled.keys_of_agent(agent.id) == []
    assert not SecretPurge.objects.exists()


def test_create_destroys_the_entry_when_the_write_lands_but_its_answer_is_lost(vault_enabled, agent):
    server = vault_enabled.require_server()
    break_writes(server, "applied_then_dropped")

    with store_spy() as spy, pytest.raises(SecretWriteError) as excinfo:
        credential_create(acting=None, agent=agent)

    assert excinfo.value.maybe_written
    path = path_for(vault_enabled, spy.owners[0])
    key = vault_enabled.key_of(path)
    # The write was applied (the server processed it), then destroyed again at once.
    assert [r.method for r in server.requests if r.path.endswith(key)] == ["POST", "DELETE"]
    assert vault_enabled.metadata(path) is None
    assert not Credential.objects.exists()
    assert not events(AuditEvent.Action.CREDENTIAL_CREATED)
    # One more destruction waits in the queue, not yet due, in case a copy of the write was still in flight.
    purge = SecretPurge.objects.get()
    assert (purge.vault_path, purge.reason, purge.attempts, purge.last_error) == (path, "create_failed", 0, "")
    assert purge.next_attempt_at > timezone.now()
    assert secret_purges_run_due() == PurgeReport(purged=0, failed=0)

    run_every_queued_purge()

    assert not SecretPurge.objects.exists()
    assert vault_enabled.metadata(path) is None


def test_create_queues_the_purge_when_vault_does_not_confirm_the_cleanup_either(vault_enabled, agent):
    server = vault_enabled.require_server()
    break_writes(server, "applied_then_dropped")
    server.inject("status", status=503, path="/metadata/agentidp/", method="DELETE")

    with store_spy() as spy, pytest.raises(SecretWriteError):
        credential_create(acting=None, agent=agent)

    owner = spy.owners[0]
    path = path_for(vault_enabled, owner)
    assert not Credential.objects.exists()
    assert versions_in_server(vault_enabled, path) is not None  # the orphan, for now
    purge = SecretPurge.objects.get()
    assert (purge.storage, purge.vault_path, purge.reason) == ("vault", path, "create_failed")
    assert (purge.agent_id, purge.credential_id) == (agent.id, owner.id)
    assert purge.last_error == "SecretStoreUnavailable"

    server.clear_faults()
    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    report = secret_purges_run_due()

    assert report == PurgeReport(purged=1, failed=0)
    assert vault_enabled.metadata(path) is None
    assert not SecretPurge.objects.exists()


def test_create_logs_the_orphan_path_at_error_when_neither_vault_nor_the_database_take_the_cleanup(
    vault_enabled, agent, caplog
):
    server = vault_enabled.require_server()
    break_writes(server, "applied_then_dropped")
    server.inject("status", status=503, path="/metadata/agentidp/", method="DELETE")
    caplog.set_level(logging.DEBUG)

    with (
        store_spy() as spy,
        failing(inserts(SecretPurge), DatabaseError("database is gone")),
        pytest.raises(SecretWriteError),
    ):
        credential_create(acting=None, agent=agent)

    path = path_for(vault_enabled, spy.owners[0])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("credentials.services")]
    assert [path in r.getMessage() for r in errors] == [True]
    assert not Credential.objects.exists()
    assert not SecretPurge.objects.exists()


def test_create_destroys_the_vault_entry_when_the_database_write_fails(vault_enabled, agent):
    with (
        store_spy() as spy,
        failing(inserts(AuditEvent), DatabaseError("disk full")),
        pytest.raises(DatabaseError),
    ):
        credential_create(acting=None, agent=agent)

    [written] = spy.written  # Vault confirmed the write before the database failed
    assert written.vault_version == 1
    assert not Credential.objects.exists()
    assert vault_enabled.metadata(written.vault_path) is None
    assert vault_enabled.keys_of_agent(agent.id) == []
    assert not SecretPurge.objects.exists()


def test_create_queues_the_vault_entry_when_the_database_fails_and_vault_then_refuses_the_cleanup(vault_enabled, agent):
    server = vault_enabled.require_server()
    server.inject("status", status=503, path="/metadata/agentidp/", method="DELETE")

    with (
        store_spy() as spy,
        failing(inserts(AuditEvent), DatabaseError("disk full")),
        pytest.raises(DatabaseError),
    ):
        credential_create(acting=None, agent=agent)

    [written] = spy.written
    assert not Credential.objects.exists()
    purge = SecretPurge.objects.get()
    assert (purge.vault_path, purge.reason) == (written.vault_path, "create_failed")

    server.clear_faults()
    run_every_queued_purge()

    assert vault_enabled.metadata(written.vault_path) is None
    assert not SecretPurge.objects.exists()


# --- B. credential_rotate -------------------------------------------------------------------


def test_rotate_writes_a_new_version_at_the_same_path_and_the_old_secret_stops_at_once(vault_enabled, agent):
    issued = make_credential(agent)
    before = Credential.objects.get(pk=issued.credential.pk)

    rotated = credential_rotate(acting=None, credential=issued.credential)

    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.id, row.client_id, row.vault_path, row.storage) == (
        before.id,
        before.client_id,
        before.vault_path,
        "vault",
    )
    assert row.vault_version == before.vault_version + 1
    assert row.secret_hash == ""
    assert row.rotated_at is not None
    assert vault_enabled.read(row.vault_path, row.vault_version) == {"clientSecret": rotated.client_secret}
    assert reason(row.client_id, issued.client_secret) == "wrong_secret"
    assert authenticates(row.client_id, rotated.client_secret)
    assert not GraceSecret.objects.exists()
    assert not SecretPurge.objects.exists()


def test_rotate_with_grace_keeps_the_previous_vault_version_working_until_the_grace_ends(vault_enabled, agent):
    issued = make_credential(agent)
    client_id = issued.credential.client_id
    before = Credential.objects.get(pk=issued.credential.pk)

    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=300)

    grace = GraceSecret.objects.get(credential=issued.credential)
    assert (grace.storage, grace.vault_path, grace.vault_version, grace.secret_hash) == (
        "vault",
        before.vault_path,
        before.vault_version,
        "",
    )
    assert authenticates(client_id, issued.client_secret)
    assert authenticates(client_id, rotated.client_secret)

    end_grace_periods(issued.credential)

    assert reason(client_id, issued.client_secret) == "wrong_secret"
    assert authenticates(client_id, rotated.client_secret)


@pytest.mark.parametrize("fault", list(WRITE_FAULTS))
def test_rotate_keeps_the_old_secret_when_the_vault_write_fails(vault_enabled, agent, fault):
    server = vault_enabled.require_server()
    issued = make_credential(agent)
    client_id = issued.credential.client_id
    before = Credential.objects.get(pk=issued.credential.pk)
    break_writes(server, fault)

    with pytest.raises(SecretWriteError) as excinfo:
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    assert excinfo.value.code == "VAULT_WRITE_ERROR"
    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.storage, row.vault_path, row.vault_version, row.rotated_at, row.secret_hash) == (
        before.storage,
        before.vault_path,
        before.vault_version,
        before.rotated_at,
        before.secret_hash,
    )
    assert not GraceSecret.objects.exists()
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    server.recover()
    assert authenticates(client_id, issued.client_secret)

    rotated = credential_rotate(acting=None, credential=issued.credential)

    row = Credential.objects.get(pk=issued.credential.pk)
    # A version Vault applied without AgentIdP hearing of it is never trusted: the next write goes after it.
    assert row.vault_version == before.vault_version + (2 if fault in WRITE_LANDS else 1)
    assert row.vault_version == vault_enabled.metadata(row.vault_path)["current_version"]
    assert vault_enabled.read(row.vault_path, row.vault_version) == {"clientSecret": rotated.client_secret}
    assert authenticates(client_id, rotated.client_secret)
    assert reason(client_id, issued.client_secret) == "wrong_secret"


def test_rotate_keeps_the_old_version_trusted_when_the_database_fails_after_the_vault_write(vault_enabled, agent):
    issued = make_credential(agent)
    client_id = issued.credential.client_id
    before = Credential.objects.get(pk=issued.credential.pk)

    with (
        failing(inserts(AuditEvent), DatabaseError("disk full")),
        pytest.raises(DatabaseError),
    ):
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.vault_version, row.rotated_at) == (before.vault_version, before.rotated_at)
    assert vault_enabled.metadata(row.vault_path)["current_version"] == before.vault_version + 1  # the orphan
    assert not GraceSecret.objects.exists()
    assert authenticates(client_id, issued.client_secret)

    rotated = credential_rotate(acting=None, credential=issued.credential)

    row = Credential.objects.get(pk=issued.credential.pk)
    assert row.vault_version == before.vault_version + 2
    assert vault_enabled.read(row.vault_path, row.vault_version) == {"clientSecret": rotated.client_secret}
    assert authenticates(client_id, rotated.client_secret)
    assert reason(client_id, issued.client_secret) == "wrong_secret"


def test_rotate_of_a_deleted_vault_credential_writes_nothing_to_vault(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    issued = make_credential(agent)
    path = Credential.objects.get(pk=issued.credential.pk).vault_path
    with django_capture_on_commit_callbacks(execute=True):
        credential_delete(acting=None, credential=issued.credential)

    with pytest.raises(CredentialNotFound):
        credential_rotate(acting=None, credential=issued.credential)

    assert vault_enabled.metadata(path) is None


def test_rotate_moves_a_bcrypt_credential_made_before_vault_was_enabled_into_vault(vault, settings, issued):
    assert issued.credential.storage == "bcrypt"
    settings.VAULTSTORE = vault.vaultstore_setting()
    client_id = issued.credential.client_id

    rotated = credential_rotate(acting=None, credential=issued.credential)

    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.storage, row.secret_hash, row.vault_version) == ("vault", "", 1)
    assert row.vault_path == path_for(vault, row)
    assert vault.read(row.vault_path, 1) == {"clientSecret": rotated.client_secret}
    assert authenticates(client_id, rotated.client_secret)
    assert reason(client_id, issued.client_secret) == "wrong_secret"
    assert not GraceSecret.objects.exists()
    assert not SecretPurge.objects.exists()


def test_rotate_into_vault_with_grace_keeps_the_bcrypt_hash_only_until_the_grace_ends(vault, settings, issued):
    old_hash = Credential.objects.get(pk=issued.credential.pk).secret_hash
    assert old_hash.startswith("$2")
    settings.VAULTSTORE = vault.vaultstore_setting()
    client_id = issued.credential.client_id

    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=300)

    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.storage, row.secret_hash, row.vault_version) == ("vault", "", 1)
    grace = GraceSecret.objects.get(credential=row)
    assert (grace.storage, grace.secret_hash, grace.vault_path, grace.vault_version) == ("bcrypt", old_hash, None, None)
    assert authenticates(client_id, issued.client_secret)
    assert authenticates(client_id, rotated.client_secret)

    end_grace_periods(issued.credential)

    assert reason(client_id, issued.client_secret) == "wrong_secret"
    assert grace_secrets_expire() == 1
    assert not GraceSecret.objects.exists()
    assert not Credential.objects.filter(secret_hash=old_hash).exists()
    assert not SecretPurge.objects.exists()  # a hash needs nothing destroyed outside the database
    assert authenticates(client_id, rotated.client_secret)


def test_bcrypt_secret_in_its_grace_period_still_works_while_vault_is_down(vault, settings, issued):
    server = vault.require_server()
    settings.VAULTSTORE = vault.vaultstore_setting()
    client_id = issued.credential.client_id
    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=300)
    server.go_down()

    # The current secret lives in Vault and cannot be read, but the old one is a bcrypt hash.
    assert authenticates(client_id, issued.client_secret)
    with pytest.raises(SecretReadError):
        credential_authenticate(client_id=client_id, client_secret=rotated.client_secret)
    with pytest.raises(SecretReadError):  # might have been the Vault secret: "try again", not "wrong"
        credential_authenticate(client_id=client_id, client_secret=WRONG)


def test_rotate_refuses_a_graceful_rotation_when_max_grace_secrets_are_live(vault_enabled, agent):
    issued = make_credential(agent)
    client_id = issued.credential.client_id
    secrets = [issued.client_secret]
    for _ in range(MAX_GRACE_SECRETS):
        secrets.append(
            credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60).client_secret
        )
    before = Credential.objects.get(pk=issued.credential.pk)

    with pytest.raises(Conflict) as excinfo:
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    assert excinfo.value.status == 409
    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.vault_version, row.rotated_at) == (before.vault_version, before.rotated_at)
    assert vault_enabled.metadata(row.vault_path)["current_version"] == row.vault_version  # nothing written
    assert GraceSecret.objects.filter(credential=row).count() == MAX_GRACE_SECRETS
    # Vault still keeps every version the database trusts, the first one included.
    assert all(authenticates(client_id, secret) for secret in secrets)


def test_rotate_off_vault_destroys_the_entry_left_behind(
    vault_enabled, settings, agent, django_capture_on_commit_callbacks
):
    issued = make_credential(agent)
    path = Credential.objects.get(pk=issued.credential.pk).vault_path
    settings.VAULTSTORE = vault_enabled.vaultstore_setting(default="bcrypt")

    with django_capture_on_commit_callbacks(execute=True):
        rotated = credential_rotate(acting=None, credential=issued.credential)

    row = Credential.objects.get(pk=issued.credential.pk)
    assert (row.storage, row.vault_path, row.vault_version) == ("bcrypt", None, None)
    assert row.secret_hash.startswith("$2")
    assert vault_enabled.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert authenticates(row.client_id, rotated.client_secret)
    assert reason(row.client_id, issued.client_secret) == "wrong_secret"


def test_rotate_off_vault_with_grace_destroys_the_entry_once_the_grace_ends(
    vault_enabled, settings, agent, django_capture_on_commit_callbacks
):
    issued = make_credential(agent)
    client_id = issued.credential.client_id
    path = Credential.objects.get(pk=issued.credential.pk).vault_path
    settings.VAULTSTORE = vault_enabled.vaultstore_setting(default="bcrypt")

    with django_capture_on_commit_callbacks(execute=True):
        rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=300)

    assert vault_enabled.read(path, 1) == {"clientSecret": issued.client_secret}
    assert authenticates(client_id, issued.client_secret)
    assert not SecretPurge.objects.exists()

    end_grace_periods(issued.credential)
    with django_capture_on_commit_callbacks(execute=True):
        assert grace_secrets_expire() == 1

    assert vault_enabled.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert reason(client_id, issued.client_secret) == "wrong_secret"
    assert authenticates(client_id, rotated.client_secret)


# --- C. authentication with bcrypt and Vault side by side -----------------------------------


def test_bcrypt_credential_made_before_vault_was_enabled_still_authenticates(vault, settings, issued):
    settings.VAULTSTORE = vault.vaultstore_setting()

    assert authenticates(issued.credential.client_id, issued.client_secret)
    assert reason(issued.credential.client_id, WRONG) == "wrong_secret"


@pytest.mark.parametrize("outage", ["down", "sealed"])
def test_while_vault_is_unavailable_bcrypt_credentials_work_and_vault_ones_are_a_read_error(
    vault, settings, issued, outage
):
    server = vault.require_server()
    settings.VAULTSTORE = vault.vaultstore_setting()
    in_vault = make_credential(issued.credential.agent)
    vault_client_id = in_vault.credential.client_id
    break_writes(server, outage)

    assert authenticates(issued.credential.client_id, issued.client_secret)
    assert reason(issued.credential.client_id, WRONG) == "wrong_secret"
    for presented in (in_vault.client_secret, WRONG):
        with pytest.raises(SecretReadError) as excinfo:
            credential_authenticate(client_id=vault_client_id, client_secret=presented)
        assert excinfo.value.code == "VAULT_READ_ERROR"
        assert excinfo.value.retry_after == 5
    # The dummy read for an unknown client fails too, as a Vault credential's read does:
    # the answer cannot tell them apart.
    with pytest.raises(SecretReadError):
        credential_authenticate(client_id="no-such-client", client_secret=WRONG)

    server.recover()

    assert authenticates(vault_client_id, in_vault.client_secret)


def test_unknown_client_pays_one_vault_read_of_a_key_no_credential_has(vault_enabled, db):
    server = vault_enabled.require_server()
    server.clear_requests()

    assert reason("no-such-client", WRONG) == "unknown_client"

    reads = [r for r in server.requests if r.method == "GET" and r.path.endswith(DUMMY_KEY)]
    assert len(reads) == 1


def test_vault_credential_of_a_suspended_agent_is_invalid_client(vault_enabled, agent):
    issued = make_credential(agent)
    agent_update(acting=None, agent=agent, status=Agent.Status.SUSPENDED)

    assert reason(issued.credential.client_id, issued.client_secret) == "agent_suspended"

    agent_update(acting=None, agent=agent, status=Agent.Status.ACTIVE)

    assert authenticates(issued.credential.client_id, issued.client_secret)


def test_expired_vault_credential_is_invalid_client(vault_enabled, agent):
    issued = make_credential(agent)
    expire(issued.credential)

    assert reason(issued.credential.client_id, issued.client_secret) == "credential_expired"
    assert reason(issued.credential.client_id, WRONG) == "wrong_secret"


# --- D. credential_delete and the purge queue -----------------------------------------------


def test_delete_destroys_every_version_and_the_metadata_after_the_commit(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    issued = make_credential(agent)
    credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)
    path = Credential.objects.get(pk=issued.credential.pk).vault_path

    with django_capture_on_commit_callbacks(execute=True):
        credential_delete(acting=None, credential=issued.credential)
        assert vault_enabled.metadata(path)["current_version"] == 2  # not before the commit

    assert vault_enabled.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert not Credential.objects.exists()
    assert not GraceSecret.objects.exists()
    [event] = events(AuditEvent.Action.CREDENTIAL_DELETED)
    assert (event.credential_id, event.details) == (
        issued.credential.id,
        {"clientId": issued.credential.client_id, "kind": "secret"},
    )
    assert reason(issued.credential.client_id, issued.client_secret) == "unknown_client"


def test_delete_changes_nothing_when_the_database_fails(vault_enabled, agent, django_capture_on_commit_callbacks):
    issued = make_credential(agent)
    path = Credential.objects.get(pk=issued.credential.pk).vault_path

    with (
        django_capture_on_commit_callbacks(execute=True),
        failing(inserts(AuditEvent), DatabaseError("disk full")),
        pytest.raises(DatabaseError),
    ):
        credential_delete(acting=None, credential=issued.credential)

    assert Credential.objects.filter(pk=issued.credential.pk).exists()
    assert not SecretPurge.objects.exists()
    assert vault_enabled.read(path, 1) == {"clientSecret": issued.client_secret}
    assert authenticates(issued.credential.client_id, issued.client_secret)


def test_delete_while_vault_is_down_takes_effect_at_once_and_queues_the_purge(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    vault_enabled.require_server()
    issued = make_credential(agent)
    before = timezone.now()

    path = delete_while_down(vault_enabled, issued, django_capture_on_commit_callbacks)

    after = timezone.now()
    assert not Credential.objects.filter(pk=issued.credential.pk).exists()
    # Refused: as an unknown client, whose dummy read fails while Vault is down, as a Vault credential's would.
    with pytest.raises(SecretReadError):
        credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)
    purge = SecretPurge.objects.get()
    assert (purge.storage, purge.vault_path, purge.reason, purge.attempts) == (
        "vault",
        path,
        "credential_deleted",
        1,
    )
    assert (purge.agent_id, purge.credential_id) == (agent.id, issued.credential.id)
    assert_next_attempt_in(purge, PURGE_FIRST_DELAY_SECONDS, before, after)
    assert purge.last_error in {cls.__name__ for cls in (SecretStoreError, *SecretStoreError.__subclasses__())}
    assert versions_in_server(vault_enabled, path)[1]["data"] == {"clientSecret": issued.client_secret}
    assert len(events(AuditEvent.Action.CREDENTIAL_DELETED)) == 1


def test_a_later_vault_write_works_off_the_purges_that_are_due(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    server = vault_enabled.require_server()
    path = delete_while_down(vault_enabled, make_credential(agent), django_capture_on_commit_callbacks)
    server.come_up()

    # Not due yet: a write leaves it to its schedule.
    with django_capture_on_commit_callbacks(execute=True):
        credential_create(acting=None, agent=agent)
    assert SecretPurge.objects.get().attempts == 1
    assert versions_in_server(vault_enabled, path) is not None

    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        other = credential_create(acting=None, agent=agent)

    assert vault_enabled.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert authenticates(other.credential.client_id, other.client_secret)


def test_purge_secrets_command_destroys_queued_secrets_whatever_their_schedule(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    server = vault_enabled.require_server()
    path = delete_while_down(vault_enabled, make_credential(agent), django_capture_on_commit_callbacks)

    # Still down: the command fails, and the job stays queued with one more attempt.
    before = timezone.now()
    with pytest.raises(CommandError) as excinfo:
        call_command("purge_secrets", stdout=StringIO(), stderr=StringIO())
    after = timezone.now()
    assert excinfo.value.returncode != 0
    assert "Destroyed 0 queued secrets, 1 failed" in str(excinfo.value)
    purge = SecretPurge.objects.get()
    assert purge.attempts == 2
    assert_next_attempt_in(purge, 2 * PURGE_FIRST_DELAY_SECONDS, before, after)

    server.come_up()
    out = StringIO()
    call_command("purge_secrets", "--dry-run", verbosity=2, stdout=out)

    assert "1 secrets queued for destruction" in out.getvalue()
    assert path in out.getvalue()
    assert SecretPurge.objects.get().attempts == 2
    assert versions_in_server(vault_enabled, path) is not None

    out = StringIO()
    call_command("purge_secrets", stdout=out)

    assert "Destroyed 1 queued secrets, 0 failed and stay queued" in out.getvalue()
    assert vault_enabled.metadata(path) is None
    assert not SecretPurge.objects.exists()


def test_purge_secrets_refuses_to_run_without_the_vault_store_configured(
    vault_enabled, settings, agent, django_capture_on_commit_callbacks
):
    server = vault_enabled.require_server()
    path = delete_while_down(vault_enabled, make_credential(agent), django_capture_on_commit_callbacks)
    server.come_up()
    settings.VAULTSTORE = {"DEFAULT": "bcrypt", "BACKENDS": {"bcrypt": settings.VAULTSTORE["BACKENDS"]["bcrypt"]}}

    with pytest.raises(CommandError) as excinfo:
        call_command("purge_secrets", stdout=StringIO())

    assert "(vault)" in str(excinfo.value)
    assert "VAULT_ADDR" in str(excinfo.value)
    assert SecretPurge.objects.get().attempts == 1
    # An attempt without the store configured is a failure too: the job waits for it.
    assert secret_purge_attempt(purge_id=SecretPurge.objects.get().id) is False
    purge = SecretPurge.objects.get()
    assert (purge.attempts, purge.last_error) == (2, "SecretStoreUnavailable")
    assert versions_in_server(vault_enabled, path) is not None


def test_purge_backoff_doubles_after_each_failed_attempt_up_to_the_maximum(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    vault_enabled.require_server()
    delete_while_down(vault_enabled, make_credential(agent), django_capture_on_commit_callbacks)
    purge_id = SecretPurge.objects.get().id

    for attempts in (2, 3):
        before = timezone.now()
        assert secret_purge_attempt(purge_id=purge_id) is False
        after = timezone.now()
        purge = SecretPurge.objects.get()
        assert purge.attempts == attempts
        assert_next_attempt_in(purge, PURGE_FIRST_DELAY_SECONDS * 2 ** (attempts - 1), before, after)

    SecretPurge.objects.update(attempts=20)
    before = timezone.now()
    secret_purge_attempt(purge_id=purge_id)
    assert_next_attempt_in(SecretPurge.objects.get(), PURGE_MAX_DELAY_SECONDS, before, timezone.now())
    # None of them is due, so the automatic run leaves the job alone.
    assert secret_purges_run_due() == PurgeReport(purged=0, failed=0)
    assert SecretPurge.objects.get().attempts == 21


def test_agent_delete_while_vault_is_down_deletes_everything_and_queues_each_path(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    server = vault_enabled.require_server()
    first, second = make_credential(agent), make_credential(agent)
    credential_rotate(acting=None, credential=first.credential, grace_period_seconds=600)
    paths = sorted(Credential.objects.values_list("vault_path", flat=True))
    server.go_down()

    with django_capture_on_commit_callbacks(execute=True):
        agent_delete(acting=None, agent=agent)

    assert not Agent.objects.exists()
    assert not Credential.objects.exists()
    assert not GraceSecret.objects.exists()
    purges = SecretPurge.objects.order_by("vault_path")
    assert [(p.vault_path, p.reason, p.attempts) for p in purges] == [(p, "credential_deleted", 1) for p in paths]
    assert all(versions_in_server(vault_enabled, path) is not None for path in paths)
    assert len(events(AuditEvent.Action.CREDENTIAL_DELETED)) == 2
    assert len(events(AuditEvent.Action.AGENT_DELETED)) == 1
    for issued in (first, second):
        with pytest.raises(SecretReadError):  # refused; Vault is down, so even the unknown client's dummy read fails
            credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)

    server.recover()
    run_every_queued_purge()

    assert [vault_enabled.metadata(path) for path in paths] == [None, None]
    assert not SecretPurge.objects.exists()


def test_delete_of_a_rotated_credential_queues_its_one_path_once(
    vault_enabled, agent, django_capture_on_commit_callbacks
):
    server = vault_enabled.require_server()
    issued = make_credential(agent)
    for _ in range(2):
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)
    assert GraceSecret.objects.count() == 2

    path = delete_while_down(vault_enabled, issued, django_capture_on_commit_callbacks)

    [purge] = SecretPurge.objects.all()
    assert purge.vault_path == path
    server.come_up()
    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    assert secret_purges_run_due() == PurgeReport(purged=1, failed=0)
    assert vault_enabled.metadata(path) is None


# --- E. logs and errors ---------------------------------------------------------------------


def _exception_texts(exc: BaseException) -> list[str]:
    """str and repr of an exception and everything chained to it (a suppressed context still reaches error reports)."""
    texts = []
    while exc is not None:
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return texts


def test_logs_and_errors_never_carry_a_client_secret_or_the_vault_token(
    vault_enabled, agent, caplog, django_capture_on_commit_callbacks
):
    server = vault_enabled.require_server()
    caplog.set_level(logging.DEBUG)
    raised = []

    with secrets_spy() as made:
        issued = make_credential(agent)
        client_id = issued.credential.client_id
        rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)
        credential_authenticate(client_id=client_id, client_secret=rotated.client_secret)
        wrong = generate_client_secret(issued.credential.secret_ref)
        made.append(wrong)
        with pytest.raises(InvalidClient) as excinfo:
            credential_authenticate(client_id=client_id, client_secret=wrong)
        raised.append(excinfo.value)
        server.go_down()
        cache.clear()  # a secret not verified recently, so Vault must be asked
        with pytest.raises(SecretReadError) as excinfo:
            credential_authenticate(client_id=client_id, client_secret=rotated.client_secret)
        raised.append(excinfo.value)
        server.come_up()
        server.inject("status", status=500, path=DATA, method="POST", times=1)
        with pytest.raises(SecretWriteError) as excinfo:
            credential_create(acting=None, agent=agent)
        raised.append(excinfo.value)
        with django_capture_on_commit_callbacks(execute=True):
            credential_delete(acting=None, credential=issued.credential)

    assert len(made) == 4  # create, rotate, the wrong one presented, the failed create
    path = path_for(vault_enabled, issued.credential)
    assert any(path in record.getMessage() for record in caplog.records)  # the logs were captured
    texts = [record.getMessage() for record in caplog.records]
    texts += [caplog.text]
    texts += [text for exc in raised for text in _exception_texts(exc)]
    for text in texts:
        for secret in [*made, vault_enabled.app_token]:
            assert secret not in text


def test_a_queued_purge_never_destroys_a_location_that_is_trusted_again(
    vault_enabled, settings, agent, django_capture_on_commit_callbacks
):
    server = vault_enabled.require_server()
    issued = make_credential(agent)
    path = Credential.objects.get(pk=issued.credential.pk).vault_path
    vault_on = settings.VAULTSTORE
    # Vault is switched off and the credential rotated off it; destroying its entry waits for Vault.
    settings.VAULTSTORE = vault_enabled.vaultstore_setting(default="bcrypt")
    server.go_down()
    with django_capture_on_commit_callbacks(execute=True):
        credential_rotate(acting=None, credential=issued.credential)
    assert SecretPurge.objects.filter(vault_path=path).exists()
    # Vault is back, and the credential rotates into it again, at the same path, before the purge ran.
    server.come_up()
    settings.VAULTSTORE = vault_on
    back = credential_rotate(acting=None, credential=issued.credential)
    assert Credential.objects.get(pk=issued.credential.pk).vault_path == path

    call_command("purge_secrets", verbosity=0)

    assert not SecretPurge.objects.exists()
    assert vault_enabled.metadata(path) is not None
    assert authenticates(issued.credential.client_id, back.client_secret)
