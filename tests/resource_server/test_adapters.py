"""The kit in a Django project: the view decorator, the middleware, DRF's classes and the RFC 9728 metadata."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import JsonResponse
from django.test import RequestFactory
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from agentidp.resource_server import metadata_path, metadata_url
from agentidp.resource_server.django import (
    AccessTokenMiddleware,
    get_verifier,
    protected_resource_metadata_view,
    require_access_token,
)
from agentidp.resource_server.drf import AccessTokenAuthentication, AgentUser, HasScopes
from tests.resource_server.conftest import RESOURCE, access_token

METADATA = "https://reports.example/.well-known/oauth-protected-resource/api"
CHALLENGE = f'Bearer resource_metadata="{METADATA}"'


@pytest.fixture
def configured(settings, token_issuer):
    """A project whose AGENTIDP_RESOURCE_SERVER points at the test issuer; DRF with its own defaults."""
    settings.AGENTIDP_RESOURCE_SERVER = {
        "ISSUER": token_issuer.issuer,
        "RESOURCE": RESOURCE,
        "JWKS_URI": token_issuer.jwks_uri,
        "SCOPES_SUPPORTED": ["reports:read"],
        "ALLOW_HTTP": True,
        "TIMEOUT_SECONDS": 0.5,
    }
    settings.REST_FRAMEWORK = {"EXCEPTION_HANDLER": "rest_framework.views.exception_handler"}
    yield token_issuer
    get_verifier.cache_clear()


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Bearer " + token}


@require_access_token("reports:read")
def report_view(request):
    return JsonResponse({"agent": request.access_token.subject})


# --- Metadata ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource, url",
    [
        ("https://api.example", "https://api.example/.well-known/oauth-protected-resource"),
        ("https://api.example/", "https://api.example/.well-known/oauth-protected-resource"),
        ("https://api.example/mcp", "https://api.example/.well-known/oauth-protected-resource/mcp"),
        ("https://api.example:8443/a/b/", "https://api.example:8443/.well-known/oauth-protected-resource/a/b"),
    ],
)
def test_the_metadata_url_inserts_the_well_known_path_before_the_resources_path(resource, url):
    assert metadata_url(resource) == url


def test_the_metadata_view_serves_rfc_9728_for_this_resource(configured):
    request = RequestFactory().get(metadata_path(RESOURCE))

    response = protected_resource_metadata_view(request)

    assert response.status_code == 200
    assert json.loads(response.content) == {
        "resource": RESOURCE,
        "authorization_servers": [configured.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["reports:read"],
    }
    refused = protected_resource_metadata_view(RequestFactory().post(metadata_path(RESOURCE)))
    assert refused.status_code == 405 and refused["Allow"] == "GET, HEAD"


# --- The decorator and the middleware ------------------------------------------------------------


def test_the_decorator_passes_a_valid_token_to_the_view(configured):
    token = access_token(configured, sub="agent-7")

    response = report_view(RequestFactory().get("/reports", **bearer(token)))

    assert response.status_code == 200 and json.loads(response.content) == {"agent": "agent-7"}


def test_without_a_token_the_answer_is_401_with_the_challenge_and_no_error_code(configured):
    response = report_view(RequestFactory().get("/reports"))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == CHALLENGE


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-token", "Bearer a b", "Bearer ", "bearer x.y.z"],
)
def test_a_bad_token_is_401_invalid_token(configured, header):
    response = report_view(RequestFactory().get("/reports", HTTP_AUTHORIZATION=header))

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith('Bearer error="invalid_token", error_description="')
    assert response["WWW-Authenticate"].endswith(f'resource_metadata="{METADATA}"')
    assert json.loads(response.content)["error"] == "invalid_token"


def test_a_token_for_another_resource_is_401(configured):
    token = access_token(configured, aud="https://payments.example/api")

    response = report_view(RequestFactory().get("/reports", **bearer(token)))

    assert response.status_code == 401
    assert "another resource" in json.loads(response.content)["error_description"]


def test_a_token_without_the_scope_is_403_insufficient_scope_naming_it(configured):
    token = access_token(configured, scope="reports:write")

    response = report_view(RequestFactory().get("/reports", **bearer(token)))

    assert response.status_code == 403
    assert response["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", '
        'error_description="The access token lacks a scope this request needs: reports:read.", '
        f'scope="reports:read", resource_metadata="{METADATA}"'
    )


def test_keys_that_cannot_be_fetched_are_503_with_retry_after(configured):
    token = access_token(configured)
    configured.down()

    response = report_view(RequestFactory().get("/reports", **bearer(token)))

    assert response.status_code == 503 and response["Retry-After"] == "5"


def test_the_middleware_sets_the_token_refuses_a_bad_one_and_lets_anonymous_through(configured):
    seen = []
    middleware = AccessTokenMiddleware(lambda request: seen.append(request.access_token) or JsonResponse({}))
    factory = RequestFactory()

    anonymous = middleware(factory.get("/"))
    valid = middleware(factory.get("/", **bearer(access_token(configured, sub="agent-9"))))
    invalid = middleware(factory.get("/", **bearer(access_token(configured, iss="https://impostor.example"))))

    assert anonymous.status_code == 200 and valid.status_code == 200
    assert seen[0] is None and seen[1].subject == "agent-9" and len(seen) == 2
    assert invalid.status_code == 401


@pytest.mark.parametrize(
    "config, message",
    [
        (None, "Set AGENTIDP_RESOURCE_SERVER"),
        ({"ISSUER": "https://idp.example"}, "resource"),
        ({"ISSUER": "https://idp.example", "RESOURCE": RESOURCE, "SCOPES": []}, "no option 'SCOPES'"),
        ({"ISSUER": "http://idp.example", "RESOURCE": RESOURCE}, "https"),
        ({"ISSUER": "https://idp.example", "RESOURCE": RESOURCE, "INTROSPECTION": {"CLIENT_ID": "x"}}, "CLIENT_SECRET"),
    ],
)
def test_a_missing_or_wrong_configuration_is_improperly_configured(settings, config, message):
    settings.AGENTIDP_RESOURCE_SERVER = config

    with pytest.raises(ImproperlyConfigured, match=message):
        get_verifier()


# --- Django REST framework -----------------------------------------------------------------------


class ReportView(APIView):
    authentication_classes = [AccessTokenAuthentication]
    permission_classes = [HasScopes]
    required_scopes = ["reports:read"]

    def get(self, request):
        assert isinstance(request.user, AgentUser) and not request.user.is_staff
        return Response({"agent": request.user.pk, "client": request.auth.client_id})


def drf_get(**headers):
    return ReportView.as_view()(APIRequestFactory().get("/reports", **headers))


def test_drf_authenticates_a_valid_token(configured):
    response = drf_get(**bearer(access_token(configured, sub="agent-3")))

    assert response.status_code == 200 and response.data == {"agent": "agent-3", "client": "client-1"}


def test_drf_answers_401_with_the_challenge_without_or_with_a_bad_token(configured):
    missing = drf_get()
    expired = drf_get(**bearer(access_token(configured, exp=1)))

    assert missing.status_code == 401 and missing["WWW-Authenticate"] == CHALLENGE
    assert expired.status_code == 401
    assert expired["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="The access token has expired.", '
        f'resource_metadata="{METADATA}"'
    )


def test_drf_answers_403_insufficient_scope_with_its_challenge(configured):
    response = drf_get(**bearer(access_token(configured, scope="reports:write")))

    assert response.status_code == 403
    assert response["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
    assert 'scope="reports:read"' in response["WWW-Authenticate"]


def test_drf_answers_503_with_retry_after_when_keys_cannot_be_fetched(configured):
    token = access_token(configured)
    configured.down()

    response = drf_get(**bearer(token))

    assert response.status_code == 503 and response["Retry-After"] == "5"
