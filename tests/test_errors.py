"""Every 4xx and 5xx under /api/ has a JSON body: the management shape, or the OAuth shape on the OAuth endpoints."""

from unittest import mock

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from tests.conftest import form_post, token_for
from tests.oauth.conftest import client_auth

MANAGEMENT_KEYS = {"code", "message"}
OAUTH_KEYS = {"error", "error_description"}
# Text that would only be in a response if an exception's traceback or message leaked into it.
LEAK = "leaked-detail-7f3a"


@pytest.fixture
def raw_client() -> Client:
    """A test client that returns the 500 response instead of re-raising the view's exception."""
    return Client(raise_request_exception=False)


@pytest.fixture
def raw_api(admin_issued, client) -> APIClient:
    """An admin API client that returns the 500 response instead of re-raising the view's exception."""
    api_client = APIClient(raise_request_exception=False)
    api_client.credentials(HTTP_AUTHORIZATION="Bearer " + token_for(client, admin_issued))
    return api_client


def assert_json_without_traceback(response) -> dict:
    assert response["Content-Type"] == "application/json", response.content
    assert b"Traceback" not in response.content
    assert LEAK.encode() not in response.content
    return response.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/nope"),
        ("get", "/api/nope"),
        ("get", "/api/v2/agents"),
        ("post", "/api/v1/agents/x/y/z"),
        ("get", "/api/v1/token/nope"),
        ("delete", "/api/"),
    ],
)
def test_unknown_route_under_api_is_404_not_found_in_the_management_shape(client, db, method, path):
    response = getattr(client, method)(path)

    assert response.status_code == 404
    body = assert_json_without_traceback(response)
    assert set(body) == MANAGEMENT_KEYS
    assert body["code"] == "NOT_FOUND"


@override_settings(DEBUG=True)
def test_unknown_route_under_api_is_json_even_with_debug_on(client, db):
    response = client.get("/api/v1/nope")

    assert response.status_code == 404
    assert assert_json_without_traceback(response)["code"] == "NOT_FOUND"


def test_unhandled_exception_in_a_management_view_is_500_internal_error_without_a_traceback(raw_api):
    with mock.patch("credentials.selectors.agent_list", side_effect=RuntimeError(LEAK)) as agent_list:
        response = raw_api.get("/api/v1/agents")

    agent_list.assert_called_once()
    assert response.status_code == 500
    body = assert_json_without_traceback(response)
    assert set(body) == MANAGEMENT_KEYS
    assert body["code"] == "INTERNAL_ERROR"
    assert body["message"]


@override_settings(DEBUG=True)
def test_unhandled_exception_in_a_management_view_shows_no_traceback_even_with_debug_on(raw_api):
    with mock.patch("credentials.selectors.agent_list", side_effect=RuntimeError(LEAK)):
        response = raw_api.get("/api/v1/agents")

    assert response.status_code == 500
    assert assert_json_without_traceback(response)["code"] == "INTERNAL_ERROR"


def test_unhandled_exception_in_the_token_endpoint_is_500_server_error_in_the_oauth_shape(raw_client, issued):
    with mock.patch("oauth.views.access_token_issue", side_effect=RuntimeError(LEAK)) as issue:
        response = form_post(raw_client, "/api/v1/token", {"grant_type": "client_credentials"}, **client_auth(issued))

    issue.assert_called_once()
    assert response.status_code == 500
    body = assert_json_without_traceback(response)
    assert set(body) == OAUTH_KEYS
    assert body["error"] == "server_error"
    assert body["error_description"]


def test_unhandled_exception_in_introspection_is_500_server_error_in_the_oauth_shape(raw_client, issued):
    with mock.patch("oauth.views.access_token_validate", side_effect=RuntimeError(LEAK)):
        response = form_post(raw_client, "/api/v1/token/introspect", {"token": "x"}, **client_auth(issued))

    assert response.status_code == 500
    body = assert_json_without_traceback(response)
    assert set(body) == OAUTH_KEYS
    assert body["error"] == "server_error"


def test_disallowed_host_on_the_management_api_is_400_json(raw_client, db):
    response = raw_client.get("/api/v1/agents", HTTP_HOST="evil.example")

    assert response.status_code == 400
    body = assert_json_without_traceback(response)
    assert set(body) == MANAGEMENT_KEYS
    assert body["code"] == "VALIDATION_ERROR"


def test_disallowed_host_on_the_token_endpoint_is_400_in_the_oauth_shape(raw_client, db):
    response = form_post(raw_client, "/api/v1/token", {"grant_type": "client_credentials"}, HTTP_HOST="evil.example")

    assert response.status_code == 400
    body = assert_json_without_traceback(response)
    assert set(body) == OAUTH_KEYS
    assert body["error"] == "invalid_request"


def test_method_not_allowed_on_the_management_api_is_json_with_allow(api):
    response = api.put("/api/v1/agents", {}, format="json")

    assert response.status_code == 405
    body = assert_json_without_traceback(response)
    assert body["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in response["Allow"]


@override_settings(AGENTIDP_MAX_BODY_SIZE=64)
def test_body_over_the_limit_on_the_management_api_is_413_payload_too_large(api):
    response = api.post("/api/v1/agents", {"name": "x" * 100}, format="json")

    assert response.status_code == 413
    body = assert_json_without_traceback(response)
    assert set(body) == MANAGEMENT_KEYS
    assert body["code"] == "PAYLOAD_TOO_LARGE"


def test_missing_bearer_token_is_401_json_with_a_bearer_challenge(client, db):
    response = client.get("/api/v1/agents")

    assert response.status_code == 401
    assert assert_json_without_traceback(response)["code"] == "UNAUTHORIZED"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/api/v1/agents", "/api/v1/token"])
def test_json_nested_deeper_than_the_parser_allows_is_a_400_not_a_crash(api, path):
    body = "[" * 100_000 + "]" * 100_000

    response = api.post(path, body, content_type="application/json")

    assert response.status_code == 400
    body = response.json()
    assert body.get("code") == "VALIDATION_ERROR" or body.get("error") == "invalid_request"


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "harmless", "name": "other"}',
        '{"name": "bot", "scopes": [], "scopes": ["agentidp:admin"]}',
        '{"name": "bot", "owner": {"a": 1, "a": 2}}',
    ],
)
def test_a_management_body_with_a_key_sent_twice_is_refused_and_nothing_is_made(api, body):
    from credentials.models import Agent

    response = api.post("/api/v1/agents", body, content_type="application/json")

    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "VALIDATION_ERROR" and "more than once" in answer["message"]
    assert not Agent.objects.filter(name__in=["harmless", "other", "bot"]).exists()


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-authorization-server", "/.well-known/jwks.json", "/healthz", "/readyz"]
)
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_an_unsafe_method_on_a_read_only_view_is_405_not_a_csrf_page(db, path, method):
    from django.test import Client

    response = getattr(Client(enforce_csrf_checks=True), method)(path)

    assert response.status_code == 405
    assert "GET" in response["Allow"]
