"""GET /.well-known/oauth-authorization-server (RFC 8414)."""

from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import override_settings

from tests.conftest import form_post

METADATA_URL = "/.well-known/oauth-authorization-server"
AUTH_METHODS = {"client_secret_basic", "client_secret_post", "private_key_jwt"}


def test_metadata_names_the_issuer_and_its_endpoints(client, db):
    response = client.get(METADATA_URL)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    metadata = response.json()
    issuer = settings.AGENTIDP_ISSUER
    assert metadata["issuer"] == issuer
    assert metadata["token_endpoint"] == issuer + "/api/v1/token"
    assert metadata["jwks_uri"] == issuer + "/.well-known/jwks.json"
    assert metadata["introspection_endpoint"] == issuer + "/api/v1/token/introspect"
    assert metadata["revocation_endpoint"] == issuer + "/api/v1/token/revoke"


def test_metadata_offers_the_grants_and_client_authentication_methods_served(client, db):
    metadata = client.get(METADATA_URL).json()

    assert metadata["grant_types_supported"] == ["client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert "response_types_supported" in metadata
    for endpoint in ("token", "introspection", "revocation"):
        assert set(metadata[f"{endpoint}_endpoint_auth_methods_supported"]) == AUTH_METHODS
        # Never none and never an HMAC: a shared secret is no signature by the client's own key.
        assert metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"] == [
            "ES256",
            "ES384",
            "RS256",
            "PS256",
            "EdDSA",
        ]


def test_metadata_without_private_key_jwt_names_no_signing_algorithms(client, db, settings):
    settings.AGENTIDP_CLIENT_AUTH_METHODS = ["credentials.clientauth.methods.ClientSecretBasic"]

    metadata = client.get(METADATA_URL).json()

    assert "token_endpoint_auth_signing_alg_values_supported" not in metadata


def test_metadata_follows_the_configured_issuer(client, db):
    with override_settings(AGENTIDP_ISSUER="https://idp.example.com"):
        metadata = client.get(METADATA_URL).json()

    assert metadata["issuer"] == "https://idp.example.com"
    assert metadata["token_endpoint"] == "https://idp.example.com/api/v1/token"


def test_metadata_endpoints_are_served_at_the_advertised_paths(client, db):
    metadata = client.get(METADATA_URL).json()

    jwks = client.get(urlsplit(metadata["jwks_uri"]).path)
    params = {"grant_type": "client_credentials", "token": "x"}
    token = form_post(client, urlsplit(metadata["token_endpoint"]).path, params)
    introspection = form_post(client, urlsplit(metadata["introspection_endpoint"]).path, params)
    revocation = form_post(client, urlsplit(metadata["revocation_endpoint"]).path, params)

    assert jwks.status_code == 200 and jwks.json()["keys"]
    # Without client authentication, each OAuth endpoint answers invalid_client: it exists.
    for response in (token, introspection, revocation):
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_metadata_rejects_methods_other_than_get_with_405(client, db, method):
    response = getattr(client, method)(METADATA_URL)

    assert response.status_code == 405
    assert set(response["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert set(response.json()) == {"error", "error_description"}


def test_metadata_answers_head(client, db):
    response = client.head(METADATA_URL)

    assert response.status_code == 200
