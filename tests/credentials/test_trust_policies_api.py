"""
Trust policies through the management API: which platform-issued JWTs an agent accepts as
its identity. Created with strict validation, listed, read and deleted under their agent,
audited without keys, and deleted with their agent.
"""

import uuid

import pytest

from credentials import services
from credentials.models import AuditEvent, TrustPolicy
from tests.credentials.helpers import events
from tests.credentials.test_api import assert_error, staff_session
from tests.factories import AgentFactory, make_trust_policy, public_jwks

POLICY_KEYS = {
    "trustPolicyId",
    "agentId",
    "issuer",
    "audience",
    "subject",
    "subjectPattern",
    "claims",
    "jwks",
    "jwksUri",
    "maxTokenAgeSeconds",
    "description",
    "createdAt",
}
GITHUB = "https://token.actions.githubusercontent.com"
AUDIENCE = "https://agentidp.example"


def policies_url(agent_id, policy_id=None) -> str:
    base = f"/api/v1/agents/{agent_id}/trust-policies"
    return base if policy_id is None else f"{base}/{policy_id}"


def create(api, agent_id, **body):
    return api.post(policies_url(agent_id), {"issuer": GITHUB, "audience": AUDIENCE, **body}, format="json")


# --- create and read ----------------------------------------------------------------------------


def test_create_a_policy_returns_it_with_every_field_of_the_contract(api, agent):
    response = create(
        api,
        agent.id,
        subject="repo:example/reports:ref:refs/heads/main",
        claims={"repository_owner": "example", "runner_environment": ["github-hosted", "self-hosted"]},
        maxTokenAgeSeconds=600,
        description="nightly report job",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == POLICY_KEYS
    assert body["agentId"] == str(agent.id)
    assert (body["issuer"], body["audience"]) == (GITHUB, AUDIENCE)
    assert (body["subject"], body["subjectPattern"]) == ("repo:example/reports:ref:refs/heads/main", None)
    assert body["claims"] == {"repository_owner": "example", "runner_environment": ["github-hosted", "self-hosted"]}
    assert (body["jwks"], body["jwksUri"], body["maxTokenAgeSeconds"]) == (None, None, 600)
    assert body["description"] == "nightly report job"
    assert api.get(response["Location"]).json() == body
    assert TrustPolicy.objects.get(pk=body["trustPolicyId"]).agent_id == agent.id


def test_create_a_spiffe_policy_with_its_own_keys_and_any_issuer_string(api, agent):
    response = create(
        api,
        agent.id,
        issuer="spiffe://prod.example.org",
        subjectPattern="spiffe://prod.example.org/ns/agents/sa/*",
        jwks=public_jwks("spire"),
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["subject"], body["subjectPattern"]) == (None, "spiffe://prod.example.org/ns/agents/sa/*")
    assert body["jwks"]["keys"][0]["kid"] == "spire"


def test_create_a_policy_with_a_jwks_uri(api, agent):
    response = create(
        api,
        agent.id,
        issuer="https://kubernetes.default.svc.cluster.local",
        jwksUri="https://oidc.cluster.example.com/openid/v1/jwks",
        subject="system:serviceaccount:agents:report-bot",
    )

    assert response.status_code == 201, response.content
    assert response.json()["jwksUri"] == "https://oidc.cluster.example.com/openid/v1/jwks"


def test_a_policy_without_subject_is_allowed_when_it_requires_claims(api, agent):
    response = create(api, agent.id, claims={"repository": "example/reports"})

    assert response.status_code == 201, response.content
    assert (response.json()["subject"], response.json()["subjectPattern"]) == (None, None)


def test_creating_and_deleting_a_policy_is_audited_without_keys(api, agent):
    jwks = public_jwks("k")
    body = create(api, agent.id, issuer="spiffe://example.org", subject="spiffe://example.org/a", jwks=jwks).json()

    api.delete(policies_url(agent.id, body["trustPolicyId"]))

    created, deleted = (
        events(AuditEvent.Action.TRUST_POLICY_CREATED)[-1],
        events(AuditEvent.Action.TRUST_POLICY_DELETED)[-1],
    )
    expected = {
        "trustPolicyId": body["trustPolicyId"],
        "issuer": "spiffe://example.org",
        "audience": AUDIENCE,
        "subject": "spiffe://example.org/a",
    }
    assert created.details == deleted.details == expected
    assert created.agent_id == deleted.agent_id == agent.id
    assert created.actor_type == "agent"
    assert jwks["keys"][0]["x"] not in str(created.details)


def test_list_is_paginated_and_holds_only_the_agents_policies(api, agent):
    first, second = make_trust_policy(agent), make_trust_policy(agent, subject="repo:example/other:ref:refs/heads/main")
    make_trust_policy(AgentFactory())

    body = api.get(policies_url(agent.id)).json()

    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 2
    assert [item["trustPolicyId"] for item in body["results"]] == [str(first.id), str(second.id)]


# --- not found ------------------------------------------------------------------------------------


def test_another_agents_policy_is_not_found(api, agent):
    foreign = make_trust_policy(AgentFactory())

    assert_error(api.get(policies_url(agent.id, foreign.id)), 404, "TRUST_POLICY_NOT_FOUND")
    assert_error(api.delete(policies_url(agent.id, foreign.id)), 404, "TRUST_POLICY_NOT_FOUND")
    assert TrustPolicy.objects.filter(pk=foreign.pk).exists()


@pytest.mark.parametrize("policy_id", [str(uuid.uuid4()), "not-a-uuid", "0" * 600])
def test_unknown_or_malformed_policy_ids_are_not_found(api, agent, policy_id):
    assert_error(api.get(policies_url(agent.id, policy_id)), 404, "TRUST_POLICY_NOT_FOUND")


def test_policies_of_an_unknown_agent_are_agent_not_found(api):
    assert_error(api.get(policies_url(uuid.uuid4())), 404, "AGENT_NOT_FOUND")
    assert_error(create(api, uuid.uuid4(), subject="x"), 404, "AGENT_NOT_FOUND")


def test_delete_twice_is_not_found_the_second_time(api, agent):
    policy = make_trust_policy(agent)

    assert api.delete(policies_url(agent.id, policy.id)).status_code == 204
    assert_error(api.delete(policies_url(agent.id, policy.id)), 404, "TRUST_POLICY_NOT_FOUND")


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"issuer": ""}, "issuer"),
        ({"issuer": "x" * 513, "jwks": None}, "issuer"),
        ({"issuer": 5}, "issuer"),
        ({"audience": ""}, "audience"),
        ({"audience": "a" * 513}, "audience"),
        # Without keys the issuer's discovery document is fetched: it must be a URL the fetcher accepts.
        ({"issuer": "spiffe://example.org", "subject": "s"}, "issuer"),
        ({"issuer": "http://issuer.example.com", "subject": "s"}, "issuer"),
        ({"issuer": "https://10.0.0.1", "subject": "s"}, "issuer"),
        ({"subject": "a", "subjectPattern": "a*"}, "subject"),
        ({}, "subject"),
        ({"claims": {}}, "subject"),
        ({"subjectPattern": "*"}, "subjectPattern"),
        ({"subjectPattern": "***"}, "subjectPattern"),
        ({"subject": "a\x00b"}, "subject"),
        ({"subject": "s" * 513}, "subject"),
        ({"subject": "s", "claims": {"aud": "x"}}, "claims"),
        ({"subject": "s", "claims": {"iss": "x"}}, "claims"),
        ({"subject": "s", "claims": {"exp": 1}}, "claims"),
        ({"subject": "s", "claims": {"jti": "x"}}, "claims"),
        ({"claims": {"sub": "x"}}, "claims"),
        ({"subject": "s", "claims": {"": "x"}}, "claims"),
        ({"subject": "s", "claims": {"n" * 65: "x"}}, "claims"),
        ({"subject": "s", "claims": {"a": {"nested": 1}}}, "claims"),
        ({"subject": "s", "claims": {"a": []}}, "claims"),
        ({"subject": "s", "claims": {"a": [[1]]}}, "claims"),
        ({"subject": "s", "claims": {"a": None}}, "claims"),
        ({"subject": "s", "claims": {"a": list(range(51))}}, "claims"),
        ({"subject": "s", "claims": {f"c{i}": i for i in range(21)}}, "claims"),
        ({"subject": "s", "claims": ["a"]}, "claims"),
        ({"subject": "s", "maxTokenAgeSeconds": 0}, "maxTokenAgeSeconds"),
        ({"subject": "s", "maxTokenAgeSeconds": 86401}, "maxTokenAgeSeconds"),
        ({"subject": "s", "maxTokenAgeSeconds": True}, "maxTokenAgeSeconds"),
        ({"subject": "s", "maxTokenAgeSeconds": "60"}, "maxTokenAgeSeconds"),
        ({"subject": "s", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "jwks"),
        ({"subject": "s", "jwks": []}, "jwks"),
        ({"subject": "s", "jwksUri": "http://keys.example.com"}, "jwksUri"),
        ({"subject": "s", "jwksUri": "https://169.254.169.254/keys"}, "jwksUri"),
        ({"subject": "s", "jwksUri": "https://keys.example.com", "jwks": {"keys": []}}, "jwksUri"),
        ({"subject": "s", "trustedIssuers": []}, "trustedIssuers"),
        ({"subject": "s", "description": 3}, "description"),
    ],
)
def test_create_refuses_bad_bodies_with_validation_error_naming_the_field(api, agent, body, field):
    response = create(api, agent.id, **body)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert field in error.get("details", {}), error
    assert not TrustPolicy.objects.exists()


def test_create_refuses_a_private_key_and_never_echoes_it(api, agent):
    from joserfc.jwk import RSAKey

    private = RSAKey.generate_key(2048).as_dict(private=True)

    response = create(api, agent.id, issuer="spiffe://example.org", subject="s", jwks={"keys": [private]})

    assert_error(response, 400, "VALIDATION_ERROR")
    assert private["d"] not in response.content.decode()
    assert not TrustPolicy.objects.exists()


def test_claims_may_be_strings_numbers_booleans_or_lists_of_them(api, agent):
    claims = {"ref": "refs/heads/main", "run_attempt": 1, "ref_protected": True, "environment": ["prod", "staging"]}

    response = create(api, agent.id, claims=claims)

    assert response.status_code == 201, response.content
    assert response.json()["claims"] == claims


def test_an_agent_has_at_most_the_allowed_number_of_policies(api, agent, monkeypatch):
    monkeypatch.setattr(services.policies, "MAX_TRUST_POLICIES", 2)
    make_trust_policy(agent)
    make_trust_policy(agent)

    assert_error(create(api, agent.id, subject="third"), 409, "CONFLICT")


def test_a_non_json_body_is_unsupported_media_type(api, agent):
    response = api.post(policies_url(agent.id), "issuer=x", content_type="application/x-www-form-urlencoded")

    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize("method", ["put", "patch"])
def test_policies_cannot_be_changed_in_place(api, agent, method):
    policy = make_trust_policy(agent)

    response = getattr(api, method)(policies_url(agent.id, policy.id), {"subject": "other"}, format="json")

    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "DELETE" in response["Allow"]


# --- with the agent ------------------------------------------------------------------------------


def test_deleting_an_agent_deletes_its_policies_with_one_event_each(api, agent):
    first, second = make_trust_policy(agent), make_trust_policy(agent, subject="repo:example/x:ref:refs/heads/main")

    assert api.delete(f"/api/v1/agents/{agent.id}").status_code == 204

    assert not TrustPolicy.objects.filter(agent_id=agent.id).exists()
    deleted = events(AuditEvent.Action.TRUST_POLICY_DELETED)
    assert [event.details["trustPolicyId"] for event in deleted] == [str(first.id), str(second.id)]


# --- staff sessions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "permission", "success"),
    [
        ("get", "list", "view_trustpolicy", 200),
        ("get", "detail", "view_trustpolicy", 200),
        ("post", "list", "add_trustpolicy", 201),
        ("delete", "detail", "delete_trustpolicy", 204),
    ],
)
def test_each_policy_call_needs_the_console_permission_for_it(staff_user, agent, method, target, permission, success):
    policy = make_trust_policy(agent)
    url = policies_url(agent.id, policy.id if target == "detail" else None)
    body = {"issuer": GITHUB, "audience": AUDIENCE, "subject": "repo:example/y:ref:refs/heads/main"}

    assert_error(getattr(staff_session(staff_user), method)(url, body, format="json"), 403, "FORBIDDEN")
    response = getattr(staff_session(staff_user, permission), method)(url, body, format="json")

    assert response.status_code == success, response.content
    if method == "post":
        event = events(AuditEvent.Action.TRUST_POLICY_CREATED)[-1]
        assert (event.actor_type, event.actor_label) == ("user", "operator")
