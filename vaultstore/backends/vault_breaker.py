"""
Fail fast while Vault keeps failing: the Vault backend's circuit breaker.

The breaker knows nothing of hvac or requests: the backend tells it whether each request
ended in an outage (vault_errors.is_outage) and asks it whether to send the next one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class BreakerOpen(Exception):
    """The breaker is open: Vault is not asked; try again in `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("Vault is failing; not asked")
        self.retry_after = retry_after


class CircuitBreaker:
    """
    Stop asking a Vault that keeps failing, so requests fail fast and Vault is not hammered.

    After `failures` outages in a row (unreachable, slow, sealed, 5xx, 429, 403, a garbled
    answer) every operation fails at once for `seconds`. Then one caller is let through
    as a probe while the others keep failing fast: a success closes the breaker, a failure
    opens it again. Per process and thread-safe; `failures` 0 turns it off.
    """

    def __init__(self, *, failures: int, seconds: float, clock: Callable[[], float] | None = None) -> None:
        self.failures = failures
        self.seconds = seconds
        #: What the breaker reads the time from (time.monotonic unless given); the fault tests move it on.
        self.clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False

    def allow(self) -> None:
        """Return if Vault may be asked now; raise BreakerOpen otherwise."""
        if not self.failures:
            return
        with self._lock:
            if self._open_until is None:
                return
            left = self._open_until - self.clock()
            if left <= 0 and not self._probing:
                self._probing = True  # this caller is the probe
                return
            raise BreakerOpen(max(1, math.ceil(left if left > 0 else self.seconds)))

    def refuse_while_open(self) -> None:
        """Raise BreakerOpen while the breaker is open and its period lasts, without taking the probe's turn."""
        if not self.failures:
            return
        with self._lock:
            left = None if self._open_until is None else self._open_until - self.clock()
        if left is not None and left > 0:
            raise BreakerOpen(max(1, math.ceil(left)))

    def succeeded(self) -> None:
        """Record an answer from Vault (including one about a single key, such as a 404): close the breaker."""
        with self._lock:
            if self._open_until is not None:
                logger.info("Vault answers again; the breaker is closed")
            self._consecutive = 0
            self._open_until = None
            self._probing = False

    def failed(self) -> None:
        """Record an outage: open the breaker after `failures` in a row, or at once after a failed probe."""
        with self._lock:
            self._consecutive += 1
            if self.failures and (self._probing or self._consecutive >= self.failures):
                if self._open_until is None:
                    logger.warning(
                        "Vault failed %s times in a row; failing fast for %ss", self._consecutive, self.seconds
                    )
                self._open_until = self.clock() + self.seconds
            self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None
