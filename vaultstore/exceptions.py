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


class SecretNotFound(SecretStoreError):
    """The store holds no secret where the database says one is."""

    code = "SECRET_NOT_FOUND"
