"""Request and response bodies of the management API, in the contract's camelCase."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from credentials.jwtauth.fetch import MAX_URL_LENGTH
from credentials.models import Agent, Credential
from credentials.resources import MAX_ALLOWED_RESOURCES, MAX_RESOURCE_LENGTH, RESOURCE_RULE, is_resource
from credentials.scopes import MAX_SCOPES, SCOPE_TOKEN_RE
from credentials.services import (
    MAX_CLAIM_NAME,
    MAX_CLAIM_VALUES,
    MAX_GRACE_PERIOD_SECONDS,
    MAX_POLICY_CLAIMS,
    MAX_POLICY_TEXT,
    MAX_TOKEN_AGE_SECONDS,
    RESERVED_CLAIMS,
)

from .base import StrictCharField, StrictIntegerField, StrictSerializer

MAX_DESCRIPTION_LENGTH = 1000
MAX_OWNER_LENGTH = 256

JWKS_SCHEMA = {
    "type": "object",
    "description": "A JWK Set (RFC 7517) of public signature keys (EC, RSA or OKP); private members are refused.",
    "properties": {"keys": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": True}}},
    "required": ["keys"],
    "additionalProperties": True,
}
_CLAIM_SCALARS = [{"type": "string", "maxLength": MAX_POLICY_TEXT}, {"type": "number"}, {"type": "boolean"}]
CLAIMS_SCHEMA = {
    "type": "object",
    "description": (
        f"Claim name (1 to {MAX_CLAIM_NAME} characters; not {', '.join(sorted(RESERVED_CLAIMS))}) to its "
        "required value, or to a list of allowed values."
    ),
    "maxProperties": MAX_POLICY_CLAIMS,
    "additionalProperties": {
        "anyOf": [
            *_CLAIM_SCALARS,
            {"type": "array", "minItems": 1, "maxItems": MAX_CLAIM_VALUES, "items": {"anyOf": _CLAIM_SCALARS}},
        ]
    },
}


class _JsonObjectField(serializers.Field):
    """A JSON object taken as it is (its content is the service's to check), shown as it is kept."""

    default_error_messages = {"invalid": "Must be a JSON object."}

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("invalid")
        return data

    def to_representation(self, value):
        return value


@extend_schema_field(JWKS_SCHEMA)
class JwksField(_JsonObjectField):
    default_error_messages = {"invalid": 'Must be a JSON object with a "keys" array (a JWK Set).'}


@extend_schema_field(CLAIMS_SCHEMA)
class ClaimsField(_JsonObjectField):
    pass


def _key_url_field(**kwargs) -> StrictCharField:
    return StrictCharField(max_length=MAX_URL_LENGTH, trim_whitespace=False, **kwargs)


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


@extend_schema_field({"type": "string", "format": "uri", "minLength": 1, "maxLength": MAX_RESOURCE_LENGTH})
class ResourceField(StrictCharField):
    def __init__(self, **kwargs):
        super().__init__(min_length=1, max_length=MAX_RESOURCE_LENGTH, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not is_resource(value):
            raise serializers.ValidationError(RESOURCE_RULE)
        return value


def _resources_field(**kwargs) -> serializers.ListField:
    return serializers.ListField(
        child=ResourceField(),
        max_length=MAX_ALLOWED_RESOURCES,
        source="allowed_resources",
        help_text="The resources (RFC 8707) the agent may get tokens for.",
        **kwargs,
    )


class AgentCreateInput(StrictSerializer):
    name = StrictCharField(min_length=1, max_length=128)
    description = StrictCharField(max_length=MAX_DESCRIPTION_LENGTH, allow_blank=True, required=False, default="")
    owner = StrictCharField(max_length=MAX_OWNER_LENGTH, allow_blank=True, required=False, default="")
    scopes = _scopes_field(required=False, default=list)
    allowedResources = _resources_field(required=False, default=list)


class AgentUpdateInput(StrictSerializer):
    description = StrictCharField(max_length=MAX_DESCRIPTION_LENGTH, allow_blank=True, required=False)
    owner = StrictCharField(max_length=MAX_OWNER_LENGTH, allow_blank=True, required=False)
    scopes = _scopes_field(required=False)
    allowedResources = _resources_field(required=False)
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
    allowedResources = serializers.ListField(child=serializers.CharField(), source="allowed_resources")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


class CredentialCreateInput(StrictSerializer):
    kind = serializers.ChoiceField(choices=Credential.Kind.values, required=False, default=Credential.Kind.SECRET)
    description = StrictCharField(max_length=MAX_DESCRIPTION_LENGTH, allow_blank=True, required=False, default="")
    expiresAt = serializers.DateTimeField(required=False, allow_null=True, default=None)
    jwks = JwksField(required=False, allow_null=True, default=None, help_text="kind key: the public keys.")
    jwksUri = _key_url_field(
        required=False, allow_null=True, default=None, help_text="kind key: the https URL of the public keys."
    )


class CredentialRotateInput(StrictSerializer):
    gracePeriodSeconds = StrictIntegerField(min_value=0, max_value=MAX_GRACE_PERIOD_SECONDS, required=False, default=0)
    jwks = JwksField(required=False, allow_null=True, default=None, help_text="Key credentials: the new public keys.")
    jwksUri = _key_url_field(
        required=False, allow_null=True, default=None, help_text="Key credentials: the new URL of the public keys."
    )


class CredentialOutput(serializers.Serializer):
    credentialId = serializers.UUIDField(source="id")
    agentId = serializers.UUIDField(source="agent_id")
    clientId = serializers.CharField(source="client_id")
    kind = serializers.ChoiceField(choices=Credential.Kind.values)
    description = serializers.CharField()
    storage = serializers.ChoiceField(
        choices=["bcrypt", "vault"], allow_null=True, help_text="null for a key credential."
    )
    status = serializers.ChoiceField(choices=["active", "expired"])
    createdAt = serializers.DateTimeField(source="created_at")
    rotatedAt = serializers.DateTimeField(source="rotated_at", allow_null=True)
    expiresAt = serializers.DateTimeField(source="expires_at", allow_null=True)
    jwks = JwksField(allow_null=True, help_text="A key credential's public keys, else null.")
    jwksUri = serializers.CharField(source="jwks_uri", allow_null=True, help_text="Where a key credential's keys are.")

    def to_representation(self, credential):
        data = super().to_representation(credential)
        if credential.is_key:
            data["storage"] = None
        return data


class IssuedCredentialOutput(CredentialOutput):
    """The one response that carries a client secret: create and rotate (of a secret credential; never a key one)."""

    clientSecret = serializers.CharField(required=False, help_text="kind secret only; shown this once.")

    def to_representation(self, issued):
        data = CredentialOutput(issued.credential).data
        if issued.client_secret is None:
            return data
        return {**data, "clientSecret": issued.client_secret}


class TrustPolicyCreateInput(StrictSerializer):
    issuer = StrictCharField(min_length=1, max_length=MAX_POLICY_TEXT, trim_whitespace=False)
    audience = StrictCharField(min_length=1, max_length=MAX_POLICY_TEXT, trim_whitespace=False)
    subject = StrictCharField(
        min_length=1, max_length=MAX_POLICY_TEXT, trim_whitespace=False, required=False, allow_null=True, default=None
    )
    subjectPattern = StrictCharField(
        min_length=1,
        max_length=MAX_POLICY_TEXT,
        trim_whitespace=False,
        required=False,
        allow_null=True,
        default=None,
        help_text="`*` stands for any run of characters; nothing else is special.",
    )
    claims = ClaimsField(required=False, allow_null=True, default=None)
    jwks = JwksField(required=False, allow_null=True, default=None)
    jwksUri = _key_url_field(required=False, allow_null=True, default=None)
    maxTokenAgeSeconds = StrictIntegerField(
        min_value=1, max_value=MAX_TOKEN_AGE_SECONDS, required=False, allow_null=True, default=None
    )
    description = StrictCharField(max_length=MAX_DESCRIPTION_LENGTH, allow_blank=True, required=False, default="")


class TrustPolicyOutput(serializers.Serializer):
    trustPolicyId = serializers.UUIDField(source="id")
    agentId = serializers.UUIDField(source="agent_id")
    issuer = serializers.CharField()
    audience = serializers.CharField()
    subject = serializers.CharField(allow_null=True)
    subjectPattern = serializers.CharField(source="subject_pattern", allow_null=True)
    claims = ClaimsField()
    jwks = JwksField(allow_null=True)
    jwksUri = serializers.CharField(source="jwks_uri", allow_null=True)
    maxTokenAgeSeconds = serializers.IntegerField(source="max_token_age_seconds", allow_null=True)
    description = serializers.CharField()
    createdAt = serializers.DateTimeField(source="created_at")

    def to_representation(self, policy):
        data = super().to_representation(policy)
        # "" is "not set" in the table; the API says null.
        data["subject"] = data["subject"] or None
        data["subjectPattern"] = data["subjectPattern"] or None
        return data


class ErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField(required=False)
