"""
Limits on the OAuth endpoints against guessing secrets and flooding the token endpoint.

Three counters per fixed window of AGENTIDP_RATE_LIMIT_WINDOW_SECONDS, kept in the Django
cache so that every server process shares them (Redis with CACHE_URL=redis://...):

- token requests per client address (AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS), counted before
  any credential is looked up or secret verified (with the failure limits' own read, in
  one cache call); over it, an address that authenticated nothing lately is refused then,
  and one that did is heard only for the clientIds it authenticated;
- failed client authentications per address (AGENTIDP_AUTH_FAILURES_PER_ADDRESS);
- failed client authentications per clientId (AGENTIDP_AUTH_FAILURES_PER_CLIENT), presented
  ids that match no credential included;
- failed client authentications in all (AGENTIDP_AUTH_FAILURES_TOTAL), against attacks
  spread over many addresses and clientIds.

A request over a limit is answered 429 with Retry-After before any secret is verified, so
a throttled attacker costs no bcrypt or Vault work. Limits must not lock legitimate
clients out, not even those that share an address with an attacker (a NAT, a cluster's
egress, a CI runner pool): over any limit, the ceiling included, an address that
authenticated that clientId within AGENTIDP_KNOWN_ADDRESS_SECONDS is still heard, until
that pair of address and clientId fails AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR times in a
window itself (an attacker on the agent's own address, guessing its secret, gets no more
store work than from anywhere else); over the total, an address that authenticated any
clientId in that time is heard too (a new agent on a known host). A secret the
verified-secret cache vouches for is always heard (it costs no store work). Only what this
address has not proven lately waits. Each limit reached writes one audit event per window
and key, never one per refusal.

If the cache fails, the limits are not applied (logged): they protect the service, and
must not become the way to take it down.

The pieces every failure limit is made of (FailureLimit, counters_read, known_remember,
limit_reached) serve the operators' console too (agentidp.console_login).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django.utils.crypto import salted_hmac

from credentials import selectors
from credentials.audit import audit_record
from credentials.models import AuditEvent

from .addresses import client_address
from .metrics import RATE_LIMIT_REFUSALS

logger = logging.getLogger(__name__)

KEY_PREFIX = "agentidp:limit:"
REF_SALT = "agentidp.oauth.throttling"


class Throttled(Exception):
    """A request over a limit: `limit` names which, `retry_after` says when the window ends."""

    def __init__(self, *, limit: str, retry_after: int) -> None:
        super().__init__(limit)
        self.limit = limit
        self.retry_after = retry_after


def client_ref(client_id: str) -> str:
    """A short keyed digest of a presented clientId: names it in keys and logs without repeating it."""
    return salted_hmac(REF_SALT, client_id, algorithm="sha256").hexdigest()[:16]


def _window() -> tuple[int, int, int]:
    """Return (window length, the current window's number, seconds until it ends)."""
    length = max(1, settings.AGENTIDP_RATE_LIMIT_WINDOW_SECONDS)
    now = time.time()
    return length, int(now // length), max(1, math.ceil(length - now % length))


def _key(kind: str, value: str, window: int) -> str:
    return f"{KEY_PREFIX}{kind}:{value}:{window}"


def _count(kind: str, value: str) -> int:
    """Add one to a counter of this window and return the new count (0 when the cache fails)."""
    length, window, _ = _window()
    key = _key(kind, value, window)
    try:
        try:
            return cache.incr(key)  # one round trip once the window has begun
        except ValueError:  # the window's first failure (or the counter was evicted)
            if cache.add(key, 1, timeout=length + 1):
                return 1
            try:
                return cache.incr(key)  # another process began the window meanwhile
            except ValueError:  # evicted between add and incr
                cache.set(key, 1, timeout=length + 1)
                return 1
    except Exception as exc:
        logger.warning("rate limit counter unavailable; not limiting kind=%s error=%s", kind, type(exc).__name__)
        return 0


def _names(keys: tuple[tuple[str, str], ...], window: int) -> dict[str, tuple[str, str]]:
    return {_key(kind, value, 0 if kind == "known" else window): (kind, value) for kind, value in keys}


def counters_read(*keys: tuple[str, str]) -> dict[tuple[str, str], int]:
    """Read counters of this window (and the unwindowed "known" marks) in one cache call ({} when the cache fails)."""
    names = _names(keys, _window()[1])
    try:
        found = cache.get_many(list(names))
    except Exception as exc:
        logger.warning("rate limit counters unavailable; not limiting error=%s", type(exc).__name__)
        return {}
    return {names[name]: int(count) for name, count in found.items()}


def count_and_read(kind: str, value: str, *keys: tuple[str, str]) -> tuple[int, dict[tuple[str, str], int]]:
    """
    Add one to a counter of this window and read counters as counters_read does: in one
    cache call where the cache can (agentidp.cache), in two elsewhere ((0, {}) when the cache fails).
    """
    combined = getattr(cache, "count_and_get_many", None)
    if combined is None:
        return _count(kind, value), counters_read(*keys)
    length, window, _ = _window()
    names = _names(keys, window)
    try:
        count, found = combined(_key(kind, value, window), list(names), timeout=length + 1)
    except Exception as exc:
        logger.warning("rate limit counters unavailable; not limiting kind=%s error=%s", kind, type(exc).__name__)
        return 0, {}
    return count, {names[name]: int(number) for name, number in found.items()}


def known_mark(value: str) -> tuple[str, str]:
    """The key of a mark that an address authenticated something lately: read with counters_read, kept unwindowed."""
    return ("known", value)


def known_remember(*marks: tuple[str, str]) -> None:
    """Keep these marks for AGENTIDP_KNOWN_ADDRESS_SECONDS (logged, not raised, when the cache fails)."""
    try:
        for kind, value in marks:
            cache.set(_key(kind, value, 0), 1, timeout=settings.AGENTIDP_KNOWN_ADDRESS_SECONDS)
    except Exception as exc:
        logger.warning("could not remember a known address error=%s", type(exc).__name__)


def window_limit(kind: str, value: str, *, limit: int, address: str) -> None:
    """
    Count one request of `kind` for `value` in this window; raise Throttled once over
    `limit` (0: no limit), recording the limit reached once per window. A failing cache
    limits nothing.
    """
    if limit <= 0:
        return
    count = _count(kind, value)
    if count > limit:
        if count == limit + 1:
            limit_reached(kind, address=address)
        raise refusal(kind)


def refusal(limit: str) -> Throttled:
    """The refusal for a request over `limit`: it may come back when this window ends."""
    RATE_LIMIT_REFUSALS.labels(limit).inc()
    return Throttled(limit=limit, retry_after=_window()[2])


@dataclasses.dataclass(frozen=True)
class FailureLimit:
    """
    One limit on failed authentications per window, for one key.

    `name` says which limit in refusals, audit events and logs; `kind` and `value` key its
    counter in the cache; `allowed` is how many failures a window takes (0 or less: off).
    Check with over() on what counters_read returned, before verifying anything; count()
    after a failure.
    """

    name: str
    kind: str
    value: str
    allowed: int

    @property
    def on(self) -> bool:
        return self.allowed > 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.value)

    def over(self, counts: dict[tuple[str, str], int]) -> bool:
        return 0 < self.allowed <= counts.get(self.key, 0)

    def count(self) -> bool:
        """Count one failure; return whether it is the one that reached the limit (once per window and key)."""
        return self.allowed > 0 and _count(self.kind, self.value) == self.allowed


def limit_reached(
    limit: str,
    *,
    address: str,
    details: dict[str, str] | None = None,
    log_fields: dict[str, object] | None = None,
    agent_id: uuid.UUID | None = None,
    credential_id: uuid.UUID | None = None,
) -> None:
    """
    Record that a limit was reached: a log line and a `client.rate_limited` audit event.

    Call it once per window and key (FailureLimit.count() says when). `details` add to the
    event's limit, address and window, and `log_fields` to the log line: ids and keyed
    digests only, never a secret, nor a name that no account or credential holds.
    """
    log_fields = log_fields or {}
    logger.warning(
        " ".join(["rate limit reached limit=%s address=%s", *(f"{name}=%s" for name in log_fields)]),
        limit,
        address,
        *log_fields.values(),
    )
    try:
        audit_record(
            acting=None,
            action=AuditEvent.Action.RATE_LIMITED,
            agent_id=agent_id,
            credential_id=credential_id,
            details={"limit": limit, "address": address, "windowSeconds": _window()[0], **(details or {})},
        )
    except Exception:
        logger.exception("could not record a reached rate limit in the audit trail")


def _reached(limit: str, *, address: str, client_id: str | None = None) -> None:
    """Record a limit of the OAuth endpoints reached, naming the clientId when it is a credential's."""
    credential = selectors.credential_find_by_client_id(client_id=client_id) if client_id else None
    details = {}
    if client_id is not None:
        details["clientRef"] = client_ref(client_id)
        if credential is not None:
            details["clientId"] = credential.client_id
    limit_reached(
        limit,
        address=address,
        details=details,
        log_fields={
            "client_ref": details.get("clientRef", "-"),
            "credential_id": credential.id if credential is not None else "-",
        },
        agent_id=credential.agent_id if credential is not None else None,
        credential_id=credential.id if credential is not None else None,
    )


#: Set on a token request not yet counted against its address's ceiling (token_request_counted).
UNCOUNTED_ATTRIBUTE = "_agentidp_uncounted"


@contextlib.contextmanager
def token_request_counted(request: HttpRequest):
    """
    Count a token request against its address's ceiling, once, before anything is looked up.

    The count waits for the request's first failure-limit check (AuthenticationGuard.check),
    which makes it in the same cache call as its own read; a request that reaches none (one
    refused as malformed) is counted when it leaves the block, where over the ceiling it is
    refused (Throttled) instead of its answer.
    """
    if settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS <= 0:
        yield
        return
    setattr(request, UNCOUNTED_ATTRIBUTE, True)
    yield
    if getattr(request, UNCOUNTED_ATTRIBUTE, False):
        _count_token_request(request)


def _count_token_request(request: HttpRequest) -> None:
    """
    Count a token request that reached no failure-limit check against its address's ceiling now.

    Over the ceiling, an address that authenticated no clientId lately is refused
    (Throttled). One that did may hold agents beside whoever floods it; this request
    authenticated nothing, so its own answer stands.
    """
    setattr(request, UNCOUNTED_ATTRIBUTE, False)
    limit = settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS
    if limit <= 0:
        return
    address = client_address(request)
    _over_ceiling(address, _count("requests", address), lambda: bool(counters_read(_known_address_mark(address))))


def _over_ceiling(address: str, count: int, address_known: Callable[[], bool]) -> bool:
    """Apply the ceiling to a request's `count`: refuse it, or return whether it is over (and heard)."""
    limit = settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS
    if count == limit + 1:
        _reached("address_requests", address=address)
    if count <= limit:
        return False
    if not address_known():
        raise refusal("address_requests")
    return True


def _known_address_mark(address: str) -> tuple[str, str]:
    """The mark that this address authenticated some clientId lately."""
    return known_mark(f"*:{address}")


@dataclasses.dataclass
class AuthenticationGuard:
    """
    The failure limits for one client authentication: check before verifying, record after.

    `check()` decides whether a store may be asked (`store_allowed`). An address that
    authenticated this clientId lately always may, until this pair's own failures reach
    their limit. Otherwise not when the address's failures are over their limit (whoever
    else shares it: a NAT, a cluster's egress), nor when the clientId's are, nor when all
    failures are over theirs and this address has not authenticated any clientId lately.
    Withholding the store never refuses a secret the verified-secret cache vouches for:
    only what needs store work to be believed waits. A request over its address's ceiling
    is refused outright unless this pair is heard.
    """

    address: str
    client_id: str
    #: The request checked: its count against its address's ceiling may wait for this check.
    request: HttpRequest | None = dataclasses.field(default=None, repr=False)
    store_allowed: bool = True
    #: This address authenticated this clientId lately / any clientId lately.
    known_to_client: bool = False
    known_address: bool = False
    #: Which limit withheld the store (when store_allowed is False).
    limit: str = ""

    @classmethod
    def for_request(cls, request: HttpRequest, client_id: str) -> AuthenticationGuard:
        return cls(address=client_address(request), client_id=client_id, request=request)

    @functools.cached_property
    def ref(self) -> str:
        return client_ref(self.client_id)

    @functools.cached_property
    def limits(self) -> tuple[FailureLimit, FailureLimit, FailureLimit, FailureLimit]:
        """The failures of this address, of this clientId, of all, and of this pair of address and clientId."""
        per_client = settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT
        return (
            FailureLimit(
                "address_failures", "failures-address", self.address, settings.AGENTIDP_AUTH_FAILURES_PER_ADDRESS
            ),
            FailureLimit("client_failures", "failures-client", self.ref, per_client),
            FailureLimit("total_failures", "failures-total", "all", settings.AGENTIDP_AUTH_FAILURES_TOTAL),
            FailureLimit(
                "pair_failures",
                "failures-pair",
                f"{self.ref}:{self.address}",
                settings.AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR,
            ),
        )

    def check(self) -> None:
        per_address, per_client, total, pair = self.limits
        uncounted = self.request is not None and getattr(self.request, UNCOUNTED_ATTRIBUTE, False)
        if not (uncounted or per_address.on or per_client.on or total.on):
            return
        # One cache call for all: the counters, what this address authenticated lately, and
        # the request's count against its ceiling when that is still to be made.
        keys = (
            per_address.key,
            per_client.key,
            total.key,
            pair.key,
            self._known_to_client_key,
            self._known_address_key,
        )
        if uncounted:
            setattr(self.request, UNCOUNTED_ATTRIBUTE, False)
            count, counts = count_and_read("requests", self.address, *keys)
        else:
            count, counts = None, counters_read(*keys)
        self.known_to_client = bool(counts.get(self._known_to_client_key))
        self.known_address = self.known_to_client or bool(counts.get(self._known_address_key))
        over_ceiling = count is not None and _over_ceiling(self.address, count, lambda: self.known_address)
        if self.known_to_client and not pair.over(counts):
            return  # this address proved this clientId lately: no neighbour's failures or flood silence it
        if over_ceiling:
            raise refusal("address_requests")
        for limit in (per_address, per_client, pair):
            if limit.over(counts):
                self.store_allowed, self.limit = False, limit.name
                return
        if total.over(counts) and not self.known_address:
            self.store_allowed, self.limit = False, total.name

    def withheld(self) -> Throttled:
        """The refusal when the store could not be asked and the cache did not vouch for the secret."""
        return refusal(self.limit)

    def failed(self) -> None:
        per_address, per_client, total, pair = self.limits
        if per_address.count():
            _reached(per_address.name, address=self.address)
        if per_client.count():
            _reached(per_client.name, address=self.address, client_id=self.client_id)
        if total.count():
            _reached(total.name, address=self.address)
        if self.known_to_client and pair.count():  # only a known pair is heard past the others
            _reached(pair.name, address=self.address, client_id=self.client_id)

    def succeeded(self) -> None:
        """Remember that this address authenticated the clientId (each mark written once, not on every success)."""
        if not any(limit.on for limit in self.limits) and settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS <= 0:
            return
        known_remember(
            *(
                key
                for key, known in (
                    (self._known_to_client_key, self.known_to_client),
                    (self._known_address_key, self.known_address),
                )
                if not known
            )
        )

    @property
    def _known_to_client_key(self) -> tuple[str, str]:
        return known_mark(f"{self.ref}:{self.address}")

    @property
    def _known_address_key(self) -> tuple[str, str]:
        return _known_address_mark(self.address)
