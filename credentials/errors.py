"""
The management API's errors.

Each class carries the contract's code, HTTP status and any extra headers, so services
raise them and one exception handler (the project's DRF EXCEPTION_HANDLER) renders every one
as {"code", "message", "details"}.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    code = "INTERNAL_ERROR"
    status = 500
    default_message = "Internal server error."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.message = message or self.default_message
        self.details = details
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def as_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class ValidationFailed(ApiError):
    code = "VALIDATION_ERROR"
    status = 400
    default_message = "The request is not valid."


class Unauthorized(ApiError):
    code = "UNAUTHORIZED"
    status = 401
    default_message = "Authentication credentials were not provided or are not valid."


class Forbidden(ApiError):
    code = "FORBIDDEN"
    status = 403
    default_message = "The access token lacks the scope this call needs."


class NotFound(ApiError):
    code = "NOT_FOUND"
    status = 404
    default_message = "Not found."


class AgentNotFound(NotFound):
    code = "AGENT_NOT_FOUND"
    default_message = "No agent has this id."


class CredentialNotFound(NotFound):
    code = "CREDENTIAL_NOT_FOUND"
    default_message = "This agent has no credential with this id."


class TrustPolicyNotFound(NotFound):
    code = "TRUST_POLICY_NOT_FOUND"
    default_message = "This agent has no trust policy with this id."


class MethodNotAllowed(ApiError):
    code = "METHOD_NOT_ALLOWED"
    status = 405
    default_message = "Method not allowed."


class NotAcceptable(ApiError):
    code = "NOT_ACCEPTABLE"
    status = 406
    default_message = "The requested representation is not available."


class Conflict(ApiError):
    code = "CONFLICT"
    status = 409
    default_message = "The request conflicts with the current state."


class PayloadTooLarge(ApiError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413
    default_message = "The request body is larger than this server accepts."


class UnsupportedMediaType(ApiError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415
    default_message = "Send the request body as application/json."


class RateLimited(ApiError):
    code = "RATE_LIMITED"
    status = 429
    default_message = "Too many requests."


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"
    status = 503
    default_message = "The service is temporarily unavailable."
