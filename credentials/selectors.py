"""Reads of agents and credentials that views, commands and the token endpoint share."""

from __future__ import annotations

import re
import uuid

from django.db.models import Q, QuerySet
from django.utils import timezone

from credentials.errors import AgentNotFound, CredentialNotFound, TrustPolicyNotFound

from .models import Agent, Credential, GraceKeys, GraceSecret, TrustPolicy
from .queries import CompiledQuery
from .rows import KeptCredentials, token_column

# Longer than any client id AgentIdP makes; anything longer is not worth a query.
MAX_CLIENT_ID_LENGTH = 64


# The one spelling of an id AgentIdP hands out (any case): not urn:uuid:, braces or bare hex.
_UUID_FORM = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _as_uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or not _UUID_FORM.fullmatch(value):
        return None
    return uuid.UUID(value)


def agent_list(*, status: str | None = None, search: str | None = None) -> QuerySet[Agent]:
    agents = Agent.objects.all()
    if status:
        agents = agents.filter(status=status)
    if search:
        agents = agents.filter(
            Q(name__icontains=search) | Q(description__icontains=search) | Q(owner__icontains=search)
        )
    return agents


def agent_get(*, agent_id: object) -> Agent:
    """Return the agent, or raise AgentNotFound (also for an id that is not a UUID)."""
    pk = _as_uuid(agent_id)
    if pk is None:
        raise AgentNotFound()
    try:
        return Agent.objects.get(pk=pk)
    except Agent.DoesNotExist:
        raise AgentNotFound() from None


def credential_list(*, agent: Agent) -> QuerySet[Credential]:
    return Credential.objects.filter(agent=agent).select_related("agent")


def credential_get(*, agent: Agent, credential_id: object) -> Credential:
    """Return the agent's credential, or raise CredentialNotFound (also for another agent's)."""
    pk = _as_uuid(credential_id)
    if pk is None:
        raise CredentialNotFound()
    try:
        return Credential.objects.select_related("agent").get(pk=pk, agent=agent)
    except Credential.DoesNotExist:
        raise CredentialNotFound() from None


# Every token request runs this one; its SQL is compiled once per connection. client_id is
# unique: no ORDER BY (the model's ordering would have PostgreSQL sort the one row).
# The change token comes with the rows, for the rows each process keeps (credentials.rows).
_credential_by_client_id = CompiledQuery(
    Credential,
    lambda client_id: (
        Credential.objects.select_related("agent").filter(client_id=client_id).annotate(**token_column()).order_by()
    ),
)


def _credential_read(client_id: str) -> Credential | None:
    found = _credential_by_client_id(client_id)  # client_id is unique
    return found[0] if found else None


#: The rows each process keeps for credential_find_by_client_id (credentials.rows).
kept_credentials = KeptCredentials(_credential_read)


def credential_find_by_client_id(*, client_id: str) -> Credential | None:
    """
    Return the credential with this clientId and its agent as they are now, or None.

    One query: the credential joined to its agent, or (on PostgreSQL, for a credential this
    process read before) the database's change token alone, which says whether the rows it
    kept are still the rows (credentials.rows).
    """
    if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH or not client_id.isprintable():
        return None
    return kept_credentials.find(client_id)


def credential_active_count(*, agent: Agent) -> int:
    return Credential.objects.filter(agent=agent).active().count()


def grace_secrets_live(*, credential_id: uuid.UUID) -> list[GraceSecret]:
    """Return the credential's previous secrets whose grace period has not ended."""
    return list(GraceSecret.objects.filter(credential_id=credential_id, valid_until__gt=timezone.now()))


def grace_keys_live(*, credential_id: uuid.UUID) -> list[GraceKeys]:
    """Return the key credential's previous keys whose grace period has not ended."""
    return list(GraceKeys.objects.filter(credential_id=credential_id, valid_until__gt=timezone.now()))


# Every jwt-bearer grant runs this one.
_trust_policies_by_issuer = CompiledQuery(
    TrustPolicy, lambda issuer: TrustPolicy.objects.filter(issuer=issuer).select_related("agent")
)


def trust_policies_for_issuer(*, issuer: str) -> list[TrustPolicy]:
    """Return every agent's trust policies for this issuer, with their agents, oldest first."""
    if not issuer or len(issuer) > TrustPolicy._meta.get_field("issuer").max_length:
        return []
    return _trust_policies_by_issuer(issuer)


def trust_policy_find(*, trust_policy_id: object) -> TrustPolicy | None:
    """Return the trust policy with its agent, or None (also for an id that is not a UUID)."""
    pk = _as_uuid(trust_policy_id)
    if pk is None:
        return None
    return TrustPolicy.objects.select_related("agent").filter(pk=pk).first()


def trust_policy_list(*, agent: Agent) -> QuerySet[TrustPolicy]:
    return TrustPolicy.objects.filter(agent=agent).select_related("agent")


def trust_policy_get(*, agent: Agent, trust_policy_id: object) -> TrustPolicy:
    """Return the agent's trust policy, or raise TrustPolicyNotFound (also for another agent's)."""
    pk = _as_uuid(trust_policy_id)
    if pk is None:
        raise TrustPolicyNotFound()
    try:
        return TrustPolicy.objects.select_related("agent").get(pk=pk, agent=agent)
    except TrustPolicy.DoesNotExist:
        raise TrustPolicyNotFound() from None
