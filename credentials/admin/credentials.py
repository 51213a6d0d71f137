"""The console's credentials: the list, issuing, rotating and deleting, and the one page that shows new secrets."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import F, QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join

from vaultstore.exceptions import SecretStoreError

from .. import services
from ..api.base import has_control_characters
from ..api.serializers import MAX_DESCRIPTION_LENGTH
from ..errors import ApiError
from ..models import Agent, Credential
from .base import TEMPLATES, ConsoleAdmin, action_failure, audit_url, confirmation_issue, confirmation_use, logger
from .keys import credential_keys_display


class CredentialStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("compromised", "Compromised")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.active().compromised(False)
        if self.value() == "expired":
            return queryset.expired().compromised(False)
        if self.value() == "compromised":
            return queryset.compromised()
        return queryset


#: Compromised credentials first (a leaked secret waits for its rotation), then oldest first.
COMPROMISED_FIRST = [F("compromised_at").desc(nulls_last=True), "created_at", "id"]


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
        "kind",
        "storage",
        "status",
        "created_at",
        "rotated_at",
        "expires_at",
        "last_used_at",
    )
    list_filter = ("kind", "storage", CredentialStatusFilter)
    list_select_related = ("agent",)
    search_fields = ("client_id", "agent__name")
    # Never secret_hash. The Vault path says where the secret is, not what it is.
    fields = (
        "id",
        "client_id",
        "agent",
        "description",
        "kind",
        "storage",
        "keys",
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
    ordering = COMPROMISED_FIRST

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

    @admin.display(description="keys (previous ones until)")
    def keys(self, credential: Credential) -> str:
        return credential_keys_display(credential)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        credential = self.get_object(request, unquote(object_id))
        extra_context = {
            **(extra_context or {}),
            "audit_url": audit_url(credential_id=unquote(object_id)),
            # A key credential has no secret to rotate here: new keys go through the API.
            "can_rotate": self.has_rotate_permission(request) and not (credential and credential.is_key),
            "can_delete": self.has_delete_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # Rotation: the action, and the button on a credential's page.

    @admin.action(description="Rotate selected credentials", permissions=["rotate"])
    def rotate_selected(self, request: HttpRequest, queryset: QuerySet[Credential]) -> HttpResponse:
        return self._rotate(request, queryset, action="rotate_selected")

    def rotate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._one(request, object_id, self.has_rotate_permission, self._rotate)

    def _one(self, request: HttpRequest, object_id: str, permitted, act) -> HttpResponse:
        """Run `act` (rotation or deletion) for the credential of a page's button, if it exists and is `permitted`."""
        credential = self.get_object(request, unquote(object_id))
        if credential is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not permitted(request, credential):
            raise PermissionDenied
        return act(request, Credential.objects.filter(pk=credential.pk), action=None)

    def _rotate(self, request: HttpRequest, queryset: QuerySet[Credential], *, action: str | None) -> HttpResponse:
        credentials = list(queryset.select_related("agent").order_by("agent__name", "client_id"))
        keyed = [credential for credential in credentials if credential.is_key]
        if keyed:
            # The console hands out secrets only; a key credential's new keys come through the API.
            names = ", ".join(credential.client_id for credential in keyed)
            self.message_user(
                request,
                f"Not rotated: {names}. A key credential has no secret; rotate it with its new public keys "
                "through the API (POST .../credentials/{credentialId}/rotate with jwks or jwksUri).",
                messages.WARNING,
            )
            credentials = [credential for credential in credentials if not credential.is_key]
            if not credentials:
                return HttpResponseRedirect(reverse("admin:credentials_credential_changelist"))
        confirmed = request.method == "POST" and request.POST.get("post") == "yes"
        form = RotateForm(request.POST if confirmed else None)
        if not confirmed or not form.is_valid():
            return self._confirmation(request, credentials, action=action, kind="rotate", form=form)
        if not confirmation_use(request):
            return self._confirmation(request, credentials, action=action, kind="rotate", form=form, reused=True)
        grace = form.cleaned_data["grace_period_seconds"]
        results = []
        for credential in credentials:
            try:
                issued = services.credential_rotate(
                    acting=request.user, credential=credential, grace_period_seconds=grace
                )
            except (ApiError, SecretStoreError) as exc:
                results.append({"credential": credential, "error": action_failure(exc)})
            else:
                results.append({"credential": issued.credential, "client_secret": issued.client_secret})
        return self._issued(request, results, title="Rotated credentials", grace_period_seconds=grace)

    # Deletion: the action (replacing Django's bulk delete), and the view behind the Delete button.

    @admin.action(description="Delete selected credentials", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Credential]) -> HttpResponse | None:
        return self._delete(request, queryset, action="delete_selected")

    def delete_view(self, request, object_id, extra_context=None):
        return self._one(request, object_id, self.has_delete_permission, self._delete)

    def _delete(self, request: HttpRequest, queryset: QuerySet[Credential], *, action: str | None) -> HttpResponse:
        credentials = list(queryset.select_related("agent").order_by("agent__name", "client_id"))
        if not (request.method == "POST" and request.POST.get("post") == "yes"):
            return self._confirmation(request, credentials, action=action, kind="delete", form=None)
        if not confirmation_use(request):
            return self._confirmation(request, credentials, action=action, kind="delete", form=None, reused=True)
        deleted = 0
        for credential in credentials:
            try:
                services.credential_delete(acting=request.user, credential=credential)
            except (ApiError, SecretStoreError) as exc:
                self.message_user(request, f"{credential.client_id}: {action_failure(exc)}", messages.ERROR)
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
        if form.is_bound and form.is_valid() and not confirmation_use(request):
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
                error = action_failure(exc)
            else:
                results = [{"credential": issued.credential, "client_secret": issued.client_secret}]
                return self._issued(request, results, title="New credential", grace_period_seconds=None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Issue a credential",
            "form": form,
            "error": error,
            "confirmation": confirmation_issue(request),
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
            "confirmation": confirmation_issue(request),
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
            logger.error(
                "the page of new secrets could not be rendered; showing a plain one error=%s", type(exc).__name__
            )
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
        (
            (result["credential"].client_id, result.get("client_secret") or result.get("error", ""))
            for result in results
        ),
    )
    return format_html(
        "<!DOCTYPE html><html><head><title>{}</title></head><body><h1>{}</h1>"
        "<p>Copy each new secret now: AgentIdP cannot show it again.</p>"
        "<table><tr><th>clientId</th><th>New clientSecret</th></tr>{}</table></body></html>",
        title,
        title,
        rows,
    )
