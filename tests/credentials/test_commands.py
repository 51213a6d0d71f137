import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from credentials import services
from credentials.models import Agent, AuditEvent, Credential

ADMIN_SCOPE = "agentidp:admin"


def bootstrap(*args) -> str:
    out = StringIO()
    call_command("bootstrap_admin", *args, stdout=out)
    return out.getvalue()


def bootstrap_json(*args) -> dict:
    return json.loads(bootstrap("--json", *args))


def test_bootstrap_admin_creates_the_admin_agent_and_prints_its_credential(db, token_response):
    output = bootstrap()

    agent = Agent.objects.get()
    assert agent.name == "agentidp-admin"
    assert agent.scopes == [ADMIN_SCOPE]
    assert agent.status == Agent.Status.ACTIVE
    credential = Credential.objects.get(agent=agent)
    client_id = re.search(r"^clientId:\s+(\S+)$", output, re.MULTILINE).group(1)
    client_secret = re.search(r"^clientSecret:\s+(\S+)$", output, re.MULTILINE).group(1)
    assert client_id == credential.client_id
    assert str(agent.id) in output
    assert credential.secret_hash not in output
    assert token_response(client_id, client_secret).status_code == 200


def test_bootstrap_admin_json_prints_one_object_whose_secret_gets_an_admin_token(db, token_response):
    output = bootstrap("--json")

    data = json.loads(output)
    assert set(data) == {"agentId", "clientId", "clientSecret"}
    credential = Credential.objects.get(client_id=data["clientId"])
    assert data["agentId"] == str(credential.agent_id)
    assert len(output.strip().splitlines()) == 1
    response = token_response(data["clientId"], data["clientSecret"])
    assert response.status_code == 200
    assert response.json()["scope"] == ADMIN_SCOPE


def test_bootstrap_admin_secret_can_use_the_management_api(db, token_response):
    data = bootstrap_json()
    token = token_response(data["clientId"], data["clientSecret"]).json()["access_token"]
    api_client = APIClient()
    api_client.credentials(HTTP_AUTHORIZATION="Bearer " + token)

    response = api_client.get("/api/v1/agents")

    assert response.status_code == 200
    assert [a["agentId"] for a in response.json()["results"]] == [data["agentId"]]


def test_bootstrap_admin_twice_reuses_the_agent_and_adds_a_credential(db, token_response):
    first = bootstrap_json()
    second = bootstrap_json()

    assert first["agentId"] == second["agentId"]
    assert first["clientId"] != second["clientId"]
    assert Agent.objects.count() == 1
    assert Credential.objects.filter(agent_id=first["agentId"]).count() == 2
    assert token_response(first["clientId"], first["clientSecret"]).status_code == 200
    assert token_response(second["clientId"], second["clientSecret"]).status_code == 200


def test_bootstrap_admin_reuses_the_agent_whatever_the_case_of_its_name(db):
    services.agent_create(acting=None, name="AgentIdP-Admin", scopes=[ADMIN_SCOPE])

    data = bootstrap_json()

    assert Agent.objects.count() == 1
    assert data["agentId"] == str(Agent.objects.get().id)


def test_bootstrap_admin_replace_leaves_only_the_new_credential(db, token_response):
    first = bootstrap_json()
    second = bootstrap_json()
    old_ids = set(Credential.objects.values_list("id", flat=True))

    third = bootstrap_json("--replace")

    assert list(Credential.objects.values_list("client_id", flat=True)) == [third["clientId"]]
    for old in (first, second):
        refused = token_response(old["clientId"], old["clientSecret"])
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"
    assert token_response(third["clientId"], third["clientSecret"]).status_code == 200
    deleted = AuditEvent.objects.filter(action="credential.deleted").values_list("credential_id", flat=True)
    assert sorted(deleted) == sorted(old_ids)


def test_bootstrap_admin_restores_a_removed_admin_scope(db, token_response):
    first = bootstrap_json()
    agent = Agent.objects.get()
    services.agent_update(acting=None, agent=agent, scopes=["reports:read"])

    second = bootstrap_json()

    agent.refresh_from_db()
    assert agent.scopes == ["reports:read", ADMIN_SCOPE]
    assert token_response(second["clientId"], second["clientSecret"]).json()["scope"] == f"reports:read {ADMIN_SCOPE}"
    assert first["agentId"] == second["agentId"]


def test_bootstrap_admin_reactivates_a_suspended_admin_agent(db, token_response):
    first = bootstrap_json()
    agent = Agent.objects.get()
    services.agent_update(acting=None, agent=agent, status=Agent.Status.SUSPENDED)
    assert token_response(first["clientId"], first["clientSecret"]).status_code == 401

    second = bootstrap_json()

    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE
    assert token_response(second["clientId"], second["clientSecret"]).status_code == 200
    assert token_response(first["clientId"], first["clientSecret"]).status_code == 200


def test_bootstrap_admin_changes_are_audited_as_the_command(db):
    bootstrap_json()

    trail = AuditEvent.objects.all()
    assert {e.action for e in trail} == {"agent.created", "credential.created"}
    assert {(e.actor_type, e.actor_label) for e in trail} == {("system", "manage.py bootstrap_admin")}


def test_bootstrap_admin_with_another_name(db):
    data = bootstrap_json("--name", "break-glass")

    assert Agent.objects.get(pk=data["agentId"]).name == "break-glass"


def test_bootstrap_admin_fails_cleanly_when_the_credential_limit_is_reached(db, settings):
    settings.AGENTIDP_MAX_ACTIVE_CREDENTIALS = 1
    bootstrap_json()

    with pytest.raises(CommandError, match="active credentials"):
        bootstrap_json()

    assert Credential.objects.count() == 1
    assert bootstrap_json("--replace")["clientId"] == Credential.objects.get().client_id


def test_bootstrap_admin_changes_nothing_and_says_so_when_vault_refuses_the_write(vault_enabled, db):
    server = vault_enabled.require_server()
    server.fail("sealed")

    with pytest.raises(CommandError, match="Nothing was changed"):
        call_command("bootstrap_admin", "--json", stdout=StringIO())

    assert not Agent.objects.exists()
    assert not Credential.objects.exists()
