"""
Errors a secret store raises.

Backends translate their client libraries' exceptions into these at their own edge, so
callers never see an hvac or requests exception. Each kind carries the contract's code and
a Retry-After hint, and never a secret, a hash or a Vault token in its message.
"""

from __future__ import annotations


class SecretStoreError(Exception):
    """A secret store could not do what was asked."""

    code = "SECRET_STORE_ERROR"
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class SecretStoreUnavailable(SecretStoreError):
    """The store cannot be reached, is sealed, or is not configured for this secret."""

    code = "VAULT_UNAVAILABLE"
    retry_after = 5


class SecretWriteError(SecretStoreError):
    """
    A secret could not be written; nothing was changed that the caller relies on.

    `maybe_written` is True when the store may have applied the write although it did not
    confirm it (a timeout or a connection lost after sending): a caller that made a new
    location must then have it destroyed.
    """

    code = "VAULT_WRITE_ERROR"
    retry_after = 5

    def __init__(self, message: str, *, retry_after: int | None = None, maybe_written: bool = False) -> None:
        super().__init__(message, retry_after=retry_after)
        self.maybe_written = maybe_written


class SecretReadError(SecretStoreError):
    """A secret could not be read, so it could not be verified."""

    code = "VAULT_READ_ERROR"
    retry_after = 5


class SecretMissing(SecretReadError):
    """
    The store answered, and does not hold the version of a secret that the database trusts.

    Raised only where the database trusts that secret now (a credential's verification), so
    it says the store lost data the database relies on (a Vault restarted empty, restored
    from an old backup, or asked in the wrong namespace): the store's fault, not
    the client's, and worth retrying once an operator has restored it. It is about one key,
    so it never counts towards the Vault backend's circuit breaker. Its code is
    VAULT_READ_ERROR, the contract's code for a secret that could not be read: a client
    sees what it sees while Vault is down, and an operator learns the rest from the log,
    the audit trail and /readyz.
    """

    retry_after = 30


class SecretNotFound(SecretStoreError):
    """The store holds no secret where the database says one is."""

    code = "SECRET_NOT_FOUND"
