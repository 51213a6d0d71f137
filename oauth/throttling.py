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

A process counts an address's token requests in the cache one at a time near its ceiling,
and far from it reserves several at once (up to LEASE_MOST, at most a sixteenth of what is
left, growing only while the address keeps it busy): a request on a reserved slot costs no
cache call. Reserved slots are counted when reserved, so no more requests than the ceiling
allows are ever heard; at worst an address is refused a few early while another process
still holds slots it reserved. The failure counters and the marks of known addresses are
read with each reservation, and otherwise only once they matter: before a store would be
asked, or when the authentication fails. A secret the verified-secret cache vouches for,
under the ceiling, needs neither.

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
import os
import threading
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django.utils.crypto import salted_hmac

from credentials import selectors
from credentials.audit import audit_record
from credentials.bounded import keep_bounded
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


def _count(kind: str, value: str, delta: int = 1) -> int:
    """Add `delta` to a counter of this window and return the new count (0 when the cache fails)."""
    length, window, _ = _window()
    key = _key(kind, value, window)
    try:
        try:
            return cache.incr(key, delta)  # one round trip once the window has begun
        except ValueError:  # the window's first count (or the counter was evicted)
            if cache.add(key, delta, timeout=length + 1):
                return delta
            try:
                return cache.incr(key, delta)  # another process began the window meanwhile
            except ValueError:  # evicted between add and incr
                cache.set(key, delta, timeout=length + 1)
                return delta
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


def count_and_read(
    kind: str, value: str, *keys: tuple[str, str], delta: int = 1
) -> tuple[int, dict[tuple[str, str], int]]:
    """
    Add `delta` to a counter of this window and read counters as counters_read does: in one
    cache call where the cache can (agentidp.cache), in two elsewhere ((0, {}) when the cache fails).
    """
    combined = getattr(cache, "count_and_get_many", None)
    if combined is None:
        return _count(kind, value, delta), counters_read(*keys)
    length, window, _ = _window()
    names = _names(keys, window)
    try:
        count, found = combined(_key(kind, value, window), list(names), timeout=length + 1, delta=delta)
    except Exception as exc:
        logger.warning("rate limit counters unavailable; not limiting kind=%s error=%s", kind, type(exc).__name__)
        return 0, {}
    return count, {names[name]: int(number) for name, number in found.items()}


def known_mark(value: str) -> tuple[str, str]:
    """The key of a mark that an address authenticated something lately: read with counters_read, kept unwindowed."""
    return ("known", value)


def known_remember(*marks: tuple[str, str]) -> bool:
    """Keep these marks for AGENTIDP_KNOWN_ADDRESS_SECONDS; False when the cache failed (logged, not raised)."""
    try:
        for kind, value in marks:
            cache.set(_key(kind, value, 0), 1, timeout=settings.AGENTIDP_KNOWN_ADDRESS_SECONDS)
    except Exception as exc:
        logger.warning("could not remember a known address error=%s", type(exc).__name__)
        return False
    return True


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


#: The most of an address's token requests a process reserves at once.
LEASE_MOST = 64
#: ... and at most this fraction of what is left under its ceiling (1/16): near it, each request counts alone.
LEASE_SHARE_OF_REST = 16
#: How many addresses' reservations (and seen marks) a process keeps.
LEASES_KEPT = 4096


@dataclasses.dataclass
class _Lease:
    """The slots of one address's request counter that this process reserved in one window."""

    window: int
    next: int  # the next slot to hand out
    last: int  # the last one reserved (next > last: none left)
    size: int  # how many the last reservation took
    count: int  # the counter's value the cache answered it with


class _Reserved:
    """
    What a process holds of the shared counters: each address's reserved slots, and the
    marks of known addresses it saw or wrote in the current window.

    A slot is a request's number in its address's window, as the shared counter would have
    given it: the first reservation of a window takes one; each that follows one used up
    takes twice as many, up to LEASE_MOST and a sixteenth of what the counter left under the
    ceiling when last asked. So an address far from its ceiling costs one cache call in up
    to 64 requests, and one near it a call for each, counted exactly. A forked process
    starts with nothing: its parent's slots are its parent's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._marks: dict[str, int] = {}
        os.register_at_fork(after_in_child=self.forget_all)

    def take(self, address: str, window: int) -> int | None:
        """The next slot this process reserved for `address` in `window`, or None (the cache must be asked)."""
        with self._lock:
            lease = self._leases.get(address)
            if lease is None or lease.window != window or lease.next > lease.last:
                return None
            lease.next += 1
            return lease.next - 1

    def size(self, address: str, window: int, ceiling: int) -> int:
        """How many slots to reserve now."""
        with self._lock:
            lease = self._leases.get(address)
        if lease is None or lease.window != window:
            return 1
        return max(1, min(LEASE_MOST, lease.size * 2, (ceiling - lease.count) // LEASE_SHARE_OF_REST))

    def reserved(self, address: str, window: int, count: int, size: int) -> int:
        """Keep the `size` slots up to `count` the cache counted; return the first, for the request that asked."""
        with self._lock:
            keep_bounded(
                self._leases,
                address,
                _Lease(window=window, next=count - size + 2, last=count, size=size, count=count),
                LEASES_KEPT,
                stale=lambda lease: lease.window != window,
            )
        return count - size + 1

    def mark_seen(self, name: str, window: int) -> None:
        """Note that the known-address mark `name` exists in this window (read, or written by this process)."""
        with self._lock:
            keep_bounded(self._marks, name, window, LEASES_KEPT, stale=lambda seen: seen != window)

    def mark_unseen(self, name: str, window: int) -> bool:
        """Whether this process has neither seen nor written the mark `name` in this window."""
        with self._lock:
            return self._marks.get(name) != window

    def forget_all(self) -> None:
        with self._lock:
            self._leases.clear()
            self._marks.clear()


reserved = _Reserved()


def _request_slot(address: str, *keys: tuple[str, str]) -> tuple[int, dict[tuple[str, str], int] | None]:
    """
    Count one token request of `address` against its ceiling: return its slot, with the
    counters `keys` when they were read in the same call (None: the slot was reserved
    before, and nothing was read). Slot 0: the cache failed, and nothing limits.
    """
    window = _window()[1]
    slot = reserved.take(address, window)
    if slot is not None:
        return slot, None
    size = reserved.size(address, window, settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS)
    count, counts = count_and_read("requests", address, *keys, delta=size)
    if count <= 0:
        return 0, counts
    return reserved.reserved(address, window, count, size), counts


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
    slot, _ = _request_slot(address)
    _over_ceiling(address, slot, lambda: bool(counters_read(_known_address_mark(address))))


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

    `check()` counts the request against its address's ceiling, and `store_allowed` says
    whether a store may be asked. An address that authenticated this clientId lately always
    may, until this pair's own failures reach their limit. Otherwise not when the address's
    failures are over their limit (whoever else shares it: a NAT, a cluster's egress), nor
    when the clientId's are, nor when all failures are over theirs and this address has not
    authenticated any clientId lately. Withholding the store never refuses a secret the
    verified-secret cache vouches for: only what needs store work to be believed waits. A
    request over its address's ceiling is refused outright unless this pair is heard.

    A request counted on a slot this process had reserved, under the ceiling, has read no
    counters: they are read when `store_allowed`, `known_to_client` or `known_address` is
    first asked (before a store, or after a failure), never for a secret the cache vouches for.
    """

    address: str
    client_id: str
    #: The request checked: its count against its address's ceiling may wait for this check.
    request: HttpRequest | None = dataclasses.field(default=None, repr=False)
    #: Which limit withheld the store (when store_allowed is False).
    limit: str = ""
    _store_allowed: bool = dataclasses.field(default=True, init=False, repr=False)
    _known_to_client: bool = dataclasses.field(default=False, init=False, repr=False)
    _known_address: bool = dataclasses.field(default=False, init=False, repr=False)
    #: check() left the counters unread: they are read when first needed.
    _unread: bool = dataclasses.field(default=False, init=False, repr=False)

    @property
    def store_allowed(self) -> bool:
        self._read_if_unread()
        return self._store_allowed

    @property
    def known_to_client(self) -> bool:
        """This address authenticated this clientId lately."""
        self._read_if_unread()
        return self._known_to_client

    @property
    def known_address(self) -> bool:
        """This address authenticated some clientId lately."""
        self._read_if_unread()
        return self._known_address

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

    @property
    def _keys(self) -> tuple[tuple[str, str], ...]:
        """What check() reads: the counters, and what this address authenticated lately."""
        per_address, per_client, total, pair = self.limits
        return (
            per_address.key,
            per_client.key,
            total.key,
            pair.key,
            self._known_to_client_key,
            self._known_address_key,
        )

    def check(self) -> None:
        per_address, per_client, total, _ = self.limits
        uncounted = self.request is not None and getattr(self.request, UNCOUNTED_ATTRIBUTE, False)
        if not (uncounted or per_address.on or per_client.on or total.on):
            return
        if not uncounted:
            self._decide(counters_read(*self._keys), count=None)
            return
        # One cache call for all when one is made: the request's count against its ceiling,
        # the counters, and what this address authenticated lately.
        setattr(self.request, UNCOUNTED_ATTRIBUTE, False)
        slot, counts = _request_slot(self.address, *self._keys)
        if counts is None:  # a slot this process had reserved
            if slot <= settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS:
                self._unread = True  # under the ceiling: the counters matter only if a store would be asked
                return
            counts = counters_read(*self._keys)
        self._decide(counts, count=slot)

    def _read_if_unread(self) -> None:
        if self._unread:
            self._unread = False
            self._decide(counters_read(*self._keys), count=None)

    def _decide(self, counts: dict[tuple[str, str], int], *, count: int | None) -> None:
        """Apply the limits to the counters read (and to the request's `count` against its ceiling, if given)."""
        per_address, per_client, total, pair = self.limits
        window = _window()[1]
        for key in (self._known_to_client_key, self._known_address_key):
            if counts.get(key):
                reserved.mark_seen(key[1], window)
        self._known_to_client = bool(counts.get(self._known_to_client_key))
        self._known_address = self._known_to_client or bool(counts.get(self._known_address_key))
        over_ceiling = count is not None and _over_ceiling(self.address, count, lambda: self._known_address)
        if self._known_to_client and not pair.over(counts):
            return  # this address proved this clientId lately: no neighbour's failures or flood silence it
        if over_ceiling:
            raise refusal("address_requests")
        for limit in (per_address, per_client, pair):
            if limit.over(counts):
                self._store_allowed, self.limit = False, limit.name
                return
        if total.over(counts) and not self._known_address:
            self._store_allowed, self.limit = False, total.name

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
        """
        Remember that this address authenticated the clientId: each mark written when the
        counters read showed it missing or, when none were read, when this process has not
        seen or written it in this window; not on every success.
        """
        if not any(limit.on for limit in self.limits) and settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS <= 0:
            return
        window = _window()[1]
        if self._unread:
            missing = [
                key
                for key in (self._known_to_client_key, self._known_address_key)
                if reserved.mark_unseen(key[1], window)
            ]
        else:
            missing = [
                key
                for key, known in (
                    (self._known_to_client_key, self._known_to_client),
                    (self._known_address_key, self._known_address),
                )
                if not known
            ]
        if missing and known_remember(*missing):
            for key in missing:
                reserved.mark_seen(key[1], window)

    @property
    def _known_to_client_key(self) -> tuple[str, str]:
        return known_mark(f"{self.ref}:{self.address}")

    @property
    def _known_address_key(self) -> tuple[str, str]:
        return _known_address_mark(self.address)
