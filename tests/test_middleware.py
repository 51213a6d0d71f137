"""The OAuth protocol endpoints skip the browser's middleware; every other path keeps all of it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.test import Client, override_settings
from django.urls import set_script_prefix

from agentidp import middleware
from tests.conftest import form_post
from tests.oauth.conftest import client_auth

TOKEN_URL = "/api/v1/token"
BROWSER_COOKIES = {"sessionid": "a-session-id-from-the-console", "csrftoken": "A" * 32, "messages": "x"}


@pytest.fixture
def browser_client() -> Client:
    """A client that carries the console's cookies, as a browser that also reached the token endpoint would."""
    client = Client(enforce_csrf_checks=True)
    for name, value in BROWSER_COOKIES.items():
        client.cookies[name] = value
    return client


def test_protocol_paths_are_the_oauth_endpoints():
    assert middleware.protocol_paths() == {
        "/api/v1/token",
        "/api/v1/token/introspect",
        "/api/v1/token/revoke",
        "/api/v1/authorize",
        "/.well-known/oauth-authorization-server",
        "/.well-known/jwks.json",
    }


def test_protocol_paths_leave_out_the_script_prefix():
    middleware.protocol_paths.cache_clear()
    set_script_prefix("/idp/")
    try:
        assert "/api/v1/token" in middleware.protocol_paths()
    finally:
        set_script_prefix("/")
        middleware.protocol_paths.cache_clear()


def test_a_token_response_carries_no_browser_headers_or_cookies(browser_client, issued):
    response = form_post(browser_client, TOKEN_URL, {"grant_type": "client_credentials"}, **client_auth(issued))

    assert response.status_code == 200
    assert not response.cookies  # no session saved, no CSRF cookie rotated, no messages kept
    assert "X-Frame-Options" not in response
    assert "Cookie" not in response.get("Vary", "")
    # What every path keeps: SecurityMiddleware's headers, and CommonMiddleware's length.
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Length"] == str(len(response.content))


def test_a_protocol_view_sees_no_session_or_user(browser_client, issued, monkeypatch):
    seen = {}
    original = middleware.ApiRequestMiddleware.__call__

    def spy(self, request):
        response = original(self, request)
        seen.update(session=hasattr(request, "session"), user=hasattr(request, "user"))
        return response

    monkeypatch.setattr(middleware.ApiRequestMiddleware, "__call__", spy)
    form_post(browser_client, TOKEN_URL, {"grant_type": "client_credentials"}, **client_auth(issued))

    assert seen == {"session": False, "user": False}


def test_the_management_api_keeps_the_browser_middleware(browser_client, db):
    response = browser_client.get("/api/v1/agents")

    assert response.status_code == 401
    assert response["X-Frame-Options"] == "DENY"


def test_the_console_keeps_sessions_and_csrf(db):
    User.objects.create_superuser("operator", "operator@example.com", "a long enough password 1")
    browser = Client(enforce_csrf_checks=True)

    page = browser.get("/admin/login/")
    assert page.status_code == 200
    assert page["X-Frame-Options"] == "DENY"
    assert "csrftoken" in page.cookies

    refused = browser.post("/admin/login/", {"username": "operator", "password": "a long enough password 1"})
    assert refused.status_code == 403  # no CSRF token: still refused off the protocol paths

    token = page.cookies["csrftoken"].value
    signed_in = browser.post(
        "/admin/login/",
        {"username": "operator", "password": "a long enough password 1", "csrfmiddlewaretoken": token},
    )
    assert signed_in.status_code == 302
    assert "sessionid" in signed_in.cookies


def test_a_bad_host_is_still_refused_on_the_token_endpoint(db):
    response = form_post(Client(), TOKEN_URL, {"grant_type": "client_credentials"}, HTTP_HOST="evil.example")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@override_settings(ROOT_URLCONF="tests.urls_without_oauth")
def test_an_urlconf_without_the_endpoints_keeps_every_middleware_everywhere():
    assert middleware.protocol_paths() == frozenset()


def test_the_admin_checks_find_the_browser_middleware():
    errors = [message for message in checks.run_checks() if message.id.startswith("admin.")]

    assert errors == []
