"""
Trust policies: which platform-issued JWTs (a Kubernetes service account's, a CI job's, a
SPIFFE workload's) an agent accepts as its identity in the jwt-bearer grant. Created and
deleted here, each with one audit event; never changed in place (delete and create anew).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from ..audit import audit_record
from ..errors import Conflict, TrustPolicyNotFound, ValidationFailed
from ..models import Agent, AuditEvent, TrustPolicy
from .keys import clean_key_location, clean_key_url
from .lifecycle import lock_agent

logger = logging.getLogger(__name__)

#: The longest issuer, audience, subject and subject pattern (the columns' length).
MAX_POLICY_TEXT = 512
#: A policy requires at most this many claims...
MAX_POLICY_CLAIMS = 20
#: ...with names this long...
MAX_CLAIM_NAME = 64
#: ...each one value or a list of at most this many allowed values.
MAX_CLAIM_VALUES = 50
#: Claims a policy may not name: the verifier checks these itself (signature, audience, times, replay),
#: and the subject is the policy's `subject` or `subjectPattern`.
RESERVED_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti", "sub"})
#: The longest maxTokenAgeSeconds (one day).
MAX_TOKEN_AGE_SECONDS = 86400
#: An agent has at most this many trust policies (each token request may look at all of an issuer's).
MAX_TRUST_POLICIES = 50


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={field: [message]})


def _clean_text(field: str, value: Any, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise _invalid(field, "Required.")
        return ""
    if not isinstance(value, str):
        raise _invalid(field, "Must be a string.")
    if not value.isprintable():
        raise _invalid(field, "Must not contain control characters.")
    if len(value) > MAX_POLICY_TEXT:
        raise _invalid(field, f"At most {MAX_POLICY_TEXT} characters.")
    return value


def _is_claim_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_POLICY_TEXT
    return isinstance(value, bool | int | float)


def clean_claims(claims: Any) -> dict[str, Any]:
    """Return the required claims checked: names to one value, or to a non-empty list of allowed values."""
    if claims is None:
        return {}
    if not isinstance(claims, dict):
        raise _invalid("claims", "Must be an object of claim names to values.")
    if len(claims) > MAX_POLICY_CLAIMS:
        raise _invalid("claims", f"At most {MAX_POLICY_CLAIMS} claims.")
    for name, value in claims.items():
        if not 1 <= len(name) <= MAX_CLAIM_NAME or not name.isprintable():
            raise _invalid("claims", f"A claim name is 1 to {MAX_CLAIM_NAME} printable characters.")
        if name in RESERVED_CLAIMS:
            raise _invalid(
                "claims",
                f"{name!r} cannot be required here: "
                + ("use subject or subjectPattern." if name == "sub" else "AgentIdP checks it itself."),
            )
        if isinstance(value, list):
            if not 1 <= len(value) <= MAX_CLAIM_VALUES or not all(_is_claim_scalar(item) for item in value):
                raise _invalid(
                    "claims",
                    f"{name!r}: a list of allowed values holds 1 to {MAX_CLAIM_VALUES} strings, numbers or booleans.",
                )
        elif not _is_claim_scalar(value):
            raise _invalid(
                "claims", f"{name!r}: a required value is a string (at most {MAX_POLICY_TEXT}), number or boolean."
            )
    return dict(claims)


def _clean_subject(subject: str, subject_pattern: str, claims: dict) -> None:
    if subject and subject_pattern:
        message = "Give subject or subjectPattern, not both."
        raise ValidationFailed(message, details={"subject": [message], "subjectPattern": [message]})
    if subject_pattern and not subject_pattern.strip("*"):
        raise _invalid("subjectPattern", "Needs at least one character besides '*'.")
    if not subject and not subject_pattern and not claims:
        # Every workload of the issuer (every repository on GitHub, every pod of a cluster) would be this agent.
        message = "A policy without subject or subjectPattern must require claims: it would accept any subject."
        raise ValidationFailed(message, details={"subject": [message]})


def _clean_max_age(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKEN_AGE_SECONDS:
        raise _invalid("maxTokenAgeSeconds", f"An integer from 1 to {MAX_TOKEN_AGE_SECONDS}.")
    return value


def trust_policy_create(
    *,
    acting: Any,
    agent: Agent,
    issuer: str,
    audience: str,
    subject: str = "",
    subject_pattern: str = "",
    claims: dict | None = None,
    jwks: dict | None = None,
    jwks_uri: str | None = None,
    max_token_age_seconds: int | None = None,
    description: str = "",
) -> TrustPolicy:
    """
    Let the agent be the identity of the platform tokens this policy describes.

    Checked first, each failure a ValidationFailed naming the field: issuer and audience
    (1 to 512 characters); subject or subjectPattern (`*` is any run of characters, and
    the pattern needs something else), or neither only when `claims` are required; claims
    (up to 20, never iss, aud, exp, nbf, iat, jti or sub); the keys, `jwks` (public keys
    only) or `jwks_uri`, at most one; without either, the issuer must be a URL the key
    fetcher accepts, since its discovery document gives the keys. Raises Conflict when the
    agent already has MAX_TRUST_POLICIES policies.

    Failure order: the policy and its audit event are written in one transaction, with
    the agent locked (AgentNotFound if it was deleted meanwhile); nothing else is touched.
    """
    issuer = _clean_text("issuer", issuer, required=True)
    audience = _clean_text("audience", audience, required=True)
    subject = _clean_text("subject", subject, required=False)
    subject_pattern = _clean_text("subjectPattern", subject_pattern, required=False)
    claims = clean_claims(claims)
    _clean_subject(subject, subject_pattern, claims)
    max_token_age_seconds = _clean_max_age(max_token_age_seconds)
    jwks, jwks_uri = clean_key_location(jwks=jwks, jwks_uri=jwks_uri, required=False)
    if jwks is None and jwks_uri is None:
        clean_key_url(issuer, field="issuer")
    if not isinstance(description, str):
        raise _invalid("description", "Must be a string.")

    policy = TrustPolicy(
        agent=agent,
        issuer=issuer,
        audience=audience,
        subject=subject,
        subject_pattern=subject_pattern,
        claims=claims,
        jwks=jwks,
        jwks_uri=jwks_uri,
        max_token_age_seconds=max_token_age_seconds,
        description=description,
    )
    with transaction.atomic():
        lock_agent(agent)
        if TrustPolicy.objects.filter(agent=agent).count() >= MAX_TRUST_POLICIES:
            raise Conflict(f"This agent already has {MAX_TRUST_POLICIES} trust policies, the most allowed.")
        policy.save(force_insert=True)
        audit_record(
            acting=acting,
            action=AuditEvent.Action.TRUST_POLICY_CREATED,
            agent_id=agent.id,
            details=_audit_details(policy),
        )
    logger.info("trust policy created trust_policy_id=%s agent_id=%s", policy.id, agent.id)
    return policy


def _audit_details(policy: TrustPolicy) -> dict[str, Any]:
    """What the trail says of a policy: its id, issuer, audience and subject (or pattern); never keys."""
    details: dict[str, Any] = {"trustPolicyId": str(policy.id), "issuer": policy.issuer, "audience": policy.audience}
    if policy.subject:
        details["subject"] = policy.subject
    elif policy.subject_pattern:
        details["subjectPattern"] = policy.subject_pattern
    else:
        details["claimNames"] = sorted(policy.claims)
    return details


def trust_policy_delete(*, acting: Any, policy: TrustPolicy) -> None:
    """
    Delete the trust policy: from the commit on, the token endpoint refuses the platform tokens it described.

    One transaction: the row and the audit event. Raises TrustPolicyNotFound if it was already deleted.
    """
    with transaction.atomic():
        locked = TrustPolicy.objects.select_for_update().filter(pk=policy.pk).first()
        if locked is None:
            raise TrustPolicyNotFound()
        details = _audit_details(locked)
        locked.delete()
        audit_record(
            acting=acting,
            action=AuditEvent.Action.TRUST_POLICY_DELETED,
            agent_id=locked.agent_id,
            details=details,
        )
    logger.info("trust policy deleted trust_policy_id=%s agent_id=%s", policy.pk, locked.agent_id)
