"""
The credential rows each process keeps (credentials/rows.py): the lookup by clientId hands
out what it read before while PostgreSQL's change token says that nothing changed, and every
change, made by the services, by a queryset or by an operator's SQL, acts on the very next
lookup, in this process and in others.

The triggers and the token are PostgreSQL's; on SQLite the lookup reads the rows every time.
"""

from __future__ import annotations

import datetime

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from credentials import selectors
from credentials.clientauth.base import InvalidClient
from credentials.clientauth.secret import credential_authenticate
from credentials.models import Agent, ChangeToken, Credential
from credentials.rows import current_token
from credentials.services import agent_update, credential_delete, credential_rotate
from tests.factories import AgentFactory, make_credential

on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the change token's triggers are PostgreSQL's (CI runs on it)"
)


def token() -> int | None:
    return current_token(connection)


def lookup(client_id: str) -> tuple[Credential | None, list[str]]:
    """The lookup, and the SQL it ran."""
    with CaptureQueriesContext(connection) as captured:
        found = selectors.credential_find_by_client_id(client_id=client_id)
    return found, [query["sql"] for query in captured.captured_queries]


def reads_the_rows(queries: list[str]) -> bool:
    return any('"credentials_credential"' in sql for sql in queries)


def field_values(obj) -> dict:
    return {field.attname: getattr(obj, field.attname) for field in type(obj)._meta.concrete_fields}


# --- the token ---------------------------------------------------------------------------------


@on_postgresql
@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        pytest.param("UPDATE credentials_credential SET description = 'changed' WHERE id = %s", id="credential-column"),
        pytest.param(
            "UPDATE credentials_credential SET expires_at = now() - interval '1 second' WHERE id = %s",
            id="credential-expiry",
        ),
        pytest.param("DELETE FROM credentials_credential WHERE id = %s", id="credential-delete"),
        pytest.param(
            "UPDATE credentials_agent SET status = 'suspended'"
            " WHERE id = (SELECT agent_id FROM credentials_credential WHERE id = %s)",
            id="agent-status",
        ),
        pytest.param(
            "UPDATE credentials_agent SET scopes = '[\"other\"]'::jsonb"
            " WHERE id = (SELECT agent_id FROM credentials_credential WHERE id = %s)",
            id="agent-scopes",
        ),
    ],
)
def test_every_change_of_a_credential_or_an_agent_made_in_sql_changes_the_token(change):
    credential = make_credential().credential
    before = token()

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM credentials_gracesecret WHERE credential_id = %s", [credential.pk])
        cursor.execute(change, [credential.pk])

    assert token() != before


@on_postgresql
@pytest.mark.django_db(transaction=True)  # not in the transaction that made the rows: PostgreSQL refuses that
def test_a_truncate_changes_the_token():
    make_credential()
    before = token()

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE credentials_agent CASCADE")

    assert token() not in (before, None)  # and the row is back, whatever the truncate emptied


@on_postgresql
@pytest.mark.django_db
def test_a_new_row_a_noted_use_and_an_update_that_changes_nothing_keep_the_token():
    credential = make_credential().credential
    before = token()

    make_credential(AgentFactory())
    Credential.objects.filter(pk=credential.pk).update(last_used_at=timezone.now())
    Credential.objects.filter(pk=credential.pk).update(description=credential.description)
    Agent.objects.filter(pk=credential.agent_id).update(status=credential.agent.status)

    assert token() == before


# --- the lookup --------------------------------------------------------------------------------


@on_postgresql
@pytest.mark.django_db
def test_a_second_lookup_reads_only_the_token_and_hands_out_a_copy_of_its_own():
    credential = make_credential(AgentFactory(scopes=["read", "write"]), description="ci runner").credential

    first, first_queries = lookup(credential.client_id)
    second, second_queries = lookup(credential.client_id)

    assert reads_the_rows(first_queries)
    assert len(second_queries) == 1 and not reads_the_rows(second_queries)
    assert "credentials_changetoken" in second_queries[0]
    expected = Credential.objects.select_related("agent").get(pk=credential.pk)
    assert field_values(second) == field_values(expected)
    assert field_values(second.agent) == field_values(expected.agent)
    assert second._state.adding is False and second._state.db == "default"
    # Nothing is shared: what one caller changes, the next lookup does not see.
    assert second is not first and second.agent is not first.agent
    second.description = "changed in memory"
    second.agent.scopes.append("admin")
    third, _ = lookup(credential.client_id)
    assert third.description == "ci runner" and third.agent.scopes == ["read", "write"]


@on_postgresql
@pytest.mark.django_db
@pytest.mark.parametrize("how", ["service", "queryset", "sql"])
def test_a_suspension_however_it_is_made_is_seen_by_the_very_next_lookup(how):
    credential = make_credential().credential
    lookup(credential.client_id)
    assert lookup(credential.client_id)[0].agent.is_active  # kept

    if how == "service":
        agent_update(acting=None, agent=credential.agent, status=Agent.Status.SUSPENDED)
    elif how == "queryset":
        Agent.objects.filter(pk=credential.agent_id).update(status=Agent.Status.SUSPENDED)
    else:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE credentials_agent SET status = 'suspended' WHERE id = %s", [credential.agent_id])

    found, queries = lookup(credential.client_id)
    assert not found.agent.is_active
    assert reads_the_rows(queries)


@on_postgresql
@pytest.mark.django_db
def test_rotation_deletion_and_expiry_are_seen_by_the_very_next_lookup(issued):
    client_id = issued.credential.client_id
    lookup(client_id)

    credential_rotate(acting=None, credential=issued.credential)
    assert lookup(client_id)[0].secret_hash != issued.credential.secret_hash

    Credential.objects.filter(client_id=client_id).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert lookup(client_id)[0].is_expired()

    credential_delete(acting=None, credential=Credential.objects.get(client_id=client_id))
    assert lookup(client_id)[0] is None


@on_postgresql
@pytest.mark.django_db
def test_a_change_that_rolls_back_is_not_believed_after_it():
    credential = make_credential().credential
    lookup(credential.client_id)

    with pytest.raises(RuntimeError), transaction.atomic():
        Agent.objects.filter(pk=credential.agent_id).update(status=Agent.Status.SUSPENDED)
        assert not lookup(credential.client_id)[0].agent.is_active  # kept under the uncommitted token
        raise RuntimeError

    found, queries = lookup(credential.client_id)
    assert found.agent.is_active
    assert reads_the_rows(queries)


@on_postgresql
@pytest.mark.django_db
def test_a_change_that_commits_between_the_token_and_the_rows_is_read_again(monkeypatch):
    credential = make_credential().credential
    read = selectors.kept_credentials._load

    def read_then_suspend(client_id):
        found = read(client_id)
        Agent.objects.filter(pk=credential.agent_id).update(status=Agent.Status.SUSPENDED)
        return found

    monkeypatch.setattr(selectors.kept_credentials, "_load", read_then_suspend)
    assert lookup(credential.client_id)[0].agent.is_active  # read before the change
    monkeypatch.setattr(selectors.kept_credentials, "_load", read)

    found, queries = lookup(credential.client_id)
    assert not found.agent.is_active
    assert reads_the_rows(queries)


@on_postgresql
@pytest.mark.django_db
def test_an_unknown_client_id_is_looked_up_every_time_and_a_new_credential_is_found_at_once():
    assert lookup("0" * 32)[0] is None
    found, queries = lookup("0" * 32)
    assert found is None and reads_the_rows(queries)

    agent = AgentFactory()
    made = make_credential(agent).credential
    assert lookup(made.client_id)[0].pk == made.pk


@on_postgresql
@pytest.mark.django_db
def test_without_a_token_row_every_lookup_reads_the_rows():
    credential = make_credential().credential
    ChangeToken.objects.all().delete()

    for _ in range(2):
        found, queries = lookup(credential.client_id)
        assert found.pk == credential.pk and reads_the_rows(queries)


@pytest.mark.django_db
def test_with_no_rows_to_keep_or_on_sqlite_every_lookup_reads_the_rows(settings):
    if connection.vendor == "postgresql":
        settings.AGENTIDP_KEPT_CREDENTIAL_ROWS = 0
    credential = make_credential().credential

    for _ in range(2):
        found, queries = lookup(credential.client_id)
        assert found.pk == credential.pk
        assert queries and all(reads_the_rows([sql]) for sql in queries)


@on_postgresql
@pytest.mark.django_db
def test_a_process_keeps_at_most_the_rows_it_is_allowed(settings):
    settings.AGENTIDP_KEPT_CREDENTIAL_ROWS = 8
    made = [make_credential().credential for _ in range(12)]
    for credential in made:
        lookup(credential.client_id)

    assert len(selectors.kept_credentials._kept) <= 8
    assert not reads_the_rows(lookup(made[-1].client_id)[1])  # the newest are kept
    assert reads_the_rows(lookup(made[0].client_id)[1])  # the oldest were dropped


# --- authentication -----------------------------------------------------------------------------


@on_postgresql
@pytest.mark.django_db
def test_a_kept_credential_is_refused_on_the_request_after_an_operator_suspends_its_agent_in_sql(issued):
    client_id, secret = issued.credential.client_id, issued.client_secret
    credential_authenticate(client_id=client_id, client_secret=secret)
    credential_authenticate(client_id=client_id, client_secret=secret)

    with connection.cursor() as cursor:
        cursor.execute("UPDATE credentials_agent SET status = 'suspended' WHERE id = %s", [issued.credential.agent_id])

    with pytest.raises(InvalidClient) as refused:
        credential_authenticate(client_id=client_id, client_secret=secret)
    assert refused.value.reason == "agent_suspended"


@on_postgresql
@pytest.mark.django_db
def test_a_noted_use_raises_the_kept_last_used_so_warm_requests_write_nothing(issued, django_assert_num_queries):
    client_id, secret = issued.credential.client_id, issued.client_secret
    Credential.objects.filter(pk=issued.credential.pk).update(last_used_at=None)
    lookup(client_id)  # kept with no last use

    credential_authenticate(client_id=client_id, client_secret=secret)  # notes the use
    assert lookup(client_id)[0].last_used_at is not None

    with django_assert_num_queries(1):  # the token only
        credential_authenticate(client_id=client_id, client_secret=secret)


# --- across processes ---------------------------------------------------------------------------


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_an_operators_sql_acts_on_the_next_request_in_every_process_that_kept_the_rows(
    start_workers, installation_database
):
    import psycopg

    a, b = start_workers(None)
    seeded = a.seed()
    for worker in (a, b):
        for cred in seeded.values():
            assert worker.auth(cred["clientId"], cred["clientSecret"])["ok"]
        worker.ask("rows_read")
        for cred in seeded.values():
            assert worker.auth(cred["clientId"], cred["clientSecret"])["ok"]
        assert worker.ask("rows_read") == {"rows_read": 0}  # each answered from the rows it kept

    with psycopg.connect(installation_database.replace("postgres://", "postgresql://"), autocommit=True) as sql:
        sql.execute(
            "UPDATE credentials_agent SET status = 'suspended'"
            " WHERE id = (SELECT agent_id FROM credentials_credential WHERE client_id = %s)",
            [seeded["suspended"]["clientId"]],
        )
        sql.execute(
            "UPDATE credentials_credential SET expires_at = now() - interval '1 second' WHERE client_id = %s",
            [seeded["expired"]["clientId"]],
        )
        sql.execute(
            "UPDATE credentials_credential SET compromised_at = now() WHERE client_id = %s",
            [seeded["rotated"]["clientId"]],
        )

    for worker in (a, b):
        assert worker.auth(seeded["suspended"]["clientId"], seeded["suspended"]["clientSecret"])["reason"] == (
            "agent_suspended"
        )
        assert worker.auth(seeded["expired"]["clientId"], seeded["expired"]["clientSecret"])["reason"] == (
            "credential_expired"
        )
        assert worker.auth(seeded["rotated"]["clientId"], seeded["rotated"]["clientSecret"])["reason"] == (
            "credential_compromised"
        )
        assert worker.auth(seeded["deleted"]["clientId"], seeded["deleted"]["clientSecret"])["ok"]
        assert worker.ask("rows_read") == {"rows_read": 4}  # the token changed: each read again once
