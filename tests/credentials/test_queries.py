"""Querysets compiled once per connection: the same objects as the ORM's, one query, values as parameters."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from credentials import selectors
from credentials.models import Agent, Credential, TrustPolicy
from credentials.queries import CompiledQuery
from tests.factories import AgentFactory, make_credential, make_trust_policy

pytestmark = pytest.mark.django_db(transaction=True)


def by_client_id() -> CompiledQuery:
    return CompiledQuery(
        Credential, lambda client_id: Credential.objects.select_related("agent").filter(client_id=client_id)
    )


def field_values(obj) -> dict:
    return {field.attname: getattr(obj, field.attname) for field in type(obj)._meta.concrete_fields}


def test_compiled_lookup_returns_what_the_orm_returns_with_its_agent_in_one_query():
    credential = make_credential(AgentFactory(scopes=["read", "write"]), description="ci runner").credential
    query = by_client_id()
    query(credential.client_id)  # compiled on first use

    with CaptureQueriesContext(connection) as captured:
        [found] = query(credential.client_id)
        agent = found.agent

    expected = Credential.objects.select_related("agent").get(client_id=credential.client_id)
    assert field_values(found) == field_values(expected)
    assert field_values(agent) == field_values(expected.agent)
    assert agent.scopes == ["read", "write"]
    assert len(captured.captured_queries) == 1  # the agent came with the credential
    assert '"credentials_agent"' in captured.captured_queries[0]["sql"]
    assert found._state.adding is False and found._state.db == "default"


def test_compiled_lookup_reads_json_and_timestamps_as_the_orm_does():
    agent = AgentFactory()
    policy = make_trust_policy(agent, claims={"repository": "org/app", "ref": ["refs/heads/main"]})

    [found] = selectors.trust_policies_for_issuer(issuer=policy.issuer)

    expected = TrustPolicy.objects.select_related("agent").get(pk=policy.pk)
    assert field_values(found) == field_values(expected)
    assert found.claims == {"repository": "org/app", "ref": ["refs/heads/main"]}
    assert found.created_at.tzinfo is not None
    assert found.agent == agent


def test_each_call_runs_with_its_own_values_and_finds_nothing_for_an_unknown_one():
    first, second = make_credential().credential, make_credential().credential
    query = by_client_id()

    assert [c.pk for c in query(first.client_id)] == [first.pk]
    assert [c.pk for c in query(second.client_id)] == [second.pk]
    assert query("no-such-client") == []
    assert query("x' OR '1'='1") == []  # a parameter, never SQL


def test_the_sql_is_compiled_once_per_connection(monkeypatch):
    credential = make_credential().credential
    query = by_client_id()
    compile_ = query._compile
    compiled = []
    monkeypatch.setattr(query, "_compile", lambda queryset: compiled.append(queryset.db) or compile_(queryset))

    query(credential.client_id)
    query(credential.client_id)
    assert compiled == ["default"]

    # Another thread has its own connection, and compiles for it.
    found = []
    thread = threading.Thread(target=lambda: (found.extend(query(credential.client_id)), connection.close()))
    thread.start()
    thread.join()
    assert [c.pk for c in found] == [credential.pk]
    assert compiled == ["default", "default"]
    query(credential.client_id)
    assert len(compiled) == 2


def test_ordering_of_the_queryset_is_kept():
    agent = AgentFactory()
    older = make_trust_policy(agent, issuer="https://issuer.example")
    newer = make_trust_policy(AgentFactory(), issuer="https://issuer.example")

    assert [p.pk for p in selectors.trust_policies_for_issuer(issuer="https://issuer.example")] == [older.pk, newer.pk]


@pytest.mark.parametrize(
    "build",
    [
        lambda name: Agent.objects.filter(name__icontains=name),  # the value is wrapped in % signs
        lambda name: Agent.objects.all(),  # the value is not used
        lambda name: Agent.objects.filter(name=name).prefetch_related("credentials"),
    ],
    ids=["transformed", "unused", "prefetch"],
)
def test_shapes_it_cannot_keep_are_refused_when_first_compiled(build):
    with pytest.raises(ValueError):
        CompiledQuery(Agent, build)("anything")


def test_a_call_with_the_wrong_number_of_values_is_refused():
    with pytest.raises(TypeError):
        by_client_id()("a", "b")


def test_a_plan_does_not_keep_its_connection_alive():
    credential = make_credential().credential
    query = by_client_id()
    query(credential.client_id)
    threads_connection = []

    def use_and_close():
        query(credential.client_id)
        threads_connection.append(weakref.ref(connections["default"]))
        connection.close()

    thread = threading.Thread(target=use_and_close)
    thread.start()
    thread.join()
    del thread
    gc.collect()

    assert threads_connection[0]() is None  # the thread's connection, with its plan, is gone
