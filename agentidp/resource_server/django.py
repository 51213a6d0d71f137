"""
The kit in a Django project: its configuration from settings, a view decorator, a middleware,
and the protected-resource metadata view.

    AGENTIDP_RESOURCE_SERVER = {
        "ISSUER": "https://idp.example.com",
        "RESOURCE": "https://api.example.com/reports",
        "SCOPES_SUPPORTED": ["reports:read"],
        # Optional: ask AgentIdP about every token instead of verifying it here.
        "INTROSPECTION": {"CLIENT_ID": "...", "CLIENT_SECRET": "..."},
    }

Other keys: AUDIENCES, JWKS_URI, LEEWAY_SECONDS, KEYS_TTL_SECONDS,
REFRESH_MIN_INTERVAL_SECONDS, KEYS_STALE_SECONDS, TIMEOUT_SECONDS, MAX_DOCUMENT_BYTES, CA_FILE,
ALLOW_HTTP (development only), and under INTROSPECTION, ENDPOINT (by default the one in
AgentIdP's metadata).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .metadata import challenge, protected_resource_metadata
from .verify import (
    IntrospectionVerifier,
    InvalidToken,
    Settings,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
    VerifierUnavailable,
)

SETTING = "AGENTIDP_RESOURCE_SERVER"
_OPTIONS = {
    "ISSUER": "issuer",
    "RESOURCE": "resource",
    "AUDIENCES": "audiences",
    "JWKS_URI": "jwks_uri",
    "SCOPES_SUPPORTED": "scopes_supported",
    "LEEWAY_SECONDS": "leeway_seconds",
    "KEYS_TTL_SECONDS": "keys_ttl_seconds",
    "REFRESH_MIN_INTERVAL_SECONDS": "refresh_min_interval_seconds",
    "KEYS_STALE_SECONDS": "keys_stale_seconds",
    "TIMEOUT_SECONDS": "timeout_seconds",
    "MAX_DOCUMENT_BYTES": "max_document_bytes",
    "CA_FILE": "ca_file",
    "ALLOW_HTTP": "allow_http",
}
_INTROSPECTION_OPTIONS = {
    "CLIENT_ID": "client_id",
    "CLIENT_SECRET": "client_secret",
    "ENDPOINT": "introspection_endpoint",
}


@functools.cache
def get_verifier() -> TokenVerifier | IntrospectionVerifier:
    """Return the verifier AGENTIDP_RESOURCE_SERVER describes, built once per process (its key cache with it)."""
    config = dict(getattr(django_settings, SETTING, None) or {})
    if not config:
        raise ImproperlyConfigured(f"Set {SETTING} (at least ISSUER and RESOURCE) to verify AgentIdP access tokens.")
    introspection = config.pop("INTROSPECTION", None)
    unknown = sorted(set(config) - set(_OPTIONS))
    if unknown:
        raise ImproperlyConfigured(f"{SETTING} has no option {unknown[0]!r}; it takes {', '.join(_OPTIONS)}.")
    try:
        settings = Settings(**{_OPTIONS[name]: value for name, value in config.items()})
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{SETTING}: {exc}") from None
    if not introspection:
        return TokenVerifier(settings)
    unknown = sorted(set(introspection) - set(_INTROSPECTION_OPTIONS))
    if unknown or not {"CLIENT_ID", "CLIENT_SECRET"} <= set(introspection):
        raise ImproperlyConfigured(
            f"{SETTING}['INTROSPECTION'] takes CLIENT_ID, CLIENT_SECRET and optionally ENDPOINT."
        )
    try:
        return IntrospectionVerifier(
            settings, **{_INTROSPECTION_OPTIONS[name]: value for name, value in introspection.items()}
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"{SETTING}['INTROSPECTION']: {exc}") from None


@receiver(setting_changed)
def _forget_verifier(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        get_verifier.cache_clear()


def bearer_token(request: HttpRequest) -> str | None:
    """Return the token of `Authorization: Bearer <token>` (RFC 6750 section 2.1), None without one."""
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or " " in token:
        raise InvalidToken("The Authorization header must be 'Bearer <access token>'.")
    return token


def authenticate(request: HttpRequest, scopes: Iterable[str] = ()) -> VerifiedToken:
    """Return the request's verified token holding `scopes`; raise TokenRejected or VerifierUnavailable."""
    token = bearer_token(request)
    if token is None:
        raise InvalidToken("An access token is required.")
    return get_verifier().verify(token, scopes=scopes)


def refusal(request: HttpRequest, exc: TokenRejected | VerifierUnavailable) -> HttpResponse:
    """The answer to a refused request: 401 or 403 with the challenge, or 503 when tokens cannot be judged now."""
    settings = get_verifier().settings
    if isinstance(exc, VerifierUnavailable):
        response = JsonResponse(
            {"error": "temporarily_unavailable", "error_description": "Access tokens cannot be verified right now."},
            status=503,
        )
        response["Retry-After"] = "5"
        return response
    presented = request.META.get("HTTP_AUTHORIZATION", "").lower().startswith("bearer")
    response = JsonResponse({"error": exc.error, "error_description": exc.description}, status=exc.status)
    # RFC 6750 section 3.1: a request without a token gets the challenge and no error code.
    response["WWW-Authenticate"] = challenge(settings, exc if presented or exc.status == 403 else None)
    return response


def require_access_token(*scopes: str) -> Callable:
    """
    Decorate a view so it runs only for a valid AgentIdP access token holding `scopes`;
    the view finds it as `request.access_token`.
    """

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                request.access_token = authenticate(request, scopes)
            except (TokenRejected, VerifierUnavailable) as exc:
                return refusal(request, exc)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class AccessTokenMiddleware:
    """
    Verify the Bearer token of every request that carries one, and set `request.access_token`
    (None without one). A request with a token that is not valid is refused here, 401.
    Views that need a token check for it (or use require_access_token).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            token = bearer_token(request)
            request.access_token = None if token is None else get_verifier().verify(token)
        except (TokenRejected, VerifierUnavailable) as exc:
            return refusal(request, exc)
        return self.get_response(request)


@csrf_exempt
def protected_resource_metadata_view(request: HttpRequest) -> HttpResponse:
    """Serve RFC 9728 metadata; route it at metadata_path(RESOURCE)."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"error": "invalid_request", "error_description": "Use GET."}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    response = JsonResponse(protected_resource_metadata(get_verifier().settings))
    response["Cache-Control"] = "public, max-age=300"
    return response
