"""Fixtures and helpers shared by the OAuth endpoint tests."""

import base64
import datetime
import json
import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone
from joserfc import jwt
from joserfc.jwk import RSAKey

from credentials import services
from credentials.models import Credential
from credentials.services import IssuedCredential
from oauth.keys import get_signing_key
from tests.conftest import basic_auth, form_post
from tests.factories import AgentFactory, make_credential, wrong_secret

TOKEN_URL = "/api/v1/token"
INTROSPECT_URL = "/api/v1/token/introspect"
REVOKE_URL = "/api/v1/token/revoke"
OAUTH_ERROR_KEYS = {"error", "error_description"}


@pytest.fixture
def other_issued(db) -> IssuedCredential:
    """A credential of a second agent without the admin scope."""
    return make_credential(AgentFactory())


@pytest.fixture(scope="session")
def foreign_key() -> RSAKey:
    """An RSA key that AgentIdP does not know."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return RSAKey.import_key(pem)


def client_auth(issued: IssuedCredential) -> dict[str, str]:
    """The test client's keyword for authenticating as `issued` with HTTP Basic."""
    return {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)}


def unverified_claims(token: str) -> dict:
    """Read a JWT's claims without checking it, to build expectations from."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def unverified_header(token: str) -> dict:
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))


def forge_token(genuine: str, key: RSAKey) -> str:
    """Re-sign a genuine token's header and claims, kid included, with another key."""
    header = {"alg": "RS256", "typ": "at+jwt", "kid": get_signing_key().kid}
    return jwt.encode(header, unverified_claims(genuine), key, algorithms=["RS256"])


def introspect(client, caller: IssuedCredential, token: str):
    return form_post(client, INTROSPECT_URL, {"token": token}, **client_auth(caller))


def is_active(client, caller: IssuedCredential, token: str) -> bool:
    """Ask the introspection endpoint, as `caller`, whether `token` is active."""
    response = introspect(client, caller, token)
    assert response.status_code == 200, response.content
    return response.json()["active"]


def assert_oauth_error(response, status: int, error: str) -> None:
    """Assert an RFC 6749 section 5.2 error: its status, code, and no other members."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == OAUTH_ERROR_KEYS, body
    assert body["error"] == error
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert response["Cache-Control"] == "no-store"


def failure_cases() -> dict[str, tuple[str, str]]:
    """Client ids and secrets that must each fail client authentication, by reason."""
    wrong = make_credential(AgentFactory())
    deleted = make_credential(AgentFactory())
    services.credential_delete(acting=None, credential=deleted.credential)
    expired = make_credential(AgentFactory(), expires_at=timezone.now() + datetime.timedelta(hours=1))
    past = timezone.now() - datetime.timedelta(seconds=1)
    Credential.objects.filter(pk=expired.credential.pk).update(expires_at=past)
    suspended = make_credential(AgentFactory())
    services.agent_update(acting=None, agent=suspended.credential.agent, status="suspended")
    return {
        "unknown_client": (secrets.token_hex(16), wrong_secret()),
        "wrong_secret": (wrong.credential.client_id, wrong_secret()),
        "deleted_credential": (deleted.credential.client_id, deleted.client_secret),
        "expired_credential": (expired.credential.client_id, expired.client_secret),
        "suspended_agent": (suspended.credential.client_id, suspended.client_secret),
    }
