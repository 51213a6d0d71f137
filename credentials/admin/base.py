"""What every page of the console shares: the lookups a changelist accepts, read-only rows, one-time confirmations."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import get_fields_from_path
from django.db import DataError, NotSupportedError, router, transaction
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest
from django.urls import reverse
from django.utils.http import urlencode

from vaultstore.exceptions import SecretStoreError

from ..errors import ApiError

#: Where the console's templates for credentials live.
TEMPLATES = "admin/credentials/credential/"
#: The session key of the confirmations handed out and not yet used (the newest few).
CONFIRMATIONS_SESSION_KEY = "agentidp.console.confirmations"
CONFIRMATIONS_KEPT = 20

logger = logging.getLogger("credentials.admin")


def confirmation_issue(request: HttpRequest) -> str:
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


def confirmation_use(request: HttpRequest) -> bool:
    """Return whether the posted confirmation token was handed out and unused, and use it up."""
    token = request.POST.get("confirmation", "")
    tokens = request.session.get(CONFIRMATIONS_SESSION_KEY, [])
    if not token or token not in tokens:
        return False
    request.session[CONFIRMATIONS_SESSION_KEY] = [item for item in tokens if item != token]
    return True


def audit_url(**filters: Any) -> str:
    return reverse("admin:credentials_auditevent_changelist") + "?" + urlencode(filters)


def action_failure(exc: Exception) -> str:
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
