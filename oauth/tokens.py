"""
Access tokens: RFC 9068 JWTs, issued, validated and revoked here.

A token is active while its signature and claims hold, it has not been revoked, its
credential still exists and has not expired (nor been quarantined since the token was
issued), and its agent is active. Deleting a
credential or suspending an agent therefore turns its tokens inactive at once.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact
from joserfc.jwt import JWTClaimsRegistry

from credentials import selectors
from credentials.audit import Actor, audit_record
from credentials.models import Agent, AuditEvent, Credential, TrustPolicy

from .keys import TOKEN_TYPE, get_signing_key, verification_keys
from .models import RevokedToken

logger = logging.getLogger(__name__)

# Claims are serialised as joserfc's jwt.encode serialises them: compact, non-ASCII as UTF-8.
_encode_claims = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# Our tokens stay under this, the largest (every scope an agent may hold, every resource a
# token may name) included; anything longer is not worth parsing.
MAX_TOKEN_LENGTH = 32768


@dataclasses.dataclass(frozen=True)
class IssuedAccessToken:
    access_token: str = dataclasses.field(repr=False)
    expires_in: int
    scope: str


@dataclasses.dataclass(frozen=True)
class ActiveToken:
    """
    A validated, active access token with the agent it speaks for, and the client it was
    issued to: a credential, or (for the jwt-bearer grant) a trust policy.
    """

    claims: dict[str, Any]
    agent: Agent
    scopes: tuple[str, ...]
    #: Where the token may be spent: AgentIdP's own audience, or the resources it names that its agent is still allowed.
    audiences: tuple[str, ...]
    credential: Credential | None = None
    trust_policy: TrustPolicy | None = None

    @property
    def is_for_agentidp(self) -> bool:
        """Whether the token was issued for AgentIdP itself (its management API), and for nothing else."""
        return self.claims["aud"] == settings.AGENTIDP_AUDIENCE


@dataclasses.dataclass(frozen=True)
class AgentPrincipal:
    """The agent behind a bearer token, as request.user of the management API."""

    token: ActiveToken
    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_active = True

    @property
    def agent(self) -> Agent:
        return self.token.agent

    def get_username(self) -> str:
        return self.agent.name

    def __str__(self) -> str:
        return self.agent.name

    def audit_actor(self) -> Actor:
        if self.token.credential is not None:
            return credential_actor(self.token.credential)
        return Actor(
            type=AuditEvent.ActorType.AGENT,
            id=str(self.agent.id),
            label=f"{self.agent.name} (trust policy {self.token.claims['client_id']})",
        )


def credential_actor(credential: Credential) -> Actor:
    return Actor(
        type=AuditEvent.ActorType.AGENT,
        id=str(credential.agent_id),
        label=f"{credential.agent.name} ({credential.client_id})",
    )


def access_token_issue(
    *, agent_id: uuid.UUID, client_id: str, scopes: list[str], resources: Sequence[str] = ()
) -> IssuedAccessToken:
    """
    Sign an RFC 9068 access token for the agent with the given scopes. `client_id` is the
    credential's clientId, or the trust policy's id for the jwt-bearer grant.

    Its audience is the resources (RFC 8707 section 2: a string for one, an array for
    several), or without them AgentIdP itself.
    """
    key = get_signing_key()
    now = int(time.time())
    ttl = settings.AGENTIDP_ACCESS_TOKEN_TTL
    scope = " ".join(scopes)
    claims = {
        "iss": settings.AGENTIDP_ISSUER,
        "sub": str(agent_id),
        "aud": audience_claim(resources),
        "exp": now + ttl,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "client_id": client_id,
        "scope": scope,
    }
    token = key.sign(_encode_claims(claims).encode())
    return IssuedAccessToken(access_token=token, expires_in=ttl, scope=scope)


def audience_claim(audiences: Sequence[str]) -> str | list[str]:
    """The `aud` of a token for these audiences (RFC 7519: a string for one, an array for several); none: AgentIdP."""
    if not audiences:
        return settings.AGENTIDP_AUDIENCE
    return audiences[0] if len(audiences) == 1 else list(audiences)


def _audiences(aud: Any) -> list[str] | None:
    """Return a token's audiences as a list, or None if `aud` is neither a string nor a non-empty array of them."""
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
        return None
    return audiences


def access_token_decode(token: str) -> dict[str, Any] | None:
    """Return the claims of a token AgentIdP signed and that has not expired, or None."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        # The header names the key; only AgentIdP's own keys, each with its own algorithm, are tried.
        key = verification_keys().get(extract_compact(token.encode("ascii")).headers().get("kid"))
        if key is None:
            return None
        decoded = jwt.decode(token, key.key, algorithms=[key.algorithm])
        if decoded.header.get("typ") != TOKEN_TYPE or decoded.header.get("kid") != key.kid:
            return None
        registry = JWTClaimsRegistry(
            iss={"essential": True, "value": settings.AGENTIDP_ISSUER},
            aud={"essential": True},
            exp={"essential": True},
            sub={"essential": True},
            jti={"essential": True},
            client_id={"essential": True},
        )
        registry.validate(decoded.claims)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    claims = decoded.claims
    if not isinstance(claims.get("scope", ""), str) or not isinstance(claims["client_id"], str):
        return None
    if not isinstance(claims["jti"], str) or len(claims["jti"]) > 64:
        return None
    if _audiences(claims["aud"]) is None:
        return None
    return claims


def access_token_validate(token: str) -> ActiveToken | None:
    """Return the active token, or None if it is invalid, expired, revoked, or its credential or agent is not."""
    claims = access_token_decode(token)
    if claims is None:
        return None
    if RevokedToken.objects.filter(jti=claims["jti"]).exists():
        return None
    credential = selectors.credential_find_by_client_id(client_id=claims["client_id"])
    policy = None
    if credential is not None:
        if str(credential.agent_id) != claims["sub"] or credential.is_expired():
            return None
        # Quarantined for a leaked secret: what was issued until then stays inactive, rotated or not.
        not_before = credential.tokens_not_before
        if not_before is not None and claims.get("iat", 0) < not_before.timestamp():
            return None
        agent = credential.agent
    else:
        # Issued by the jwt-bearer grant: active while its trust policy exists.
        policy = selectors.trust_policy_find(trust_policy_id=claims["client_id"])
        if policy is None or str(policy.agent_id) != claims["sub"]:
            return None
        agent = policy.agent
    if not agent.is_active:
        return None
    # What an agent may do, and where, can only shrink after its token was issued, never grow.
    granted = claims.get("scope", "").split()
    allowed = set(agent.scopes)
    if claims["aud"] == settings.AGENTIDP_AUDIENCE:
        audiences: tuple[str, ...] = (settings.AGENTIDP_AUDIENCE,)
    else:
        audiences = tuple(a for a in _audiences(claims["aud"]) or () if a in agent.allowed_resources)
        if not audiences:
            return None
    return ActiveToken(
        claims=claims,
        agent=agent,
        scopes=tuple(s for s in granted if s in allowed),
        audiences=audiences,
        credential=credential,
        trust_policy=policy,
    )


class RevocationRefused(Exception):
    """The requesting client may not revoke this token."""


def access_token_revoke(*, requester: Credential, token: str) -> bool:
    """
    Revoke `token` on behalf of the authenticated client `requester` (RFC 7009).

    The token's own client may revoke it, and so may an agent holding the admin scope.
    Returns whether a token was revoked now; an unknown, invalid or expired token is
    nothing to revoke (False). Raises RevocationRefused for another client's token.
    """
    claims = access_token_decode(token)
    if claims is None:
        return False
    is_admin = settings.AGENTIDP_ADMIN_SCOPE in requester.agent.scopes
    if claims["client_id"] != requester.client_id and not is_admin:
        raise RevocationRefused()
    now = timezone.now()
    with transaction.atomic():
        _, created = RevokedToken.objects.get_or_create(
            jti=claims["jti"],
            defaults={
                "client_id": claims["client_id"],
                "expires_at": datetime.datetime.fromtimestamp(claims["exp"], tz=datetime.UTC),
            },
        )
        if created:
            audit_record(
                acting=credential_actor(requester),
                action=AuditEvent.Action.TOKEN_REVOKED,
                agent_id=uuid.UUID(claims["sub"]),  # signed by AgentIdP: always an agentId
                details={"jti": claims["jti"], "clientId": claims["client_id"]},
            )
        # Entries for tokens past their expiry protect nothing any more.
        RevokedToken.objects.filter(expires_at__lt=now).delete()
    if created:
        logger.info("access token revoked jti=%s by credential_id=%s", claims["jti"], requester.id)
    return created
