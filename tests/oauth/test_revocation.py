"""POST /api/v1/token/revoke (RFC 7009)."""

import pytest
from django.test import override_settings

from credentials.models import AuditEvent
from tests.conftest import basic_auth, form_post, token_for
from tests.oauth.conftest import REVOKE_URL, assert_oauth_error, client_auth, is_active, unverified_claims


def revoke(client, caller, token: str, **params):
    return form_post(client, REVOKE_URL, {"token": token, **params}, **client_auth(caller))


def revocations():
    return AuditEvent.objects.filter(action=AuditEvent.Action.TOKEN_REVOKED)


def test_client_revokes_its_own_token_which_turns_inactive_and_unusable(client, admin_issued, issued):
    token = token_for(client, admin_issued)
    assert client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + token).status_code == 200

    response = revoke(client, admin_issued, token)

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert is_active(client, issued, token) is False
    refused = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + token)
    assert refused.status_code == 401
    assert refused.json()["code"] == "UNAUTHORIZED"


def test_revoking_one_token_leaves_the_clients_other_tokens_active(client, issued, other_issued):
    revoked = token_for(client, issued)
    kept = token_for(client, issued)

    revoke(client, issued, revoked)

    assert is_active(client, other_issued, revoked) is False
    assert is_active(client, other_issued, kept) is True


def test_revocation_accepts_client_secret_post(client, issued, other_issued):
    token = token_for(client, issued)
    params = {"token": token, "client_id": issued.credential.client_id, "client_secret": issued.client_secret}

    response = form_post(client, REVOKE_URL, params)

    assert response.status_code == 200
    assert is_active(client, other_issued, token) is False


def test_token_type_hint_is_accepted(client, issued, other_issued):
    token = token_for(client, issued)

    response = revoke(client, issued, token, token_type_hint="access_token")

    assert response.status_code == 200
    assert is_active(client, other_issued, token) is False


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 10_000, "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"])
def test_unknown_or_garbage_token_is_200_and_records_nothing(client, issued, token):
    response = revoke(client, issued, token)

    assert response.status_code == 200
    assert not revocations().exists()


def test_expired_token_is_200_and_records_nothing(client, issued):
    with override_settings(AGENTIDP_ACCESS_TOKEN_TTL=-10):
        token = token_for(client, issued)

    response = revoke(client, issued, token)

    assert response.status_code == 200
    assert not revocations().exists()


def test_another_clients_token_is_unauthorized_client_and_stays_active(client, issued, other_issued):
    token = token_for(client, issued)

    response = revoke(client, other_issued, token)

    assert_oauth_error(response, 400, "unauthorized_client")
    assert is_active(client, other_issued, token) is True
    assert not revocations().exists()


def test_admin_agent_may_revoke_another_clients_token(client, issued, admin_issued, other_issued):
    token = token_for(client, issued)

    response = revoke(client, admin_issued, token)

    assert response.status_code == 200
    assert is_active(client, other_issued, token) is False


def test_revocation_writes_one_audit_event_even_when_repeated(client, issued, other_issued):
    token = token_for(client, issued)
    claims = unverified_claims(token)

    first = revoke(client, issued, token)
    second = revoke(client, issued, token)

    assert first.status_code == second.status_code == 200
    event = revocations().get()
    assert str(event.agent_id) == claims["sub"]
    assert event.details == {"jti": claims["jti"], "clientId": issued.credential.client_id}
    assert event.actor_type == AuditEvent.ActorType.AGENT
    assert event.actor_id == str(issued.credential.agent_id)
    assert token not in str(event.details) + event.actor_label


def test_admin_revocation_names_the_admin_as_actor(client, issued, admin_issued):
    token = token_for(client, issued)

    revoke(client, admin_issued, token)

    event = revocations().get()
    assert event.actor_id == str(admin_issued.credential.agent_id)
    assert str(event.agent_id) == str(issued.credential.agent_id)


def test_missing_token_parameter_is_invalid_request(client, issued):
    response = form_post(client, REVOKE_URL, {}, **client_auth(issued))

    assert_oauth_error(response, 400, "invalid_request")


def test_unauthenticated_revocation_is_invalid_client_and_revokes_nothing(client, issued, other_issued):
    token = token_for(client, issued)

    anonymous = form_post(client, REVOKE_URL, {"token": token})
    wrong_secret = form_post(
        client, REVOKE_URL, {"token": token}, HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, "wrong")
    )

    assert_oauth_error(anonymous, 401, "invalid_client")
    assert_oauth_error(wrong_secret, 401, "invalid_client")
    assert is_active(client, other_issued, token) is True


def test_revocation_rejects_get_with_405(client, db):
    response = client.get(REVOKE_URL)

    assert_oauth_error(response, 405, "invalid_request")
    assert response["Allow"] == "POST"
