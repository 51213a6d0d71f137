"""Request and response bodies of the management API, in the contract's camelCase."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from credentials.models import Agent
from credentials.scopes import MAX_SCOPES, SCOPE_TOKEN_RE
from credentials.services import MAX_GRACE_PERIOD_SECONDS

from .base import StrictCharField, StrictIntegerField, StrictSerializer

MAX_DESCRIPTION_LENGTH = 1000
MAX_OWNER_LENGTH = 256


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": 128, "pattern": f"^{SCOPE_TOKEN_RE.pattern}$"})
class ScopeField(StrictCharField):
    def __init__(self, **kwargs):
        super().__init__(min_length=1, max_length=128, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not SCOPE_TOKEN_RE.fullmatch(value):
            raise serializers.ValidationError("A scope has no spaces, quotes or backslashes (RFC 6749 scope-token).")
        return value


def _scopes_field(**kwargs) -> serializers.ListField:
    return serializers.ListField(child=ScopeField(), max_length=MAX_SCOPES, **kwargs)


class AgentCreateInput(StrictSerializer):
    name = StrictCharField(min_length=1, max_length=128)
    description = StrictCharField(max_length=MAX_DESCRIPTION_LENGTH, allow_blank=True, required=False, default="")
    owner = StrictCharField(max_length=MAX_OWNER_LENGTH, allow_blank=True, required=False, default="")
    scopes = _scopes_field(required=False, default=list)


class AgentUpdateInput(StrictSerializer):
    description = StrictCharField(max_length=MAX_DESCRIPTION_LENGTH, allow_blank=True, required=False)
    owner = StrictCharField(max_length=MAX_OWNER_LENGTH, allow_blank=True, required=False)
    scopes = _scopes_field(required=False)
    status = serializers.ChoiceField(choices=Agent.Status.values, required=False)


class AgentListQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=Agent.Status.values, required=False)
    search = StrictCharField(max_length=128, required=False, allow_blank=True)


class AgentOutput(serializers.Serializer):
    agentId = serializers.UUIDField(source="id")
    name = serializers.CharField()
    description = serializers.CharField()
    owner = serializers.CharField()
    status = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


class CredentialCreateInput(StrictSerializer):
    description = StrictCharField(max_length=MAX_DESCRIPTION_LENGTH, allow_blank=True, required=False, default="")
    expiresAt = serializers.DateTimeField(required=False, allow_null=True, default=None)


class CredentialRotateInput(StrictSerializer):
    gracePeriodSeconds = StrictIntegerField(min_value=0, max_value=MAX_GRACE_PERIOD_SECONDS, required=False, default=0)


class CredentialOutput(serializers.Serializer):
    credentialId = serializers.UUIDField(source="id")
    agentId = serializers.UUIDField(source="agent_id")
    clientId = serializers.CharField(source="client_id")
    description = serializers.CharField()
    storage = serializers.ChoiceField(choices=["bcrypt", "vault"])
    status = serializers.ChoiceField(choices=["active", "expired"])
    createdAt = serializers.DateTimeField(source="created_at")
    rotatedAt = serializers.DateTimeField(source="rotated_at", allow_null=True)
    expiresAt = serializers.DateTimeField(source="expires_at", allow_null=True)


class IssuedCredentialOutput(CredentialOutput):
    """The one response that carries a client secret: create and rotate."""

    clientSecret = serializers.CharField()

    def to_representation(self, issued):
        return {**CredentialOutput(issued.credential).data, "clientSecret": issued.client_secret}


class ErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField(required=False)
