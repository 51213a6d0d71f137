"""
The OAuth 2.0 wire format shared by the token, introspection and revocation endpoints:
request parameters, client authentication (RFC 6749 section 2.3.1) and error responses
(section 5.2).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Collection
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, JsonResponse

from credentials import clientauth, federation
from credentials.models import Credential, TrustPolicy

from .addresses import client_address
from .throttling import AuthenticationGuard, Throttled, client_ref

#: One line per client authentication attempt, for operators to route on its own.
auth_logger = logging.getLogger("agentidp.auth")

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
#: Where a request notes the client-authentication method it used, for the metrics.
AUTH_METHOD_ATTRIBUTE = "_agentidp_auth_method"
JSON_MEDIA_TYPE = "application/json"


def oauth_response(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None):
    """A JSON response that no cache may keep (RFC 6749 section 5.1)."""
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error: `error`, `error_description`, its status and headers."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self):
        body = {"error": self.error, "error_description": self.description, **self.extra}
        return oauth_response(body, status=self.status, headers=self.headers)


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


class Parameters(dict[str, str]):
    """
    A request's parameters: each name to its one value, and the repeatable ones (RFC 8707's
    `resource`) apart, in `repeated`, each to all its values in order.
    """

    def __init__(self, single: dict[str, str], repeated: dict[str, list[str]]) -> None:
        super().__init__(single)
        self.repeated = repeated

    def getlist(self, name: str) -> list[str]:
        return self.repeated.get(name, [])


def parse_parameters(request: HttpRequest, *, repeatable: Collection[str] = ()) -> Parameters:
    """
    Return the request's body parameters, with empty ones dropped (RFC 6749 section 3.1).

    A name in `repeatable` may be sent several times (in JSON, as a string or an array of
    strings); every other one only once. Raises invalid_request for a parameter sent twice,
    a body that is neither a form nor a JSON object of strings, or a client secret in the
    URL (section 2.3.1); 413 for a body over the size limit.
    """
    if "client_secret" in request.GET:
        raise invalid_request("Send client_secret in the request body or the Authorization header, never in the URL.")
    media_type = (request.content_type or "").lower()
    try:
        if media_type == FORM_MEDIA_TYPE:
            params = _form_parameters(request, repeatable)
        elif media_type == JSON_MEDIA_TYPE:
            params = _json_parameters(request.body, repeatable)
        elif not request.body:
            params = {}
        else:
            raise invalid_request(f"Send the parameters as {FORM_MEDIA_TYPE} (or {JSON_MEDIA_TYPE}).")
    except RequestDataTooBig:
        raise OAuthError(
            "invalid_request", "The request body is larger than this server accepts.", status=413
        ) from None
    except SuspiciousOperation:  # too many fields, and the like
        raise invalid_request("The request body could not be read.") from None
    single: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in params.items():
        if isinstance(value, list):
            if values := [item for item in value if item != ""]:
                repeated[name] = values
        elif value != "":
            single[name] = value
    return Parameters(single, repeated)


def _form_parameters(request: HttpRequest, repeatable: Collection[str]) -> dict[str, str | list[str]]:
    params: dict[str, str | list[str]] = {}
    for name, values in request.POST.lists():
        if name in repeatable:
            params[name] = values
        elif len(values) > 1:
            raise invalid_request(f"The parameter {_safe_name(name)} is sent more than once.")
        else:
            params[name] = values[0]
    return params


def _json_parameters(body: bytes, repeatable: Collection[str]) -> dict[str, str | list[str]]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, value in pairs:
            if name in result:
                raise invalid_request(f"The parameter {_safe_name(name)} is sent more than once.")
            result[name] = value
        return result

    try:
        data = json.loads(body, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        raise invalid_request("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise invalid_request("The JSON request body must be an object.")
    for name, value in data.items():
        if name in repeatable:
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(item, str) for item in values):
                raise invalid_request(f"The parameter {_safe_name(name)} must be a string or an array of strings.")
            data[name] = values
        elif not isinstance(value, str):
            raise invalid_request(f"The parameter {_safe_name(name)} must be a string.")
        else:
            values = [value]
        if not all(_is_unicode_text(item) for item in values):
            raise invalid_request(f"The parameter {_safe_name(name)} is not valid Unicode text.")
    return data


def _is_unicode_text(value: str) -> bool:
    """Return whether `value` encodes as UTF-8: JSON's \\ud800 escape makes a lone surrogate, which does not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safe_name(name: str) -> str:
    """Quote a client-supplied parameter name for an error message, short and printable."""
    return repr(name[:40])


def _invalid_client(description: str, *, challenge: str | None) -> OAuthError:
    return OAuthError(
        "invalid_client", description, status=401, headers={"WWW-Authenticate": challenge} if challenge else None
    )


def rate_limited(throttled: Throttled) -> OAuthError:
    """The answer to a throttled request: 429 with Retry-After, and the contract's RATE_LIMITED code."""
    return OAuthError(
        "temporarily_unavailable",
        f"Too many requests; try again in {throttled.retry_after} seconds.",
        status=429,
        headers={"Retry-After": str(throttled.retry_after)},
        extra={"code": "RATE_LIMITED"},
    )


def _printable(value: str, limit: int = 128) -> str:
    """Quote a client-supplied value for a log line: cut short, control characters and quotes escaped."""
    return json.dumps(value[:limit])


#: The fields of a client authentication's record, in the order its message names them.
AUTH_LOG_FIELDS = (
    "outcome",
    "reason",
    "endpoint",
    "auth_method",
    "client_id",
    "client_ref",
    "credential_id",
    "agent_id",
    "address",
    "user_agent",
    "result",
)
_AUTH_LOG_MESSAGE = "client authentication " + " ".join(f"{name}=%s" for name in AUTH_LOG_FIELDS)
#: Where an OAuth endpoint holds a successful authentication's record until it has answered (authentication_logged).
HELD_RECORD_ATTRIBUTE = "_agentidp_held_auth_record"


def _log_attempt(
    request: HttpRequest,
    *,
    outcome: str,
    reason: str,
    result: str = "",
    presented: clientauth.Presented | None = None,
    ref: str | None = None,
    credential: Credential | None = None,
    policy: TrustPolicy | None = None,
    claimed: federation.Claimed | None = None,
    level: int = logging.INFO,
) -> None:
    """
    Log one client authentication (or platform token, for the jwt-bearer grant): outcome
    and reason, ids and the client's address, never a secret or an assertion; and `result`,
    what the endpoint answered (the error of a refusal, or for a success what came of it).

    A presented clientId is logged only when it is a credential's; otherwise its keyed
    digest (client_ref; `ref` when the caller has it already), since a client that swapped
    its id and secret presents its secret as the id. A platform token's claimed issuer and
    subject are logged only as that digest too. The same fields go to `extra` for
    structured (JSON) log handlers.

    A success on an endpoint that holds its record (OAuthEndpoint) is written once the
    endpoint has answered, with what it answered (authentication_logged): one record per
    request, whether the token was issued or, say, its scope refused.
    """
    if claimed is not None:
        auth_method, ref = federation.GRANT_TYPE, ref or client_ref(claimed.ref)
    else:
        auth_method = presented.method_name if presented else ""
        ref = (ref or client_ref(presented.client_id)) if presented else ""
        if presented:
            setattr(request, AUTH_METHOD_ATTRIBUTE, presented.method_name)  # a registry's name, for the metrics
    match = request.resolver_match
    user_agent = request.META.get("HTTP_USER_AGENT")
    fields = {
        "event": "client_authentication",
        "outcome": outcome,
        "reason": reason,
        "endpoint": match.url_name if match else "",
        "auth_method": auth_method,
        "client_id": credential.client_id if credential else str(policy.id) if policy else "",
        "client_ref": ref,
        "credential_id": str(credential.id) if credential else "",
        "agent_id": str(credential.agent_id) if credential else str(policy.agent_id) if policy else "",
        "address": client_address(request),
        "user_agent": _printable(user_agent) if user_agent else "",
        "result": result,
    }
    if outcome == "success" and getattr(request, HELD_RECORD_ATTRIBUTE, None) == {}:
        setattr(request, HELD_RECORD_ATTRIBUTE, fields)
        return
    _write(level, fields)


def _write(level: int, fields: dict[str, str]) -> None:
    values = [fields[name] or "-" for name in AUTH_LOG_FIELDS]
    auth_logger.log(level, _AUTH_LOG_MESSAGE, *values, extra={"auth": fields})


def authentication_record_held(request: HttpRequest) -> None:
    """Hold the record of this request's successful client authentication until authentication_logged."""
    setattr(request, HELD_RECORD_ATTRIBUTE, {})


def authentication_logged(request: HttpRequest, *, result: str) -> None:
    """Write the held record of this request's successful client authentication, if any, with `result`."""
    fields = getattr(request, HELD_RECORD_ATTRIBUTE, None)
    setattr(request, HELD_RECORD_ATTRIBUTE, None)
    if fields:
        fields["result"] = result
        _write(logging.INFO, fields)


def authenticate_client(request: HttpRequest, params: dict[str, str]) -> Credential:
    """
    Return the authenticated client's credential, or raise the OAuthError to answer with.

    The request presents its credentials by one of the client-authentication methods
    (credentials.clientauth). Every failure is the same invalid_client, whatever the reason
    (logged, with ids only). A store that cannot answer (Vault down) is
    temporarily_unavailable with Retry-After. The failure limits (oauth.throttling) apply
    before any secret is verified: 429.
    """
    try:
        presented = clientauth.presented_by(request, params)
    except clientauth.MalformedClientAuth as exc:
        reason = "malformed_credentials" if exc.error == "invalid_client" else exc.error
        _log_attempt(request, outcome="failure", reason=reason, result=exc.error)
        if exc.error == "invalid_client":
            raise _invalid_client(exc.description, challenge=exc.challenge) from None
        raise OAuthError(exc.error, exc.description) from None
    guard = AuthenticationGuard.for_request(request, presented.client_id)
    log = functools.partial(_log_attempt, request, presented=presented, ref=guard.ref)
    try:
        guard.check()
        credential = clientauth.authenticate(presented, store_allowed=lambda: guard.store_allowed)
    except (Throttled, clientauth.VerificationWithheld) as exc:
        throttled = exc if isinstance(exc, Throttled) else guard.withheld()
        log(outcome="throttled", reason=throttled.limit, result="rate_limited", level=logging.WARNING)
        raise rate_limited(throttled) from None
    except clientauth.InvalidClient as exc:
        guard.failed()
        log(outcome="failure", reason=exc.reason, result="invalid_client", credential=exc.credential)
        raise _invalid_client("Client authentication failed.", challenge=presented.method.challenge) from None
    except clientauth.StoreUnavailable as exc:
        log(outcome="unavailable", reason=exc.reason, result="temporarily_unavailable", level=logging.WARNING)
        raise _unavailable(exc.description, code=exc.code, retry_after=exc.retry_after) from None
    guard.succeeded()
    log(outcome="success", reason="verified", credential=credential)
    return credential


def _unavailable(description: str, *, code: str, retry_after: int | None) -> OAuthError:
    return OAuthError(
        "temporarily_unavailable",
        description,
        status=503,
        headers={"Retry-After": str(retry_after or 5)},
        extra={"code": code},
    )


def authenticate_platform(request: HttpRequest, params: dict[str, str]) -> TrustPolicy:
    """
    Return the trust policy the jwt-bearer grant's `assertion` matches (RFC 7523 section
    2.1), or raise the OAuthError to answer with.

    The grant takes no client authentication: the platform's token is the proof. Every
    refusal is the same invalid_grant (the reason is logged); the failure limits count a
    platform token's claimed issuer and subject as the "client", so the no-lockout rules
    of client authentication hold for workloads too. Keys that cannot be fetched are
    temporarily_unavailable.
    """
    if request.META.get("HTTP_AUTHORIZATION") or any(
        name in params for method in clientauth.methods_in_use() for name in method.parameters
    ):
        raise invalid_request("The jwt-bearer grant takes no client authentication: the assertion is the proof.")
    assertion = params.get("assertion")
    if assertion is None:
        raise invalid_request("assertion is required.")
    token = federation.presented(assertion)
    claimed = token.claimed
    guard = AuthenticationGuard.for_request(request, claimed.ref)
    log = functools.partial(_log_attempt, request, claimed=claimed, ref=guard.ref)
    try:
        guard.check()
        policy = federation.platform_identity(token)
    except federation.InvalidGrant as exc:
        if not guard.store_allowed:
            throttled = guard.withheld()
            log(outcome="throttled", reason=throttled.limit, result="rate_limited", level=logging.WARNING)
            raise rate_limited(throttled) from None
        guard.failed()
        log(outcome="failure", reason=exc.reason, result="invalid_grant", policy=exc.policy)
        raise OAuthError("invalid_grant", "The assertion is not accepted.") from None
    except Throttled as exc:
        log(outcome="throttled", reason=exc.limit, result="rate_limited", level=logging.WARNING)
        raise rate_limited(exc) from None
    except federation.KeysUnavailable as exc:
        log(outcome="unavailable", reason=exc.reason, result="temporarily_unavailable", level=logging.WARNING)
        raise _unavailable(
            "The issuer's public keys cannot be fetched; try again shortly.",
            code="KEYS_UNAVAILABLE",
            retry_after=settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS,
        ) from None
    guard.succeeded()
    log(outcome="success", reason="verified", policy=policy)
    return policy
