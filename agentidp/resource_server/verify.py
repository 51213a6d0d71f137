"""
Verify an AgentIdP access token where it is spent: locally, by its signature and claims
(RFC 9068), or by asking AgentIdP (RFC 7662 introspection).

Framework-free: the Django, DRF and MCP adapters beside this module call it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from .fetch import FetchFailed, check_url, fetch_json

TOKEN_TYPE = "at+jwt"  # noqa: S105 (RFC 9068's JWT type)
MAX_TOKEN_LENGTH = 32768
#: The algorithms a key may name; a key without `alg` implies the one its type allows.
ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
_IMPLIED_ALGORITHM = {
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("OKP", "Ed25519"): "EdDSA",
    ("RSA", None): "RS256",
}


class TokenRejected(Exception):
    """The request's token is refused: its `error` (RFC 6750 section 3.1), status and a description safe to show."""

    error = "invalid_token"
    status = 401

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class InvalidToken(TokenRejected):
    """No token, or one that is malformed, forged, expired, revoked or for another resource."""


class InsufficientScope(TokenRejected):
    """A valid token without a scope the request needs."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, required: Iterable[str]) -> None:
        self.required = tuple(required)
        super().__init__("The access token lacks a scope this request needs: " + " ".join(self.required) + ".")


class VerifierUnavailable(Exception):
    """The token cannot be judged now: the keys or the introspection endpoint cannot be reached (answer 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class VerifiedToken:
    """A valid access token: whom it speaks for, which client holds it, what it allows, and where."""

    subject: str
    client_id: str
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    expires_at: int
    issued_at: int | None
    jti: str
    claims: dict[str, Any] = dataclasses.field(repr=False)

    def has_scopes(self, required: Iterable[str]) -> bool:
        return set(required) <= self.scopes


@dataclasses.dataclass
class Settings:
    """
    What a resource server needs to verify AgentIdP's tokens.

    `issuer`: AgentIdP's issuer URL (its metadata's `issuer`). `resource`: this server's own
    identifier, the RFC 8707 resource agents ask tokens for; a token is accepted only if its
    `aud` names it (or one of `audiences`, for a server known by several). `jwks_uri`:
    defaults to the one in the issuer's metadata (RFC 8414). `leeway_seconds`: clock skew
    allowed on `exp`, `nbf` and `iat`. `ca_file`: the CA certificates (PEM) that AgentIdP's
    certificate is verified against, if not the system's. `allow_http`: plain http URLs, for
    development only.
    """

    issuer: str
    resource: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str | None = None
    scopes_supported: tuple[str, ...] = ()
    leeway_seconds: int = 30
    keys_ttl_seconds: int = 300
    refresh_min_interval_seconds: float = 10.0
    keys_stale_seconds: int = 24 * 3600
    timeout_seconds: float = 5.0
    max_document_bytes: int = 256 * 1024
    ca_file: str | None = None
    allow_http: bool = False

    def __post_init__(self) -> None:
        self.issuer = self.issuer.rstrip("/")
        check_url(self.issuer, allow_http=self.allow_http)
        if self.jwks_uri:
            check_url(self.jwks_uri, allow_http=self.allow_http)
        if not self.resource:
            raise ValueError("resource is this server's own identifier (RFC 8707): it cannot be empty.")
        self.audiences = tuple(dict.fromkeys((self.resource, *self.audiences)))
        self.scopes_supported = tuple(self.scopes_supported)

    def fetch(self, url: str, **kwargs: Any) -> dict[str, Any]:
        return fetch_json(
            url,
            allow_http=self.allow_http,
            timeout=self.timeout_seconds,
            max_bytes=self.max_document_bytes,
            ca_file=self.ca_file,
            **kwargs,
        )

    @property
    def metadata_url(self) -> str:
        return self.issuer + "/.well-known/oauth-authorization-server"


def server_metadata(settings: Settings) -> dict[str, Any]:
    """Fetch the issuer's RFC 8414 metadata, checking it speaks for that issuer (section 3.3)."""
    metadata = settings.fetch(settings.metadata_url)
    if metadata.get("issuer") != settings.issuer:
        raise FetchFailed("issuer_mismatch", settings.metadata_url)
    return metadata


class KeyCache:
    """
    AgentIdP's public keys, fetched and kept for `keys_ttl_seconds`.

    A token signed by a key not yet seen (AgentIdP rolled its key over) refetches the set,
    at most once per `refresh_min_interval_seconds`, so forged key ids cannot make this server
    hammer AgentIdP. While AgentIdP cannot be reached, the last good keys keep verifying for
    `keys_stale_seconds`. Thread-safe; one fetch at a time.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[Any, str]] = {}
        self._fetched_at: float | None = None  # when the keys above were fetched
        self._tried_at: float | None = None  # when a fetch was last tried, good or not
        self._jwks_uri = settings.jwks_uri
        self.fetches = 0

    def key(self, kid: str) -> tuple[Any, str] | None:
        """Return the key with this id and its algorithm, or None if AgentIdP publishes no such key."""
        now = self._clock()
        found = self._keys.get(kid)
        if found is not None and self._fresh(now):
            return found
        with self._lock:
            found = self._keys.get(kid)
            if found is not None and self._fresh(now):
                return found
            if self._tried_at is None or now - self._tried_at >= self.settings.refresh_min_interval_seconds:
                self._refresh(now)
            found = self._keys.get(kid)
            if found is not None and self._usable(now):
                return found
            if not self._usable(now):
                raise VerifierUnavailable("keys_unavailable")
            return None

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.settings.keys_ttl_seconds

    def _usable(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.settings.keys_stale_seconds

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        try:
            if self._jwks_uri is None:
                self._jwks_uri = check_url(
                    str(server_metadata(self.settings).get("jwks_uri", "")), allow_http=self.settings.allow_http
                )
            self.fetches += 1
            document = self.settings.fetch(self._jwks_uri)
            keys = _usable_keys(document)
        except (FetchFailed, ValueError):
            return  # the last good keys stay, until keys_stale_seconds
        self._keys, self._fetched_at = keys, now


def _usable_keys(document: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """The signature keys of a JWK Set by key id, each with its one algorithm; others are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("not a JWK Set")
    keys: dict[str, tuple[Any, str]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
            continue
        algorithm = entry.get("alg") or _IMPLIED_ALGORITHM.get((entry.get("kty"), entry.get("crv")))
        if algorithm not in ALGORITHMS:
            continue
        try:
            key = KeySet.import_key_set({"keys": [entry]}).keys[0]
        except (JoseError, ValueError, TypeError, KeyError):
            continue
        if key.is_private:
            continue
        keys.setdefault(entry["kid"], (key, algorithm))
    return keys


class TokenVerifier:
    """Verify AgentIdP access tokens locally: signature by AgentIdP's published keys, then the claims."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.keys = KeyCache(settings)
        self._clock = clock

    def verify(self, token: str, *, scopes: Iterable[str] = ()) -> VerifiedToken:
        """
        Return the verified token; raise InvalidToken, InsufficientScope (lacking one of
        `scopes`) or VerifierUnavailable (no keys to judge it by).
        """
        jws = _CompactJWS.read(token)
        kid = jws.header.get("kid")
        if not isinstance(kid, str) or jws.header.get("typ") != TOKEN_TYPE or "crit" in jws.header:
            raise InvalidToken("The access token is not an AgentIdP access token (RFC 9068).")
        found = self.keys.key(kid)
        # The algorithm is the key's, never the token's choice: a header naming another is refused.
        if found is None or found[1] != jws.header.get("alg") or not jws.verify(*found):
            raise InvalidToken("The access token's signature cannot be verified.")
        verified = verified_claims(jws.claims, self.settings, now=self._clock())
        return require_scopes(verified, scopes)


@dataclasses.dataclass(frozen=True)
class _CompactJWS:
    """A compact JWS taken apart once: its header and claims (unverified until verify()), and what was signed."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @classmethod
    def read(cls, token: object) -> _CompactJWS:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise InvalidToken("The access token is malformed.")
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise InvalidToken("The access token is malformed.")
        try:
            header, claims = (json.loads(_b64decode(part)) for part in parts[:2])
            signature = _b64decode(parts[2])
        except (ValueError, RecursionError):
            raise InvalidToken("The access token is malformed.") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise InvalidToken("The access token is malformed.")
        return cls(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)

    def verify(self, key: Any, algorithm: str) -> bool:
        # joserfc's algorithm itself, over the segments already read: no second parse, and no
        # per-call registry checks (which warn about EdDSA on every request).
        try:
            return bool(JWSRegistry.algorithms[algorithm].verify(self.signing_input, self.signature, key))
        except (JoseError, ValueError, TypeError):
            return False


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class IntrospectionVerifier:
    """
    Verify AgentIdP access tokens by asking AgentIdP (RFC 7662), for resource servers that
    must see a revocation, a suspended agent or a deleted credential at once.

    The resource server authenticates as an AgentIdP client of its own (client_secret_basic).
    Every request costs a round trip to AgentIdP; nothing is cached.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        client_secret: str,
        introspection_endpoint: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._authorization = "Basic " + base64.b64encode(
            f"{_form_encode(client_id)}:{_form_encode(client_secret)}".encode()
        ).decode("ascii")
        self._endpoint = introspection_endpoint
        if introspection_endpoint:
            check_url(introspection_endpoint, allow_http=settings.allow_http)
        self._clock = clock

    def __repr__(self) -> str:
        return f"IntrospectionVerifier(issuer={self.settings.issuer!r}, resource={self.settings.resource!r})"

    def verify(self, token: str, *, scopes: Iterable[str] = ()) -> VerifiedToken:
        _CompactJWS.read(token)  # refuse what is not even a JWT without a round trip
        try:
            if self._endpoint is None:
                self._endpoint = check_url(
                    str(server_metadata(self.settings).get("introspection_endpoint", "")),
                    allow_http=self.settings.allow_http,
                )
            answer = self.settings.fetch(
                self._endpoint,
                form={"token": token, "token_type_hint": "access_token"},
                headers={"Authorization": self._authorization},
            )
        except (FetchFailed, ValueError) as exc:
            raise VerifierUnavailable(getattr(exc, "reason", "introspection_unavailable")) from None
        if answer.get("active") is not True:
            raise InvalidToken("The access token is not active.")
        verified = verified_claims(answer, self.settings, now=self._clock())
        return require_scopes(verified, scopes)


def _form_encode(value: str) -> str:
    return urllib.parse.quote_plus(value)  # RFC 6749 section 2.3.1: form-encoded before base64


def verified_claims(claims: dict[str, Any], settings: Settings, *, now: float) -> VerifiedToken:
    """
    Check a token's claims (RFC 9068 section 4): the issuer, this server among its
    audiences, its times within the leeway, and the claims every AgentIdP token carries.
    """
    leeway = settings.leeway_seconds
    if claims.get("iss") != settings.issuer:
        raise InvalidToken("The access token was issued by another server.")
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    if not any(isinstance(a, str) and a in settings.audiences for a in audiences):
        raise InvalidToken("The access token is for another resource.")
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if not _is_time(exp) or now > exp + leeway:
        raise InvalidToken("The access token has expired.")
    if (nbf is not None and (not _is_time(nbf) or now < nbf - leeway)) or (
        iat is not None and (not _is_time(iat) or now < iat - leeway)
    ):
        raise InvalidToken("The access token is not valid yet.")
    subject, client_id, jti, scope = (
        claims.get("sub"),
        claims.get("client_id"),
        claims.get("jti"),
        claims.get("scope", ""),
    )
    if not all(isinstance(value, str) for value in (subject, client_id, jti, scope)):
        raise InvalidToken("The access token lacks a claim every AgentIdP access token carries.")
    return VerifiedToken(
        subject=subject,
        client_id=client_id,
        scopes=frozenset(scope.split()),
        audiences=tuple(a for a in audiences if isinstance(a, str)),
        expires_at=int(exp),
        issued_at=int(iat) if iat is not None else None,
        jti=jti,
        claims=claims,
    )


def require_scopes(token: VerifiedToken, scopes: Iterable[str]) -> VerifiedToken:
    required = tuple(scopes)
    if not token.has_scopes(required):
        raise InsufficientScope(required)
    return token


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
