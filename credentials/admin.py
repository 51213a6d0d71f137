"""
The operators' console: agents, credentials and the audit trail, read-only.

Nothing here shows a secret or a hash, and nothing changes or deletes a row directly:
every change goes through credentials.services, so none can skip a secret store or the
audit trail.
"""

from django.contrib import admin
from django.db.models import Count

from .models import Agent, AuditEvent, Credential


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Agent)
class AgentAdmin(ReadOnlyAdmin):
    list_display = ("name", "status", "owner", "scope_list", "credential_count", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "owner", "description")
    fields = ("id", "name", "description", "owner", "status", "scopes", "created_at", "updated_at")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(credential_count=Count("credentials"))

    @admin.display(description="scopes")
    def scope_list(self, agent: Agent) -> str:
        return " ".join(agent.scopes)

    @admin.display(description="credentials", ordering="credential_count")
    def credential_count(self, agent: Agent) -> int:
        return agent.credential_count


@admin.register(Credential)
class CredentialAdmin(ReadOnlyAdmin):
    list_display = ("client_id", "agent", "storage", "status", "created_at", "rotated_at", "expires_at")
    list_filter = ("storage",)
    list_select_related = ("agent",)
    search_fields = ("client_id", "agent__name")
    # Never secret_hash: the console shows where a secret is kept, not what it is.
    fields = ("id", "client_id", "agent", "description", "storage", "status", "created_at", "rotated_at", "expires_at")
    readonly_fields = fields


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "action", "actor_type", "actor_label", "agent_id", "credential_id")
    list_filter = ("action", "actor_type")
    search_fields = ("actor_label", "=agent_id", "=credential_id")
    date_hierarchy = "occurred_at"
