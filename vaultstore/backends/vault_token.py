"""
Keep the Vault backend's token: read it from a token file, read it again after a refusal, renew it.

The token is the `token` option, or the content of `token_file` (a Vault Agent sink). A
renewable token is renewed on first use and when two thirds of its lease have passed: by
the request that finds the renewal due, or by a timer while the process is idle. It reads
time from time.monotonic and arms threading.Timer. No log line here carries the token.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import hvac
from django.views.decorators.debug import sensitive_variables

from .vault_errors import VAULT_ERRORS, describe

logger = logging.getLogger(__name__)

#: Renew a renewable token when this share of its lease has passed.
RENEW_AT_FRACTION = 2 / 3
#: After a failed look at the token, try again this many seconds later.
TOKEN_RETRY_SECONDS = 10.0


class TokenKeeper:
    """
    Hand out the Vault token, and keep it valid while the backend lives.

    `thread_client` returns the calling thread's hvac client without renewing it (the
    renewal timer asks Vault through it). Thread-safe: one thread renews while the others
    go on with the token they have.
    """

    def __init__(self, *, token: str, token_file: str, thread_client: Callable[[], hvac.Client]) -> None:
        self._token = token
        self._token_file = token_file
        self._thread_client = thread_client
        self._file_lock = threading.Lock()
        self._read_at: float | None = None
        self._refused = False
        self._renewal_lock = threading.Lock()
        self._renewable: bool | None = None
        self._next_check = 0.0
        self._timer: threading.Timer | None = None
        #: True once the backend is replaced: the token is no longer renewed.
        self.closed = False

    @sensitive_variables("token")
    def current(self) -> str:
        """Return the token: the `token` option, or the token file's content, read on first use and after a refusal."""
        if not self._token_file or not self._file_due():
            return self._token
        with self._file_lock:
            if self._file_due():
                try:
                    with open(self._token_file, encoding="utf-8") as file:
                        token = file.read().strip()
                except (OSError, UnicodeDecodeError) as exc:
                    logger.warning("cannot read the Vault token file error=%s", type(exc).__name__)
                    token = ""
                if token != self._token:
                    if self._token:
                        logger.info("read a new Vault token from the token file")
                    self._token, self._renewable = token, None
                    self._next_check = 0.0
                self._read_at = time.monotonic()
                self._refused = False
        return self._token

    def _file_due(self) -> bool:
        """Whether to read the token file: never read yet, or Vault refused the token (at most once a second)."""
        if self._read_at is None:
            return True
        return self._refused and time.monotonic() - self._read_at >= 1.0

    def refused(self) -> None:
        """Vault refused the token: read the token file again before a later request."""
        if self._token_file:
            self._refused = True

    def renew_if_due(self, client: hvac.Client) -> None:
        """Renew the token through `client` if that is due, unless another thread is renewing it already."""
        if time.monotonic() < self._next_check or not self._renewal_lock.acquire(blocking=False):
            return
        try:
            self._next_check = self._look_after(client)
            self._schedule()
        finally:
            self._renewal_lock.release()

    def close(self) -> None:
        """Stop renewing the token in the background (the backend is being replaced)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()

    def _schedule(self) -> None:
        """Arm a timer for the next look at the token, so that an idle process renews it too."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        delay = self._next_check - time.monotonic()
        if self.closed or math.isinf(delay):
            return
        self._timer = threading.Timer(max(delay, 0.0), self._renew_in_background)
        self._timer.daemon = True  # never keeps a process from exiting
        self._timer.start()

    def _renew_in_background(self) -> None:
        with self._renewal_lock:
            if self.closed:
                return
            self._next_check = self._look_after(self._thread_client())
            self._schedule()

    def _look_after(self, client: hvac.Client) -> float:
        """Renew the token if it is renewable; return when to look at it again."""
        now = time.monotonic()
        try:
            if self._renewable is None:
                looked_up = client.auth.token.lookup_self()
                data = looked_up.get("data") if isinstance(looked_up, dict) else None
                if not isinstance(data, dict):
                    raise ValueError("no data in the look-up answer")
                ttl = int(data.get("ttl") or 0)
                if ttl <= 0:
                    return math.inf  # a token without expiry (root, or a periodic token with no TTL)
                self._renewable = bool(data.get("renewable"))
                if not self._renewable:
                    logger.warning("the Vault token is not renewable and expires in %s s", ttl)
                    return math.inf
            auth = client.auth.token.renew_self()
            granted = auth.get("auth") if isinstance(auth, dict) else None
            if not isinstance(granted, dict):
                raise ValueError("no auth in the renewal answer")
            lease = int(granted.get("lease_duration") or 0)
        except (*VAULT_ERRORS, TypeError) as exc:
            logger.warning("could not renew the Vault token: Vault %s (%s)", describe(exc), type(exc).__name__)
            return now + TOKEN_RETRY_SECONDS
        if isinstance(auth, dict) and auth.get("warnings"):
            logger.warning("the Vault token reaches its maximum TTL in %s s and cannot be renewed past it", lease)
        logger.info("renewed the Vault token lease_seconds=%s", lease)
        if lease <= 0:
            return math.inf
        return now + max(lease * RENEW_AT_FRACTION, 1.0)
