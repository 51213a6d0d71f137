"""
Public keys that verify signed JWTs: a JWK Set given inline, or fetched from a client's
jwksUri or an issuer's OpenID discovery document, with a per-process cache.

Which keys are accepted is decided here once, for inline and fetched sets alike: EC P-256 and
P-384, RSA of 2048 to 8192 bits, Ed25519; signature keys only; never a private or symmetric
key. The cache keeps an issuer from being asked on every request (or, through made-up kids,
as often as an attacker likes), and keeps the last good keys verifying while it is down.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import logging
import threading
import time

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from joserfc.jwk import JWKRegistry, KeySet

from ..metrics import KEY_CACHE
from .fetch import FetchError, FetchRefused, check_key_url, fetch_json

logger = logging.getLogger(__name__)

MAX_KEYS = 10
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192  # a larger modulus only makes every verification slower
#: The `use` values of a key that verifies signatures: RFC 7517's "sig", and the one a SPIFFE
#: trust bundle gives its JWT-SVID signing keys (its "x509-svid" keys are not for JWTs).
SIGNATURE_USES = ("sig", "jwt-svid")
#: The public members each key type keeps; everything else but kid, use and alg is dropped.
_PUBLIC_MEMBERS = {"EC": ("crv", "x", "y"), "RSA": ("n", "e"), "OKP": ("crv", "x")}
_CURVES = {"EC": ("P-256", "P-384"), "OKP": ("Ed25519",)}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
#: The algorithms a key may name for itself (alg), by key type and curve.
_ALGORITHMS = {
    "P-256": ("ES256",),
    "P-384": ("ES384",),
    "Ed25519": ("EdDSA", "Ed25519"),
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
}


class KeysUnavailable(Exception):
    """No good keys for a source: never fetched, or the last good ones are too old. `reason` is safe for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class RemoteKeys:
    """
    Where a party's public keys are fetched from: a JWK Set URL, or an issuer whose OpenID
    discovery document (RFC 8414 / OpenID Connect Discovery 1.0) names one. Exactly one is set.
    """

    jwks_uri: str | None = None
    issuer: str | None = None

    def __post_init__(self) -> None:
        if (self.jwks_uri is None) == (self.issuer is None):
            raise ValueError("Name exactly one of jwks_uri and issuer.")

    @property
    def url(self) -> str:
        """The URL configured (for logs)."""
        return self.jwks_uri or self.issuer or ""


# --- What a JWK Set may hold --------------------------------------------------------------------------


def public_jwks_check(jwks: object) -> dict:
    """
    Return the JWK Set to store for a client, normalised to public members, kid, use and alg;
    raise ValueError naming the key and what is wrong with it (never its material).

    For the management API, so the refusal is strict where keyset_from_jwks, reading what an
    issuer publishes, skips what it cannot use.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError('The JWKS must be a JSON object with a "keys" array.')
    keys = jwks["keys"]
    if not 1 <= len(keys) <= MAX_KEYS:
        raise ValueError(f"The JWKS must hold from 1 to {MAX_KEYS} keys.")
    normalised = [_checked_key(key, where=f"keys[{index}]") for index, key in enumerate(keys)]
    kids = [key["kid"] for key in normalised if "kid" in key]
    if len(kids) != len(set(kids)):
        raise ValueError("The JWKS's keys must have different kids.")
    return {"keys": normalised}


def _checked_key(key: object, *, where: str) -> dict:
    """The key's public members, kid, use and alg, once it is a public signature key AgentIdP accepts."""
    if not isinstance(key, dict):
        raise ValueError(f"{where} must be a JSON object.")
    kty = key.get("kty")
    if kty not in _PUBLIC_MEMBERS:
        raise ValueError(f"{where}: the key type (kty) must be EC, RSA or OKP.")
    if any(member in key for member in _PRIVATE_MEMBERS):
        raise ValueError(f"{where} holds private key material: register the public key only.")
    members = _PUBLIC_MEMBERS[kty]
    if not all(isinstance(key.get(member), str) for member in members):
        raise ValueError(f"{where}: a {kty} key needs {', '.join(members)}.")
    family = _family(kty, key, where=where)
    for name in ("kid", "use", "alg"):
        if name in key and not (isinstance(key[name], str) and 0 < len(key[name]) <= 256):
            raise ValueError(f"{where}: {name} must be a non-empty string.")
    if key.get("use", "sig") not in SIGNATURE_USES:
        raise ValueError(f'{where}: the key must be for signatures (use "sig", or a SPIFFE bundle\'s "jwt-svid").')
    if "alg" in key and key["alg"] not in _ALGORITHMS[family]:
        raise ValueError(f"{where}: alg must be one of {', '.join(_ALGORITHMS[family])} for this key.")
    public = {name: key[name] for name in ("kty", *members, "kid", "use", "alg") if name in key}
    if "use" in public:
        public["use"] = "sig"  # the one signature use the key library knows
    try:
        JWKRegistry.import_key(public)
    except Exception:
        raise ValueError(f"{where} cannot be read as a {kty} public key.") from None
    return public


def _family(kty: str, key: dict, *, where: str) -> str:
    """The curve of an EC or OKP key, or "RSA" for an RSA key of an accepted size."""
    if kty == "RSA":
        bits = _bits(key["n"])
        if bits is None:
            raise ValueError(f"{where}: n must be base64url.")
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            raise ValueError(f"{where}: an RSA key must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits.")
        return "RSA"
    if key["crv"] not in _CURVES[kty]:
        raise ValueError(f"{where}: the curve (crv) of an {kty} key must be {' or '.join(_CURVES[kty])}.")
    return key["crv"]


def _bits(value: str) -> int | None:
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big").bit_length()
    except (binascii.Error, ValueError):
        return None


def keyset_from_jwks(jwks: dict) -> KeySet:
    """
    Return the keys of a JWK Set that AgentIdP accepts (see public_jwks_check), skipping the
    others: an issuer's set may also hold encryption keys or types we do not use.

    Parsed once per distinct set (by its canonical JSON), since inline sets arrive with every
    request. Raises ValueError if `jwks` is not a JWK Set at all.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError('A JWK Set is a JSON object with a "keys" array.')
    return _keyset_from_canonical(json.dumps(jwks, sort_keys=True, separators=(",", ":")))


@functools.lru_cache(maxsize=256)
def _keyset_from_canonical(canonical: str) -> KeySet:
    usable = []
    for index, key in enumerate(json.loads(canonical)["keys"]):
        try:
            usable.append(JWKRegistry.import_key(_checked_key(key, where=f"keys[{index}]")))
        except ValueError:
            continue
    return KeySet(usable)


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


# --- Remote keys, cached per process ---------------------------------------------------------------------


def now() -> float:
    """The cache's clock (time.monotonic); the tests move it."""
    return time.monotonic()


@dataclasses.dataclass(frozen=True)
class _Fetched:
    """What the cache knows of a source: its last good keys and when they came, and when it was last asked."""

    keys: KeySet | None = None
    fetched_at: float = 0.0
    asked_at: float | None = None
    failure: str | None = None


class _Source:
    """One source's cache entry: a snapshot replaced whole (read without the lock), and the lock fetchers take."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = _Fetched()


_sources: dict[RemoteKeys, _Source] = {}
_sources_lock = threading.Lock()


def remote_keyset(source: RemoteKeys, *, kid: str | None) -> KeySet:
    """
    Return the keys of `source`: cached ones while younger than AGENTIDP_KEY_CACHE_SECONDS
    and holding `kid` (when given), fetched ones otherwise.

    A source is asked at most once per AGENTIDP_KEY_REFRESH_MIN_SECONDS, whether for a kid
    it may have rotated in, after expiry, or after a failure; in between, the cached keys are
    returned even if `kid` is not among them (the caller refuses the token). While fetching
    fails, the last good keys serve until AGENTIDP_KEY_STALE_SECONDS after they came. Raises
    KeysUnavailable when there are none that young.
    """
    entry = _source_entry(source)
    state = entry.state
    if _fresh(state, kid):
        KEY_CACHE.labels("hit").inc()
        return state.keys  # type: ignore[return-value]
    if not entry.lock.acquire(blocking=False):
        # Another request is fetching: answer with what serves now rather than queue behind it.
        if _usable(state, kid):
            return state.keys  # type: ignore[return-value]
        entry.lock.acquire()
    try:
        return _refresh(source, entry, kid)
    finally:
        entry.lock.release()


def _source_entry(source: RemoteKeys) -> _Source:
    with _sources_lock:
        return _sources.setdefault(source, _Source())


def _fresh(state: _Fetched, kid: str | None) -> bool:
    if state.keys is None or now() - state.fetched_at >= settings.AGENTIDP_KEY_CACHE_SECONDS:
        return False
    return kid is None or _has_kid(state.keys, kid)


def _usable(state: _Fetched, kid: str | None) -> bool:
    return _fresh(state, kid) or (
        state.keys is not None
        and now() - state.fetched_at < settings.AGENTIDP_KEY_STALE_SECONDS
        and (kid is None or _has_kid(state.keys, kid))
    )


def _refresh(source: RemoteKeys, entry: _Source, kid: str | None) -> KeySet:
    """Under the source's lock: fetch unless it was asked too recently, and answer with the best keys there are."""
    state = entry.state
    if _fresh(state, kid):
        return state.keys  # type: ignore[return-value]  (fetched while this request waited)
    moment = now()
    if state.asked_at is None or moment - state.asked_at >= settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS:
        try:
            keys = _fetch_keys(source)
        except FetchError as exc:
            KEY_CACHE.labels("failed").inc()
            state = dataclasses.replace(state, asked_at=moment, failure=exc.reason)
            entry.state = state
            _warn(source, state, exc.reason, moment)
        else:
            KEY_CACHE.labels("fetched").inc()
            entry.state = _Fetched(keys=keys, fetched_at=moment, asked_at=moment)
            return keys
    return _best(state, moment)


def _best(state: _Fetched, moment: float) -> KeySet:
    """The cached keys if not older than AGENTIDP_KEY_STALE_SECONDS; KeysUnavailable otherwise."""
    if state.keys is not None and moment - state.fetched_at < settings.AGENTIDP_KEY_STALE_SECONDS:
        return state.keys
    raise KeysUnavailable(state.failure or "not_fetched")


def _warn(source: RemoteKeys, state: _Fetched, reason: str, moment: float) -> None:
    if state.keys is not None and moment - state.fetched_at < settings.AGENTIDP_KEY_STALE_SECONDS:
        logger.warning(
            "Keys from %s could not be fetched (%s); using the keys fetched %ds ago",
            source.url,
            reason,
            moment - state.fetched_at,
        )
    else:
        logger.warning("Keys from %s could not be fetched (%s); no good keys to use", source.url, reason)


def _fetch_keys(source: RemoteKeys) -> KeySet:
    """Fetch the source's JWK Set (through its issuer's discovery document if need be) and keep the usable keys."""
    jwks_uri = source.jwks_uri or _discovered_jwks_uri(source.issuer or "")
    try:
        keys = keyset_from_jwks(fetch_json(jwks_uri))
    except ValueError:
        raise FetchError("not_jwks", "the document is not a JWK Set") from None
    if not keys.keys:
        raise FetchError("no_usable_keys", "the JWK Set holds no key AgentIdP accepts")
    return keys


def _discovered_jwks_uri(issuer: str) -> str:
    """
    The jwks_uri of the issuer's discovery document, which must name the issuer exactly
    (OpenID Connect Discovery 1.0 section 4.3): otherwise one issuer's keys could vouch for another.
    """
    document = fetch_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
    if document.get("issuer") != issuer:
        raise FetchError("issuer_mismatch", "the discovery document names another issuer")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise FetchError("no_jwks_uri", "the discovery document names no jwks_uri")
    try:
        return check_key_url(jwks_uri)
    except ValueError as exc:
        raise FetchRefused("refused_jwks_uri", str(exc)) from None


def forget_keys() -> None:
    """Forget every cached and parsed key set (the tests start from nothing)."""
    with _sources_lock:
        _sources.clear()
    _keyset_from_canonical.cache_clear()


@receiver(setting_changed)
def _forget_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting.startswith("AGENTIDP_KEY_"):
        forget_keys()
