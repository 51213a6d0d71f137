"""POST /api/v1/token/introspect (RFC 7662)."""

import datetime

import pytest
from django.test import override_settings
from django.utils import timezone
from joserfc import jwt

from credentials import services
from credentials.models import Credential
from oauth.keys import get_signing_key
from oauth.tokens import access_token_revoke
from tests.conftest import basic_auth, form_post, token_for
from tests.factories import AgentFactory, make_credential
from tests.oauth.conftest import (
    INTROSPECT_URL,
    assert_oauth_error,
    client_auth,
    forge_token,
    introspect,
    is_active,
    unverified_claims,
)

ACTIVE_KEYS = {"active", "scope", "client_id", "token_type", "exp", "iat", "sub", "aud", "iss", "jti"}


def assert_inactive(response) -> None:
    assert response.status_code == 200, response.content
    assert response.json() == {"active": False}
    assert response["Cache-Control"] == "no-store"
    assert response["Pragma"] == "no-cache"


def test_active_token_introspects_with_the_rfc_7662_members_of_its_claims(client, issued, other_issued):
    token = token_for(client, issued)
    claims = unverified_claims(token)

    # Any active client may introspect, not only the token's own.
    response = introspect(client, other_issued, token)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == ACTIVE_KEYS
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "reports:read reports:write"
    assert body["client_id"] == issued.credential.client_id
    assert body["sub"] == str(issued.credential.agent_id)
    for name in ("exp", "iat", "aud", "iss", "jti"):
        assert body[name] == claims[name]
    assert response["Cache-Control"] == "no-store"
    assert response["Pragma"] == "no-cache"


def test_client_may_introspect_its_own_token(client, issued):
    token = token_for(client, issued)

    assert is_active(client, issued, token) is True


def test_introspection_accepts_client_secret_post(client, issued, other_issued):
    token = token_for(client, issued)
    caller = other_issued.credential.client_id
    params = {"token": token, "client_id": caller, "client_secret": other_issued.client_secret}

    response = form_post(client, INTROSPECT_URL, params)

    assert response.status_code == 200
    assert response.json()["active"] is True


def test_introspection_accepts_a_json_body(client, issued, other_issued):
    token = token_for(client, issued)

    response = client.post(
        INTROSPECT_URL, {"token": token}, content_type="application/json", **client_auth(other_issued)
    )

    assert response.status_code == 200
    assert response.json()["active"] is True


def test_introspected_scope_is_the_granted_subset(client, issued, other_issued):
    token = token_for(client, issued, scope="reports:read")

    assert introspect(client, other_issued, token).json()["scope"] == "reports:read"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 10_000, "eyJhbGciOiJSUzI1NiJ9.e30.AAAA", "\x00"])
def test_garbage_token_is_inactive(client, issued, token):
    assert_inactive(introspect(client, issued, token))


def test_expired_token_is_inactive(client, issued, other_issued):
    with override_settings(AGENTIDP_ACCESS_TOKEN_TTL=-10):
        token = token_for(client, issued)

    assert unverified_claims(token)["exp"] < unverified_claims(token)["iat"]
    assert_inactive(introspect(client, other_issued, token))


def test_revoked_token_is_inactive(client, issued, other_issued):
    token = token_for(client, issued)
    assert is_active(client, other_issued, token) is True

    access_token_revoke(requester=issued.credential, token=token)

    assert_inactive(introspect(client, other_issued, token))


def test_token_of_a_deleted_credential_is_inactive(client, issued, other_issued):
    token = token_for(client, issued)
    assert is_active(client, other_issued, token) is True

    services.credential_delete(acting=None, credential=issued.credential)

    assert_inactive(introspect(client, other_issued, token))


def test_token_of_an_expired_credential_is_inactive(client, agent, other_issued):
    expiring = make_credential(agent, expires_at=timezone.now() + datetime.timedelta(hours=1))
    token = token_for(client, expiring)
    assert is_active(client, other_issued, token) is True

    past = timezone.now() - datetime.timedelta(seconds=1)
    Credential.objects.filter(pk=expiring.credential.pk).update(expires_at=past)

    assert_inactive(introspect(client, other_issued, token))


def test_token_of_a_suspended_agent_is_inactive_and_active_again_on_reactivation(client, issued, other_issued):
    token = token_for(client, issued)
    agent = issued.credential.agent

    services.agent_update(acting=None, agent=agent, status="suspended")
    suspended = introspect(client, other_issued, token)
    services.agent_update(acting=None, agent=agent, status="active")

    assert_inactive(suspended)
    assert is_active(client, other_issued, token) is True


def test_token_signed_by_another_key_is_inactive(client, issued, other_issued, foreign_key):
    forged = forge_token(token_for(client, issued), foreign_key)

    assert_inactive(introspect(client, other_issued, forged))


def test_token_whose_subject_does_not_own_its_client_id_is_inactive(client, issued, other_issued):
    # Same credential, same key: only the agent is swapped, so a mismatch must be caught by the server.
    claims = {**unverified_claims(token_for(client, issued)), "sub": str(other_issued.credential.agent_id)}
    key = get_signing_key()
    header = {"alg": key.algorithm, "typ": "at+jwt", "kid": key.kid}
    token = jwt.encode(header, claims, key.key, algorithms=[key.algorithm])

    assert_inactive(introspect(client, other_issued, token))


def test_narrowing_the_agents_scopes_narrows_the_introspected_scope(client, issued, other_issued):
    token = token_for(client, issued)
    assert introspect(client, other_issued, token).json()["scope"] == "reports:read reports:write"

    services.agent_update(acting=None, agent=issued.credential.agent, scopes=["reports:read"])

    assert introspect(client, other_issued, token).json()["scope"] == "reports:read"


def test_widening_the_agents_scopes_does_not_widen_an_issued_token(client, issued, other_issued):
    token = token_for(client, issued)

    services.agent_update(acting=None, agent=issued.credential.agent, scopes=["reports:read", "reports:write", "extra"])

    assert introspect(client, other_issued, token).json()["scope"] == "reports:read reports:write"


def test_missing_token_parameter_is_invalid_request(client, issued):
    response = form_post(client, INTROSPECT_URL, {}, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


def test_unauthenticated_introspection_is_invalid_client(client, issued):
    token = token_for(client, issued)

    response = form_post(client, INTROSPECT_URL, {"token": token})

    assert_oauth_error(response, 401, "invalid_client")


def test_introspection_with_a_wrong_secret_is_invalid_client_with_a_basic_challenge(client, issued):
    token = token_for(client, issued)

    header = basic_auth(issued.credential.client_id, "wrong")

    response = form_post(client, INTROSPECT_URL, {"token": token}, HTTP_AUTHORIZATION=header)

    assert_oauth_error(response, 401, "invalid_client")
    assert response["WWW-Authenticate"].startswith("Basic ")


def test_suspended_client_may_not_introspect(client, issued, db):
    caller = make_credential(AgentFactory())
    token = token_for(client, issued)
    services.agent_update(acting=None, agent=caller.credential.agent, status="suspended")

    response = introspect(client, caller, token)

    assert_oauth_error(response, 401, "invalid_client")


def test_introspection_rejects_get_with_405(client, db):
    response = client.get(INTROSPECT_URL)

    assert_oauth_error(response, 405, "invalid_request")
    assert response["Allow"] == "POST"
