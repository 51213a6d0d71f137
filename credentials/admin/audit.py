"""The console's audit trail: read-only, filtered by agent, credential and actor, also for ids whose rows are gone."""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Lower
from django.utils.html import format_html
from django.utils.http import urlencode

from ..models import Agent, AuditEvent, Credential
from .base import ConsoleAdmin, ReadOnly


class _IdFilter(admin.SimpleListFilter):
    """A filter on a plain UUID column of the trail, also for ids whose rows are gone."""

    field = ""

    def choices_for(self, request) -> list[tuple[str, str]]:
        return []

    def lookups(self, request, model_admin):
        choices = self.choices_for(request)
        current = request.GET.get(self.parameter_name)
        if current and current not in {value for value, _ in choices}:
            choices.append((current, current))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(**{self.field: uuid.UUID(value)})
        except ValueError:
            raise IncorrectLookupParameters(f"{self.parameter_name} must be a UUID.") from None


class AuditAgentFilter(_IdFilter):
    title = "agent"
    parameter_name = field = "agent_id"

    def choices_for(self, request):
        return [(str(pk), name) for pk, name in Agent.objects.order_by(Lower("name")).values_list("pk", "name")[:100]]


class AuditCredentialFilter(_IdFilter):
    """Offers the credentials of the agent filtered on; any credential id works from a link."""

    title = "credential"
    parameter_name = field = "credential_id"

    def choices_for(self, request):
        try:
            agent_id = uuid.UUID(request.GET.get("agent_id", ""))
        except ValueError:
            return []
        return [
            (str(pk), client_id)
            for pk, client_id in Credential.objects.filter(agent_id=agent_id).values_list("pk", "client_id")
        ]


class AuditActorFilter(admin.SimpleListFilter):
    title = "actor"
    parameter_name = "actor"

    def lookups(self, request, model_admin):
        actors = (
            AuditEvent.objects.values_list("actor_type", "actor_id", "actor_label")
            .order_by("actor_type", "actor_label", "actor_id")
            .distinct()[:100]
        )
        return [(f"{kind}:{actor_id}", f"{label or kind} ({kind})") for kind, actor_id, label in actors]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        kind, _, actor_id = value.partition(":")
        return queryset.filter(actor_type=kind, actor_id=actor_id)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnly, ConsoleAdmin):
    list_display = ("occurred_at", "action", "actor", "agent", "credential")
    list_filter = ("action", "actor_type", AuditActorFilter, AuditAgentFilter, AuditCredentialFilter)
    search_fields = ("actor_label", "=agent_id", "=credential_id")
    date_hierarchy = "occurred_at"
    fields = (
        "id",
        "occurred_at",
        "action",
        "actor_type",
        "actor_id",
        "actor_label",
        "agent_id",
        "credential_id",
        "details",
    )
    readonly_fields = fields

    @admin.display(description="actor", ordering="actor_label")
    def actor(self, event: AuditEvent) -> str:
        return f"{event.actor_label or event.actor_type} ({event.actor_type})"

    def get_queryset(self, request):
        # Name what still exists; an event of a deleted agent or credential keeps its id (and a name in details).
        return (
            super()
            .get_queryset(request)
            .annotate(
                agent_name=Subquery(Agent.objects.filter(pk=OuterRef("agent_id")).values("name")[:1]),
                client_id=Subquery(Credential.objects.filter(pk=OuterRef("credential_id")).values("client_id")[:1]),
            )
        )

    @admin.display(description="agent")
    def agent(self, event: AuditEvent) -> str:
        if event.agent_id is None:
            return "-"
        return _filter_link("agent_id", event.agent_id, event.agent_name or event.details.get("name"))

    @admin.display(description="credential")
    def credential(self, event: AuditEvent) -> str:
        if event.credential_id is None:
            return "-"
        return _filter_link("credential_id", event.credential_id, event.client_id or event.details.get("clientId"))


def _filter_link(parameter: str, value: object, label: str | None) -> str:
    """A link that filters the trail by this id, labelled by the name it had (or the id, for a row long gone)."""
    return format_html('<a href="?{}" title="{}">{}</a>', urlencode({parameter: value}), value, label or str(value))
