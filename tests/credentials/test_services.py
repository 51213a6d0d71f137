import datetime
import re
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from credentials import secretformat
from credentials.audit import Actor
from credentials.clientauth.secret import credential_authenticate
from credentials.errors import AgentNotFound, Conflict, CredentialNotFound, ValidationFailed
from credentials.models import Agent, AuditEvent, Credential, GraceSecret, SecretPurge
from credentials.services import (
    MAX_GRACE_SECRETS,
    agent_create,
    agent_delete,
    agent_update,
    credential_create,
    credential_delete,
    credential_rotate,
)
from credentials.services.lifecycle import replace_secret
from tests.credentials.helpers import authenticates, end_grace_periods, events, expire, reason
from tests.dbfaults import deletes, failing, inserts, on_statement, selects
from tests.factories import AgentFactory, make_credential, near_miss, wrong_secret
from vaultstore.backends import get_default_backend
from vaultstore.exceptions import SecretStoreError

SECRET_RE = re.compile(r"aidp_[0-9A-Za-z]{61}")


# --- agents ---------------------------------------------------------------------------------


def test_agent_create_stores_fields_and_writes_an_audit_event(db):
    agent = agent_create(
        acting=None,
        name="report-bot",
        description="nightly",
        owner="data",
        scopes=["a:b"],
        allowed_resources=["https://reports.example/api"],
    )

    agent.refresh_from_db()
    assert (agent.name, agent.description, agent.owner, agent.scopes) == ("report-bot", "nightly", "data", ["a:b"])
    assert agent.allowed_resources == ["https://reports.example/api"]
    assert agent.status == Agent.Status.ACTIVE
    [event] = events(AuditEvent.Action.AGENT_CREATED)
    assert event.agent_id == agent.id
    assert event.details == {
        "name": "report-bot",
        "scopes": ["a:b"],
        "allowedResources": ["https://reports.example/api"],
    }


@pytest.mark.parametrize(
    "taken, wanted",
    [
        ("report-bot", "report-bot"),
        ("CI-Bot", "ci-bot"),
        ("ci-bot", "CI-BOT"),
        ("ÄGENT", "ägent"),  # non-ASCII case: Lower() folds only ASCII on SQLite
        ("Straße", "STRASSE"),  # full case folding
        ("ｂｏｔ", "bot"),  # fullwidth lookalikes (NFKC)
        ("bot", "Ｂｏｔ"),
        ("ﬁle-bot", "file-bot"),  # a ligature
        ("e\u0301-bot", "\u00e9-bot"),  # combining accent and the precomposed letter
    ],
)
def test_agent_create_refuses_a_name_taken_ignoring_case_and_lookalikes(db, taken, wanted):
    agent_create(acting=None, name=taken)

    with pytest.raises(Conflict) as excinfo:
        agent_create(acting=None, name=wanted)

    assert excinfo.value.status == 409
    assert excinfo.value.code == "CONFLICT"
    assert Agent.objects.count() == 1
    assert len(events(AuditEvent.Action.AGENT_CREATED)) == 1


def test_agent_create_conflict_when_the_unique_index_decides(db):
    # A concurrent request creates the name right after this one looked it up, before its INSERT.
    def competitor():
        agent_create(acting=None, name="racer")

    with on_statement(selects(Agent), after=competitor, nth=1), pytest.raises(Conflict):
        agent_create(acting=None, name="RACER")

    assert Agent.objects.count() == 1


def test_agent_create_normalises_scopes_dropping_duplicates_in_first_order(db):
    agent = agent_create(acting=None, name="bot", scopes=["b:write", "a:read", "b:write", "a:read", "c"])

    assert agent.scopes == ["b:write", "a:read", "c"]
    assert Agent.objects.get(pk=agent.pk).scopes == ["b:write", "a:read", "c"]


@pytest.mark.parametrize(
    "scopes",
    [
        ["has space"],
        ['quo"te'],
        ["back\\slash"],
        [""],
        ["x" * 129],
        ["caf\u00e9"],
        ["tab\there"],
        [5],
        [None],
        [f"s{i}" for i in range(101)],
    ],
    ids=["space", "quote", "backslash", "empty", "too-long", "non-ascii", "tab", "int", "none", "too-many"],
)
def test_agent_create_refuses_invalid_scopes(db, scopes):
    with pytest.raises(ValidationFailed) as excinfo:
        agent_create(acting=None, name="bot", scopes=scopes)

    assert excinfo.value.status == 400
    assert "scopes" in excinfo.value.details
    assert not Agent.objects.exists()
    assert not AuditEvent.objects.exists()


def test_agent_create_accepts_the_longest_scope_and_the_most_scopes(db):
    scopes = ["x" * 128, *(f"s{i}" for i in range(99))]

    agent = agent_create(acting=None, name="bot", scopes=scopes)

    assert agent.scopes == scopes


def test_agent_update_changes_fields_and_audits_what_changed(agent):
    updated = agent_update(
        acting=None, agent=agent, description="new", scopes=["x", "x", "y"], status=Agent.Status.SUSPENDED
    )

    assert updated.description == "new"
    assert updated.scopes == ["x", "y"]
    assert updated.status == "suspended"
    assert updated.updated_at > agent.updated_at
    stored = Agent.objects.get(pk=agent.pk)
    assert (stored.description, stored.scopes, stored.status) == ("new", ["x", "y"], "suspended")
    [event] = events(AuditEvent.Action.AGENT_UPDATED)
    assert event.agent_id == agent.id
    assert event.details == {
        "changed": {
            "description": True,
            "scopes": {"from": ["reports:read", "reports:write"], "to": ["x", "y"]},
            "status": {"from": "active", "to": "suspended"},
        }
    }


def test_agent_update_without_a_change_writes_no_audit_event(agent):
    agent_update(acting=None, agent=agent, description=agent.description, scopes=list(agent.scopes))

    assert not events(AuditEvent.Action.AGENT_UPDATED)


@pytest.mark.parametrize("changes", [{"name": "renamed"}, {"id": "x"}, {"created_at": None}])
def test_agent_update_refuses_fields_that_cannot_change(agent, changes):
    with pytest.raises(ValidationFailed):
        agent_update(acting=None, agent=agent, **changes)

    assert Agent.objects.get(pk=agent.pk).name == agent.name


@pytest.mark.parametrize("status", ["deleted", "", "ACTIVE", None])
def test_agent_update_refuses_an_unknown_status(agent, status):
    with pytest.raises(ValidationFailed):
        agent_update(acting=None, agent=agent, status=status)

    assert Agent.objects.get(pk=agent.pk).status == "active"


def test_agent_update_refuses_invalid_scopes(agent):
    with pytest.raises(ValidationFailed):
        agent_update(acting=None, agent=agent, scopes=["bad scope"])

    assert Agent.objects.get(pk=agent.pk).scopes == ["reports:read", "reports:write"]


def test_agent_update_of_a_deleted_agent_is_agent_not_found(agent):
    agent_delete(acting=None, agent=agent)

    with pytest.raises(AgentNotFound):
        agent_update(acting=None, agent=agent, description="x")


def test_agent_delete_deletes_each_credential_as_credential_delete_does(agent):
    first, second = make_credential(agent), make_credential(agent)

    agent_delete(acting=None, agent=agent)

    assert not Agent.objects.filter(pk=agent.pk).exists()
    assert not Credential.objects.filter(agent_id=agent.pk).exists()
    # One credential.deleted event each, in creation order, as credential_delete writes it.
    deleted = events(AuditEvent.Action.CREDENTIAL_DELETED)
    assert [e.credential_id for e in deleted] == [first.credential.pk, second.credential.pk]
    assert [e.details for e in deleted] == [
        {"clientId": i.credential.client_id, "kind": "secret"} for i in (first, second)
    ]
    assert all(e.agent_id == agent.pk for e in deleted)
    [agent_event] = events(AuditEvent.Action.AGENT_DELETED)
    assert agent_event.agent_id == agent.pk
    assert agent_event.details == {"name": agent.name}
    assert not authenticates(first.credential.client_id, first.client_secret)


def test_agent_delete_keeps_everything_when_a_credential_cannot_be_deleted(agent):
    issued = make_credential(agent)

    with (
        failing(deletes(Credential), DatabaseError("down")),
        pytest.raises(DatabaseError),
    ):
        agent_delete(acting=None, agent=agent)

    assert Agent.objects.filter(pk=agent.pk).exists()
    assert authenticates(issued.credential.client_id, issued.client_secret)
    assert not events(AuditEvent.Action.AGENT_DELETED)


def test_agent_delete_of_an_agent_already_deleted_is_agent_not_found(agent):
    agent_delete(acting=None, agent=agent)

    with pytest.raises(AgentNotFound):
        agent_delete(acting=None, agent=agent)


# --- audit actors ---------------------------------------------------------------------------


def test_audit_actor_none_is_the_system(db):
    agent = agent_create(acting=None, name="bot")

    event = AuditEvent.objects.get(agent_id=agent.id)
    assert (event.actor_type, event.actor_id, event.actor_label) == ("system", "", "system")


def test_audit_actor_staff_user_is_recorded_as_a_user(db, django_user_model):
    user = django_user_model.objects.create_user(username="alice", password="unused", is_staff=True)

    agent = agent_create(acting=user, name="bot")
    issued = credential_create(acting=user, agent=agent)
    credential_rotate(acting=user, credential=issued.credential)
    credential_delete(acting=user, credential=issued.credential)

    trail = AuditEvent.objects.filter(agent_id=agent.id)
    assert trail.count() == 4
    assert set(trail.values_list("actor_type", "actor_id", "actor_label")) == {("user", str(user.pk), "alice")}


def test_audit_actor_given_as_an_actor_is_recorded_as_given(agent):
    actor = Actor(type=AuditEvent.ActorType.AGENT, id="agent-7", label="deploy-bot (abc)")

    issued = credential_create(acting=actor, agent=agent)

    event = AuditEvent.objects.get(credential_id=issued.credential.id)
    assert (event.actor_type, event.actor_id, event.actor_label) == ("agent", "agent-7", "deploy-bot (abc)")


def test_audit_actor_of_an_unknown_kind_is_refused_and_nothing_is_written(db):
    with pytest.raises(TypeError):
        agent_create(acting=object(), name="bot")

    assert not Agent.objects.exists()
    assert not AuditEvent.objects.exists()


def test_every_credential_change_writes_one_audit_event(agent):
    issued = credential_create(acting=None, agent=agent)
    credential = issued.credential
    credential_rotate(acting=None, credential=credential, grace_period_seconds=60)
    credential_delete(acting=None, credential=credential)

    trail = AuditEvent.objects.filter(credential_id=credential.id).order_by("id")
    assert [e.action for e in trail] == ["credential.created", "credential.rotated", "credential.deleted"]
    assert all(e.agent_id == agent.id for e in trail)
    created, rotated, deleted = trail
    assert created.details == {"clientId": credential.client_id, "kind": "secret", "storage": "bcrypt"}
    assert rotated.details == {"kind": "secret", "gracePeriodSeconds": 60, "from": "bcrypt", "to": "bcrypt"}
    assert deleted.details == {"clientId": credential.client_id, "kind": "secret"}


def test_audit_events_never_hold_a_secret_or_a_hash(agent):
    issued = credential_create(acting=None, agent=agent)
    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)
    hashes = [
        Credential.objects.get(pk=issued.credential.pk).secret_hash,
        *GraceSecret.objects.values_list("secret_hash", flat=True),
    ]
    credential_delete(acting=None, credential=issued.credential)

    dumped = repr(list(AuditEvent.objects.values()))
    for value in (issued.client_secret, rotated.client_secret, *hashes):
        assert value not in dumped


# --- audit trail is append-only -------------------------------------------------------------


def test_audit_event_cannot_be_saved_again(db):
    agent_create(acting=None, name="bot")
    event = AuditEvent.objects.get()
    event.action = AuditEvent.Action.AGENT_DELETED

    with pytest.raises(ValidationError):
        event.save()

    assert AuditEvent.objects.get(pk=event.pk).action == "agent.created"


def test_audit_event_cannot_be_deleted(db):
    agent_create(acting=None, name="bot")
    event = AuditEvent.objects.get()

    with pytest.raises(ValidationError):
        event.delete()

    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE credentials_auditevent SET action = 'agent.deleted' WHERE id = %s",
        "DELETE FROM credentials_auditevent WHERE id = %s",
    ],
    ids=["update", "delete"],
)
def test_audit_event_raw_sql_change_is_refused_by_the_database(db, sql):
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger exists on PostgreSQL only")
    agent_create(acting=None, name="bot")
    event = AuditEvent.objects.get()

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [event.pk])

    assert AuditEvent.objects.get(pk=event.pk).action == "agent.created"


# --- credential_create ----------------------------------------------------------------------


def test_credential_create_returns_a_urlsafe_256_bit_secret_and_stores_only_a_bcrypt_hash(agent):
    issued = credential_create(acting=None, agent=agent, description="nightly job")

    assert SECRET_RE.fullmatch(issued.client_secret)
    credential = Credential.objects.get(pk=issued.credential.pk)
    assert secretformat.secret_ref(issued.client_secret) == credential.secret_ref
    assert credential.agent_id == agent.id
    assert credential.description == "nightly job"
    assert credential.storage == "bcrypt"
    assert credential.secret_hash.startswith("$2b$04$")
    assert issued.client_secret not in credential.secret_hash
    assert credential.rotated_at is None
    assert credential.expires_at is None
    assert credential.status == "active"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", credential.client_id)
    assert authenticates(credential.client_id, issued.client_secret)


def test_credential_create_gives_every_credential_its_own_client_id_and_secret(agent):
    issued = [credential_create(acting=None, agent=agent) for _ in range(3)]

    assert len({i.credential.client_id for i in issued}) == 3
    assert len({i.client_secret for i in issued}) == 3


def test_credential_create_refuses_an_expiry_in_the_past(agent):
    for expires_at in (timezone.now() - datetime.timedelta(seconds=1), timezone.now()):
        with pytest.raises(ValidationFailed) as excinfo:
            credential_create(acting=None, agent=agent, expires_at=expires_at)
        assert "expiresAt" in excinfo.value.details

    assert not Credential.objects.exists()
    assert not events(AuditEvent.Action.CREDENTIAL_CREATED)


def test_credential_create_accepts_an_expiry_in_the_future(agent):
    expires_at = timezone.now() + datetime.timedelta(days=1)

    issued = credential_create(acting=None, agent=agent, expires_at=expires_at)

    assert Credential.objects.get(pk=issued.credential.pk).expires_at == expires_at
    assert issued.credential.status == "active"


@override_settings(AGENTIDP_MAX_ACTIVE_CREDENTIALS=2)
def test_credential_create_refuses_more_active_credentials_than_allowed(agent):
    credential_create(acting=None, agent=agent)
    credential_create(acting=None, agent=agent)

    with pytest.raises(Conflict) as excinfo:
        credential_create(acting=None, agent=agent)

    assert excinfo.value.status == 409
    assert Credential.objects.filter(agent=agent).count() == 2


@override_settings(AGENTIDP_MAX_ACTIVE_CREDENTIALS=2)
def test_credential_create_does_not_count_expired_credentials(agent):
    expire(credential_create(acting=None, agent=agent).credential)
    credential_create(acting=None, agent=agent)

    issued = credential_create(acting=None, agent=agent)

    assert Credential.objects.filter(agent=agent).count() == 3
    assert authenticates(issued.credential.client_id, issued.client_secret)


@override_settings(AGENTIDP_MAX_ACTIVE_CREDENTIALS=1)
def test_credential_limit_is_per_agent(agent):
    credential_create(acting=None, agent=agent)

    issued = credential_create(acting=None, agent=AgentFactory())

    assert issued.credential.pk is not None


@override_settings(AGENTIDP_MAX_ACTIVE_CREDENTIALS=1)
def test_credential_create_is_allowed_again_after_a_delete(agent):
    first = credential_create(acting=None, agent=agent)
    credential_delete(acting=None, credential=first.credential)

    second = credential_create(acting=None, agent=agent)

    assert Credential.objects.get(agent=agent) == second.credential


def test_credential_create_leaves_nothing_when_the_database_write_fails_on_bcrypt(agent):
    backend = get_default_backend()

    with (
        failing(inserts(AuditEvent), DatabaseError("disk full")),
        mock.patch.object(backend, "delete", wraps=backend.delete) as delete,
        pytest.raises(DatabaseError),
    ):
        credential_create(acting=None, agent=agent)

    assert not Credential.objects.exists()
    # A bcrypt hash lives only in the row that was never written: nothing to destroy, nothing queued.
    delete.assert_not_called()
    assert not SecretPurge.objects.exists()


def test_credential_create_for_a_deleted_agent_is_agent_not_found(agent):
    agent_delete(acting=None, agent=agent)

    with pytest.raises(AgentNotFound):
        credential_create(acting=None, agent=agent)

    assert not Credential.objects.exists()


# --- credential_rotate ----------------------------------------------------------------------


def test_rotate_keeps_credential_id_and_client_id_and_sets_rotated_at(issued):
    before = timezone.now()

    rotated = credential_rotate(acting=None, credential=issued.credential)

    assert rotated.credential.pk == issued.credential.pk
    assert rotated.credential.client_id == issued.credential.client_id
    assert SECRET_RE.fullmatch(rotated.client_secret)
    assert rotated.client_secret != issued.client_secret
    stored = Credential.objects.get(pk=issued.credential.pk)
    assert stored.rotated_at is not None and stored.rotated_at >= before
    assert stored.created_at == issued.credential.created_at
    assert stored.secret_hash != issued.credential.secret_hash
    assert Credential.objects.count() == 1


def test_rotate_makes_the_new_secret_work(issued):
    rotated = credential_rotate(acting=None, credential=issued.credential)

    assert credential_authenticate(client_id=issued.credential.client_id, client_secret=rotated.client_secret) == (
        issued.credential
    )


def test_rotate_without_grace_refuses_old_secret_at_once(issued):
    credential_rotate(acting=None, credential=issued.credential)

    assert reason(issued.credential.client_id, issued.client_secret) == "wrong_secret"
    assert not GraceSecret.objects.exists()


def test_rotate_with_grace_keeps_old_secret_working_until_the_grace_period_ends(issued):
    client_id = issued.credential.client_id
    before = timezone.now()

    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=300)

    grace = GraceSecret.objects.get(credential=issued.credential)
    assert (
        before + datetime.timedelta(seconds=300)
        <= grace.valid_until
        <= timezone.now() + datetime.timedelta(seconds=300)
    )
    assert authenticates(client_id, issued.client_secret)
    assert authenticates(client_id, rotated.client_secret)

    end_grace_periods(issued.credential)

    assert reason(client_id, issued.client_secret) == "wrong_secret"
    assert authenticates(client_id, rotated.client_secret)


def test_rotate_successive_grace_periods_overlap(issued):
    client_id = issued.credential.client_id
    second = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)
    third = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)

    assert all(authenticates(client_id, s) for s in (issued.client_secret, second.client_secret, third.client_secret))

    credential_rotate(acting=None, credential=issued.credential)

    assert authenticates(client_id, issued.client_secret)
    assert authenticates(client_id, second.client_secret)
    assert not authenticates(client_id, third.client_secret)


def test_rotate_removes_grace_secrets_whose_period_has_ended(issued):
    credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)
    end_grace_periods(issued.credential)

    credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    assert GraceSecret.objects.filter(credential=issued.credential).count() == 1


def test_rotate_refuses_more_grace_secrets_than_the_limit(issued):
    for _ in range(MAX_GRACE_SECRETS):
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)
    hash_before = Credential.objects.get(pk=issued.credential.pk).secret_hash

    with pytest.raises(Conflict) as excinfo:
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    assert excinfo.value.status == 409
    assert GraceSecret.objects.filter(credential=issued.credential).count() == MAX_GRACE_SECRETS
    assert Credential.objects.get(pk=issued.credential.pk).secret_hash == hash_before
    assert len(events(AuditEvent.Action.CREDENTIAL_ROTATED)) == MAX_GRACE_SECRETS


def test_rotate_without_grace_is_allowed_when_the_grace_limit_is_reached(issued):
    for _ in range(MAX_GRACE_SECRETS):
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    rotated = credential_rotate(acting=None, credential=issued.credential)

    assert authenticates(issued.credential.client_id, rotated.client_secret)


def test_rotate_with_grace_is_allowed_again_once_a_grace_period_ended(issued):
    for _ in range(MAX_GRACE_SECRETS):
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)
    end_grace_periods(issued.credential)

    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    assert authenticates(issued.credential.client_id, rotated.client_secret)


@pytest.mark.parametrize("grace", [-1, 86401])
def test_rotate_refuses_a_grace_period_out_of_range(issued, grace):
    with pytest.raises(ValidationFailed):
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=grace)

    assert authenticates(issued.credential.client_id, issued.client_secret)
    assert Credential.objects.get(pk=issued.credential.pk).rotated_at is None


def test_rotate_accepts_the_longest_grace_period(issued):
    credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=86400)

    assert authenticates(issued.credential.client_id, issued.client_secret)


def test_rotate_of_a_deleted_credential_is_credential_not_found(issued):
    credential_delete(acting=None, credential=issued.credential)

    with pytest.raises(CredentialNotFound):
        credential_rotate(acting=None, credential=issued.credential)


def test_rotate_keeps_old_secret_when_the_store_fails(issued):
    backend = get_default_backend()

    with (
        mock.patch.object(backend, "store", side_effect=SecretStoreError("down")),
        pytest.raises(SecretStoreError),
    ):
        credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)

    assert authenticates(issued.credential.client_id, issued.client_secret)
    assert not GraceSecret.objects.exists()
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)


# --- credential_delete ----------------------------------------------------------------------


def test_delete_credential_refuses_its_secret_at_once(issued):
    credential_delete(acting=None, credential=issued.credential)

    assert not Credential.objects.filter(pk=issued.credential.pk).exists()
    assert reason(issued.credential.client_id, issued.client_secret) == "unknown_client"


def test_delete_credential_removes_its_grace_secrets_too(issued):
    credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)

    credential_delete(acting=None, credential=issued.credential)

    assert not GraceSecret.objects.exists()
    assert not authenticates(issued.credential.client_id, issued.client_secret)


def test_delete_bcrypt_credential_takes_its_hashes_with_the_rows_and_queues_nothing(issued):
    credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)
    backend = get_default_backend()

    with mock.patch.object(backend, "delete") as delete:
        credential_delete(acting=None, credential=issued.credential)

    delete.assert_not_called()
    assert not SecretPurge.objects.exists()
    assert not GraceSecret.objects.filter(credential_id=issued.credential.id).exists()


def test_delete_credential_twice_is_credential_not_found(issued):
    credential_delete(acting=None, credential=issued.credential)

    with pytest.raises(CredentialNotFound):
        credential_delete(acting=None, credential=issued.credential)

    assert len(events(AuditEvent.Action.CREDENTIAL_DELETED)) == 1


# --- credential_authenticate ----------------------------------------------------------------


def test_authenticate_returns_the_credential_with_its_agent(issued):
    credential = credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)

    assert credential.pk == issued.credential.pk
    assert credential.agent.pk == issued.credential.agent_id


@pytest.mark.parametrize("client_id", ["no-such-client", "x" * 65, "", "bad\x00id"])
def test_authenticate_unknown_client_pays_a_dummy_verification(db, client_id):
    backend = get_default_backend()

    secret = wrong_secret()
    with mock.patch.object(backend, "verify_dummy", wraps=backend.verify_dummy) as verify_dummy:
        assert reason(client_id, secret) == "unknown_client"

    verify_dummy.assert_called_once_with(secret=secret)


def test_authenticate_known_client_does_not_pay_the_dummy(issued):
    backend = get_default_backend()

    with mock.patch.object(backend, "verify_dummy", wraps=backend.verify_dummy) as verify_dummy:
        assert reason(issued.credential.client_id, wrong_secret()) == "wrong_secret"

    verify_dummy.assert_not_called()


def test_authenticate_wrong_secret_is_refused(issued):
    last = issued.client_secret[-1]
    checksum_off = issued.client_secret[:-1] + ("B" if last == "A" else "A")

    assert reason(issued.credential.client_id, near_miss(issued.client_secret)) == "wrong_secret"
    assert reason(issued.credential.client_id, checksum_off) == "malformed_secret"
    assert reason(issued.credential.client_id, issued.client_secret + "x") == "malformed_secret"
    assert reason(issued.credential.client_id, issued.client_secret.upper()) == "malformed_secret"


def test_authenticate_another_credentials_secret_is_refused(agent):
    first, second = make_credential(agent), make_credential(agent)

    assert reason(first.credential.client_id, second.client_secret) == "wrong_secret"


def test_authenticate_refuses_the_stored_hash_as_a_secret(issued):
    secret_hash = Credential.objects.get(pk=issued.credential.pk).secret_hash
    assert secret_hash.startswith("$2b$")

    assert reason(issued.credential.client_id, secret_hash) == "malformed_secret"


def test_authenticate_refuses_a_secret_longer_than_72_bytes_without_an_exception(issued):
    # bcrypt would compare only the first 72 bytes: a longer secret starting with the real one must not pass.
    too_long = issued.client_secret + "x" * (73 - len(issued.client_secret))

    assert reason(issued.credential.client_id, too_long) == "malformed_secret"
    assert reason(issued.credential.client_id, "y" * 10_000) == "malformed_secret"


@pytest.mark.parametrize(
    "secret",
    ["", "\x00", "abc\x00def", "\u00e9" * 40, "\U0001f511" * 10, "\ud800"],
    ids=["empty", "nul", "embedded-nul", "multibyte-over-72-bytes", "emoji", "lone-surrogate"],
)
def test_authenticate_refuses_odd_secrets_cleanly(issued, secret):
    assert reason(issued.credential.client_id, secret) == "malformed_secret"


@pytest.mark.parametrize("client_id", ["known", "unknown", "key"])
def test_a_secret_agentidp_could_not_have_issued_is_refused_before_any_query_or_store(
    issued, client_id, django_assert_num_queries
):
    """The same work for a known, an unknown and a key credential's client id: none. Nothing to tell them apart by."""
    from tests.factories import make_key_credential

    client_ids = {
        "known": issued.credential.client_id,
        "unknown": "f" * 32,
        "key": make_key_credential(issued.credential.agent).client_id,
    }
    backend = get_default_backend()
    checksum_off = issued.client_secret[:-1] + ("B" if issued.client_secret[-1] == "A" else "A")
    for secret in (checksum_off, "aidp_short", "x" * 42, "x" * 44, "wrong"):
        with (
            mock.patch.object(backend, "verify", wraps=backend.verify) as verify,
            mock.patch.object(backend, "verify_dummy", wraps=backend.verify_dummy) as verify_dummy,
            django_assert_num_queries(0),
        ):
            assert reason(client_ids[client_id], secret) == "malformed_secret"
        verify.assert_not_called()
        verify_dummy.assert_not_called()


def test_a_secret_of_the_earlier_format_still_authenticates(issued):
    legacy = "Zr4_-" + "q" * 38  # 43 URL-safe characters, as secrets.token_urlsafe(32) made them
    replace_secret(acting=None, credential=issued.credential, client_secret=legacy)

    assert authenticates(issued.credential.client_id, legacy)
    assert reason(issued.credential.client_id, legacy[:-1] + "r") == "wrong_secret"


def test_every_secret_of_a_credential_carries_its_reference(agent):
    issued = make_credential(agent)
    first_ref = secretformat.secret_ref(issued.client_secret)
    rotated = credential_rotate(acting=None, credential=issued.credential)

    assert first_ref == Credential.objects.get(pk=issued.credential.pk).secret_ref
    assert secretformat.secret_ref(rotated.client_secret) == first_ref
    assert rotated.client_secret != issued.client_secret


def test_a_credential_made_before_secrets_carried_a_reference_gets_one_with_its_next_secret(agent):
    issued = make_credential(agent)
    Credential.objects.filter(pk=issued.credential.pk).update(secret_ref=None)

    rotated = credential_rotate(acting=None, credential=Credential.objects.get(pk=issued.credential.pk))

    ref = Credential.objects.get(pk=issued.credential.pk).secret_ref
    assert ref is not None and secretformat.secret_ref(rotated.client_secret) == ref
    assert authenticates(issued.credential.client_id, rotated.client_secret)


def test_authenticate_refuses_an_expired_credential_even_with_its_secret(issued):
    expire(issued.credential)

    assert reason(issued.credential.client_id, issued.client_secret) == "credential_expired"


def test_authenticate_checks_the_secret_before_expiry(issued):
    expire(issued.credential)

    assert reason(issued.credential.client_id, wrong_secret()) == "wrong_secret"


def test_authenticate_refuses_a_suspended_agent_and_accepts_it_again_when_reactivated(issued):
    agent = issued.credential.agent
    agent_update(acting=None, agent=agent, status=Agent.Status.SUSPENDED)

    assert reason(issued.credential.client_id, issued.client_secret) == "agent_suspended"

    agent_update(acting=None, agent=agent, status=Agent.Status.ACTIVE)

    assert authenticates(issued.credential.client_id, issued.client_secret)


# --- reprs ----------------------------------------------------------------------------------


def test_issued_credential_repr_never_contains_the_secret(issued):
    assert issued.client_secret not in repr(issued)
    assert issued.client_secret not in str(issued)
    assert issued.credential.client_id in repr(issued)


def test_credential_repr_and_str_show_the_client_id_only(issued):
    credential = Credential.objects.get(pk=issued.credential.pk)

    assert str(credential) == credential.client_id
    assert repr(credential) == f"<Credential {credential.client_id}>"
    assert credential.secret_hash not in repr(credential)


def test_stored_secret_of_a_credential_hides_the_hash_in_its_repr(issued):
    credential = Credential.objects.get(pk=issued.credential.pk)

    assert credential.secret_hash not in repr(credential.stored_secret)
    assert "bcrypt" in repr(credential.stored_secret)


def test_grace_secret_repr_hides_its_hash(issued):
    credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60)
    grace = GraceSecret.objects.get()

    assert grace.secret_hash not in repr(grace)
    assert str(issued.credential.pk) in repr(grace)


def test_authenticate_with_the_current_secret_costs_one_query_even_with_grace_secrets(
    issued, django_assert_num_queries
):
    rotated = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)
    # The first use reads the row again once the store has verified the secret (a rotation or deletion
    # meanwhile refuses it), and writes last_used_at; later ones, answered from the cache, do neither.
    with django_assert_num_queries(3):
        credential_authenticate(client_id=issued.credential.client_id, client_secret=rotated.client_secret)

    # The credential and its agent in one query; the grace entries only when the current secret fails.
    with django_assert_num_queries(1):
        credential_authenticate(client_id=issued.credential.client_id, client_secret=rotated.client_secret)
    # A previous secret, verified by the store: the row, its grace entries, then both again.
    with django_assert_num_queries(4):
        credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)


# --- a change that commits while a secret is being verified ------------------------------------


@pytest.fixture
def during_verification(monkeypatch):
    """Run `change()` right after the bcrypt store verified a secret, as if it committed meanwhile."""
    from vaultstore.backends.bcrypt import BcryptSecretBackend

    changes = []
    original = BcryptSecretBackend.verify

    def verify_then_change(self, *, stored, secret):
        matched = original(self, stored=stored, secret=secret)
        while changes:
            changes.pop()()
        return matched

    monkeypatch.setattr(BcryptSecretBackend, "verify", verify_then_change)
    return changes.append


def test_a_deletion_during_verification_refuses_the_request(issued, during_verification):
    during_verification(lambda: credential_delete(acting=None, credential=issued.credential))

    assert reason(issued.credential.client_id, issued.client_secret) == "deleted_during_verification"


def test_a_rotation_during_verification_refuses_the_old_secret(issued, during_verification):
    during_verification(lambda: credential_rotate(acting=None, credential=issued.credential))

    assert reason(issued.credential.client_id, issued.client_secret) == "rotated_during_verification"


def test_a_rotation_with_grace_during_verification_still_accepts_the_old_secret(issued, during_verification):
    during_verification(lambda: credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=60))

    assert authenticates(issued.credential.client_id, issued.client_secret)


def test_a_suspension_during_verification_refuses_the_request(issued, during_verification):
    during_verification(lambda: agent_update(acting=None, agent=issued.credential.agent, status="suspended"))

    assert reason(issued.credential.client_id, issued.client_secret) == "agent_suspended"


def test_agent_create_keeps_the_name_in_nfkc_form(db):
    agent = agent_create(acting=None, name="ｒｅｐｏｒｔ-ﬁle")

    agent.refresh_from_db()
    assert agent.name == "report-file"


def test_agent_create_refuses_a_name_too_long_once_normalised(db):
    with pytest.raises(ValidationFailed):
        agent_create(acting=None, name="\ufdfa" * 10)  # one character that NFKC spells in eighteen

    assert not Agent.objects.exists()
