"""
The operators' console: agents, credentials and the audit trail.

Every change goes through credentials.services, exactly as the API's do, with the staff
user as the actor in the audit trail: suspending and reactivating agents, issuing,
rotating and deleting credentials. Rows are shown read-only, and Django's own add and
delete views and its bulk delete action are replaced, so nothing can skip a secret store
or the audit trail.

No page shows a hash or what a Vault path holds. A new secret appears once, on the page
that answers the rotation or issue that made it (never cached, never in a message or
the admin's log), and nowhere afterwards. Nor does any list filter on them: a changelist
accepts only the lookups its own filters and date hierarchy make (ConsoleAdmin).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import get_fields_from_path, unquote
from django.core.exceptions import PermissionDenied
from django.db import DataError, NotSupportedError, router, transaction
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from .api.base import has_control_characters
from credentials.errors import ApiError
from vaultstore.exceptions import SecretStoreError

from . import services
from .api.serializers import MAX_DESCRIPTION_LENGTH
from .models import Agent, AuditEvent, Credential

#: Where the console's templates for credentials live.
TEMPLATES = "admin/credentials/credential/"
#: The session key of the confirmations handed out and not yet used (the newest few).
CONFIRMATIONS_SESSION_KEY = "agentidp.console.confirmations"
CONFIRMATIONS_KEPT = 20

logger = logging.getLogger(__name__)


def _confirmation_issue(request: HttpRequest) -> str:
    """
    Return a new one-time token for a confirmation form.

    A form that rotates, deletes or issues carries one, and the change is made only
    when it is used for the first time, so that a reload or a resubmitted form (the
    back button on the page of new secrets) cannot rotate again and replace secrets
    that were just handed out.
    """
    token = secrets.token_urlsafe(16)
    request.session[CONFIRMATIONS_SESSION_KEY] = [
        *request.session.get(CONFIRMATIONS_SESSION_KEY, [])[-(CONFIRMATIONS_KEPT - 1) :],
        token,
    ]
    return token


def _confirmation_use(request: HttpRequest) -> bool:
    """Return whether the posted confirmation token was handed out and unused, and use it up."""
    token = request.POST.get("confirmation", "")
    tokens = request.session.get(CONFIRMATIONS_SESSION_KEY, [])
    if not token or token not in tokens:
        return False
    request.session[CONFIRMATIONS_SESSION_KEY] = [item for item in tokens if item != token]
    return True


def _audit_url(**filters: Any) -> str:
    return reverse("admin:credentials_auditevent_changelist") + "?" + urlencode(filters)


def _failure(exc: Exception) -> str:
    """Say why a change failed, in the words the API would use (no secret is ever in them)."""
    if isinstance(exc, ApiError):
        return exc.message
    if isinstance(exc, SecretStoreError):
        return f"{exc} Nothing was changed for this credential; try again when Vault answers."
    raise exc


#: The columns that hold a secret's hash, or say where Vault keeps a secret and which version is trusted.
SECRET_FIELDS = frozenset({"secret_hash", "vault_path", "vault_version"})


def touches_secret(lookup: str) -> bool:
    """
    Return whether a lookup names a secret-bearing column anywhere along its path.

    Matched by name, whatever the relations before it and the lookup after it
    (`credentials__grace_secrets__secret_hash__gte`): a list that can be filtered on a
    hash answers one bit of it per request, and so gives all of it away.
    """
    return not SECRET_FIELDS.isdisjoint(lookup.split(LOOKUP_SEP))


class ConsoleAdmin(admin.ModelAdmin):
    """
    Accept in a changelist's query string only what the console's own links put there.

    Those are the parameters of the list filters and of the date hierarchy (search,
    sorting and paging are Django's own parameters and never reach lookup_allowed).
    Anything else is refused with a 400, as Django's UserAdmin refuses lookups on a
    password: an open changelist is an oracle on every column a person who may view the
    list cannot see (`?secret_hash__gte=...`), and a way to send the database lookups it
    cannot run. Every ModelAdmin of the console derives from this class.
    """

    def lookup_allowed(self, lookup, value, request=None) -> bool:
        # Refused before anything else, so a filter added on a secret-bearing column cannot open the oracle again.
        if touches_secret(lookup):
            return False
        return lookup in self.console_lookups(request) and super().lookup_allowed(lookup, value, request)

    def console_lookups(self, request: HttpRequest) -> set[str]:
        """Return the parameters the changelist's filters and date hierarchy use, as their own links spell them."""
        lookups: set[str] = set()
        if self.date_hierarchy:
            lookups.update(f"{self.date_hierarchy}__{part}" for part in ("year", "month", "day"))
        for item in self.get_list_filter(request):
            if isinstance(item, type):
                lookups.add(item.parameter_name)
                continue
            field_path, filter_class = item if isinstance(item, list | tuple) else (item, admin.FieldListFilter.create)
            field = get_fields_from_path(self.model, field_path)[-1]
            spec = filter_class(field, request, {}, self.model, self, field_path=field_path)
            lookups.update(spec.expected_parameters())
        return lookups

    def get_changelist_instance(self, request):
        """
        Build the changelist in a savepoint, and treat a value the database refuses as a bad filter.

        The changelist counts its rows while it is built, so a value that passes
        lookup_allowed but that Python's dates or the database cannot hold (a year past
        9999, a NUL byte on PostgreSQL) fails here; IncorrectLookupParameters makes Django
        answer with the unfiltered list, flagged `?e=1`, instead of a 500. The savepoint
        keeps the failed query from aborting the rest of the request's transaction on
        PostgreSQL. A database that does not answer at all is not caught: that is an outage.
        """
        try:
            with transaction.atomic(using=router.db_for_read(self.model)):
                return super().get_changelist_instance(request)
        except (DataError, NotSupportedError, ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(type(exc).__name__) from exc


class ReadOnly:
    """No add, change or delete through Django's own views: changes go through the services."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- agents ---------------------------------------------------------------------------------


class CredentialInline(ReadOnly, admin.TabularInline):
    model = Credential
    fields = ("client_id", "storage", "status", "created_at", "rotated_at", "expires_at", "last_used_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False


@admin.register(Agent)
class AgentAdmin(ReadOnly, ConsoleAdmin):
    list_display = ("name", "status", "owner", "scope_list", "credential_count", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "owner", "description")
    fields = ("id", "name", "description", "owner", "status", "scopes", "created_at", "updated_at")
    readonly_fields = fields
    inlines = [CredentialInline]
    actions = ["suspend_selected", "reactivate_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(credential_count=Count("credentials"))

    def has_suspend_permission(self, request) -> bool:
        return request.user.has_perm("credentials.suspend_agent")

    @admin.display(description="scopes")
    def scope_list(self, agent: Agent) -> str:
        return " ".join(agent.scopes)

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
            "audit_url": _audit_url(agent_id=unquote(object_id)),
            "issue_url": reverse("admin:credentials_credential_add") + "?" + urlencode({"agent": unquote(object_id)}),
            "can_issue": request.user.has_perm("credentials.add_credential"),
        }
        return super().change_view(request, object_id, form_url, extra_context)


# --- credentials ----------------------------------------------------------------------------


class CredentialStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.active()
        if self.value() == "expired":
            return queryset.expired()
        return queryset


class RotateForm(forms.Form):
    grace_period_seconds = forms.IntegerField(
        label="Grace period (seconds)",
        min_value=0,
        max_value=services.MAX_GRACE_PERIOD_SECONDS,
        initial=0,
        help_text=(
            "How long each old secret keeps working after the rotation, up to "
            f"{services.MAX_GRACE_PERIOD_SECONDS} (one day). 0 stops it at once."
        ),
    )


class IssueForm(forms.Form):
    """What the API's create call takes, checked as strictly."""

    agent = forms.ModelChoiceField(queryset=Agent.objects.order_by(Lower("name")))
    description = forms.CharField(
        required=False,
        max_length=MAX_DESCRIPTION_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
    )
    expires_at = forms.DateTimeField(
        label="Expires at",
        required=False,
        help_text="Optional, in UTC: YYYY-MM-DD HH:MM. Empty: the credential never expires.",
    )

    def clean_description(self) -> str:
        description = self.cleaned_data["description"]
        if has_control_characters(description):
            raise forms.ValidationError("Must not contain control characters.")
        return description


@admin.register(Credential)
class CredentialAdmin(ConsoleAdmin):
    list_display = (
        "client_id",
        "agent",
        "storage",
        "status",
        "created_at",
        "rotated_at",
        "expires_at",
        "last_used_at",
    )
    list_filter = ("storage", CredentialStatusFilter)
    list_select_related = ("agent",)
    search_fields = ("client_id", "agent__name")
    # Never secret_hash. The Vault path says where the secret is, not what it is.
    fields = (
        "id",
        "client_id",
        "agent",
        "description",
        "storage",
        "vault_path",
        "vault_version",
        "status",
        "created_at",
        "rotated_at",
        "expires_at",
        "last_used_at",
    )
    readonly_fields = fields
    # Replaces Django's delete_selected, which would delete rows around the services.
    actions = ["rotate_selected", "delete_selected"]

    def has_add_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("credentials.add_credential")

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("credentials.delete_credential")

    def has_rotate_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("credentials.rotate_credential")

    def get_urls(self):
        rotate = path(
            "<path:object_id>/rotate/",
            self.admin_site.admin_view(self.rotate_view),
            name="credentials_credential_rotate",
        )
        return [rotate, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "audit_url": _audit_url(credential_id=unquote(object_id)),
            "can_rotate": self.has_rotate_permission(request),
            "can_delete": self.has_delete_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # Rotation: the action, and the button on a credential's page.

    @admin.action(description="Rotate selected credentials", permissions=["rotate"])
    def rotate_selected(self, request: HttpRequest, queryset: QuerySet[Credential]) -> HttpResponse:
        return self._rotate(request, queryset, action="rotate_selected")

    def rotate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        credential = self.get_object(request, unquote(object_id))
        if credential is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_rotate_permission(request, credential):
            raise PermissionDenied
        return self._rotate(request, Credential.objects.filter(pk=credential.pk), action=None)

    def _rotate(self, request: HttpRequest, queryset: QuerySet[Credential], *, action: str | None) -> HttpResponse:
        credentials = list(queryset.select_related("agent").order_by("agent__name", "client_id"))
        confirmed = request.method == "POST" and request.POST.get("post") == "yes"
        form = RotateForm(request.POST if confirmed else None)
        if not confirmed or not form.is_valid():
            return self._confirmation(request, credentials, action=action, kind="rotate", form=form)
        if not _confirmation_use(request):
            return self._confirmation(request, credentials, action=action, kind="rotate", form=form, reused=True)
        grace = form.cleaned_data["grace_period_seconds"]
        results = []
        for credential in credentials:
            try:
                issued = services.credential_rotate(
                    acting=request.user, credential=credential, grace_period_seconds=grace
                )
            except (ApiError, SecretStoreError) as exc:
                results.append({"credential": credential, "error": _failure(exc)})
            else:
                results.append({"credential": issued.credential, "client_secret": issued.client_secret})
        return self._issued(request, results, title="Rotated credentials", grace_period_seconds=grace)

    # Deletion: the action (replacing Django's bulk delete), and the view behind the Delete button.

    @admin.action(description="Delete selected credentials", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Credential]) -> HttpResponse | None:
        return self._delete(request, queryset, action="delete_selected")

    def delete_view(self, request, object_id, extra_context=None):
        credential = self.get_object(request, unquote(object_id))
        if credential is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_delete_permission(request, credential):
            raise PermissionDenied
        return self._delete(request, Credential.objects.filter(pk=credential.pk), action=None)

    def _delete(self, request: HttpRequest, queryset: QuerySet[Credential], *, action: str | None) -> HttpResponse:
        credentials = list(queryset.select_related("agent").order_by("agent__name", "client_id"))
        if not (request.method == "POST" and request.POST.get("post") == "yes"):
            return self._confirmation(request, credentials, action=action, kind="delete", form=None)
        if not _confirmation_use(request):
            return self._confirmation(request, credentials, action=action, kind="delete", form=None, reused=True)
        deleted = 0
        for credential in credentials:
            try:
                services.credential_delete(acting=request.user, credential=credential)
            except (ApiError, SecretStoreError) as exc:
                self.message_user(request, f"{credential.client_id}: {_failure(exc)}", messages.ERROR)
            else:
                deleted += 1
        if deleted:
            self.message_user(request, f"Deleted {deleted} credentials.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:credentials_credential_changelist"))

    def delete_model(self, request, obj):
        services.credential_delete(acting=request.user, credential=obj)

    def delete_queryset(self, request, queryset):
        for credential in queryset:
            services.credential_delete(acting=request.user, credential=credential)

    # Issuing: the add page makes a credential through the service and shows its secret once.

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = IssueForm(
            request.POST if request.method == "POST" else None, initial={"agent": request.GET.get("agent")}
        )
        error = ""
        if form.is_bound and form.is_valid() and not _confirmation_use(request):
            error = "This form was already submitted once; submit it again to issue another credential."
        elif form.is_bound and form.is_valid():
            try:
                issued = services.credential_create(
                    acting=request.user,
                    agent=form.cleaned_data["agent"],
                    description=form.cleaned_data["description"],
                    expires_at=form.cleaned_data["expires_at"],
                )
            except (ApiError, SecretStoreError) as exc:
                error = _failure(exc)
            else:
                results = [{"credential": issued.credential, "client_secret": issued.client_secret}]
                return self._issued(request, results, title="New credential", grace_period_seconds=None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Issue a credential",
            "form": form,
            "error": error,
            "confirmation": _confirmation_issue(request),
        }
        return TemplateResponse(request, TEMPLATES + "issue_form.html", context)

    # Shared pages.

    def _confirmation(
        self,
        request: HttpRequest,
        credentials: list[Credential],
        *,
        action: str | None,
        kind: str,
        form,
        reused: bool = False,
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{kind.capitalize()} {len(credentials)} credential{'s' if len(credentials) != 1 else ''}?",
            "kind": kind,
            "credentials": credentials,
            "action": action,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "form": form,
            "confirmation": _confirmation_issue(request),
            "reused": reused,
        }
        return TemplateResponse(request, TEMPLATES + "confirm.html", context)

    def _issued(
        self, request: HttpRequest, results: list[dict[str, Any]], *, title: str, grace_period_seconds: int | None
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "results": results,
            "succeeded": sum(1 for result in results if "client_secret" in result),
            "failed": sum(1 for result in results if "error" in result),
            "grace_period_seconds": grace_period_seconds,
        }
        response = TemplateResponse(request, TEMPLATES + "issued.html", context)
        try:
            # Now, not on the way out: the changes are committed, and these secrets exist nowhere else.
            response.render()
        except Exception as exc:
            logger.error("the page of new secrets could not be rendered; showing a plain one error=%s", type(exc).__name__)
            response = HttpResponse(_plain_issued_page(title, results))
        # The page holds secrets: no cache, proxy or back button may keep it.
        add_never_cache_headers(response)
        response["Pragma"] = "no-cache"
        return response


def _plain_issued_page(title: str, results: list[dict[str, Any]]) -> str:
    """The new secrets on a page with nothing in it that can fail to render: the last resort, after the commit."""
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td><code>{}</code></td></tr>",
        ((result["credential"].client_id, result.get("client_secret") or result.get("error", "")) for result in results),
    )
    return format_html(
        "<!DOCTYPE html><html><head><title>{}</title></head><body><h1>{}</h1>"
        "<p>Copy each new secret now: AgentIdP cannot show it again.</p>"
        "<table><tr><th>clientId</th><th>New clientSecret</th></tr>{}</table></body></html>",
        title,
        title,
        rows,
    )


# --- the audit trail --------------------------------------------------------------------------


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
        label = event.agent_name or event.details.get("name") or str(event.agent_id)
        return format_html(
            '<a href="?{}" title="{}">{}</a>', urlencode({"agent_id": event.agent_id}), event.agent_id, label
        )

    @admin.display(description="credential")
    def credential(self, event: AuditEvent) -> str:
        if event.credential_id is None:
            return "-"
        label = event.client_id or event.details.get("clientId") or str(event.credential_id)
        return format_html(
            '<a href="?{}" title="{}">{}</a>',
            urlencode({"credential_id": event.credential_id}),
            event.credential_id,
            label,
        )
