"""
The jwt-bearer grant (RFC 7523 section 2.1): platform tokens from an issuer (the in-process
OIDC issuer standing in for Kubernetes, GitHub Actions or SPIRE) exchanged for an agent's
access token through its trust policies; authlib's assertion client as a real client.
"""

from __future__ import annotations

import logging
import time

import pytest
from authlib.integrations.requests_client import AssertionSession
from django.test import override_settings

from credentials.federation import subject_pattern_regex
from credentials.models import Agent, TrustPolicy
from tests.conftest import assert_logs_keep, form_post
from tests.factories import AgentFactory
from tests.oauth.conftest import INTROSPECT_URL
from tests.oauth.jwtclients import JWT_BEARER, TOKEN_URL, new_key, public_jwks, raw_sign, trust_policy

AUDIENCE = "https://agentidp.example/workloads"
K8S_SUBJECT = "system:serviceaccount:reports:builder"


def grant(client, assertion: str, *, headers: dict | None = None, **params):
    return form_post(client, TOKEN_URL, {"grant_type": JWT_BEARER, "assertion": assertion, **params}, **(headers or {}))


def platform_claims(**overrides):
    now = int(time.time())
    claims = {"aud": AUDIENCE, "sub": K8S_SUBJECT, "iat": now, "nbf": now, "exp": now + 600}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def assert_invalid_grant(response):
    assert response.status_code == 400, response.content
    assert response.json() == {"error": "invalid_grant", "error_description": "The assertion is not accepted."}


@pytest.fixture
def agent_k8s(db):
    return AgentFactory(scopes=["reports:read", "reports:write"])


@pytest.fixture
def k8s_policy(agent_k8s, oidc_issuer):
    """A Kubernetes-style policy: keys from the issuer's discovery document, one service account."""
    return trust_policy(agent_k8s, issuer=oidc_issuer.issuer, audience=AUDIENCE, subject=K8S_SUBJECT)


# --- Real clients and the happy path ------------------------------------------------------------


def test_a_platform_token_found_by_discovery_gets_the_agents_token(client, k8s_policy, oidc_issuer):
    response = grant(client, oidc_issuer.mint(platform_claims()), scope="reports:read")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "reports:read"
    introspection = form_post(client, INTROSPECT_URL, {"token": body["access_token"]}, **_admin_auth(client)).json()
    assert introspection["active"] is True
    assert introspection["sub"] == str(k8s_policy.agent_id)
    assert introspection["client_id"] == str(k8s_policy.id)
    assert oidc_issuer.requests["/.well-known/openid-configuration"] == 1


def _admin_auth(client):
    from tests.conftest import basic_auth
    from tests.factories import make_credential

    issued = make_credential(AgentFactory(scopes=["agentidp:admin"]))
    return {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)}


def test_authlibs_assertion_client_gets_a_token_through_the_grant(live_server, settings, db):
    """authlib's jwt-bearer client signs its own assertion; the policy holds its public key inline."""
    key = new_key("RS256")
    agent = AgentFactory(scopes=["reports:read"])
    policy = trust_policy(
        agent, issuer="https://ci.example", audience=AUDIENCE, subject="pipeline-7", jwks=public_jwks(key)
    )
    session = AssertionSession(
        token_endpoint=live_server.url + TOKEN_URL,
        issuer="https://ci.example",
        subject="pipeline-7",
        audience=AUDIENCE,
        key=key,
        header={"alg": "RS256", "kid": key.kid},
        scope="reports:read",
    )

    with session:  # closed before the live server's thread gives the database back
        token = session.refresh_token()

    assert token["scope"] == "reports:read"
    introspected = _introspect_live(live_server, token["access_token"])
    assert introspected["client_id"] == str(policy.id) and introspected["sub"] == str(agent.id)


def _introspect_live(live_server, access_token):
    import requests

    from tests.factories import make_credential

    issued = make_credential(AgentFactory(scopes=["agentidp:admin"]))
    with requests.Session() as http:
        return http.post(
            live_server.url + INTROSPECT_URL,
            data={"token": access_token},
            auth=(issued.credential.client_id, issued.client_secret),
            timeout=10,
        ).json()


def test_a_token_from_the_grant_reaches_the_management_api_and_dies_with_its_policy(client, oidc_issuer, db):
    admin = AgentFactory(name="ops-bot", scopes=["agentidp:admin"])
    policy = trust_policy(admin, issuer=oidc_issuer.issuer, audience=AUDIENCE, subject=K8S_SUBJECT)
    access_token = grant(client, oidc_issuer.mint(platform_claims())).json()["access_token"]
    headers = {"HTTP_AUTHORIZATION": "Bearer " + access_token}

    listed = client.get("/api/v1/agents", **headers)
    TrustPolicy.objects.filter(pk=policy.pk).delete()
    after = client.get("/api/v1/agents", **headers)

    assert listed.status_code == 200
    assert after.status_code == 401


def test_suspending_the_agent_refuses_the_grant_and_turns_its_tokens_inactive(client, k8s_policy, oidc_issuer):
    access_token = grant(client, oidc_issuer.mint(platform_claims())).json()["access_token"]
    Agent.objects.filter(pk=k8s_policy.agent_id).update(status=Agent.Status.SUSPENDED)

    refused = grant(client, oidc_issuer.mint(platform_claims()))
    introspected = form_post(client, INTROSPECT_URL, {"token": access_token}, **_admin_auth(client)).json()

    assert_invalid_grant(refused)
    assert introspected == {"active": False}


def test_a_platform_token_may_be_used_again_until_it_expires(client, k8s_policy, oidc_issuer):
    token = oidc_issuer.mint(platform_claims())

    assert grant(client, token).status_code == 200
    assert grant(client, token).status_code == 200


# --- What a policy demands -----------------------------------------------------------------------


GITHUB_ISSUER_CLAIMS = {"repository": "org/app", "ref": "refs/heads/main"}


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"sub": "repo:org/app:ref:refs/heads/main", **GITHUB_ISSUER_CLAIMS}, True),
        # The neighbour a careless pattern would let in.
        (
            {"sub": "repo:org/app-evil:ref:refs/heads/main", "repository": "org/app-evil", "ref": "refs/heads/main"},
            False,
        ),
        # The right subject pattern, but another repository's claims.
        ({"sub": "repo:org/app:ref:refs/heads/main", "repository": "org/app-evil", "ref": "refs/heads/main"}, False),
        ({"sub": "repo:org/app:ref:refs/heads/feature", "repository": "org/app", "ref": "refs/heads/feature"}, False),
        # A claim of the wrong type never matches.
        ({"sub": "repo:org/app:ref:refs/heads/main", "repository": ["org/app"], "ref": "refs/heads/main"}, False),
        ({"sub": "repo:org/app:ref:refs/heads/main", "ref": "refs/heads/main"}, False),
    ],
    ids=["the-repo", "neighbour-repo", "other-repo-claims", "other-ref", "claim-as-list", "claim-missing"],
)
def test_a_github_style_policy_admits_its_repository_and_branch_only(client, oidc_issuer, agent_k8s, claims, accepted):
    trust_policy(
        agent_k8s,
        issuer=oidc_issuer.issuer,
        audience=AUDIENCE,
        subject_pattern="repo:org/app:*",
        claims={"repository": "org/app", "ref": ["refs/heads/main", "refs/heads/release"]},
    )

    response = grant(client, oidc_issuer.mint(platform_claims(**claims)))

    if accepted:
        assert response.status_code == 200, response.content
    else:
        assert_invalid_grant(response)


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("repo:org/app:*", "repo:org/app:ref:refs/heads/main", True),
        ("repo:org/app:*", "repo:org/app-evil:ref:refs/heads/main", False),
        ("repo:org/app:*", "repo:org/app", False),
        ("system:serviceaccount:ci:*", "system:serviceaccount:ci:builder", True),
        ("system:serviceaccount:ci:*", "system:serviceaccount:ci-evil:builder", False),
        ("spiffe://example.org/ns/*/sa/agent", "spiffe://example.org/ns/prod/sa/agent", True),
        ("a.b", "axb", False),  # regex characters are themselves
        ("a+", "aa", False),
        ("*", "anything\nat all", True),
    ],
)
def test_subject_patterns_match_the_whole_subject_with_star_as_the_only_wildcard(pattern, subject, matches):
    assert bool(subject_pattern_regex(pattern).fullmatch(subject)) is matches


@pytest.mark.parametrize(
    "case",
    [
        "wrong_aud",
        "no_aud",
        "expired",
        "not_yet_valid",
        "too_old",
        "no_exp",
        "wrong_subject",
        "wrong_issuer",
        "unknown_kid",
        "signed_by_another_key",
        "alg_none",
        "exp_is_a_string",
        "sub_is_a_number",
        "crit_header",
        "nested",
        "jwk_header_pointing_at_the_attackers_key",
        "oversized",
    ],
)
def test_hostile_platform_tokens_are_invalid_grant(client, oidc_issuer, agent_k8s, case, caplog):
    trust_policy(
        agent_k8s, issuer=oidc_issuer.issuer, audience=AUDIENCE, subject=K8S_SUBJECT, max_token_age_seconds=900
    )
    now = int(time.time())
    attacker = new_key("ES256", kid=oidc_issuer.key_for("ES256").kid)
    tokens = {
        "wrong_aud": lambda: oidc_issuer.mint(platform_claims(aud="https://elsewhere.example")),
        "no_aud": lambda: oidc_issuer.mint(platform_claims(aud=None)),
        "expired": lambda: oidc_issuer.mint(platform_claims(iat=now - 700, nbf=now - 700, exp=now - 100)),
        "not_yet_valid": lambda: oidc_issuer.mint(platform_claims(nbf=now + 600)),
        "too_old": lambda: oidc_issuer.mint(platform_claims(iat=now - 3600, nbf=now - 3600, exp=now + 600)),
        "no_exp": lambda: oidc_issuer.mint(platform_claims(exp=None)),
        "wrong_subject": lambda: oidc_issuer.mint(platform_claims(sub="system:serviceaccount:reports:other")),
        "wrong_issuer": lambda: oidc_issuer.mint(platform_claims(iss="https://evil.example")),
        "unknown_kid": lambda: oidc_issuer.mint(platform_claims(), kid="not-a-kid"),
        "signed_by_another_key": lambda: raw_sign(
            attacker, {"alg": "ES256", "kid": attacker.kid}, {"iss": oidc_issuer.issuer, **platform_claims()}
        ),
        "alg_none": lambda: _unsigned({"iss": oidc_issuer.issuer, **platform_claims()}),
        "exp_is_a_string": lambda: oidc_issuer.mint(platform_claims(exp=str(now + 600))),
        "sub_is_a_number": lambda: oidc_issuer.mint(platform_claims(sub=42)),
        "crit_header": lambda: raw_sign(
            oidc_issuer.key_for("ES256"),
            {"alg": "ES256", "kid": oidc_issuer.key_for("ES256").kid, "crit": ["x"], "x": 1},
            {"iss": oidc_issuer.issuer, **platform_claims()},
        ),
        "nested": lambda: oidc_issuer.mint(platform_claims(), headers={"cty": "JWT"}),
        "jwk_header_pointing_at_the_attackers_key": lambda: raw_sign(
            attacker,
            {"alg": "ES256", "kid": attacker.kid, "jwk": attacker.as_dict(private=False)},
            {"iss": oidc_issuer.issuer, **platform_claims()},
        ),
        "oversized": lambda: oidc_issuer.mint(platform_claims(padding="x" * 20000)),
    }
    assertion = tokens[case]()
    caplog.set_level(logging.INFO)

    response = grant(client, assertion)

    assert_invalid_grant(response)
    assert_logs_keep(caplog, assertion)


def _unsigned(claims: dict) -> str:
    import base64
    import json

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none'})}.{b64(claims)}."


def test_a_policy_needs_iat_when_it_limits_the_tokens_age(client, oidc_issuer, agent_k8s):
    trust_policy(agent_k8s, issuer=oidc_issuer.issuer, audience=AUDIENCE, subject=K8S_SUBJECT, max_token_age_seconds=60)

    response = grant(client, oidc_issuer.mint(platform_claims(iat=None)))

    assert_invalid_grant(response)


def test_policies_of_two_agents_matching_one_token_refuse_it_and_say_so(client, db, oidc_issuer, caplog):
    one, two = AgentFactory(), AgentFactory()
    for agent in (one, two):
        trust_policy(agent, issuer=oidc_issuer.issuer, audience=AUDIENCE, subject_pattern="system:serviceaccount:*")
    caplog.set_level(logging.WARNING, logger="credentials.federation")

    response = grant(client, oidc_issuer.mint(platform_claims()))

    assert_invalid_grant(response)
    assert "matches policies of 2 agents" in caplog.text


def test_two_policies_of_one_agent_matching_is_the_oldest(client, oidc_issuer, agent_k8s):
    first = trust_policy(agent_k8s, issuer=oidc_issuer.issuer, audience=AUDIENCE, subject=K8S_SUBJECT)
    trust_policy(agent_k8s, issuer=oidc_issuer.issuer, audience=AUDIENCE, subject_pattern="system:serviceaccount:*")

    access_token = grant(client, oidc_issuer.mint(platform_claims())).json()["access_token"]
    introspected = form_post(client, INTROSPECT_URL, {"token": access_token}, **_admin_auth(client)).json()

    assert introspected["client_id"] == str(first.id)


def test_the_grant_takes_no_client_authentication(client, k8s_policy, oidc_issuer, issued):
    from tests.conftest import basic_auth

    with_basic = grant(
        client,
        oidc_issuer.mint(platform_claims()),
        headers={"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)},
    )
    with_secret = grant(client, oidc_issuer.mint(platform_claims()), client_secret="x", client_id="y")
    without_assertion = form_post(client, TOKEN_URL, {"grant_type": JWT_BEARER})

    for response in (with_basic, with_secret, without_assertion):
        assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_a_scope_the_agent_may_not_have_is_invalid_scope(client, k8s_policy, oidc_issuer):
    response = grant(client, oidc_issuer.mint(platform_claims()), scope="agentidp:admin")

    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


# --- The issuer's keys ---------------------------------------------------------------------------


def test_rotated_issuer_keys_are_fetched_again_for_the_new_kid(client, k8s_policy, oidc_issuer, settings):
    settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS = 0
    assert grant(client, oidc_issuer.mint(platform_claims())).status_code == 200

    oidc_issuer.rotate()
    response = grant(client, oidc_issuer.mint(platform_claims()))

    assert response.status_code == 200
    assert oidc_issuer.requests["/jwks"] == 2


def test_the_last_good_keys_keep_working_while_the_issuer_is_down(client, k8s_policy, oidc_issuer, settings):
    settings.AGENTIDP_KEY_CACHE_SECONDS = 0  # every request would fetch again
    settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS = 0
    assert grant(client, oidc_issuer.mint(platform_claims())).status_code == 200

    oidc_issuer.down()
    response = grant(client, oidc_issuer.mint(platform_claims()))

    assert response.status_code == 200


@pytest.mark.parametrize("fault", ["down", "garbage", "slow"])
def test_an_issuer_that_never_answered_well_is_503_keys_unavailable(client, k8s_policy, oidc_issuer, fault):
    {"down": oidc_issuer.down, "garbage": oidc_issuer.garbage, "slow": lambda: oidc_issuer.slow(3)}[fault]()

    response = grant(client, oidc_issuer.mint(platform_claims()))

    assert response.status_code == 503
    assert response.json()["code"] == "KEYS_UNAVAILABLE"
    assert int(response["Retry-After"]) >= 1


def test_an_issuer_at_a_private_address_is_never_fetched(client, agent_k8s, settings):
    """Past the API's own checks (an issuer whose name later resolves privately): the fetcher refuses."""
    settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = []
    trust_policy(agent_k8s, issuer="https://10.1.2.3", audience=AUDIENCE, subject=K8S_SUBJECT)
    key = new_key()

    response = grant(
        client, raw_sign(key, {"alg": "ES256", "kid": key.kid}, {"iss": "https://10.1.2.3", **platform_claims()})
    )

    assert response.status_code == 503


def test_an_unknown_issuer_is_invalid_grant_and_fetches_nothing(client, oidc_issuer, agent_k8s):
    response = grant(client, oidc_issuer.mint(platform_claims()))

    assert_invalid_grant(response)
    assert sum(oidc_issuer.requests.values()) == 0


# --- Protections shared with client authentication ------------------------------------------------


def test_each_grant_attempt_is_logged_without_the_token(client, k8s_policy, oidc_issuer, caplog):
    caplog.set_level(logging.INFO, logger="agentidp.auth")
    good = oidc_issuer.mint(platform_claims())
    bad = oidc_issuer.mint(platform_claims(aud="https://elsewhere.example"))

    grant(client, good)
    grant(client, bad)

    records = [record.auth for record in caplog.records if hasattr(record, "auth")]
    assert [(r["outcome"], r["reason"], r["auth_method"]) for r in records] == [
        ("success", "verified", JWT_BEARER),
        ("failure", "aud_mismatch", JWT_BEARER),
    ]
    assert records[0]["client_id"] == str(k8s_policy.id) and records[0]["agent_id"] == str(k8s_policy.agent_id)
    assert_logs_keep(caplog, good, bad, K8S_SUBJECT)


def test_failures_for_one_subject_are_limited_and_do_not_lock_out_a_workload_that_proved_itself(
    client, k8s_policy, oidc_issuer, settings
):
    settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 2
    # The workload proves itself from its own address first.
    assert grant(client, oidc_issuer.mint(platform_claims()), headers={"REMOTE_ADDR": "10.0.0.7"}).status_code == 200
    # Someone elsewhere sends tokens for the same subject that fail.
    for _ in range(3):
        grant(
            client,
            oidc_issuer.mint(platform_claims(aud="https://wrong.example")),
            headers={"REMOTE_ADDR": "203.0.113.9"},
        )

    attacker = grant(
        client, oidc_issuer.mint(platform_claims(aud="https://wrong.example")), headers={"REMOTE_ADDR": "203.0.113.9"}
    )
    workload = grant(client, oidc_issuer.mint(platform_claims()), headers={"REMOTE_ADDR": "10.0.0.7"})

    assert attacker.status_code == 429 and attacker.json()["code"] == "RATE_LIMITED"
    assert workload.status_code == 200


@override_settings(AGENTIDP_CLIENT_AUTH_METHODS=["credentials.clientauth.methods.ClientSecretBasic"])
def test_metadata_lists_the_grant(client, db):
    metadata = client.get("/.well-known/oauth-authorization-server").json()

    assert JWT_BEARER in metadata["grant_types_supported"]
