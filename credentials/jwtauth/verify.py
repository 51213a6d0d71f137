"""
Checking a signed JWT that someone else minted: a client's assertion (private_key_jwt) or
a platform's token (the jwt-bearer grant).

In two steps, because the signer's keys depend on who the token says it is from:
`read_unverified` takes the compact JWT apart and refuses, before any key is looked up,
what no key should be tried on (too long, nested, encrypted, an algorithm off the
allow-list, a header extension it would have to understand); `verify_signature` then
checks the signature with keys the caller chose, never with a key the token names
itself (`jku`, `x5u`, `jwk` and `x5c` are not read). `check_times` holds the one reading
of exp, nbf and iat.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

#: What each accepted algorithm needs of a key: its type and, for EC and OKP, its curve.
KEY_TYPES: dict[str, tuple[type, str | None]] = {
    "ES256": (ECKey, "P-256"),
    "ES384": (ECKey, "P-384"),
    "RS256": (RSAKey, None),
    "PS256": (RSAKey, None),
    "EdDSA": (OKPKey, "Ed25519"),
}
#: A token whose kid names no key is tried against at most this many keys of the right type.
MAX_KEYS_TRIED = 5
MAX_KID_LENGTH = 256


class InvalidAssertion(Exception):
    """The JWT is refused. `reason` is a short code for logs; never the token or a claim's value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def algorithms_allowed() -> list[str]:
    """The algorithms accepted, in the setting's order: never none, never an HMAC, only ones with a key type here."""
    return [alg for alg in settings.AGENTIDP_ASSERTION_ALGORITHMS if alg in KEY_TYPES]


@dataclasses.dataclass(frozen=True)
class Unverified:
    """A compact JWT taken apart, its signature not yet checked: nothing in it is to be believed yet."""

    token: str = dataclasses.field(repr=False)
    header: dict[str, Any]
    claims: dict[str, Any] = dataclasses.field(repr=False)

    @property
    def alg(self) -> str:
        return self.header["alg"]

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")


def _segment(value: str) -> Any:
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        return json.loads(raw)
    except (binascii.Error, ValueError, UnicodeError, RecursionError):
        raise InvalidAssertion("malformed") from None


def read_unverified(token: object) -> Unverified:
    """
    Take a compact JWS apart, or raise InvalidAssertion.

    Refused here: more than AGENTIDP_ASSERTION_MAX_BYTES; not three base64url segments (a
    JWE has five); a header that is not a JSON object; `alg` off the allow-list (`none`
    and the HMACs never are on it); `crit` (RFC 7515 section 4.1.11: no extension is
    understood here, so none may be required); `cty: JWT`, a nested token; a `kid` that is
    not a short string; claims that are not a JSON object.
    """
    if not isinstance(token, str) or not token:
        raise InvalidAssertion("malformed")
    if len(token) > settings.AGENTIDP_ASSERTION_MAX_BYTES:
        raise InvalidAssertion("too_long")
    if not token.isascii():
        raise InvalidAssertion("malformed")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidAssertion("not_a_signed_jwt")
    header = _segment(parts[0])
    if not isinstance(header, dict):
        raise InvalidAssertion("malformed")
    if header.get("alg") not in algorithms_allowed():
        raise InvalidAssertion("algorithm_refused")
    if "crit" in header:
        raise InvalidAssertion("critical_header")
    if isinstance(header.get("cty"), str) and header["cty"].upper() == "JWT":
        raise InvalidAssertion("nested_jwt")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH):
        raise InvalidAssertion("malformed")
    claims = _segment(parts[1])
    if not isinstance(claims, dict):
        raise InvalidAssertion("malformed")
    return Unverified(token=token, header=header, claims=claims)


def _fits(key: Any, alg: str) -> bool:
    """Whether `key` may verify `alg`: its type and curve, and its own `alg` and `use` if it names them."""
    key_class, curve = KEY_TYPES[alg]
    if not isinstance(key, key_class):
        return False
    if curve is not None and key.curve_name != curve:
        return False
    named_alg = key.get("alg") if hasattr(key, "get") else None
    if named_alg and named_alg != alg:
        return False
    use = key.get("use") if hasattr(key, "get") else None
    return use in (None, "sig")


def candidate_keys(keysets: Iterable[KeySet], unverified: Unverified) -> list[Any]:
    """The keys to try: those with the token's kid (if it names one), of a type its algorithm fits."""
    kid = unverified.kid
    found = []
    for keyset in keysets:
        for key in keyset.keys:
            if kid is not None and key.kid != kid:
                continue
            if _fits(key, unverified.alg):
                found.append(key)
    return found[:MAX_KEYS_TRIED]


def verify_signature(unverified: Unverified, keys: list[Any]) -> None:
    """
    Check the signature with one of `keys` (already chosen by candidate_keys), or raise InvalidAssertion.

    The header was checked by read_unverified, so only the signature is left: joserfc's own
    algorithm verifies it over the first two segments, as jws.deserialize_compact would
    after taking the token apart a second time.
    """
    if not keys:
        raise InvalidAssertion("unknown_key")
    signing_input, _, encoded = unverified.token.rpartition(".")
    try:
        signature = urlsafe_b64decode(encoded.encode("ascii"))
    except (binascii.Error, ValueError):
        raise InvalidAssertion("bad_signature") from None
    algorithm = JWSRegistry.algorithms[unverified.alg]  # on the allow-list: read_unverified refused the rest
    message = signing_input.encode("ascii")
    for key in keys:
        try:
            if algorithm.verify(message, signature, key):
                return
        except (JoseError, ValueError, TypeError):
            continue
    raise InvalidAssertion("bad_signature")


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        raise InvalidAssertion(f"{name}_not_a_number")
    return float(value)


def check_times(
    claims: dict[str, Any],
    *,
    now: float,
    max_lifetime: int | None = None,
    max_age: int | None = None,
    require_iat: bool = False,
) -> None:
    """
    Check exp (required), nbf and iat against `now`, with AGENTIDP_ASSERTION_LEEWAY_SECONDS
    of clock skew, or raise InvalidAssertion.

    `max_lifetime`: exp may lie at most this far after iat (or after now, without iat).
    `max_age`: iat is required and may lie at most this far in the past.
    """
    leeway = settings.AGENTIDP_ASSERTION_LEEWAY_SECONDS
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    if exp is None:
        raise InvalidAssertion("exp_missing")
    if exp <= now - leeway:
        raise InvalidAssertion("expired")
    if nbf is not None and nbf > now + leeway:
        raise InvalidAssertion("not_yet_valid")
    if iat is None and (require_iat or max_age is not None):
        raise InvalidAssertion("iat_missing")
    if iat is not None and iat > now + leeway:
        raise InvalidAssertion("issued_in_future")
    if max_lifetime is not None and exp - (iat if iat is not None else now) > max_lifetime:
        raise InvalidAssertion("lifetime_too_long")
    if max_age is not None and iat is not None and now - iat > max_age + leeway:
        raise InvalidAssertion("too_old")


def audiences(claims: dict[str, Any]) -> list[str]:
    """The token's aud as a list of strings, or raise InvalidAssertion for a missing or mistyped one."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        return aud
    raise InvalidAssertion("aud_invalid")


def string_claim(claims: dict[str, Any], name: str, *, max_length: int = 1024) -> str:
    """A claim that must be a non-empty string of reasonable length, or raise InvalidAssertion."""
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidAssertion(f"{name}_invalid")
    return value
