"""
The one error body of every management endpoint: DRF's exception handler, and the
translation of what Django, DRF, the database and the secret stores raise into the
contract's errors (credentials.errors).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from credentials import errors
from vaultstore.exceptions import SecretStoreError

logger = logging.getLogger(__name__)

#: Retry-After when the database could not serve a request.
DATABASE_RETRY_AFTER = 2

_DRF_ERRORS: list[tuple[type[Exception], type[errors.ApiError]]] = [
    (exceptions.ParseError, errors.ValidationFailed),
    (exceptions.ValidationError, errors.ValidationFailed),
    (exceptions.NotAuthenticated, errors.Unauthorized),
    (exceptions.AuthenticationFailed, errors.Unauthorized),
    (exceptions.PermissionDenied, errors.Forbidden),
    (exceptions.NotFound, errors.NotFound),
    (exceptions.MethodNotAllowed, errors.MethodNotAllowed),
    (exceptions.NotAcceptable, errors.NotAcceptable),
    (exceptions.UnsupportedMediaType, errors.UnsupportedMediaType),
    (exceptions.Throttled, errors.RateLimited),
]


def _first_message(detail: Any, prefix: str = "") -> str:
    """Flatten DRF's nested error detail to its first message, prefixed with the field path."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            path = key if not prefix else f"{prefix}.{key}"
            return _first_message(value, path)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], prefix)
    text = str(detail)
    return f"{prefix}: {text}" if prefix and prefix != "nonFieldErrors" else text


def as_api_error(exc: Exception) -> errors.ApiError | None:
    """Translate an exception raised while serving the API into an ApiError, or None if it is a bug."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, SecretStoreError):
        return errors.ServiceUnavailable(
            "The secret store is unavailable; try again shortly.",
            headers={"Retry-After": str(exc.retry_after or 5)},
            code=exc.code,
        )
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is unreachable, restarting, or chose this transaction as a deadlock's victim.
        logger.warning("database unavailable error=%s", type(exc).__name__)
        return errors.ServiceUnavailable(
            "The database is unavailable; try again shortly.", headers={"Retry-After": str(DATABASE_RETRY_AFTER)}
        )
    if isinstance(exc, Http404):
        return errors.NotFound()
    if isinstance(exc, PermissionDenied):
        return errors.Forbidden()
    if isinstance(exc, RequestDataTooBig):
        return errors.PayloadTooLarge()
    if isinstance(exc, (SuspiciousOperation, BadRequest)):
        return errors.ValidationFailed("The request could not be read.")
    for drf_class, api_class in _DRF_ERRORS:
        if isinstance(exc, drf_class):
            headers = {}
            if getattr(exc, "auth_header", None):
                headers["WWW-Authenticate"] = exc.auth_header
            if getattr(exc, "wait", None):
                headers["Retry-After"] = "%d" % exc.wait
            details = None
            message = str(exc.detail) if not isinstance(exc.detail, (list, dict)) else None
            if isinstance(exc, exceptions.ValidationError):
                details = exc.detail if isinstance(exc.detail, dict) else {"nonFieldErrors": exc.detail}
                message = "Invalid request: " + _first_message(details)
            elif isinstance(exc, exceptions.ParseError):
                message = "The request body is not valid JSON."
            return api_class(message, details=details, headers=headers)
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every API error as {"code", "message", "details"}."""
    error = as_api_error(exc)
    if error is None:
        return None  # a bug: Django's 500 handler answers, with the same body shape
    set_rollback()
    return Response(_encodable(error.as_body()), status=error.status, headers=error.headers)


def _encodable(value: Any) -> Any:
    """Escape lone surrogates (JSON's \\ud800) that an error echoes from the request, so the body encodes as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    return value


def error_response(error: errors.ApiError) -> JsonResponse:
    response = JsonResponse(error.as_body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def is_api_request(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


__all__ = [
    "as_api_error",
    "error_response",
    "exception_handler",
    "is_api_request",
]
