"""Tokens bound to resources (RFC 8707): the `resource` parameter, `aud`, and where a token is good."""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from credentials import services
from credentials.models import AuditEvent
from oauth.tokens import MAX_TOKEN_LENGTH, access_token_issue, access_token_validate
from tests.conftest import basic_auth, form_post
from tests.factories import AgentFactory, make_credential
from tests.oauth.conftest import assert_oauth_error, introspect, unverified_claims
from tests.oauth.jwtclients import (
    ASSERTION_TYPE,
    JWT_BEARER,
    TOKEN_URL,
    client_claims,
    key_credential,
    new_key,
    public_jwks,
    sign,
    trust_policy,
)

REPORTS = "https://reports.example/api"
TOOLS = "https://tools.example/mcp"


@pytest.fixture
def resource_agent(db):
    return AgentFactory(scopes=["reports:read", "agentidp:admin"], allowed_resources=[REPORTS, TOOLS])


@pytest.fixture
def resource_issued(resource_agent):
    return make_credential(resource_agent)


def request_token(client, issued, *pairs: tuple[str, str], content_type: str = "form"):
    auth = {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)}
    if content_type == "json":
        body: dict = {"grant_type": "client_credentials"}
        for name, value in pairs:
            body.setdefault(name, []).append(value)
        body = {name: (values if name == "resource" else values[0]) for name, values in body.items() if values}
        body["grant_type"] = "client_credentials"
        return client.post(TOKEN_URL, json.dumps(body), content_type="application/json", **auth)
    from urllib.parse import urlencode

    return client.post(
        TOKEN_URL,
        urlencode([("grant_type", "client_credentials"), *pairs]),
        content_type="application/x-www-form-urlencoded",
        **auth,
    )


def management(token: str):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer " + token)
    return api.get("/api/v1/agents")


# --- The token endpoint ---------------------------------------------------------------------------


def test_one_resource_makes_the_tokens_audience_that_resource(client, resource_issued):
    response = request_token(client, resource_issued, ("resource", REPORTS))

    assert response.status_code == 200, response.content
    assert unverified_claims(response.json()["access_token"])["aud"] == REPORTS


@pytest.mark.parametrize("content_type", ["form", "json"])
def test_several_resources_make_an_audience_array_in_their_order(client, resource_issued, content_type):
    pairs = [("resource", TOOLS), ("resource", REPORTS), ("resource", TOOLS)]
    response = request_token(client, resource_issued, *pairs, content_type=content_type)

    assert response.status_code == 200, response.content
    assert unverified_claims(response.json()["access_token"])["aud"] == [TOOLS, REPORTS]


def test_without_a_resource_the_audience_is_agentidp_itself(client, resource_issued):
    response = request_token(client, resource_issued)

    assert unverified_claims(response.json()["access_token"])["aud"] == settings.AGENTIDP_AUDIENCE


@pytest.mark.parametrize(
    "resource",
    [
        "https://other.example/api",  # not among the agent's
        REPORTS + "/",  # compared as the exact string
        "https://REPORTS.example/api",
        "reports.example/api",  # not absolute
        REPORTS + "#frag",  # a fragment (RFC 8707 section 2)
        "https://reports.example/ api",
        "https://reports.example/" + "a" * 600,
    ],
)
def test_a_resource_the_agent_is_not_allowed_or_a_malformed_one_is_invalid_target(client, resource_issued, resource):
    response = request_token(client, resource_issued, ("resource", REPORTS), ("resource", resource))

    assert_oauth_error(response, 400, "invalid_target")


def test_more_resources_than_a_token_may_name_is_invalid_target(db, client):
    allowed = [f"https://api{n}.example/" for n in range(11)]
    issued = make_credential(AgentFactory(allowed_resources=allowed))

    assert request_token(client, issued, *[("resource", r) for r in allowed[:10]]).status_code == 200
    assert_oauth_error(request_token(client, issued, *[("resource", r) for r in allowed]), 400, "invalid_target")


def test_a_resource_that_is_not_a_string_in_json_is_invalid_request(client, resource_issued):
    auth = basic_auth(resource_issued.credential.client_id, resource_issued.client_secret)
    for resource in ([REPORTS, 3], {"a": REPORTS}, 7):
        body = json.dumps({"grant_type": "client_credentials", "resource": resource})
        response = client.post(TOKEN_URL, body, content_type="application/json", HTTP_AUTHORIZATION=auth)

        assert_oauth_error(response, 400, "invalid_request")


def test_an_unauthenticated_request_learns_nothing_about_resources(client, resource_issued):
    auth = basic_auth(resource_issued.credential.client_id, "wrong")
    for resource in (REPORTS, "https://other.example/"):
        response = form_post(
            client, TOKEN_URL, {"grant_type": "client_credentials", "resource": resource}, HTTP_AUTHORIZATION=auth
        )

        assert_oauth_error(response, 401, "invalid_client")


def test_resource_may_be_sent_twice_only_at_the_token_endpoint(client, resource_issued):
    token = request_token(client, resource_issued).json()["access_token"]
    from urllib.parse import urlencode

    body = urlencode([("token", token), ("resource", REPORTS), ("resource", TOOLS)])
    response = client.post(
        "/api/v1/token/introspect",
        body,
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=basic_auth(resource_issued.credential.client_id, resource_issued.client_secret),
    )

    assert_oauth_error(response, 400, "invalid_request")


def test_a_key_credential_gets_a_token_for_a_resource(client, resource_agent):
    key = new_key()
    credential = key_credential(resource_agent, jwks=public_jwks(key))
    assertion = sign(key, client_claims(credential.client_id))

    response = form_post(
        client,
        TOKEN_URL,
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            "resource": TOOLS,
        },
    )

    assert response.status_code == 200, response.content
    assert unverified_claims(response.json()["access_token"])["aud"] == TOOLS


def test_the_jwt_bearer_grant_takes_resources_too(client, resource_agent, oidc_issuer):
    policy = trust_policy(resource_agent, issuer=oidc_issuer.issuer, audience="agentidp", subject="workload")
    now = int(time.time())
    assertion = oidc_issuer.mint({"aud": "agentidp", "sub": "workload", "iat": now, "exp": now + 300})

    granted = form_post(client, TOKEN_URL, {"grant_type": JWT_BEARER, "assertion": assertion, "resource": REPORTS})
    refused = form_post(client, TOKEN_URL, {"grant_type": JWT_BEARER, "assertion": assertion, "resource": "urn:x:y"})

    assert granted.status_code == 200, granted.content
    claims = unverified_claims(granted.json()["access_token"])
    assert (claims["aud"], claims["client_id"]) == (REPORTS, str(policy.id))
    assert_oauth_error(refused, 400, "invalid_target")


# --- Where the token is good ---------------------------------------------------------------------


def test_introspection_returns_the_resources_as_aud(client, resource_issued):
    one = request_token(client, resource_issued, ("resource", REPORTS)).json()["access_token"]
    two = request_token(client, resource_issued, ("resource", REPORTS), ("resource", TOOLS)).json()["access_token"]

    assert introspect(client, resource_issued, one).json()["aud"] == REPORTS
    assert introspect(client, resource_issued, two).json()["aud"] == [REPORTS, TOOLS]


def test_a_token_for_a_resource_is_refused_by_the_management_api_even_with_the_admin_scope(client, resource_issued):
    for_reports = request_token(client, resource_issued, ("resource", REPORTS)).json()["access_token"]
    for_agentidp = request_token(client, resource_issued).json()["access_token"]

    refused = management(for_reports)

    assert "agentidp:admin" in unverified_claims(for_reports)["scope"].split()
    assert refused.status_code == 401
    assert refused.json()["code"] == "UNAUTHORIZED"
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert management(for_agentidp).status_code == 200


def test_a_token_naming_agentidp_beside_a_resource_is_refused_by_the_management_api(client, db):
    agent = AgentFactory(scopes=["agentidp:admin"], allowed_resources=[settings.AGENTIDP_AUDIENCE, REPORTS])
    issued = make_credential(agent)
    both = request_token(client, issued, ("resource", settings.AGENTIDP_AUDIENCE), ("resource", REPORTS))
    alone = request_token(client, issued, ("resource", settings.AGENTIDP_AUDIENCE))

    assert management(both.json()["access_token"]).status_code == 401
    assert management(alone.json()["access_token"]).status_code == 200


def test_taking_a_resource_from_the_agent_makes_its_tokens_for_it_inactive(client, resource_issued, resource_agent):
    reports = request_token(client, resource_issued, ("resource", REPORTS)).json()["access_token"]
    both = request_token(client, resource_issued, ("resource", REPORTS), ("resource", TOOLS)).json()["access_token"]

    services.agent_update(acting=None, agent=resource_agent, allowed_resources=[TOOLS])

    assert introspect(client, resource_issued, reports).json() == {"active": False}
    assert introspect(client, resource_issued, both).json()["aud"] == TOOLS


def test_the_largest_token_still_validates(db):
    agent = AgentFactory(
        scopes=[f"s{n:03}:" + "x" * 123 for n in range(100)],
        allowed_resources=[f"https://api{n}.example/" + "p" * 480 for n in range(10)],
    )
    credential = make_credential(agent).credential
    issued = access_token_issue(
        agent_id=agent.id, client_id=credential.client_id, scopes=agent.scopes, resources=agent.allowed_resources
    )

    assert len(issued.access_token) < MAX_TOKEN_LENGTH
    active = access_token_validate(issued.access_token)
    assert active is not None and len(active.audiences) == 10 and len(active.scopes) == 100


# --- The agent's allowed resources ---------------------------------------------------------------


def test_allowed_resources_are_set_on_create_and_patch_and_audited_in_full(api, db):
    created = api.post("/api/v1/agents", {"name": "mcp-bot", "allowedResources": [TOOLS, TOOLS]}, format="json")
    agent_id = created.json()["agentId"]
    patched = api.patch(f"/api/v1/agents/{agent_id}", {"allowedResources": [REPORTS]}, format="json")

    assert created.status_code == 201 and created.json()["allowedResources"] == [TOOLS]
    assert patched.status_code == 200 and patched.json()["allowedResources"] == [REPORTS]
    event = AuditEvent.objects.filter(agent_id=agent_id, action=AuditEvent.Action.AGENT_UPDATED).get()
    assert event.details == {"changed": {"allowedResources": {"from": [TOOLS], "to": [REPORTS]}}}


@pytest.mark.parametrize(
    "value",
    [
        "https://one.example/",
        ["relative/path"],
        ["https://x.example/#f"],
        [""],
        [7],
        ["https://x.example/" + "a" * 600],
        [f"https://{n}.example/" for n in range(51)],
    ],
)
def test_malformed_allowed_resources_are_a_validation_error(api, db, value):
    response = api.post("/api/v1/agents", {"name": "bad", "allowedResources": value}, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert "allowedResources" in response.json()["details"]
