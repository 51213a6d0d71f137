"""
private_key_jwt (RFC 7523 section 2.2, OpenID Connect Core section 9): the client proves
itself with a JWT it signed with its private key, checked against the public keys of its
key credential. AgentIdP stores no secret for such a client.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django.urls import get_script_prefix, reverse
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from .. import selectors
from ..jwtauth.keysets import KeysUnavailable as FetchedKeysUnavailable
from ..jwtauth.sources import keys_from
from ..jwtauth.verify import (
    KEY_TYPES,
    InvalidAssertion,
    Unverified,
    audiences,
    candidate_keys,
    check_times,
    read_unverified,
    string_claim,
    verify_signature,
)
from ..models import Credential
from .base import (
    ClientAuthMethod,
    InvalidClient,
    KeysUnavailable,
    MalformedClientAuth,
    Presented,
    ReplayCheckUnavailable,
    StoreAllowed,
    VerificationWithheld,
    store_always_allowed,
)
from .secret import NO_CREDENTIAL_ID, note_use

logger = logging.getLogger(__name__)

JWT_BEARER_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Where a client assertion's jti is remembered until the assertion expires (in the shared cache).
JTI_CACHE_PREFIX = "agentidp:jti:"
MAX_JTI_LENGTH = 256


class PrivateKeyJWT(ClientAuthMethod):
    """`client_assertion_type` = jwt-bearer and `client_assertion` = a JWT signed by the client's key."""

    name = "private_key_jwt"
    parameters = ("client_assertion", "client_assertion_type")

    def claims(self, request: HttpRequest, params: dict[str, str]) -> bool:
        return "client_assertion" in params or "client_assertion_type" in params

    def read(self, request: HttpRequest, params: dict[str, str]) -> Presented:
        if params.get("client_assertion_type") != JWT_BEARER_ASSERTION_TYPE:
            raise MalformedClientAuth(f"client_assertion_type must be {JWT_BEARER_ASSERTION_TYPE}.")
        assertion = params.get("client_assertion")
        if assertion is None:
            raise MalformedClientAuth("Send client_assertion with client_assertion_type.")
        # Who the assertion says it is from; believed only once its signature is checked.
        try:
            unverified: Unverified | InvalidAssertion = read_unverified(assertion)
            subject = unverified.claims.get("sub")
        except InvalidAssertion as exc:
            unverified, subject = exc, None
        client_id = subject if isinstance(subject, str) else ""
        if "client_id" in params and params["client_id"] != client_id:
            raise MalformedClientAuth("client_id does not match the client assertion's subject.")
        return Presented(
            self, client_id, assertion, endpoint=settings.AGENTIDP_ISSUER + request.path, parsed=unverified
        )

    def authenticate(self, presented: Presented, *, store_allowed: StoreAllowed = store_always_allowed) -> Credential:
        return assertion_authenticate(presented, store_allowed=store_allowed)


def assertion_authenticate(presented: Presented, *, store_allowed: StoreAllowed = store_always_allowed) -> Credential:
    """
    Return the key credential whose keys signed the presented assertion, or raise InvalidClient.

    The assertion's `iss` and `sub` must both be the clientId, its `aud` must name AgentIdP
    (the issuer, the token endpoint or the endpoint called), `exp` must lie at most
    AGENTIDP_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS after `iat`, and its `jti` is accepted
    once until it expires, in every process that shares the cache. Keys come only from the
    credential (and its previous keys in their grace period), never from the assertion.

    An unknown clientId, or one of a secret credential, pays what a known one pays: one
    signature check and the query for previous keys. When `store_allowed()` says no (the client
    is throttled) an assertion that does not verify is VerificationWithheld, not
    InvalidClient, as for a secret the cache does not vouch for; one that verifies is heard,
    since it cost no store and proves the private key. Raises KeysUnavailable when the
    credential's jwksUri cannot be fetched and no keys of it are kept.
    """
    try:
        return _authenticate(presented)
    except InvalidClient:
        if not store_allowed():
            raise VerificationWithheld() from None
        raise


def _authenticate(presented: Presented) -> Credential:
    unverified = presented.parsed
    if not isinstance(unverified, Unverified | InvalidAssertion):  # presented by other means than read()
        try:
            unverified = read_unverified(presented.proof)
        except InvalidAssertion as exc:
            unverified = exc
    if isinstance(unverified, InvalidAssertion):
        raise InvalidClient(unverified.reason)
    credential = selectors.credential_find_by_client_id(client_id=presented.client_id)
    if credential is None or not credential.is_key:
        _pay_like_a_known_client(unverified)
        reason = "unknown_client" if credential is None else "secret_credential"
        raise InvalidClient(reason, credential=credential)
    try:
        _verify(credential, unverified)
        _check_claims(credential, unverified.claims, endpoint=presented.endpoint)
        _use_jti_once(credential, unverified.claims)
    except InvalidAssertion as exc:
        raise InvalidClient(exc.reason, credential=credential) from None
    except FetchedKeysUnavailable as exc:
        raise KeysUnavailable(exc.reason, retry_after=settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS) from None
    if credential.is_expired():
        raise InvalidClient("credential_expired", credential=credential)
    if not credential.agent.is_active:
        raise InvalidClient("agent_suspended", credential=credential)
    note_use(credential)
    return credential


def _verify(credential: Credential, unverified: Unverified) -> None:
    """Check the signature with the current keys, then (only if they fail) with previous keys in their grace period."""
    current = keys_from(jwks=credential.jwks, jwks_uri=credential.jwks_uri, kid=unverified.kid)
    keys = candidate_keys([current], unverified)
    if keys:
        try:
            verify_signature(unverified, keys)
            return
        except InvalidAssertion:
            pass
    previous = [
        keys_from(jwks=grace.jwks, jwks_uri=grace.jwks_uri, kid=unverified.kid)
        for grace in selectors.grace_keys_live(credential_id=credential.pk)
    ]
    verify_signature(unverified, candidate_keys(previous, unverified))


def _pay_like_a_known_client(unverified: Unverified) -> None:
    """An unknown clientId's share of the work: the previous-keys query and one signature check, which fails."""
    selectors.grace_keys_live(credential_id=NO_CREDENTIAL_ID)
    with contextlib.suppress(InvalidAssertion):
        verify_signature(unverified, [_dummy_key(unverified.alg)])


@functools.cache
def _dummy_key(alg: str) -> Any:
    """A public key of the kind `alg` needs, made once per process, that signed nothing."""
    key_class, curve = KEY_TYPES[alg]
    if key_class is RSAKey:
        generated = RSAKey.generate_key(2048)
    elif key_class is ECKey:
        generated = ECKey.generate_key(curve)
    else:
        generated = OKPKey.generate_key(curve)
    return KeySet([generated]).keys[0]


def accepted_audiences(endpoint: str) -> set[str]:
    """What an assertion's aud may name: AgentIdP's issuer, its token endpoint, or the endpoint it was sent to."""
    return {*_server_audiences(settings.AGENTIDP_ISSUER, get_script_prefix()), *([endpoint] if endpoint else [])}


@functools.lru_cache(maxsize=8)
def _server_audiences(issuer: str, script_prefix: str) -> frozenset[str]:
    return frozenset({issuer, issuer.rstrip("/") + "/", issuer + reverse("oauth:token")})


def _check_claims(credential: Credential, claims: dict[str, Any], *, endpoint: str) -> None:
    if string_claim(claims, "iss", max_length=64) != credential.client_id:
        raise InvalidAssertion("iss_mismatch")
    if string_claim(claims, "sub", max_length=64) != credential.client_id:
        raise InvalidAssertion("sub_mismatch")
    if not accepted_audiences(endpoint).intersection(audiences(claims)):
        raise InvalidAssertion("aud_mismatch")
    check_times(claims, now=time.time(), max_lifetime=settings.AGENTIDP_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS)
    string_claim(claims, "jti", max_length=MAX_JTI_LENGTH)


def _use_jti_once(credential: Credential, claims: dict[str, Any]) -> None:
    """
    Remember the assertion's jti until it expires; refuse one already remembered (a replay).

    In the Django cache, so that every process sharing it (Redis) sees the same jti once. A
    cache that cannot answer refuses the assertion (503, not invalid_client): a replay must
    not pass for it, and the client did nothing wrong.
    """
    digest = hashlib.sha256(f"{credential.client_id}\0{claims['jti']}".encode()).hexdigest()
    lifetime = int(claims["exp"] - time.time()) + settings.AGENTIDP_ASSERTION_LEEWAY_SECONDS + 1
    try:
        fresh = cache.add(JTI_CACHE_PREFIX + digest, 1, timeout=max(1, lifetime))
    except Exception as exc:
        logger.warning("assertion jti cache unavailable error=%s", type(exc).__name__)
        raise ReplayCheckUnavailable(type(exc).__name__, retry_after=5) from None
    if not fresh:
        raise InvalidAssertion("jti_replayed")
