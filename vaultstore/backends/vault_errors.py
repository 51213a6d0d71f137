"""
Translate what hvac and requests raise into vaultstore's errors: the Vault backend's one error edge.

Every operation of the Vault backend runs its requests inside `translated(OPERATION)`,
which raises that operation's SecretStoreError for any hvac or requests exception (and
for an open breaker), so that callers never see either library's. The other functions
here answer what the backend and its breaker ask of a failure: is it an outage, did a
write that failed perhaps apply, did Vault refuse the token.

No message or log line made here carries a secret, a response body or the Vault token:
the words come from the exception's class, and errors are raised from None so that no
traceback shows the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import hvac.exceptions
import requests
import urllib3.exceptions

from ..exceptions import SecretReadError, SecretStoreError, SecretStoreUnavailable, SecretWriteError
from .vault_breaker import BreakerOpen

logger = logging.getLogger(__name__)

#: What a failed request to Vault raises; ValueError for an answer in no shape Vault gives (a garbled 200).
VAULT_ERRORS = (hvac.exceptions.VaultError, requests.exceptions.RequestException, ValueError)
#: What an operation refused by the open breaker says (its error carries how long as retry_after).
FAILING_FAST = "Vault failed repeatedly and is not asked again for a few seconds."

# Statuses with which Vault refused a request before applying it.
_NOT_APPLIED_ERRORS = (
    hvac.exceptions.InvalidRequest,  # 400: cas mismatch, no data, bad JSON
    hvac.exceptions.Unauthorized,  # 401
    hvac.exceptions.Forbidden,  # 403
    hvac.exceptions.InvalidPath,  # 404
    hvac.exceptions.RateLimitExceeded,  # 429
    hvac.exceptions.VaultNotInitialized,  # 501
    hvac.exceptions.VaultDown,  # 503: sealed, standby without an active node
)


class Sealed(hvac.exceptions.VaultDown):
    """Vault's health endpoint answered 503 (hvac returns that answer rather than raising): Vault is sealed."""


@dataclasses.dataclass(frozen=True)
class Operation:
    """One kind of work the backend asks Vault for, and how its failures read."""

    #: What a failure raises.
    error: type[SecretStoreError]
    #: The failure's log line says "Vault {name} failed path=...", when the operation gives a path.
    name: str
    #: What the error says the backend was doing; empty for a health check ("Vault is sealed.").
    doing: str = ""
    #: Raised instead of `error` when Vault is not asked, cannot be reached or is sealed.
    unavailable: type[SecretStoreError] | None = None
    #: A write: its error says whether Vault may have applied it nevertheless (maybe_written).
    writes: bool = False

    def failing_fast(self, retry_after: int) -> str:
        # A health check's problem is a line of text, with no Retry-After to carry how long.
        if self.doing:
            return FAILING_FAST
        return f"Vault failed repeatedly and is not asked again for {retry_after} s."


STORING = Operation(SecretWriteError, "write", "storing a client secret", writes=True)
READING = Operation(SecretReadError, "read", "reading a client secret")
DESTROYING = Operation(SecretWriteError, "delete", "destroying a client secret", unavailable=SecretStoreUnavailable)
CHECKING = Operation(SecretStoreUnavailable, "check")


@contextlib.contextmanager
def translated(operation: Operation, *, path: str = "") -> Iterator[None]:
    """
    Raise the operation's SecretStoreError for whatever hvac, requests or the breaker raise in the block.

    A SecretStoreError raised in the block (an answer about one key that the backend has
    already translated) passes unchanged. With a `path`, the failure is logged with it
    and with the exception's class name, never its message.
    """
    try:
        yield
    except BreakerOpen as exc:
        error = operation.unavailable or operation.error
        raise error(operation.failing_fast(exc.retry_after), retry_after=exc.retry_after) from None
    except VAULT_ERRORS as exc:
        error = operation.error
        if operation.unavailable and isinstance(exc, hvac.exceptions.VaultDown | requests.exceptions.ConnectionError):
            error = operation.unavailable
        doing = f" while {operation.doing}" if operation.doing else ""
        message = f"Vault {describe(exc)}{doing}."
        if operation.writes:
            maybe_written = applied_possibly(exc)
            if path:
                logger.warning(
                    "Vault %s failed path=%s error=%s maybe_written=%s",
                    operation.name,
                    path,
                    type(exc).__name__,
                    maybe_written,
                )
            raise error(message, maybe_written=maybe_written) from None
        if path:
            logger.warning("Vault %s failed path=%s error=%s", operation.name, path, type(exc).__name__)
        raise error(message) from None


def describe(exc: BaseException) -> str:
    """Say what went wrong in words that carry no secret, token or response body."""
    if isinstance(exc, requests.exceptions.Timeout):
        return "did not answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "could not be reached"
    if isinstance(exc, requests.exceptions.RequestException | ValueError):
        return "sent an unreadable answer"
    if isinstance(exc, Sealed):
        return "is sealed"
    if isinstance(exc, hvac.exceptions.VaultDown):
        return "is sealed or has no active node"
    if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
        return "refused the request (permission denied or invalid token)"
    if isinstance(exc, hvac.exceptions.RateLimitExceeded):
        return "is rate limiting requests"
    if isinstance(exc, hvac.exceptions.InternalServerError | hvac.exceptions.BadGateway):
        return "failed with a server error"
    if isinstance(exc, hvac.exceptions.VaultNotInitialized):
        return "is not initialised"
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        return "rejected the request"
    return "answered with an error"


def applied_possibly(exc: BaseException) -> bool:
    """Return whether a write that failed with `exc` may nevertheless have been applied."""
    if isinstance(exc, _NOT_APPLIED_ERRORS):
        return False
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError):
        # Refused or unresolvable: the request never left. A reset after sending may have been applied.
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        return not isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)
    return True


def is_outage(exc: BaseException) -> bool:
    """Return whether `exc` says Vault cannot serve now (as opposed to an answer about one key)."""
    if isinstance(exc, hvac.exceptions.InvalidPath | hvac.exceptions.InvalidRequest):
        return False  # 404 and 400 (a cas mismatch): Vault answered
    return isinstance(exc, VAULT_ERRORS)


def is_refusal(exc: BaseException) -> bool:
    """Return whether Vault refused the request's token (or its policy): 401 or 403."""
    return isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized)
