"""
Remember, for a short while, which presented secrets a store has verified.

A bcrypt verification costs about a quarter of a second of CPU and a Vault verification a
round trip, and agents ask for tokens all day with the same secret. After a store says a
secret matches, a keyed digest of it (HMAC-SHA256 under a key derived from SECRET_KEY,
never the secret) is kept for AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS. The next
presentation of that secret for that stored secret compares digests instead of asking the
store.

The digest is kept in two places: in the Django cache (shared by every process with
CACHE_URL=redis://), together with the moment its lifetime ends, and in a table in this
process, which answers without a round trip to the cache. A digest another process
verified is copied into the table until that same moment, so no process believes a
verification longer than the lifetime after the store made it. A digest in the Django cache
without its moment is not believed. The table holds at most LOCAL_ENTRIES digests.

The cache key and the digest both name the trusted secret exactly (the credential, its
storage, bcrypt hash or Vault path and version, and when the credential came to trust it),
and every request looks the credential's row up first, as it is now (credentials.rows),
so a rotation (a new hash or version), a deletion (no row), an expiry or a suspension
(checked on the row after verification) takes effect on the very next request in every
process, whatever any process still holds. Only successful verifications are kept: a wrong
secret always pays the store's full price, and cannot grow either place. Emptying the
Django cache does not empty the tables: what they hold still ends with its lifetime.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables

from .bounded import keep_bounded
from .metrics import VERIFIED_CACHE
from .trust import Trusted

logger = logging.getLogger(__name__)

KEY_SALT = "agentidp.credentials.verified"
KEY_PREFIX = "agentidp:verified:"
_HITS, _MISSES = VERIFIED_CACHE.labels("hit"), VERIFIED_CACHE.labels("miss")
#: How many digests this process keeps at most; a full table drops the expired, then the oldest eighth.
LOCAL_ENTRIES = 4096

# Digest -> the time.monotonic() moment it stops being believed. Looked up by the digest
# itself: it names the trusted secret and the secret, and without SECRET_KEY nobody can
# choose one, so the lookup's timing tells nothing. Readers take no lock; every change
# holds _local_lock.
_local: dict[str, float] = {}
_local_lock = threading.Lock()


def _cache_key(trusted: Trusted) -> str:
    return KEY_PREFIX + hashlib.sha256(trusted.name.encode()).hexdigest()


@sensitive_variables("secret")
def _digest(trusted: Trusted, secret: str) -> str:
    return salted_hmac(KEY_SALT, f"{trusted.name}\x1e{secret}", algorithm="sha256").hexdigest()


def _lifetime() -> int:
    return settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS


@sensitive_variables("secret")
def verified_recently(*, trusted: Trusted, secret: str) -> bool:
    """
    Return whether the store verified exactly this secret for this stored secret within the lifetime.

    This process's table answers first; only when it does not vouch for the secret is the
    Django cache asked, and a digest it vouches for is copied into the table until the
    moment the cache says it ends. A cache that cannot answer (Redis down) is a miss: the
    store is asked, as without a cache.
    """
    lifetime = _lifetime()
    if lifetime <= 0:
        return False
    digest = _digest(trusted, secret)
    until = _local.get(digest)
    if until is not None and time.monotonic() < until:
        _HITS.inc()
        return True
    try:
        kept = cache.get(_cache_key(trusted))
    except Exception as exc:
        logger.warning(
            "verified-secret cache unavailable credential_id=%s error=%s", trusted.credential_id, type(exc).__name__
        )
        return False
    left = _seconds_left(kept, digest)
    if left > 0:
        # Never past the lifetime from now, whatever the clock of the process that wrote it said.
        _keep_locally(digest, time.monotonic() + min(left, lifetime))
    (_HITS if left > 0 else _MISSES).inc()
    return left > 0


def _seconds_left(kept: object, digest: str) -> float:
    """
    Return how much longer the Django cache's value `kept` vouches for `digest`; 0 if it does not.

    remember_verified writes (digest, time.time() when it stops being believed). Anything
    else is no answer: a bare digest (written before that moment was kept) says nothing of
    when the store verified it, so it is not believed, and the store is asked once more.
    """
    if not (type(kept) is tuple and len(kept) == 2 and isinstance(kept[0], str) and isinstance(kept[1], float)):
        return 0
    left = kept[1] - time.time()
    return left if left > 0 and hmac.compare_digest(kept[0], digest) else 0


@sensitive_variables("secret")
def remember_verified(*, trusted: Trusted, secret: str) -> None:
    """Keep the digest of a secret that the store has just verified (call only after a match)."""
    lifetime = _lifetime()
    if lifetime <= 0:
        return
    digest = _digest(trusted, secret)
    _keep_locally(digest, time.monotonic() + lifetime)
    try:
        cache.set(_cache_key(trusted), (digest, time.time() + lifetime), lifetime)
    except Exception as exc:
        logger.warning(
            "verified-secret cache unavailable credential_id=%s error=%s", trusted.credential_id, type(exc).__name__
        )


def forget_all() -> None:
    """Empty this process's table of verified digests (the Django cache is left as it is)."""
    with _local_lock:
        _local.clear()


def _keep_locally(digest: str, until: float) -> None:
    now = time.monotonic()
    with _local_lock:
        keep_bounded(_local, digest, until, LOCAL_ENTRIES, stale=lambda end: end <= now)
