"""
Upgrade on use: a bcrypt credential made before Vault was enabled moves into Vault, with
the same secret, the first time it authenticates; and the services migrate_to_vault
relies on (credential_migrate with its from_storage, client_secret and before_commit, and
credential_delete of a credential whose move was interrupted).

Each test makes its bcrypt credential with the suite's bcrypt-only settings and only then
switches Vault on, as an operator does by setting VAULT_ADDR on a running installation.
Vault is a real HTTP server (or a real Vault); tests that inject faults or count the
requests Vault received call `vault.require_server()`.
"""

import datetime
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import DatabaseError
from django.utils import timezone

from credentials import secretformat, services
from credentials.clientauth.secret import UPGRADE_PAUSED_CACHE_KEY, credential_authenticate
from credentials.errors import CredentialNotFound
from credentials.models import Agent, AuditEvent, Credential, GraceSecret, SecretPurge
from credentials.services import (
    agent_update,
    credential_delete,
    credential_migrate,
    credential_rotate,
    grace_secrets_expire,
)
from tests.credentials.helpers import authenticates, end_grace_periods, events, expire, reason
from tests.dbfaults import failing, inserts
from tests.factories import make_credential, wrong_secret

#: Substring of every KV data path AgentIdP writes.
DATA = "/data/agentidp/"


@pytest.fixture
def enable_vault(vault, settings):
    """Return a function that switches Vault on as the default store (bcrypt keeps verifying what it holds)."""

    def enable():
        settings.VAULTSTORE = vault.vaultstore_setting()
        return vault

    return enable


@pytest.fixture
def old(issued, enable_vault):
    """A bcrypt credential made while Vault was off; Vault is on now."""
    assert Credential.objects.get(pk=issued.credential.pk).storage == "bcrypt"
    enable_vault()
    return issued


def path_for(vault, credential) -> str:
    return f"{vault.mount}/data/agentidp/agents/{credential.agent_id}/credentials/{credential.id}"


def data_writes(server) -> list:
    """The writes of secrets the server received (answered or not)."""
    return [r for r in server.requests if r.method in ("POST", "PUT") and DATA in r.path]


def row_of(issued) -> Credential:
    return Credential.objects.get(pk=issued.credential.pk)


def assert_still_bcrypt(issued, secret_hash: str) -> None:
    row = row_of(issued)
    assert (row.storage, row.secret_hash, row.vault_path, row.vault_version) == ("bcrypt", secret_hash, None, None)
    assert not events(AuditEvent.Action.CREDENTIAL_MOVED)


# --- the move -------------------------------------------------------------------------------


def test_first_successful_token_request_moves_a_bcrypt_credential_into_vault_with_the_same_secret(
    old, vault, token_response
):
    client_id = old.credential.client_id

    response = token_response(client_id, old.client_secret)

    assert response.status_code == 200, response.content
    row = row_of(old)
    assert (row.storage, row.secret_hash, row.vault_version) == ("vault", "", 1)
    assert row.vault_path == path_for(vault, row)
    assert vault.read(row.vault_path, 1) == {"clientSecret": old.client_secret}
    [event] = events(AuditEvent.Action.CREDENTIAL_MOVED)
    assert (event.agent_id, event.credential_id) == (row.agent_id, row.id)
    assert event.details == {"from": "bcrypt", "to": "vault", "trigger": "authentication"}
    assert event.actor_type == AuditEvent.ActorType.SYSTEM
    assert not SecretPurge.objects.exists()
    assert not GraceSecret.objects.exists()
    # The agent notices nothing: the same secret, now checked against Vault.
    for _ in range(2):
        assert token_response(client_id, old.client_secret).status_code == 200
    assert token_response(client_id, "not-the-secret").status_code == 401
    assert len(events(AuditEvent.Action.CREDENTIAL_MOVED)) == 1


def test_a_moved_credential_is_written_to_vault_once_and_then_only_read(old, vault, token_response):
    server = vault.require_server()
    client_id = old.credential.client_id
    server.clear_requests()

    assert token_response(client_id, old.client_secret).status_code == 200
    assert len(data_writes(server)) == 1
    server.clear_requests()

    assert token_response(client_id, old.client_secret).status_code == 200
    assert token_response(client_id, old.client_secret).status_code == 200

    assert data_writes(server) == []
    key = vault.key_of(row_of(old).vault_path)
    # One read verifies it in Vault; the verified-secret cache answers after that.
    assert [r.method for r in server.requests if r.path.endswith(key)] == ["GET"]
    assert server.secret_versions(key).keys() == {1}


def test_nothing_moves_when_upgrade_on_use_is_off(old, vault, settings, token_response):
    settings.AGENTIDP_UPGRADE_ON_USE = False
    secret_hash = row_of(old).secret_hash
    if vault.is_server:
        vault.server.clear_requests()

    assert token_response(old.credential.client_id, old.client_secret).status_code == 200

    if vault.is_server:
        assert vault.server.requests == []  # not even asked
    assert_still_bcrypt(old, secret_hash)
    assert vault.keys_of_agent(old.credential.agent_id) == []


def test_a_wrong_secret_moves_nothing(old, vault, token_response):
    secret_hash = row_of(old).secret_hash

    assert token_response(old.credential.client_id, "not-the-secret").status_code == 401

    assert_still_bcrypt(old, secret_hash)
    assert vault.keys_of_agent(old.credential.agent_id) == []


def test_an_expired_credential_does_not_move(old, vault, token_response):
    secret_hash = row_of(old).secret_hash
    expire(old.credential)

    assert token_response(old.credential.client_id, old.client_secret).status_code == 401

    assert reason(old.credential.client_id, old.client_secret) == "credential_expired"
    assert_still_bcrypt(old, secret_hash)
    assert vault.keys_of_agent(old.credential.agent_id) == []


def test_a_credential_of_a_suspended_agent_does_not_move(old, vault, token_response):
    secret_hash = row_of(old).secret_hash
    agent_update(acting=None, agent=old.credential.agent, status=Agent.Status.SUSPENDED)

    assert token_response(old.credential.client_id, old.client_secret).status_code == 401

    assert reason(old.credential.client_id, old.client_secret) == "agent_suspended"
    assert_still_bcrypt(old, secret_hash)
    assert vault.keys_of_agent(old.credential.agent_id) == []


def test_a_previous_secret_in_its_grace_period_does_not_move_the_credential_but_the_current_one_does(
    issued, enable_vault, token_response
):
    # Rotated with a grace period while Vault was still off: both secrets are bcrypt hashes.
    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=300)
    current_hash = row_of(issued).secret_hash
    grace_hash = GraceSecret.objects.get().secret_hash
    vault = enable_vault()
    client_id = issued.credential.client_id

    assert token_response(client_id, issued.client_secret).status_code == 200

    assert_still_bcrypt(issued, current_hash)
    assert vault.keys_of_agent(issued.credential.agent_id) == []

    assert token_response(client_id, rotated.client_secret).status_code == 200

    row = row_of(issued)
    assert (row.storage, row.secret_hash, row.vault_version) == ("vault", "", 1)
    assert vault.read(row.vault_path, 1) == {"clientSecret": rotated.client_secret}
    # The previous secret stays where it was, a bcrypt hash, until its grace period ends.
    grace = GraceSecret.objects.get()
    assert (grace.storage, grace.secret_hash, grace.vault_path) == ("bcrypt", grace_hash, None)
    assert token_response(client_id, issued.client_secret).status_code == 200
    assert len(events(AuditEvent.Action.CREDENTIAL_MOVED)) == 1

    end_grace_periods(issued.credential)
    assert grace_secrets_expire() == 1

    assert token_response(client_id, issued.client_secret).status_code == 401
    assert token_response(client_id, rotated.client_secret).status_code == 200
    assert not SecretPurge.objects.exists()


# --- when the move fails ----------------------------------------------------------------------


#: Ways Vault fails the write of the move. "500" and "applied_then_dropped" may have been applied.
MOVE_FAULTS = ("down", "sealed", "503", "403", "500", "applied_then_dropped")


def break_writes(server, fault: str) -> None:
    if fault in ("down", "sealed"):
        server.fail(fault)
    elif fault == "applied_then_dropped":
        server.inject("applied_then_dropped", path=DATA, method="POST", times=1)
    else:
        server.inject("status", status=int(fault), path=DATA, method="POST")


@pytest.mark.parametrize("fault", MOVE_FAULTS)
def test_when_vault_fails_the_move_the_token_request_succeeds_and_the_credential_stays_on_bcrypt(
    old, vault, token_response, fault
):
    server = vault.require_server()
    client_id = old.credential.client_id
    secret_hash = row_of(old).secret_hash
    path = path_for(vault, old.credential)
    break_writes(server, fault)

    response = token_response(client_id, old.client_secret)

    assert response.status_code == 200, response.content
    assert_still_bcrypt(old, secret_hash)
    assert cache.get(UPGRADE_PAUSED_CACHE_KEY)
    server.recover()
    # No entry left at the credential's location: never written, or destroyed at once, and one
    # more destruction queued (not yet due) when the write may still have been in flight.
    assert server.secret_versions(vault.key_of(path)) is None
    purges = list(SecretPurge.objects.all())
    if fault in ("500", "applied_then_dropped"):
        [purge] = purges
        assert (purge.vault_path, purge.reason, purge.credential_id) == (path, "move_failed", old.credential.id)
        assert purge.next_attempt_at > timezone.now()
    else:
        assert purges == []


@pytest.mark.parametrize("fault", ["down", "503", "applied_then_dropped"])
def test_after_a_failed_move_moves_pause_then_the_next_request_after_the_pause_moves_it(
    old, vault, token_response, fault, django_capture_on_commit_callbacks
):
    server = vault.require_server()
    client_id = old.credential.client_id
    secret_hash = row_of(old).secret_hash
    other = make_credential(old.credential.agent)  # made with Vault on: already there
    break_writes(server, fault)
    assert token_response(client_id, old.client_secret).status_code == 200
    server.recover()
    server.clear_requests()

    # Vault answers again, but within AGENTIDP_UPGRADE_RETRY_SECONDS nobody asks it to take a move.
    for _ in range(3):
        assert token_response(client_id, old.client_secret).status_code == 200

    assert server.requests == []
    assert_still_bcrypt(old, secret_hash)
    assert token_response(other.credential.client_id, other.client_secret).status_code == 200  # reads go on

    cache.delete(UPGRADE_PAUSED_CACHE_KEY)  # the pause has run out
    assert token_response(client_id, old.client_secret).status_code == 200

    row = row_of(old)
    assert (row.storage, row.secret_hash) == ("vault", "")
    assert vault.read(row.vault_path, row.vault_version) == {"clientSecret": old.client_secret}
    assert len(events(AuditEvent.Action.CREDENTIAL_MOVED)) == 1
    # A clean-up still queued from the failed attempt spares the location the credential now uses.
    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        services.secret_purges_run_due()
    assert not SecretPurge.objects.exists()
    assert vault.read(row.vault_path, row.vault_version) == {"clientSecret": old.client_secret}
    assert token_response(client_id, old.client_secret).status_code == 200


def test_the_pause_lasts_as_long_as_the_retry_setting_says(old, vault, settings, token_response):
    server = vault.require_server()
    settings.AGENTIDP_UPGRADE_RETRY_SECONDS = 123
    break_writes(server, "503")

    with mock.patch.object(cache, "set", wraps=cache.set) as cache_set:
        assert token_response(old.credential.client_id, old.client_secret).status_code == 200

    pauses = [c for c in cache_set.call_args_list if c.args[:1] == (UPGRADE_PAUSED_CACHE_KEY,)]
    assert pauses == [mock.call(UPGRADE_PAUSED_CACHE_KEY, True, 123)]


def test_when_the_database_fails_after_the_vault_write_the_credential_stays_on_bcrypt_and_the_entry_is_destroyed(
    old, vault, token_response
):
    client_id = old.credential.client_id
    secret_hash = row_of(old).secret_hash
    path = path_for(vault, old.credential)

    with failing(inserts(AuditEvent), DatabaseError("database is gone")):
        response = token_response(client_id, old.client_secret)

    assert response.status_code == 200, response.content
    assert_still_bcrypt(old, secret_hash)
    assert vault.metadata(path) is None  # Vault confirmed the write, so one destruction settles it
    assert not SecretPurge.objects.exists()
    assert cache.get(UPGRADE_PAUSED_CACHE_KEY)
    assert token_response(client_id, old.client_secret).status_code == 200


def test_when_neither_the_database_nor_vault_take_the_move_its_entry_stays_queued(old, vault, token_response):
    server = vault.require_server()
    path = path_for(vault, old.credential)
    server.inject("status", status=503, path="/metadata/agentidp/", method="DELETE")

    with failing(inserts(AuditEvent), DatabaseError("database is gone")):
        assert token_response(old.credential.client_id, old.client_secret).status_code == 200

    assert row_of(old).storage == "bcrypt"
    purge = SecretPurge.objects.get()
    assert (purge.vault_path, purge.reason, purge.credential_id) == (path, "move_failed", old.credential.id)
    server.clear_faults()
    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))

    services.secret_purges_run_due()

    assert vault.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert authenticates(old.credential.client_id, old.client_secret)


# --- last_used_at -----------------------------------------------------------------------------


def last_used(issued):
    return row_of(issued).last_used_at


def test_last_used_at_is_set_by_the_first_successful_authentication(issued, token_response):
    assert last_used(issued) is None
    before = timezone.now()

    assert token_response(issued.credential.client_id, issued.client_secret).status_code == 200

    assert before <= last_used(issued) <= timezone.now()


def test_last_used_at_is_not_rewritten_within_its_resolution(issued, django_assert_num_queries):
    client_id = issued.credential.client_id
    assert authenticates(client_id, issued.client_secret)
    first = last_used(issued)

    # Finding the credential (with its agent) is the only query: no write.
    with django_assert_num_queries(1):
        credential_authenticate(client_id=client_id, client_secret=issued.client_secret)

    assert last_used(issued) == first


def test_last_used_at_is_rewritten_once_its_resolution_has_passed(issued):
    client_id = issued.credential.client_id
    assert authenticates(client_id, issued.client_secret)
    first = last_used(issued)
    later = first + Credential.LAST_USED_RESOLUTION + datetime.timedelta(seconds=1)

    with mock.patch("django.utils.timezone.now", return_value=later):
        assert authenticates(client_id, issued.client_secret)

    assert last_used(issued) == later


def test_last_used_at_within_its_resolution_is_kept(issued):
    recently = timezone.now() - Credential.LAST_USED_RESOLUTION + datetime.timedelta(seconds=5)
    Credential.objects.filter(pk=issued.credential.pk).update(last_used_at=recently)

    assert authenticates(issued.credential.client_id, issued.client_secret)

    assert last_used(issued) == recently


@pytest.mark.parametrize("failure", ["wrong_secret", "credential_expired", "agent_suspended"])
def test_last_used_at_is_never_set_by_a_failed_authentication(issued, token_response, failure):
    secret = issued.client_secret
    if failure == "wrong_secret":
        secret = wrong_secret()
    elif failure == "credential_expired":
        expire(issued.credential)
    else:
        agent_update(acting=None, agent=issued.credential.agent, status=Agent.Status.SUSPENDED)

    assert token_response(issued.credential.client_id, secret).status_code == 401

    assert reason(issued.credential.client_id, secret) == failure
    assert last_used(issued) is None


def test_last_used_at_is_set_when_a_credential_moves_on_use(old, token_response):
    before = timezone.now()

    assert token_response(old.credential.client_id, old.client_secret).status_code == 200

    row = row_of(old)
    assert row.storage == "vault"
    assert before <= row.last_used_at <= timezone.now()


# --- credential_delete of a credential whose move was interrupted -----------------------------


def test_deleting_a_bcrypt_credential_with_vault_on_destroys_an_unrecorded_entry_at_its_vault_location(
    old, vault, django_capture_on_commit_callbacks
):
    path = path_for(vault, old.credential)
    # What a killed migration leaves: Vault took the write, the database never recorded it.
    vault.write(path, {"clientSecret": "never-recorded"})
    assert row_of(old).storage == "bcrypt"

    with django_capture_on_commit_callbacks(execute=True):
        credential_delete(acting=None, credential=old.credential)

    assert vault.metadata(path) is None
    assert vault.keys_of_agent(old.credential.agent_id) == []
    assert not SecretPurge.objects.exists()
    assert not Credential.objects.filter(pk=old.credential.pk).exists()
    assert reason(old.credential.client_id, old.client_secret) == "unknown_client"


def test_deleting_a_bcrypt_credential_with_vault_down_queues_the_destruction_of_its_vault_location(
    old, vault, django_capture_on_commit_callbacks
):
    server = vault.require_server()
    path = path_for(vault, old.credential)
    vault.write(path, {"clientSecret": "never-recorded"})
    server.go_down()

    with django_capture_on_commit_callbacks(execute=True):
        credential_delete(acting=None, credential=old.credential)

    assert not Credential.objects.filter(pk=old.credential.pk).exists()
    assert SecretPurge.objects.filter(vault_path=path).exists()
    server.recover()
    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    services.secret_purges_run_due()
    assert vault.metadata(path) is None
    assert not SecretPurge.objects.exists()


# --- credential_rotate as migrate_to_vault uses it ---------------------------------------------


def test_rotate_from_bcrypt_refuses_a_credential_already_on_vault_and_changes_nothing(old, vault, token_response):
    assert token_response(old.credential.client_id, old.client_secret).status_code == 200  # moved on use
    before = row_of(old)
    assert before.storage == "vault"

    with pytest.raises(services.StorageChanged) as excinfo:
        credential_migrate(acting=None, credential=old.credential, from_storage="bcrypt")

    assert excinfo.value.status == 409
    after = row_of(old)
    assert [getattr(after, f) for f in (*Credential.LOCATION_FIELDS, "rotated_at")] == [
        getattr(before, f) for f in (*Credential.LOCATION_FIELDS, "rotated_at")
    ]
    assert vault.metadata(after.vault_path)["current_version"] == 1
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert authenticates(old.credential.client_id, old.client_secret)


def test_rotate_from_bcrypt_uses_the_row_as_it_is_now_not_the_callers_copy(old, vault, token_response):
    stale = Credential.objects.get(pk=old.credential.pk)  # still says bcrypt
    assert token_response(old.credential.client_id, old.client_secret).status_code == 200

    with pytest.raises(services.StorageChanged):
        credential_migrate(acting=None, credential=stale, from_storage=stale.storage)

    assert authenticates(old.credential.client_id, old.client_secret)
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)


def test_rotate_of_a_deleted_credential_is_credential_not_found(old):
    credential_delete(acting=None, credential=old.credential)

    with pytest.raises(CredentialNotFound):
        credential_migrate(acting=None, credential=old.credential, from_storage="bcrypt")


def test_rotate_with_a_given_client_secret_keeps_that_secret(old, vault):
    given = secretformat.new_secret(old.credential.secret_ref)  # made by the interrupted run

    rotated = credential_migrate(acting=None, credential=old.credential, from_storage="bcrypt", client_secret=given)

    assert rotated.client_secret == given
    row = row_of(old)
    assert (row.storage, row.secret_hash, row.vault_version) == ("vault", "", 1)
    assert vault.read(row.vault_path, 1) == {"clientSecret": given}
    assert authenticates(row.client_id, given)
    assert reason(row.client_id, old.client_secret) == "wrong_secret"


def test_before_commit_sees_the_new_secret_already_stored_and_the_row_not_yet_committed(old, vault):
    seen = {}

    def before_commit(issued):
        seen["secret"] = issued.client_secret
        seen["in_vault"] = vault.read(path_for(vault, old.credential), 1)
        seen["credential"] = issued.credential.id

    rotated = credential_rotate(acting=None, credential=old.credential, before_commit=before_commit)

    assert seen == {
        "secret": rotated.client_secret,
        "in_vault": {"clientSecret": rotated.client_secret},
        "credential": old.credential.id,
    }


@pytest.mark.parametrize("interruption", [RuntimeError("the file is full"), KeyboardInterrupt()])
def test_before_commit_failing_rolls_the_move_back_and_destroys_the_written_entry(old, vault, interruption):
    before = row_of(old)
    path = path_for(vault, old.credential)

    def before_commit(issued):
        assert vault.read(path, 1) == {"clientSecret": issued.client_secret}
        raise interruption

    with pytest.raises(type(interruption)):
        credential_rotate(acting=None, credential=old.credential, grace_period_seconds=60, before_commit=before_commit)

    assert_still_bcrypt(old, before.secret_hash)
    assert row_of(old).rotated_at == before.rotated_at
    assert not GraceSecret.objects.exists()
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert vault.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert authenticates(old.credential.client_id, old.client_secret)


def test_before_commit_failing_while_vault_refuses_the_cleanup_queues_the_entry(old, vault):
    server = vault.require_server()
    path = path_for(vault, old.credential)
    server.inject("status", status=503, path="/metadata/agentidp/", method="DELETE")

    def before_commit(issued):
        raise RuntimeError("the file is full")

    with pytest.raises(RuntimeError):
        credential_rotate(acting=None, credential=old.credential, before_commit=before_commit)

    assert row_of(old).storage == "bcrypt"
    purge = SecretPurge.objects.get()
    assert (purge.vault_path, purge.reason) == (path, "rotate_failed")
    assert server.secret_versions(vault.key_of(path)) is not None  # the orphan, for now
    server.clear_faults()
    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    services.secret_purges_run_due()
    assert vault.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert authenticates(old.credential.client_id, old.client_secret)


def test_a_move_on_use_writes_after_an_orphan_left_at_its_location_and_its_queued_purge_spares_it(
    old, vault, token_response
):
    server = vault.require_server()
    path = path_for(vault, old.credential)
    server.inject("status", status=503, path="/metadata/agentidp/", method="DELETE")
    with pytest.raises(RuntimeError):
        credential_rotate(acting=None, credential=old.credential, before_commit=mock.Mock(side_effect=RuntimeError))
    server.clear_faults()
    assert server.secret_versions(vault.key_of(path)).keys() == {1}  # the orphan, still queued

    assert token_response(old.credential.client_id, old.client_secret).status_code == 200

    row = row_of(old)
    assert (row.storage, row.vault_path, row.vault_version) == ("vault", path, 2)
    SecretPurge.objects.update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))
    services.secret_purges_run_due()
    assert not SecretPurge.objects.exists()
    assert vault.read(path, 2) == {"clientSecret": old.client_secret}
    assert token_response(old.credential.client_id, old.client_secret).status_code == 200


def test_before_commit_failing_on_a_vault_rotation_keeps_the_trusted_version(vault_enabled, agent):
    issued = make_credential(agent)
    before = row_of(issued)

    def before_commit(issued):
        raise RuntimeError("the file is full")

    with pytest.raises(RuntimeError):
        credential_rotate(acting=None, credential=issued.credential, before_commit=before_commit)

    row = row_of(issued)
    assert (row.storage, row.vault_path, row.vault_version) == ("vault", before.vault_path, 1)
    assert authenticates(row.client_id, issued.client_secret)
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    # The same location is still trusted, so nothing there is queued for destruction.
    assert not SecretPurge.objects.exists()
    assert vault_enabled.read(row.vault_path, 1) == {"clientSecret": issued.client_secret}
