"""
Remember, for a short while, which presented secrets a store has verified.

A bcrypt verification costs about a quarter of a second of CPU and a Vault verification a
round trip, and agents ask for tokens all day with the same secret. After a store says a
secret matches, a keyed digest of it (HMAC-SHA256 under a key derived from SECRET_KEY,
never the secret) is kept in the Django cache for AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS.
The next presentation of that secret for that stored secret compares digests instead of
asking the store.

The cache key names the trusted secret exactly (the credential, its storage, bcrypt hash or
Vault path and version, and when the credential came to trust it), and every request reads
the credential's row first, so a
rotation (a new hash or version), a deletion (no row), an expiry or a suspension (checked
on the row after verification) takes effect on the very next request in every process,
whatever any process still holds. Only successful verifications are kept: a wrong secret
always pays the store's full price, and cannot grow the cache.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from django.conf import settings
from django.core.cache import cache
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables

from .metrics import VERIFIED_CACHE
from .trust import Trusted

logger = logging.getLogger(__name__)

KEY_SALT = "agentidp.credentials.verified"
KEY_PREFIX = "agentidp:verified:"


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

    A cache that cannot answer (Redis down) is a miss: the store is asked, as without a cache.
    """
    if _lifetime() <= 0:
        return False
    try:
        kept = cache.get(_cache_key(trusted))
    except Exception as exc:
        logger.warning(
            "verified-secret cache unavailable credential_id=%s error=%s", trusted.credential_id, type(exc).__name__
        )
        return False
    hit = isinstance(kept, str) and hmac.compare_digest(kept, _digest(trusted, secret))
    VERIFIED_CACHE.labels("hit" if hit else "miss").inc()
    return hit


@sensitive_variables("secret")
def remember_verified(*, trusted: Trusted, secret: str) -> None:
    """Keep the digest of a secret that the store has just verified (call only after a match)."""
    if _lifetime() <= 0:
        return
    try:
        cache.set(_cache_key(trusted), _digest(trusted, secret), _lifetime())
    except Exception as exc:
        logger.warning(
            "verified-secret cache unavailable credential_id=%s error=%s", trusted.credential_id, type(exc).__name__
        )
