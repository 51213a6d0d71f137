"""
AgentIdP's middleware: every error under /api/ in the contract's JSON shape, including the
ones Django raises before or around a view (an oversized body, a bad Host, an unhandled
exception); and the browser's middleware (sessions, CSRF, users, messages, framing), which
the OAuth protocol endpoints skip.
"""

from __future__ import annotations

import functools
import logging

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware as DjangoXFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware as DjangoCsrfViewMiddleware
from django.urls import NoReverseMatch, Resolver404, get_script_prefix, resolve, reverse

from credentials import errors
from oauth.protocol import OAuthError

from .api import as_api_error, error_response, is_api_request

logger = logging.getLogger(__name__)

# The RFC 6749 error code that stands for each status on the OAuth endpoints.
_OAUTH_ERROR_FOR_STATUS = {500: "server_error", 503: "temporarily_unavailable"}


def is_oauth_request(request: HttpRequest) -> bool:
    try:
        return resolve(request.path_info).namespace == "oauth"
    except Resolver404:
        return False


def api_error_response(request: HttpRequest, error: errors.ApiError) -> HttpResponse:
    """Render `error` in the management shape, or the RFC 6749 shape on the OAuth endpoints."""
    if not is_oauth_request(request):
        return error_response(error)
    code = _OAUTH_ERROR_FOR_STATUS.get(error.status, "invalid_request")
    return OAuthError(code, error.message, status=error.status, headers=error.headers).response()


class ApiRequestMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_request(request):
            length = self._declared_length(request)
            if length is None:
                # Django would fail with a ValueError (a 500) the first time the view reads the body.
                return api_error_response(request, errors.ValidationFailed("The Content-Length header is malformed."))
            if length > settings.AGENTIDP_MAX_BODY_SIZE:
                return api_error_response(request, errors.PayloadTooLarge())
        return self.get_response(request)

    @staticmethod
    def _declared_length(request: HttpRequest) -> int | None:
        """Return the declared Content-Length (0 when absent), or None when it is not a length."""
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        return length if length >= 0 else None

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if not is_api_request(request):
            return None
        error = as_api_error(exc)
        if error is None:
            logger.exception("unhandled error path=%s", request.path)
            error = errors.ApiError()
        return api_error_response(request, error)


def _handler(error_class: type[errors.ApiError]):
    def handler(request: HttpRequest, exception: Exception | None = None, **kwargs) -> HttpResponse:
        if is_api_request(request):
            return api_error_response(request, error_class())
        from django.views import defaults

        fallback = {
            400: defaults.bad_request,
            403: defaults.permission_denied,
            404: defaults.page_not_found,
        }.get(error_class.status)
        if fallback is None:
            return defaults.server_error(request)
        return fallback(request, exception)

    return handler


bad_request = _handler(errors.ValidationFailed)
permission_denied = _handler(errors.Forbidden)
page_not_found = _handler(errors.NotFound)
server_error = _handler(errors.ApiError)


@functools.cache
def protocol_paths() -> frozenset[str]:
    """
    The paths of the OAuth protocol endpoints (oauth.urls: token, introspection, revocation,
    authorization, metadata, JWKS), as request.path_info has them.

    Worked out once per process from the URLconf, and again when a test changes it. A path
    that is not found here (an URLconf that mounts the endpoints elsewhere) keeps the whole
    middleware stack, which is the safe way to be wrong.
    """
    from oauth.urls import app_name, urlpatterns  # wired in by agentidp's URLconf, as here

    prefix = get_script_prefix()  # reverse() adds it; path_info has none
    paths = set()
    for pattern in urlpatterns:
        try:
            url = reverse(f"{app_name}:{pattern.name}", urlconf=settings.ROOT_URLCONF)
        except NoReverseMatch:
            continue
        paths.add("/" + url.removeprefix(prefix))
    return frozenset(paths)


@receiver(setting_changed)
def _forget_protocol_paths(*, setting: str, **kwargs: object) -> None:
    if setting == "ROOT_URLCONF":
        protocol_paths.cache_clear()


def is_protocol_endpoint(request: HttpRequest) -> bool:
    """Whether the request is for an OAuth protocol endpoint, which takes no cookie and serves no browser."""
    return request.path_info in protocol_paths()


class _BrowserOnly:
    """
    A browser's middleware that the OAuth protocol endpoints skip, request and response.

    Agents and their SDKs send no cookie to those endpoints, and the endpoints read no
    session, user or message and render no page (they are CSRF-exempt, and answer JSON):
    sessions, CSRF, users, messages and X-Frame-Options would cost each token request work
    that changes nothing. Listed under their own names in MIDDLEWARE, as subclasses of
    Django's, so that the admin's checks still find them and every other path is served
    exactly as Django's own would serve it. SecurityMiddleware and CommonMiddleware (the Host
    check against ALLOWED_HOSTS, Content-Length) stay on every path.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_protocol_endpoint(request):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(_BrowserOnly, DjangoSessionMiddleware):
    pass


class CsrfViewMiddleware(_BrowserOnly, DjangoCsrfViewMiddleware):
    pass


class AuthenticationMiddleware(_BrowserOnly, DjangoAuthenticationMiddleware):
    pass


class MessageMiddleware(_BrowserOnly, DjangoMessageMiddleware):
    pass


class XFrameOptionsMiddleware(_BrowserOnly, DjangoXFrameOptionsMiddleware):
    pass
