"""The console's agents: the list, an agent's page (its credentials and trust policies), suspending and reactivating."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.http import urlencode

from .. import services
from ..errors import ApiError
from ..models import Agent, Credential, TrustPolicy
from .base import ConsoleAdmin, ReadOnly, audit_url
from .credentials import COMPROMISED_FIRST
from .keys import credential_keys_display
from .policies import TrustPolicyColumns


class CredentialInline(ReadOnly, admin.TabularInline):
    model = Credential
    fields = (
        "client_id",
        "kind",
        "storage",
        "keys",
        "status",
        "created_at",
        "rotated_at",
        "expires_at",
        "last_used_at",
    )
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False
    verbose_name_plural = "credentials (secrets and keys)"
    ordering = COMPROMISED_FIRST

    @admin.display(description="keys (previous ones until)")
    def keys(self, credential: Credential) -> str:
        return credential_keys_display(credential)


class TrustPolicyInline(TrustPolicyColumns, ReadOnly, admin.TabularInline):
    model = TrustPolicy
    fields = ("issuer", "subject_or_pattern", "required_claims", "audience", "created_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False


@admin.register(Agent)
class AgentAdmin(ReadOnly, ConsoleAdmin):
    list_display = ("name", "status", "owner", "scope_list", "credential_count", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "owner", "description")
    fields = ("id", "name", "description", "owner", "status", "scopes", "resources", "created_at", "updated_at")
    readonly_fields = fields
    inlines = [CredentialInline, TrustPolicyInline]
    actions = ["suspend_selected", "reactivate_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(credential_count=Count("credentials"))

    def has_suspend_permission(self, request) -> bool:
        return request.user.has_perm("credentials.suspend_agent")

    @admin.display(description="scopes")
    def scope_list(self, agent: Agent) -> str:
        return " ".join(agent.scopes)

    @admin.display(description="allowed resources")
    def resources(self, agent: Agent) -> str:
        return "\n".join(agent.allowed_resources) or "-"

    @admin.display(description="credentials", ordering="credential_count")
    def credential_count(self, agent: Agent) -> int:
        return agent.credential_count

    @admin.action(description="Suspend selected agents", permissions=["suspend"])
    def suspend_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, Agent.Status.SUSPENDED, "Suspended")

    @admin.action(description="Reactivate selected agents", permissions=["suspend"])
    def reactivate_selected(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, Agent.Status.ACTIVE, "Reactivated")

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Agent], status: str, verb: str) -> None:
        changed = unchanged = 0
        for agent in queryset.order_by("pk"):
            if agent.status == status:
                unchanged += 1
                continue
            try:
                services.agent_update(acting=request.user, agent=agent, status=status)
            except ApiError as exc:
                self.message_user(request, f"{agent.name}: {exc.message}", messages.ERROR)
            else:
                changed += 1
        note = f" ({unchanged} already {status})" if unchanged else ""
        self.message_user(request, f"{verb} {changed} agents{note}.", messages.SUCCESS)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "audit_url": audit_url(agent_id=unquote(object_id)),
            "issue_url": reverse("admin:credentials_credential_add") + "?" + urlencode({"agent": unquote(object_id)}),
            "can_issue": request.user.has_perm("credentials.add_credential"),
        }
        return super().change_view(request, object_id, form_url, extra_context)
