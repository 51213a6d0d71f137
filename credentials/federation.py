"""
Platform identities (RFC 7523 section 2.1, the jwt-bearer grant): a workload presents the
JWT its platform gave it (a Kubernetes service account's, a CI job's, a SPIFFE
workload's) and gets a token for the agent whose trust policy it matches. No secret is
stored for it.

A policy names the issuer, the audience AgentIdP expects, a subject or subject pattern,
required claims and the greatest token age. The token is checked against the keys of
every source the issuer's policies name (most issuers have one), then against each
policy; it must match the policies of exactly one agent.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
from typing import Any

from . import selectors
from .jwtauth.keysets import KeysUnavailable
from .jwtauth.sources import keys_from
from .jwtauth.verify import (
    InvalidAssertion,
    Unverified,
    audiences,
    candidate_keys,
    check_times,
    read_unverified,
    string_claim,
    verify_signature,
)
from .models import TrustPolicy

logger = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ISSUER_LENGTH = 512
MAX_SUBJECT_LENGTH = 1024


class InvalidGrant(Exception):
    """The platform token is refused. `reason` is for logs; `policy` the one it came closest to, if any."""

    def __init__(self, reason: str, *, policy: TrustPolicy | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.policy = policy


@dataclasses.dataclass(frozen=True)
class Claimed:
    """Who an unverified platform token says it is, for rate limits and logs (never believed)."""

    issuer: str
    subject: str

    @property
    def ref(self) -> str:
        return f"{self.issuer} {self.subject}"


@dataclasses.dataclass(frozen=True)
class PlatformToken:
    """A platform token as presented: the token taken apart (or why it could not be), and who it claims to be."""

    read: Unverified | InvalidAssertion = dataclasses.field(repr=False)
    claimed: Claimed


def presented(assertion: str) -> PlatformToken:
    """Take a platform token apart once, for the rate limits and logs (who it claims to be) and then its checks."""
    try:
        unverified: Unverified | InvalidAssertion = read_unverified(assertion)
    except InvalidAssertion as exc:
        return PlatformToken(exc, Claimed("", ""))
    issuer, subject = unverified.claims.get("iss"), unverified.claims.get("sub")
    claimed = Claimed(issuer if isinstance(issuer, str) else "", subject if isinstance(subject, str) else "")
    return PlatformToken(unverified, claimed)


def platform_identity(token: PlatformToken) -> TrustPolicy:
    """
    Return the trust policy a platform token matches, with its agent, or raise InvalidGrant.

    The token must be a signed JWT, by one of the keys of its issuer's policies, with `aud`
    naming a policy's audience, a `sub` the policy allows, every claim the policy requires,
    `exp` ahead, `nbf` passed and `iat` within the policy's greatest age. Every policy it
    matches must be one agent's (the oldest is used); policies of several agents is
    "ambiguous", refused and logged, since no one should get to choose. A suspended agent
    is refused. Raises KeysUnavailable (credentials.jwtauth.keysets) when the keys cannot be
    fetched at all and none are kept: not the workload's failure.
    """
    unverified = token.read
    if isinstance(unverified, InvalidAssertion):
        raise InvalidGrant(unverified.reason)
    try:
        issuer = string_claim(unverified.claims, "iss", max_length=MAX_ISSUER_LENGTH)
    except InvalidAssertion as exc:
        raise InvalidGrant(exc.reason) from None
    policies = selectors.trust_policies_for_issuer(issuer=issuer)
    if not policies:
        raise InvalidGrant("unknown_issuer")
    sources = {policy.pk: _source(policy) for policy in policies}
    signed_by = _verified_sources(unverified, policies, sources)
    now = time.time()
    matched: list[TrustPolicy] = []
    refusals: list[tuple[TrustPolicy, str]] = []
    # Never empty: _verified_sources raised unless some policy's keys made the signature.
    for policy in (policy for policy in policies if sources[policy.pk] in signed_by):
        try:
            _check_policy(policy, unverified.claims, now=now)
        except InvalidAssertion as exc:
            refusals.append((policy, exc.reason))
            continue
        matched.append(policy)
    if not matched:
        policy, reason = refusals[0]  # the oldest such policy's reason, for the log
        raise InvalidGrant(reason, policy=policy)
    agents = {policy.agent_id for policy in matched}
    if len(agents) > 1:
        logger.warning(
            "platform token matches policies of %s agents; refused issuer=%s policies=%s",
            len(agents),
            json.dumps(issuer[:128]),
            ",".join(str(policy.id) for policy in matched),
        )
        raise InvalidGrant("ambiguous", policy=matched[0])
    policy = matched[0]
    if not policy.agent.is_active:
        raise InvalidGrant("agent_suspended", policy=policy)
    return policy


def _source(policy: TrustPolicy) -> str:
    """A policy's key source as a hashable name: its own JWKS, its jwksUri, or its issuer's discovery."""
    if policy.jwks is not None:
        return f"jwks:{policy.pk}"
    if policy.jwks_uri:
        return "uri:" + policy.jwks_uri
    return "issuer:" + policy.issuer


def _verified_sources(unverified: Unverified, policies: list[TrustPolicy], sources: dict) -> set[str]:
    """The key sources (of these policies) one of whose keys made the token's signature; InvalidGrant if none."""
    signed_by: set[str] = set()
    unavailable: KeysUnavailable | None = None
    reason = "unknown_key"
    seen: set[str] = set()
    for policy in policies:
        source = sources[policy.pk]
        if source in seen:
            continue
        seen.add(source)
        try:
            keyset = keys_from(jwks=policy.jwks, jwks_uri=policy.jwks_uri, issuer=policy.issuer, kid=unverified.kid)
            verify_signature(unverified, candidate_keys([keyset], unverified))
        except KeysUnavailable as exc:
            unavailable = unavailable or exc
            continue
        except InvalidAssertion as exc:
            reason = exc.reason if exc.reason != "unknown_key" else reason
            continue
        signed_by.add(source)
    if signed_by:
        return signed_by
    if unavailable is not None:
        raise unavailable
    raise InvalidGrant(reason)


def _check_policy(policy: TrustPolicy, claims: dict[str, Any], *, now: float) -> None:
    """Raise InvalidAssertion unless the (signed) claims satisfy the policy."""
    if policy.audience not in audiences(claims):
        raise InvalidAssertion("aud_mismatch")
    check_times(claims, now=now, max_age=policy.max_token_age_seconds)
    if policy.subject or policy.subject_pattern:
        subject = string_claim(claims, "sub", max_length=MAX_SUBJECT_LENGTH)
        if policy.subject and subject != policy.subject:
            raise InvalidAssertion("sub_mismatch")
        if policy.subject_pattern and not subject_pattern_regex(policy.subject_pattern).fullmatch(subject):
            raise InvalidAssertion("sub_mismatch")
    for name, required in (policy.claims or {}).items():
        if not claim_matches(claims.get(name), required):
            raise InvalidAssertion("claim_mismatch")


@functools.lru_cache(maxsize=1024)
def subject_pattern_regex(pattern: str) -> re.Pattern[str]:
    """
    The regex of a subject pattern: `*` is any run of characters (none included), everything
    else is itself. Matched against the whole subject, so `repo:org/app:*` does not let in
    `repo:org/app-evil:...`: the pattern's `:` after `app` must be there.
    """
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def claim_matches(value: object, required: object) -> bool:
    """
    Whether a token's claim satisfies a policy's requirement: equal to the required value,
    or to one of a list of allowed values. Types count: the string "true" is not true, 1 is
    not "1", and a claim that is a list or an object never matches a scalar requirement.
    """
    allowed = required if isinstance(required, list) else [required]
    if isinstance(value, list | dict) or value is None:
        return False
    return any(type(value) is type(option) and value == option for option in allowed)
