"""
How the management API answers whatever representation a client asks for, and why a
response that carries a new secret can never be lost after the change commits.
"""

import pytest
from rest_framework.test import APIClient

from credentials.models import Agent, Credential
from tests.concurrency import store_problems
from tests.credentials.helpers import authenticates
from tests.credentials.test_api import agents_url, credentials_url, rotate_url

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ACCEPTS = ["text/html", BROWSER, "application/xml", "foo/bar", "*/*", "application/json"]


@pytest.fixture
def raw_api(api) -> APIClient:
    api.raise_request_exception = False
    return api


@pytest.mark.parametrize("accept", ACCEPTS)
def test_every_management_call_answers_json_whatever_accept_asks_for(raw_api, issued, accept):
    credential = issued.credential
    calls = [
        ("get", agents_url(), 200),
        ("get", agents_url(credential.agent_id), 200),
        ("patch", agents_url(credential.agent_id), 200),
        ("get", credentials_url(credential.agent_id), 200),
        ("get", credentials_url(credential.agent_id, credential.id), 200),
        ("post", credentials_url(credential.agent_id), 201),
        ("post", rotate_url(credential.agent_id, credential.id), 200),
        ("post", agents_url(), 400),
        ("delete", credentials_url(credential.agent_id, credential.id), 204),
    ]
    for method, url, expected in calls:
        response = getattr(raw_api, method)(url, {}, format="json", HTTP_ACCEPT=accept)
        assert response.status_code == expected, (method, url, response.content)
        if expected != 204:
            assert response["Content-Type"] == "application/json", (method, url)
            response.json()


@pytest.mark.parametrize("query", ["?format=api", "?format=json", "?format=html", "?format=yaml"])
def test_a_format_query_is_answered_in_json(raw_api, issued, query):
    credential = issued.credential

    listed = raw_api.get(agents_url() + query)
    rotated = raw_api.post(rotate_url(credential.agent_id, credential.id) + query, {}, format="json")

    assert listed.status_code == 200 and listed.json()["count"] >= 1
    assert rotated.status_code == 200
    assert authenticates(credential.client_id, rotated.json()["clientSecret"])


@pytest.mark.parametrize("accept", ["text/html", BROWSER])
def test_a_browser_that_creates_or_rotates_receives_the_secret_in_json(raw_api, issued, accept):
    credential = issued.credential

    created = raw_api.post(credentials_url(credential.agent_id), {}, format="json", HTTP_ACCEPT=accept)
    rotated = raw_api.post(rotate_url(credential.agent_id, credential.id), {}, format="json", HTTP_ACCEPT=accept)

    for response in (created, rotated):
        assert response["Content-Type"] == "application/json"
        assert response["Cache-Control"] == "no-store"
    assert created.status_code == 201 and created["Location"].endswith(created.json()["credentialId"])
    assert authenticates(created.json()["clientId"], created.json()["clientSecret"])
    assert authenticates(credential.client_id, rotated.json()["clientSecret"])
    assert not authenticates(credential.client_id, issued.client_secret)


@pytest.mark.parametrize("path", ["agents", "agent", "credentials", "credential", "rotate", "docs", "schema"])
def test_options_answers_200_on_every_route(raw_api, issued, path):
    credential = issued.credential
    url = {
        "agents": agents_url(),
        "agent": agents_url(credential.agent_id),
        "credentials": credentials_url(credential.agent_id),
        "credential": credentials_url(credential.agent_id, credential.id),
        "rotate": rotate_url(credential.agent_id, credential.id),
        "docs": "/api/v1/docs/",
        "schema": "/api/v1/schema/",
    }[path]

    response = raw_api.options(url, HTTP_ACCEPT="text/html")
    assert response.status_code == 200, response.content
    assert "OPTIONS" in response["Allow"]
    # Anonymous too: a description holds the route's name and media types, nothing of its data.
    anonymous = APIClient().options(url, HTTP_ACCEPT="text/html")
    assert anonymous.status_code == 200
    assert set(anonymous.json()) == {"name", "description", "renders", "parses"}


@pytest.fixture
def failing_render(monkeypatch):
    """Make rendering the answer that carries a new secret fail, as a bug or a full disk would."""

    def fail(self, instance):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr("credentials.api.serializers.IssuedCredentialOutput.to_representation", fail)


def test_a_rotation_whose_answer_cannot_be_rendered_is_not_made(raw_api, issued, failing_render):
    credential = issued.credential

    response = raw_api.post(rotate_url(credential.agent_id, credential.id), {}, format="json")

    assert response.status_code == 500
    assert "clientSecret" not in response.content.decode()
    row = Credential.objects.get(pk=credential.pk)
    assert (row.rotated_at, row.secret_hash) == (None, credential.secret_hash)
    assert authenticates(credential.client_id, issued.client_secret)


def test_a_credential_whose_answer_cannot_be_rendered_is_not_created(raw_api, agent, failing_render):
    response = raw_api.post(credentials_url(agent.id), {"description": "lost?"}, format="json")

    assert response.status_code == 500
    assert not Credential.objects.filter(agent=agent).exists()


def test_with_vault_an_unrendered_answer_leaves_no_secret_in_vault_and_the_old_one_working(
    raw_api, issued, vault_enabled, failing_render
):
    legacy = issued.credential  # a bcrypt credential: its rotation would move it into Vault
    agent = Agent.objects.get(pk=legacy.agent_id)
    made = raw_api.post(credentials_url(agent.id), {}, format="json")
    rotated = raw_api.post(rotate_url(agent.id, legacy.id), {"gracePeriodSeconds": 60}, format="json")

    assert (made.status_code, rotated.status_code) == (500, 500)
    assert Credential.objects.filter(agent=agent).count() == 1
    assert Credential.objects.get(pk=legacy.pk).storage == "bcrypt"
    assert authenticates(legacy.client_id, issued.client_secret)
    assert store_problems(vault_enabled) == []
