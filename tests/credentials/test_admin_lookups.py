"""
What the console's changelists accept in their query strings.

A changelist turns its query string into a database query, so an open one is an oracle:
`?secret_hash__gte=...` answers one bit of a hash per request, and a staff user who may
only view credentials reads a whole bcrypt hash in a few hundred requests; and a lookup
or a value the database cannot run turns into a server error. The console accepts what
its own filters, date hierarchy and search put in a URL, refuses every lookup on a field
that holds a hash, a Vault path or a Vault version (400, whatever the relation or the
value), and treats a value the database refuses as a bad filter (the list unfiltered,
flagged ?e=1), never a 500.

Runs on the database the suite runs on: SQLite, or PostgreSQL when DATABASE_URL names it.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.contrib.admin import SimpleListFilter
from django.contrib.auth.models import Permission
from django.db.models.constants import LOOKUP_SEP
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from credentials import services
from credentials.models import Agent, AuditEvent, Credential
from tests.factories import AgentFactory, make_credential, make_trust_policy

#: The columns that hold a secret's hash or say where Vault keeps it and which version is trusted.
SECRET_FIELDS = ("secret_hash", "vault_path", "vault_version")

#: Every admin credentials.admin registers, by model name.
CONSOLE_ADMINS = {
    model._meta.model_name: model_admin
    for model, model_admin in admin.site._registry.items()
    if type(model_admin).__module__.startswith("credentials.admin.")
}

#: How each changelist reaches a secret-bearing column: through relations, or as a key of a JSON column.
SECRET_PREFIXES = {
    "agent": ("", "credentials__", "credentials__grace_secrets__"),
    "credential": ("", "grace_secrets__", "agent__credentials__", "agent__credentials__grace_secrets__"),
    "auditevent": ("", "details__"),
    "trustpolicy": ("agent__credentials__", "agent__credentials__grace_secrets__"),
}
SECRET_PATHS = [
    (model, prefix + field)
    for model, prefixes in SECRET_PREFIXES.items()
    for prefix in prefixes
    for field in SECRET_FIELDS
]

LOOKUP_SUFFIXES = ("", "__exact", "__iexact", "__gte", "__lt", "__startswith", "__regex", "__isnull", "__in")

VIEW_PERMISSIONS = ("view_agent", "view_credential", "view_auditevent", "view_trustpolicy")


def changelist(model: str) -> str:
    return reverse(f"admin:credentials_{model}_changelist")


def touches_secret(path: str) -> bool:
    return not set(SECRET_FIELDS).isdisjoint(path.lstrip("^=@").split(LOOKUP_SEP))


@pytest.fixture
def viewer(django_user_model) -> Client:
    """A staff user who may only view agents, credentials and the audit trail (and so filter their lists)."""
    user = django_user_model.objects.create_user(username="viewer", password="unused", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=VIEW_PERMISSIONS))
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def root(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser(username="root", password="unused", email="root@example.com")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def stored_secrets(vault_enabled, settings) -> list[Credential]:
    """
    Credentials whose secrets are in both stores, each with an old secret in its grace period.

    One is in Vault (a path and a version on it and on its grace secret) and one in bcrypt
    (a hash on both), so every secret-bearing column holds a value to probe.
    """
    in_vault = make_credential(AgentFactory(name="vaulted")).credential
    services.credential_rotate(acting=None, credential=in_vault, grace_period_seconds=3600)
    settings.VAULTSTORE = vault_enabled.vaultstore_setting(default="bcrypt")
    on_bcrypt = make_credential(AgentFactory(name="hashed")).credential
    services.credential_rotate(acting=None, credential=on_bcrypt, grace_period_seconds=3600)
    credentials = list(Credential.objects.order_by("client_id"))
    assert {credential.storage for credential in credentials} == {"vault", "bcrypt"}
    return credentials


# --- secret-bearing columns -------------------------------------------------------------------


def test_every_console_admin_says_how_it_reaches_secret_bearing_columns():
    assert set(CONSOLE_ADMINS) == set(SECRET_PREFIXES) == {"agent", "credential", "auditevent", "trustpolicy"}


@pytest.mark.parametrize(("model", "path"), SECRET_PATHS)
def test_changelists_refuse_every_lookup_on_a_secret_bearing_column(viewer, stored_secrets, model, path):
    answers = {suffix: viewer.get(changelist(model), {path + suffix: "$2b$"}).status_code for suffix in LOOKUP_SUFFIXES}

    assert answers == dict.fromkeys(LOOKUP_SUFFIXES, 400)


def probes(value) -> list[tuple[str, str]]:
    """Lookups a binary search sends: some match the stored value, some do not."""
    text = str(value)
    return [
        ("", text),
        ("", text + "x"),
        ("__gte", text),
        ("__gte", "~"),
        ("__lt", text),
        ("__lt", "!"),
        ("__startswith", text[: len(text) // 2]),
        ("__startswith", text[: len(text) // 2] + "~"),
        ("__regex", "^" + re.escape(text[:8])),
        ("__regex", "^~"),
        ("__isnull", "True"),
        ("__isnull", "False"),
    ]


#: The paths that name a column of the changelist's model or of a related one (not a JSON key, not a missing field).
RESOLVING_PATHS = [
    (model, path)
    for model, path in SECRET_PATHS
    if model == "credential" or (model == "agent" and path.startswith("credentials__"))
]


@pytest.mark.parametrize(("model", "path"), RESOLVING_PATHS)
def test_the_refusal_is_the_same_whether_or_not_the_value_matches_the_secret(viewer, stored_secrets, model, path):
    model_class = {"agent": Agent, "credential": Credential}[model]
    values = [value for value in model_class.objects.values_list(path, flat=True) if value]
    assert values

    responses = [
        viewer.get(changelist(model), {path + suffix: probe}) for value in values for suffix, probe in probes(value)
    ]

    assert {response.status_code for response in responses} == {400}
    assert len({response.content for response in responses}) == 1


def test_no_console_admin_searches_filters_or_orders_on_a_secret_bearing_column(rf, django_user_model):
    request = rf.get("/")
    request.user = django_user_model(is_superuser=True, is_staff=True)
    for name, model_admin in CONSOLE_ADMINS.items():
        named = [
            *model_admin.get_search_fields(request),
            *(model_admin.get_ordering(request) or ()),
            *model_admin.model._meta.ordering,
            *([model_admin.date_hierarchy] if model_admin.date_hierarchy else []),
            *model_admin.get_sortable_by(request),
        ]
        for item in model_admin.get_list_filter(request):
            if isinstance(item, type) and issubclass(item, SimpleListFilter):
                named.append(item.parameter_name)
            else:
                named.append(item[0] if isinstance(item, list | tuple) else item)
        for column in model_admin.get_list_display(request):
            attribute = getattr(model_admin, column, None) if isinstance(column, str) else column
            named.append(getattr(attribute, "admin_order_field", column if isinstance(column, str) else ""))
        assert not [path for path in named if isinstance(path, str) and touches_secret(path.lstrip("-"))], name


# --- crafted queries ----------------------------------------------------------------------------

LONG = "x" * 20_000

#: Query strings nobody clicks: each as (name, value) pairs, for every changelist.
CRAFTED = [
    # The date hierarchy: years, months and days Python's datetime or the database cannot hold.
    [("occurred_at__year", "99999999999")],
    [("occurred_at__year", "9999")],
    [("occurred_at__year", "0")],
    [("occurred_at__year", "-1")],
    [("occurred_at__year", "year")],
    [("occurred_at__year", "2024"), ("occurred_at__month", "99999999999")],
    [("occurred_at__year", "9999"), ("occurred_at__month", "12")],
    [("occurred_at__year", "9999"), ("occurred_at__month", "12"), ("occurred_at__day", "31")],
    [("occurred_at__year", "2024"), ("occurred_at__month", "2"), ("occurred_at__day", "30")],
    [("occurred_at__year", "2024"), ("occurred_at__year", "99999999999")],
    [("occurred_at__month", "99999999999")],
    [("occurred_at__day", "-1")],
    [("occurred_at__day", "1" * 40)],
    [("created_at__year", "99999999999")],
    [("created_at__gte", "99999999999")],
    # Numbers out of range, negative or not numbers at all.
    [("vault_version", "9" * 40)],
    [("vault_version__gte", "-1")],
    [("vault_version", "one")],
    [("id", "9" * 40)],
    [("id", "-1")],
    [("id__in", "1,x")],
    [("p", "9" * 40)],
    [("p", "-1")],
    [("p", "x")],
    [("o", "9" * 40)],
    [("o", "-1.x.2")],
    [("all", "")],
    # JSON columns: lookups SQLite cannot run, and ones that reach into them.
    [("scopes__contains", "reports:read")],
    [("scopes__contains", '["reports:read"]')],
    [("scopes__contained_by", "[]")],
    [("scopes__has_key", "x")],
    [("scopes__0", "reports:read")],
    [("scopes__regex", "(")],
    [("details__contains", "{}")],
    [("details__contains", "name")],
    [("details__has_key", "name")],
    [("details__has_keys", "name,clientId")],
    [("details__name__regex", "(")],
    [("details__regex", "(")],
    # Text lookups the database rejects, unknown fields, relations and lookups.
    [("name__regex", "(")],
    [("client_id__iregex", "[")],
    [("actor_label__regex", "*")],
    [("nope", "1")],
    [("credentials__nope", "1")],
    [("agent__nope", "1")],
    [("status__nope", "x")],
    [("status__exact__exact", "x")],
    [("storage__isnull", "perhaps")],
    [("agent_id", "not-a-uuid")],
    [("credential_id", "00000000-0000-0000-0000-000000000000")],
    [("_to_field", "secret_hash")],
    [("_facets", "1")],
    # NUL bytes (PostgreSQL refuses them in text) and very long values, in the console's own parameters.
    [("q", "\x00")],
    [("q", LONG)],
    [("status", "\x00")],
    [("status__exact", "a\x00b")],
    [("storage", "\x00")],
    [("storage__exact", LONG)],
    [("action__exact", "\x00")],
    [("actor_type__exact", LONG)],
    [("actor", "user:\x00")],
    [("actor", "\x00:1")],
    [("actor", "user:" + LONG)],
    [("agent_id", "\x00")],
    [("credential_id", LONG)],
    [("_facets", "1"), ("status__exact", "\x00")],
    [("_facets", "1"), ("actor", "user:\x00")],
    [("e", "1"), ("occurred_at__year", "99999999999")],
    [("e", "1"), ("q", "\x00")],
]


@pytest.fixture
def console_data(db) -> None:
    """Rows behind every changelist: agents, credentials with grace secrets, and their audit trail."""
    for name in ("alpha", "beta"):
        issued = make_credential(AgentFactory(name=name))
        services.credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=3600)
    assert AuditEvent.objects.count() == 4


@pytest.mark.parametrize("model", sorted(SECRET_PREFIXES))
@pytest.mark.parametrize("query", CRAFTED, ids=lambda query: urlencode(query)[:60])
def test_crafted_changelist_queries_never_answer_a_server_error(root, console_data, model, query):
    response = root.get(changelist(model) + "?" + urlencode(query))

    assert response.status_code < 500
    if response.status_code == 302:
        assert response["Location"] == changelist(model) + "?e=1"
    # The request's transaction is still usable afterwards (on PostgreSQL a failed query aborts it).
    assert root.get(changelist(model)).status_code == 200


# --- what the console's own pages link to keeps working -------------------------------------------


def links_on(page: str) -> set[str]:
    """The query strings of the links a changelist offers: filters, date hierarchy, sorting, facets, pages."""
    return {match.replace("&amp;", "&") for match in re.findall(r'href="(\?[^"]*)"', page)}


@pytest.mark.parametrize("model", sorted(SECRET_PREFIXES))
def test_every_link_a_changelist_offers_answers(viewer, console_data, model):
    if model == "trustpolicy":
        for agent in Agent.objects.all():
            make_trust_policy(agent)
    first = viewer.get(changelist(model), {"_facets": "1"})
    assert first.status_code == 200
    links = links_on(first.content.decode())
    today = timezone.now()
    if model == "auditevent":
        drilled = viewer.get(
            changelist(model),
            {"occurred_at__year": today.year, "occurred_at__month": today.month, "occurred_at__day": today.day},
        )
        assert drilled.status_code == 200 and drilled.context["cl"].result_count == 4
        links |= links_on(drilled.content.decode())
        assert any("occurred_at__year" in link for link in links)
        assert any("actor=" in link for link in links) and any("agent_id=" in link for link in links)
    assert len(links) > 3

    answers = {link: viewer.get(changelist(model) + link).status_code for link in sorted(links)}

    assert answers == dict.fromkeys(sorted(links), 200)
