"""GET /.well-known/oauth-authorization-server (RFC 8414)."""

import json
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


# The metadata names RFC 8414 section 2 defines, and RFC 8414's registry additions used here
# (RFC 7662's and RFC 7009's endpoint names are in that section already).
RFC_8414_NAMES = {
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "registration_endpoint",
    "scopes_supported",
    "response_types_supported",
    "response_modes_supported",
    "grant_types_supported",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "service_documentation",
    "ui_locales_supported",
    "op_policy_uri",
    "op_tos_uri",
    "revocation_endpoint",
    "revocation_endpoint_auth_methods_supported",
    "revocation_endpoint_auth_signing_alg_values_supported",
    "introspection_endpoint",
    "introspection_endpoint_auth_methods_supported",
    "introspection_endpoint_auth_signing_alg_values_supported",
    "code_challenge_methods_supported",
}
URL_NAMES = {name for name in RFC_8414_NAMES if name.endswith(("_endpoint", "_uri")) or name == "service_documentation"}


def test_metadata_holds_only_rfc_8414_names_with_its_required_ones_and_their_types(client, db):
    metadata = client.get(METADATA_URL).json()

    assert set(metadata) <= RFC_8414_NAMES
    # Section 2: REQUIRED are issuer, response_types_supported, and the authorization endpoint
    # (which MCP clients insist on even where no grant uses it), the token endpoint and jwks_uri.
    for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "response_types_supported"):
        assert name in metadata
    issuer = urlsplit(metadata["issuer"])
    assert issuer.scheme in ("http", "https") and not issuer.query and not issuer.fragment
    for name in set(metadata) & URL_NAMES:
        assert metadata[name].startswith(metadata["issuer"] + "/"), name
    for name, value in metadata.items():
        if name.endswith("_supported"):
            assert isinstance(value, list) and all(isinstance(item, str) for item in value), name
    assert metadata["response_types_supported"] == []


def test_metadata_never_advertises_the_admin_scope(client, db):
    metadata = client.get(METADATA_URL).json()

    assert "agentidp:admin" not in json.dumps(metadata)


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(
    "query",
    [
        "",
        "?response_type=code&client_id=x&redirect_uri=https%3A%2F%2Fevil.example%2Fcb&state=s",
        "?response_type=token",
    ],
)
def test_the_authorization_endpoint_answers_unsupported_response_type_and_never_redirects(client, db, method, query):
    path = urlsplit(client.get(METADATA_URL).json()["authorization_endpoint"]).path

    response = getattr(client, method)(path + query)

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_response_type"
    assert "Location" not in response
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_the_authorization_endpoint_refuses_other_methods_with_405(client, db, method):
    response = getattr(client, method)("/api/v1/authorize")

    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    assert response.json()["error"] == "invalid_request"


def test_the_mcp_sdks_metadata_model_accepts_the_document(client, db):
    from mcp.shared.auth import OAuthMetadata

    metadata = OAuthMetadata.model_validate(client.get(METADATA_URL).json())

    assert str(metadata.authorization_endpoint).endswith("/api/v1/authorize")
    assert metadata.scopes_supported is None
