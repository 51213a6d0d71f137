"""
The OAuth 2.0 endpoints: token (RFC 6749 section 4.4), introspection (RFC 7662),
revocation (RFC 7009), server metadata (RFC 8414) and the JWK Set (RFC 7517).

Plain Django views, not DRF: their bodies and headers are the RFCs', untouched by a
framework's renderers or error handler.
"""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters

from credentials import clientauth, federation
from credentials.jwtauth.verify import algorithms_allowed
from credentials.resources import MAX_TOKEN_RESOURCES, is_resource
from credentials.scopes import parse_scope_parameter

from .keys import jwks
from .metrics import TOKEN_REQUESTS
from .protocol import (
    AUTH_METHOD_ATTRIBUTE,
    OAuthError,
    Parameters,
    authenticate_client,
    authenticate_platform,
    authentication_logged,
    authentication_record_held,
    invalid_request,
    oauth_response,
    parse_parameters,
    rate_limited,
)
from .throttling import Throttled, token_request_counted
from .tokens import (
    RevocationRefused,
    access_token_issue,
    access_token_revoke,
    access_token_validate,
    audience_claim,
)


class _RFCMethods(View):
    """An OAuth endpoint's other methods: 405 in the RFC 6749 section 5.2 shape, and OPTIONS, both naming `allow`."""

    allow = "POST"

    def http_method_not_allowed(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        methods = " or ".join(self.allow.split(", "))
        response = OAuthError("invalid_request", f"Use {methods}, not {request.method}.", status=405).response()
        response["Allow"] = self.allow
        return response

    def options(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = HttpResponse(status=204)
        response["Allow"] = self.allow
        return response


class OAuthEndpoint(_RFCMethods):
    """A POST-only endpoint that answers every failure in the RFC 6749 section 5.2 shape."""

    http_method_names = ["post", "options"]
    #: Whether each request counts against its address's ceiling (oauth.throttling).
    counts_requests = False
    #: The parameters a request may send more than once.
    repeatable_parameters: tuple[str, ...] = ()

    #: What a request that succeeded is counted and logged as.
    success_outcome = "ok"

    @classmethod
    def as_view(cls, **initkwargs):
        """
        The view, exempt from CSRF checks (clients authenticate themselves, with no cookie) and with
        its secrets hidden from error reports: decorated once, not on every request as
        method_decorator on dispatch would.
        """
        view = super().as_view(**initkwargs)
        return csrf_exempt(sensitive_post_parameters("client_secret", "client_assertion", "assertion", "token")(view))

    def post(self, request: HttpRequest) -> HttpResponse:
        # A successful client authentication is logged once this answer is known, in one record with it.
        authentication_record_held(request)
        outcome = "server_error"  # unless the endpoint answers
        try:
            with token_request_counted(request) if self.counts_requests else contextlib.nullcontext():
                try:
                    response = self.handle(request, parse_parameters(request, repeatable=self.repeatable_parameters))
                    outcome = self.success_outcome
                except OAuthError as exc:
                    outcome = "rate_limited" if exc.extra.get("code") == "RATE_LIMITED" else exc.error
                    response = exc.response()
        except Throttled as exc:
            outcome = "rate_limited"
            response = rate_limited(exc).response()
        finally:
            authentication_logged(request, result=outcome)
        self.observe(request, outcome)
        return response

    def observe(self, request: HttpRequest, outcome: str) -> None:
        """Count the request in the metrics (the token endpoint does): `outcome` is success_outcome or an error."""

    def handle(self, request: HttpRequest, params: Parameters) -> HttpResponse:
        raise NotImplementedError


#: The grants the token endpoint answers, in the order metadata lists them.
GRANT_TYPES = ("client_credentials", federation.GRANT_TYPE)
#: Where a token request notes its grant for the metrics, and the grants' names there.
GRANT_ATTRIBUTE = "_agentidp_grant"
GRANT_LABELS = {"client_credentials": "client_credentials", federation.GRANT_TYPE: "jwt-bearer"}


class TokenView(OAuthEndpoint):
    """
    Issue an access token: to a client that authenticates (client credentials grant, RFC
    6749 section 4.4), or to a workload whose platform token a trust policy accepts
    (jwt-bearer grant, RFC 7523 section 2.1).
    """

    counts_requests = True
    repeatable_parameters = ("resource",)  # RFC 8707 section 2
    success_outcome = "issued"

    def observe(self, request: HttpRequest, outcome: str) -> None:
        grant = getattr(request, GRANT_ATTRIBUTE, "missing")
        TOKEN_REQUESTS.labels(grant, getattr(request, AUTH_METHOD_ATTRIBUTE, "none"), outcome).inc()

    def handle(self, request: HttpRequest, params: Parameters) -> HttpResponse:
        grant_type = params.get("grant_type")
        # The metrics' label: a grant AgentIdP serves, or one word for any other (never the client's text).
        setattr(
            request, GRANT_ATTRIBUTE, GRANT_LABELS.get(grant_type, "missing" if grant_type is None else "unsupported")
        )
        if grant_type is None:
            raise invalid_request("grant_type is required.")
        if grant_type == "client_credentials":
            credential = authenticate_client(request, params)
            agent, client_id = credential.agent, credential.client_id
        elif grant_type == federation.GRANT_TYPE:
            policy = authenticate_platform(request, params)
            agent, client_id = policy.agent, str(policy.id)
        else:
            raise OAuthError(
                "unsupported_grant_type", "This server supports the grants " + ", ".join(GRANT_TYPES) + "."
            )
        scopes = self.granted_scopes(agent.scopes, params.get("scope"))
        resources = self.granted_resources(agent.allowed_resources, params.getlist("resource"))
        issued = access_token_issue(agent_id=agent.id, client_id=client_id, scopes=scopes, resources=resources)
        return oauth_response(
            {
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "scope": issued.scope,
            }
        )

    @staticmethod
    def granted_scopes(allowed: list[str], requested: str | None) -> list[str]:
        """Grant what was asked for if the agent may have all of it (section 3.3); without `scope`, all it may have."""
        if requested is None:
            return list(allowed)
        try:
            scopes = parse_scope_parameter(requested)
        except ValueError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        refused = [scope for scope in scopes if scope not in allowed]
        if refused:
            raise OAuthError("invalid_scope", "The agent may not have the scope " + repr(refused[0][:128]) + ".")
        return scopes

    @staticmethod
    def granted_resources(allowed: list[str], requested: list[str]) -> list[str]:
        """
        Return the resources the token is for (RFC 8707 section 2), each one the agent is
        allowed, without duplicates; invalid_target for a malformed or refused one.
        """
        resources = list(dict.fromkeys(requested))
        if len(resources) > MAX_TOKEN_RESOURCES:
            raise OAuthError("invalid_target", f"A token is for at most {MAX_TOKEN_RESOURCES} resources.")
        for resource in resources:
            if not is_resource(resource):
                raise OAuthError("invalid_target", "A resource is an absolute URI without a fragment.")
            if resource not in allowed:
                raise OAuthError("invalid_target", f"The agent may not have a token for the resource {resource!r}.")
        return resources


class IntrospectionView(OAuthEndpoint):
    """Tell an authenticated client whether a token is active, and what it allows (RFC 7662)."""

    def handle(self, request: HttpRequest, params: Parameters) -> HttpResponse:
        token = params.get("token")
        authenticate_client(request, params)
        if token is None:
            raise invalid_request("token is required.")
        active = access_token_validate(token)
        if active is None:
            return oauth_response({"active": False})
        claims = active.claims
        return oauth_response(
            {
                "active": True,
                "scope": " ".join(active.scopes),
                "client_id": claims["client_id"],
                "token_type": "Bearer",
                "exp": claims["exp"],
                "iat": claims.get("iat"),
                "sub": claims["sub"],
                # Where it may still be spent: a resource taken from its agent is gone.
                "aud": audience_claim(active.audiences),
                "iss": claims["iss"],
                "jti": claims["jti"],
            }
        )


class RevocationView(OAuthEndpoint):
    """Revoke an access token (RFC 7009): the token's own client, or an admin, may."""

    def handle(self, request: HttpRequest, params: Parameters) -> HttpResponse:
        token = params.get("token")
        credential = authenticate_client(request, params)
        if token is None:
            raise invalid_request("token is required.")
        try:
            access_token_revoke(requester=credential, token=token)
        except RevocationRefused:
            raise OAuthError(
                "unauthorized_client", "This client may not revoke a token issued to another client."
            ) from None
        # Section 2.2: 200 whether or not there was anything to revoke.
        return oauth_response({})


@method_decorator(csrf_exempt, name="dispatch")
class AuthorizationView(_RFCMethods):
    """
    The authorization endpoint (RFC 6749 section 3.1), which AgentIdP publishes but where
    no response type is served: agents get tokens at the token endpoint, with no person
    and no browser. Published because clients (the MCP SDKs among them) refuse server
    metadata without one.

    Every request is unsupported_response_type, answered here and never by redirecting:
    no client has a redirection URI registered, so none may be followed (section 4.1.2.1).
    """

    http_method_names = ["get", "post", "head", "options"]
    allow = "GET, POST"

    def get(self, request: HttpRequest) -> HttpResponse:
        return OAuthError(
            "unsupported_response_type",
            "This server issues no tokens or codes at the authorization endpoint; "
            "use the token endpoint's client_credentials or jwt-bearer grant.",
        ).response()

    post = get


def _absolute(name: str) -> str:
    return settings.AGENTIDP_ISSUER + reverse(name)


@csrf_exempt  # read-only and anonymous: a POST gets 405, not a CSRF page
def authorization_server_metadata(request: HttpRequest) -> HttpResponse:
    """
    RFC 8414 metadata: where the endpoints are and what they support, in a form the MCP
    SDKs accept (an authorization_endpoint, which they require).
    """
    if request.method not in ("GET", "HEAD"):
        return _get_only(request)
    auth_methods = clientauth.method_names()
    signing_algorithms = {}
    if "private_key_jwt" in auth_methods:
        algorithms = algorithms_allowed()
        signing_algorithms = {
            f"{endpoint}_endpoint_auth_signing_alg_values_supported": algorithms
            for endpoint in ("token", "introspection", "revocation")
        }
    response = JsonResponse(
        {
            "issuer": settings.AGENTIDP_ISSUER,
            "authorization_endpoint": _absolute("oauth:authorize"),
            "token_endpoint": _absolute("oauth:token"),
            "jwks_uri": _absolute("oauth:jwks"),
            "introspection_endpoint": _absolute("oauth:introspect"),
            "revocation_endpoint": _absolute("oauth:revoke"),
            "grant_types_supported": list(GRANT_TYPES),
            # None served: the authorization endpoint refuses every response type.
            "response_types_supported": [],
            # No scopes_supported: each agent has its own scopes, and a client that asks for every
            # advertised scope (the MCP SDK does) must never be steered to agentidp:admin.
            "token_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            **signing_algorithms,
            "service_documentation": _absolute("api-docs"),
        }
    )
    response["Cache-Control"] = "public, max-age=300"
    return response


@csrf_exempt
def jwks_document(request: HttpRequest) -> HttpResponse:
    """The RFC 7517 JWK Set that verifies AgentIdP's access tokens."""
    if request.method not in ("GET", "HEAD"):
        return _get_only(request)
    response = JsonResponse(jwks())
    response["Cache-Control"] = "public, max-age=300"
    return response


def _get_only(request: HttpRequest) -> HttpResponse:
    response = JsonResponse(
        {"error": "invalid_request", "error_description": f"Use GET, not {request.method}."}, status=405
    )
    response["Allow"] = "GET, HEAD"
    return response
