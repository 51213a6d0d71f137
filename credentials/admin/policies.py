"""The console's trust policies: the list, a read-only page, and deletion through the service."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import QuerySet
from django.http import HttpRequest

from .. import services
from ..errors import ApiError
from ..models import TrustPolicy
from .base import ConsoleAdmin, audit_url
from .keys import keys_display


def subject_display(policy: TrustPolicy) -> str:
    if policy.subject:
        return policy.subject
    if policy.subject_pattern:
        return f"{policy.subject_pattern} (pattern)"
    return "(any subject with the required claims)"


def claims_display(policy: TrustPolicy) -> str:
    return (
        ", ".join(
            f"{name}={'|'.join(map(str, value)) if isinstance(value, list) else value}"
            for name, value in policy.claims.items()
        )
        or "-"
    )


class TrustPolicyColumns:
    """The columns a trust policy is shown with wherever the console lists it: its subject and its claims."""

    @admin.display(description="subject")
    def subject_or_pattern(self, policy: TrustPolicy) -> str:
        return subject_display(policy)

    @admin.display(description="claims")
    def required_claims(self, policy: TrustPolicy) -> str:
        return claims_display(policy)


@admin.register(TrustPolicy)
class TrustPolicyAdmin(TrustPolicyColumns, ConsoleAdmin):
    list_display = ("issuer", "subject_or_pattern", "required_claims", "audience", "agent", "created_at")
    list_select_related = ("agent",)
    search_fields = ("issuer", "subject", "subject_pattern", "agent__name")
    fields = (
        "id",
        "agent",
        "issuer",
        "audience",
        "subject_or_pattern",
        "required_claims",
        "keys",
        "max_token_age_seconds",
        "description",
        "created_at",
    )
    readonly_fields = fields
    # Replaces Django's delete_selected with one that goes through the service (and the audit trail).
    actions = ["delete_selected"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # created through the API, which checks issuers and keys

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="keys")
    def keys(self, policy: TrustPolicy) -> str:
        if policy.jwks is None and not policy.jwks_uri:
            return "from the issuer's OpenID discovery document"
        return keys_display(jwks=policy.jwks, jwks_uri=policy.jwks_uri)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        policy = self.get_object(request, unquote(object_id))
        extra_context = {**(extra_context or {}), "audit_url": audit_url(agent_id=policy.agent_id) if policy else ""}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Delete selected trust policies", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[TrustPolicy]):
        # Django's confirmation page first; on confirmation it calls delete_queryset below.
        return admin.actions.delete_selected(self, request, queryset)

    def delete_model(self, request, obj):
        services.trust_policy_delete(acting=request.user, policy=obj)

    def delete_queryset(self, request, queryset):
        for policy in queryset.order_by("pk"):
            try:
                services.trust_policy_delete(acting=request.user, policy=policy)
            except ApiError as exc:
                self.message_user(request, f"{policy}: {exc.message}", messages.ERROR)
