"""
The operators' console (Django admin), driven through Django's test client.

Every change the console makes goes through credentials.services with the staff user as
the actor, so each test checks what a person at the console sees (the pages) and what
changed behind them (rows, the audit trail, the token endpoint, Vault). A new secret
appears once, on the page that answers the rotation or issue that made it, and nowhere
else: not on any other page, not in messages, the admin's log, the audit trail or logs.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
import re
from html.parser import HTMLParser

import pytest
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import display_for_field
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from credentials import services
from credentials.admin import CredentialAdmin
from credentials.models import Agent, AuditEvent, Credential, GraceSecret, SecretPurge
from tests.conftest import assert_logs_keep, token_for
from tests.credentials.helpers import authenticates, events, expire
from tests.factories import AgentFactory, make_credential
from tests.oauth.conftest import is_active

#: Every permission the console asks for, on this app's models.
CONSOLE_PERMISSIONS = (
    "view_agent",
    "suspend_agent",
    "view_credential",
    "add_credential",
    "rotate_credential",
    "delete_credential",
    "view_auditevent",
)

#: The templates of Django's own delete confirmations, which list related objects and delete around the services.
DJANGO_DELETE_TEMPLATES = {"admin/delete_confirmation.html", "admin/delete_selected_confirmation.html"}

CONFIRM_TEMPLATE = "admin/credentials/credential/confirm.html"
ISSUED_TEMPLATE = "admin/credentials/credential/issued.html"
ISSUE_FORM_TEMPLATE = "admin/credentials/credential/issue_form.html"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def login(client, django_user_model):
    """Return a function that logs `client` in as a new staff user holding exactly these permissions."""

    def login(*codenames: str, username: str = "operator"):
        user = django_user_model.objects.create_user(username=username, password="unused", is_staff=True)
        permissions = Permission.objects.filter(content_type__app_label="credentials", codename__in=codenames)
        assert permissions.count() == len(set(codenames)), codenames
        user.user_permissions.add(*permissions)
        client.force_login(user)
        return user

    return login


@pytest.fixture
def operator(login):
    """A staff user holding every console permission (not a superuser), logged in on `client`."""
    return login(*CONSOLE_PERMISSIONS)


@pytest.fixture
def superuser_client(client, django_user_model):
    user = django_user_model.objects.create_superuser(username="root", password="unused", email="root@example.com")
    client.force_login(user)
    return client


@pytest.fixture
def other_issued(db) -> services.IssuedCredential:
    """A credential of another agent: a client to call introspection with."""
    return make_credential(AgentFactory(name="introspector"))


# --- reading pages --------------------------------------------------------------------------


def url(name: str, *args) -> str:
    return reverse(f"admin:credentials_{name}", args=args)


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def row_of(page: str, label: str) -> dict[str, str]:
    """The changelist row that shows `label`, as {field name: displayed text}."""
    rows = [row for row in page.split("<tr")[1:] if f">{label}<" in row]
    assert len(rows) == 1, f"{len(rows)} rows show {label!r}"
    cells = re.findall(r'<t[hd] class="field-(\w+)[^"]*"[^>]*>(.*?)</t[hd]>', rows[0], re.S)
    return {name: text_of(value) for name, value in cells}


def shown(response) -> set:
    """The primary keys a changelist response lists."""
    assert response.status_code == 200, response.status_code
    return {obj.pk for obj in response.context["cl"].result_list}


def templates_of(response) -> set[str]:
    return {template.name for template in response.templates}


def row_of_result(page: str, client_id: str) -> str:
    """The result page's row for one credential (raw HTML, its <tr> attributes included)."""
    rows = ["<tr" + row for row in page.split("<tr")[1:] if f">{client_id}</a>" in row]
    assert len(rows) == 1
    return rows[0]


class _SecretInputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "input" and "client-secret" in (attributes.get("class") or "").split():
            assert "readonly" in attributes
            self.secrets[attributes["data-client-id"]] = attributes["value"]


def secrets_on(response) -> dict[str, str]:
    """The new secrets a result page shows, by clientId; each must appear on it exactly once."""
    assert response.status_code == 200, response.status_code
    assert ISSUED_TEMPLATE in templates_of(response)
    page = response.content.decode()
    parser = _SecretInputs()
    parser.feed(page)
    for secret in parser.secrets.values():
        assert page.count(secret) == 1
    return parser.secrets


def assert_never_cached(response) -> None:
    assert "no-store" in response["Cache-Control"]
    assert response["Pragma"] == "no-cache"


def field_display(credential: Credential, name: str) -> str:
    """What the changelist shows for a date column of the credential."""
    return display_for_field(getattr(credential, name), Credential._meta.get_field(name), "-")


# --- driving the console --------------------------------------------------------------------


def run_action(client, model: str, action: str, objects, **data):
    """Choose `action` for `objects` on the changelist, as its form does (confirmation pages answer this)."""
    return client.post(
        url(f"{model}_changelist"),
        {"action": action, "_selected_action": [str(obj.pk) for obj in objects], "index": "0", **data},
    )


def confirmation_of(response) -> dict[str, str]:
    """The one-time confirmation a confirmation or issue page hands out, as form data to post back."""
    tokens = re.findall(r'<input type="hidden" name="confirmation" value="([^"]+)">', response.content.decode())
    assert len(tokens) <= 1
    return {"confirmation": tokens[0]} if tokens else {}


def confirm_action(client, model: str, action: str, objects, **data):
    """Submit an action's confirmation page, as its form does (`data` carries its confirmation)."""
    return client.post(
        url(f"{model}_changelist"),
        {"action": action, "_selected_action": [str(obj.pk) for obj in objects], "post": "yes", **data},
    )


def ask_to_rotate(client, how: str, credentials):
    """Everything short of confirming a rotation: the action chosen, or the Rotate button's page (GET or POST)."""
    if how == "action":
        return run_action(client, "credential", "rotate_selected", credentials)
    (credential,) = credentials
    if how == "button-get":
        return client.get(url("credential_rotate", credential.pk))
    return client.post(url("credential_rotate", credential.pk), {"grace_period_seconds": "0"})


def confirm_rotation(client, how: str, credentials, confirmation, grace="0"):
    """Submit a rotation's confirmation page, as its form does."""
    data = {"grace_period_seconds": grace, **confirmation_of(confirmation)}
    if how == "action":
        return confirm_action(client, "credential", "rotate_selected", credentials, **data)
    (credential,) = credentials
    return client.post(url("credential_rotate", credential.pk), {"post": "yes", **data})


def rotate(client, how: str, credentials, grace="0"):
    """Rotate through the console, as a person does: the action or the Rotate button, then its confirmation."""
    confirmation = ask_to_rotate(client, "action" if how == "action" else "button-get", credentials)
    assert confirmation.status_code == 200
    assert CONFIRM_TEMPLATE in templates_of(confirmation)
    return confirm_rotation(client, how, credentials, confirmation, grace=grace)


def delete(client, how: str, credentials):
    """Delete through the console (confirmation first): the changelist action, or the Delete button."""
    if how == "action":
        confirmation = run_action(client, "credential", "delete_selected", credentials)
    else:
        (credential,) = credentials
        confirmation = client.get(url("credential_delete", credential.pk))
    assert confirmation.status_code == 200
    assert CONFIRM_TEMPLATE in templates_of(confirmation)
    assert not templates_of(confirmation) & DJANGO_DELETE_TEMPLATES
    assert Credential.objects.filter(pk__in=[c.pk for c in credentials]).count() == len(credentials)
    if how == "action":
        return confirm_action(client, "credential", "delete_selected", credentials, **confirmation_of(confirmation))
    return client.post(url("credential_delete", credential.pk), {"post": "yes", **confirmation_of(confirmation)})


def issue(client, agent, **data):
    """Issue a credential through the console: open the form (for `agent`), then submit it."""
    form = client.get(url("credential_add"), {"agent": str(agent.pk)})
    assert form.status_code == 200
    return client.post(url("credential_add"), {"agent": str(agent.pk), **data, **confirmation_of(form)})


def token_status(token_response, client_id: str, secret: str) -> int:
    return token_response(client_id, secret).status_code


def assert_by(event: AuditEvent, user) -> None:
    assert (event.actor_type, event.actor_id, event.actor_label) == ("user", str(user.pk), user.get_username())


# --- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["agent_changelist", "credential_changelist", "auditevent_changelist", "credential_add"]
)
def test_console_requires_a_staff_login(client, db, name):
    response = client.get(url(name))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_console_refuses_a_logged_in_user_who_is_not_staff(client, django_user_model, issued):
    client.force_login(django_user_model.objects.create_user(username="visitor", password="unused"))

    response = client.post(url("credential_rotate", issued.credential.pk), {"post": "yes", "grace_period_seconds": "0"})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert authenticates(issued.credential.client_id, issued.client_secret)


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("name", ["credential_rotate", "credential_delete", "credential_add"])
def test_staff_without_credential_permissions_is_refused_changes(client, login, issued, name, method):
    login("view_agent", "view_auditevent")
    args = [] if name == "credential_add" else [issued.credential.pk]
    data = {"post": "yes", "grace_period_seconds": "0", "agent": str(issued.credential.agent_id)}

    response = getattr(client, method)(url(name, *args), data if method == "post" else None)

    assert response.status_code == 403
    assert list(Credential.objects.values_list("pk", "secret_hash")) == [
        (issued.credential.pk, issued.credential.secret_hash)
    ]
    assert authenticates(issued.credential.client_id, issued.client_secret)


@pytest.mark.parametrize("model", ["agent", "auditevent"])
def test_console_has_no_add_page_for_agents_or_the_audit_trail(superuser_client, model):
    response = superuser_client.get(url(f"{model}_add"))

    assert response.status_code == 403


def test_console_cannot_delete_agents(superuser_client, issued):
    agent_url = url("agent_delete", issued.credential.agent_id)

    changelist = superuser_client.get(url("agent_changelist"))
    bulk = run_action(superuser_client, "agent", "delete_selected", [issued.credential.agent])

    assert superuser_client.get(agent_url).status_code == 403
    assert superuser_client.post(agent_url, {"post": "yes"}).status_code == 403
    choices = [name for name, _ in changelist.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in choices and "suspend_selected" in choices
    assert bulk.status_code in (200, 302)
    assert Agent.objects.filter(pk=issued.credential.agent_id).exists()
    assert Credential.objects.filter(pk=issued.credential.pk).exists()


# --- agents ---------------------------------------------------------------------------------


def test_agent_changelist_shows_status_owner_scopes_and_credential_count(client, operator):
    busy = AgentFactory(name="busy-bot", owner="payments-team", scopes=["reports:read", "ledger:write"])
    make_credential(busy)
    make_credential(busy)
    idle = AgentFactory(name="idle-bot", owner="ops", scopes=[], status=Agent.Status.SUSPENDED)

    page = client.get(url("agent_changelist")).content.decode()

    assert row_of(page, busy.name) == {
        "name": "busy-bot",
        "status": "Active",
        "owner": "payments-team",
        "scope_list": "reports:read ledger:write",
        "credential_count": "2",
        "created_at": display_for_field(busy.created_at, Agent._meta.get_field("created_at"), "-"),
    }
    idle_row = row_of(page, idle.name)
    assert (idle_row["status"], idle_row["owner"], idle_row["credential_count"]) == ("Suspended", "ops", "0")


def test_agent_changelist_searches_and_filters_on_status(client, operator):
    alpha = AgentFactory(name="alpha-reporter", owner="finance")
    beta = AgentFactory(name="beta-indexer", owner="search-team", status=Agent.Status.SUSPENDED)

    assert shown(client.get(url("agent_changelist"), {"q": "alpha"})) == {alpha.pk}
    assert shown(client.get(url("agent_changelist"), {"q": "search-team"})) == {beta.pk}
    assert shown(client.get(url("agent_changelist"), {"status__exact": "suspended"})) == {beta.pk}
    assert shown(client.get(url("agent_changelist"), {"status__exact": "active"})) == {alpha.pk}


def test_suspending_and_reactivating_an_agent_goes_through_the_service(client, login, issued, token_response):
    user = login("view_agent", "suspend_agent")
    agent, client_id, secret = issued.credential.agent, issued.credential.client_id, issued.client_secret
    assert token_status(token_response, client_id, secret) == 200

    suspended = run_action(client, "agent", "suspend_selected", [agent])

    assert suspended.status_code == 302
    assert Agent.objects.get(pk=agent.pk).status == "suspended"
    (event,) = events(AuditEvent.Action.AGENT_UPDATED)
    assert_by(event, user)
    assert event.agent_id == agent.pk
    assert event.details == {"changed": {"status": {"from": "active", "to": "suspended"}}}
    assert token_status(token_response, client_id, secret) == 401
    assert "Suspended 1 agents." in [str(m) for m in get_messages(suspended.wsgi_request)]

    reactivated = run_action(client, "agent", "reactivate_selected", [agent])

    assert reactivated.status_code == 302
    assert Agent.objects.get(pk=agent.pk).status == "active"
    later = events(AuditEvent.Action.AGENT_UPDATED)[-1]
    assert_by(later, user)
    assert later.details == {"changed": {"status": {"from": "suspended", "to": "active"}}}
    assert token_status(token_response, client_id, secret) == 200


def test_suspending_an_already_suspended_agent_changes_nothing(client, operator):
    agent = AgentFactory(status=Agent.Status.SUSPENDED)

    response = run_action(client, "agent", "suspend_selected", [agent])

    assert response.status_code == 302
    assert not events(AuditEvent.Action.AGENT_UPDATED)
    assert "Suspended 0 agents (1 already suspended)." in [str(m) for m in get_messages(response.wsgi_request)]


def test_staff_without_suspend_permission_cannot_suspend_agents(client, login, issued, token_response):
    login("view_agent")
    agent = issued.credential.agent

    page = client.get(url("agent_changelist"))
    response = run_action(client, "agent", "suspend_selected", [agent])

    assert page.status_code == 200
    assert b"suspend_selected" not in page.content
    assert response.status_code in (200, 302)
    assert Agent.objects.get(pk=agent.pk).status == "active"
    assert not events(AuditEvent.Action.AGENT_UPDATED)
    assert token_status(token_response, issued.credential.client_id, issued.client_secret) == 200


def test_agent_page_links_to_issuing_a_credential_for_it(client, operator, agent):
    page = client.get(url("agent_change", agent.pk)).content.decode()
    (issue_link,) = re.findall(r'<a href="([^"]+)" id="issue-credential">', page)

    form = client.get(html.unescape(issue_link))

    assert form.status_code == 200
    assert ISSUE_FORM_TEMPLATE in templates_of(form)
    assert re.search(rf'<option value="{agent.pk}" selected>', form.content.decode())


def test_agent_page_shows_the_resources_its_tokens_may_be_for(client, operator, db):
    agent = AgentFactory(allowed_resources=["https://tools.example/mcp", "https://reports.example/api?v=1&x=<b>"])
    bare = AgentFactory()

    page = client.get(url("agent_change", agent.pk)).content.decode()
    bare_page = client.get(url("agent_change", bare.pk)).content.decode()

    assert "Allowed resources:" in page
    assert "https://tools.example/mcp<br>https://reports.example/api?v=1&amp;x=&lt;b&gt;" in page
    assert re.search(r"Allowed resources:</label>\s*<div class=\"readonly\">-</div>", bare_page)


# --- credentials: the changelist ------------------------------------------------------------


def test_credential_changelist_shows_each_column_and_last_use_after_a_token_request(
    client, operator, agent, token_response
):
    expires_at = timezone.now() + datetime.timedelta(days=30)
    issued = make_credential(agent, expires_at=expires_at)
    rotated = make_credential(agent)
    services.credential_rotate(acting=None, credential=rotated.credential)

    before = row_of(client.get(url("credential_changelist")).content.decode(), issued.credential.client_id)
    assert token_status(token_response, issued.credential.client_id, issued.client_secret) == 200
    page = client.get(url("credential_changelist")).content.decode()

    credential = Credential.objects.get(pk=issued.credential.pk)
    assert before["last_used_at"] == "-"
    assert credential.last_used_at is not None
    assert row_of(page, credential.client_id) == {
        "client_id": credential.client_id,
        "agent": agent.name,
        "kind": "Secret",
        "storage": "bcrypt",
        "status": "active",
        "created_at": field_display(credential, "created_at"),
        "rotated_at": "-",
        "expires_at": field_display(credential, "expires_at"),
        "last_used_at": field_display(credential, "last_used_at"),
    }
    rotated_row = row_of(page, rotated.credential.client_id)
    assert rotated_row["rotated_at"] == field_display(Credential.objects.get(pk=rotated.credential.pk), "rotated_at")
    assert rotated_row["rotated_at"] != "-"
    assert (rotated_row["expires_at"], rotated_row["last_used_at"]) == ("-", "-")


def test_credential_changelist_filters_on_status(client, operator, agent):
    current = make_credential(agent).credential
    old = make_credential(agent).credential
    expire(old)

    assert shown(client.get(url("credential_changelist"), {"status": "expired"})) == {old.pk}
    assert shown(client.get(url("credential_changelist"), {"status": "active"})) == {current.pk}
    assert row_of(client.get(url("credential_changelist")).content.decode(), old.client_id)["status"] == "expired"


def test_credential_changelist_searches_by_client_id_and_agent_name(client, operator):
    ours = make_credential(AgentFactory(name="nightly-report-bot")).credential
    theirs = make_credential(AgentFactory(name="deploy-bot")).credential

    assert shown(client.get(url("credential_changelist"), {"q": ours.client_id})) == {ours.pk}
    assert shown(client.get(url("credential_changelist"), {"q": "nightly-report"})) == {ours.pk}
    assert shown(client.get(url("credential_changelist"), {"q": "deploy"})) == {theirs.pk}


def test_credential_changelist_filters_on_storage(client, operator, agent, vault_enabled, settings):
    settings.VAULTSTORE = vault_enabled.vaultstore_setting(default="bcrypt")
    on_bcrypt = make_credential(agent).credential
    settings.VAULTSTORE = vault_enabled.vaultstore_setting()
    in_vault = make_credential(agent).credential

    assert (on_bcrypt.storage, in_vault.storage) == ("bcrypt", "vault")
    assert shown(client.get(url("credential_changelist"), {"storage": "vault"})) == {in_vault.pk}
    assert shown(client.get(url("credential_changelist"), {"storage": "bcrypt"})) == {on_bcrypt.pk}


# --- no secret and no hash on any page -------------------------------------------------------


def test_no_console_page_shows_a_secret_or_hash(client, operator, agent, caplog):
    caplog.set_level(logging.DEBUG)
    issued = make_credential(agent)
    bystander = make_credential(agent)
    new_secret = secrets_on(rotate(client, "button", [issued.credential], grace="600"))[issued.credential.client_id]
    credential = Credential.objects.get(pk=issued.credential.pk)
    hidden = [
        issued.client_secret,
        new_secret,
        bystander.client_secret,
        credential.secret_hash,
        Credential.objects.get(pk=bystander.credential.pk).secret_hash,
        *GraceSecret.objects.values_list("secret_hash", flat=True),
    ]
    assert all(hidden) and len(set(hidden)) == 6
    event = AuditEvent.objects.filter(credential_id=credential.pk, action="credential.rotated").get()

    responses = {
        name: client.get(page)
        for name, page in {
            "agents": url("agent_changelist"),
            "agent": url("agent_change", agent.pk),
            "credentials": url("credential_changelist"),
            "credential": url("credential_change", credential.pk),
            "audit trail": url("auditevent_changelist"),
            "audit event": url("auditevent_change", event.pk),
            "rotate confirmation": url("credential_rotate", credential.pk),
            "delete confirmation": url("credential_delete", credential.pk),
            "issue form": url("credential_add") + f"?agent={agent.pk}",
        }.items()
    }
    responses["rotate action confirmation"] = run_action(client, "credential", "rotate_selected", [credential])
    responses["delete action confirmation"] = run_action(client, "credential", "delete_selected", [credential])
    # A later rotation's result page shows its own new secret, and none of the earlier ones.
    later = rotate(client, "button", [bystander.credential])
    later_secret = secrets_on(later)[bystander.credential.client_id]
    responses["later result page"] = later

    for name, response in responses.items():
        assert response.status_code == 200, name
        page = response.content.decode()
        for value in hidden:
            assert value not in page, name
        assert "$2b$" not in page, name
    assert later_secret not in {issued.client_secret, new_secret}
    assert_logs_keep(caplog, issued.client_secret, new_secret, later_secret, credential.secret_hash)


def test_credential_page_offers_no_field_to_edit_and_posting_to_it_changes_nothing(client, superuser_client, issued):
    credential = issued.credential
    change_url = url("credential_change", credential.pk)

    page = superuser_client.get(change_url)
    posted = superuser_client.post(
        change_url,
        {
            "secret_hash": "$2b$04$" + "x" * 53,
            "vault_path": "secret/data/elsewhere",
            "vault_version": "7",
            "description": "changed through the admin",
            "storage": "vault",
        },
    )

    assert page.status_code == 200
    text = page.content.decode()
    assert credential.client_id in text
    assert not re.search(r'name="(secret_hash|vault_path|vault_version|storage|description|expires_at)"', text)
    assert not re.search(r"<(textarea|select)\b", text)
    assert posted.status_code == 403
    after = Credential.objects.get(pk=credential.pk)
    assert (after.secret_hash, after.vault_path, after.vault_version, after.storage, after.description) == (
        credential.secret_hash,
        None,
        None,
        "bcrypt",
        credential.description,
    )
    assert authenticates(credential.client_id, issued.client_secret)


def test_vault_credential_page_names_its_path_but_not_what_vault_holds(client, operator, agent, vault_enabled):
    issued = make_credential(agent)
    credential = Credential.objects.get(pk=issued.credential.pk)

    page = client.get(url("credential_change", credential.pk)).content.decode()

    assert credential.vault_path in page
    assert vault_enabled.read(credential.vault_path) == {"clientSecret": issued.client_secret}
    assert issued.client_secret not in page
    assert not re.search(r'name="(vault_path|vault_version)"', page)


# --- rotation -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["action", "button-get", "button-post"])
def test_asking_to_rotate_shows_a_confirmation_with_a_grace_period_and_changes_nothing(client, operator, agent, how):
    first, second = make_credential(agent), make_credential(agent)
    chosen = [first.credential, second.credential] if how == "action" else [first.credential]

    response = ask_to_rotate(client, how, chosen)

    assert response.status_code == 200
    assert CONFIRM_TEMPLATE in templates_of(response)
    assert not templates_of(response) & {ISSUED_TEMPLATE}
    page = response.content.decode()
    for credential in chosen:
        assert f"<td>{credential.client_id}</td>" in page
    if how != "action":
        assert second.credential.client_id not in page
    assert re.search(r'<input type="number" name="grace_period_seconds"', page)
    assert '<input type="hidden" name="post" value="yes">' in page
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert not Credential.objects.filter(rotated_at__isnull=False).exists()
    assert authenticates(first.credential.client_id, first.client_secret)


@pytest.mark.parametrize(("grace", "old_secret_works"), [("0", False), ("600", True)])
@pytest.mark.parametrize("how", ["action", "button"])
def test_rotating_shows_each_new_secret_once_and_it_replaces_the_old_one(
    client, operator, agent, token_response, caplog, how, grace, old_secret_works
):
    caplog.set_level(logging.DEBUG)
    issued = [make_credential(agent), make_credential(agent)] if how == "action" else [make_credential(agent)]

    response = rotate(client, how, [item.credential for item in issued], grace=grace)

    assert_never_cached(response)
    new_secrets = secrets_on(response)
    assert set(new_secrets) == {item.credential.client_id for item in issued}
    for item in issued:
        client_id, new = item.credential.client_id, new_secrets[item.credential.client_id]
        assert new != item.client_secret
        assert token_status(token_response, client_id, new) == 200
        assert token_status(token_response, client_id, item.client_secret) == (200 if old_secret_works else 401)
    rotated = events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert {event.credential_id for event in rotated} == {item.credential.pk for item in issued}
    for event in rotated:
        assert_by(event, operator)
        assert event.details["gracePeriodSeconds"] == int(grace)
    assert_logs_keep(caplog, *new_secrets.values(), *(item.client_secret for item in issued))


def test_new_secret_goes_nowhere_but_the_result_page(client, operator, issued, caplog):
    caplog.set_level(logging.DEBUG)

    response = rotate(client, "action", [issued.credential])
    (secret,) = secrets_on(response).values()

    messages = [str(message) for message in get_messages(response.wsgi_request)]
    assert all(secret not in message for message in messages)
    assert secret not in response.cookies.get("messages", "") and secret not in str(client.session.items())
    next_page = client.get(url("credential_changelist"))
    assert secret not in next_page.content.decode()
    for entry in LogEntry.objects.all():
        assert secret not in f"{entry.object_repr} {entry.change_message} {entry}"
    for event in AuditEvent.objects.all():
        assert secret not in json.dumps(event.details) and secret not in str(event)
    assert_logs_keep(caplog, secret, issued.client_secret)


@pytest.mark.parametrize("grace", ["-1", "86401", "abc", ""])
@pytest.mark.parametrize("how", ["action", "button"])
def test_invalid_grace_period_shows_the_confirmation_again_and_rotates_nothing(client, operator, issued, how, grace):
    response = rotate(client, how, [issued.credential], grace=grace)

    assert response.status_code == 200
    assert CONFIRM_TEMPLATE in templates_of(response)
    assert response.context["form"].errors["grace_period_seconds"]
    assert 'class="errorlist' in response.content.decode()
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert Credential.objects.get(pk=issued.credential.pk).secret_hash == issued.credential.secret_hash
    assert authenticates(issued.credential.client_id, issued.client_secret)


@pytest.mark.parametrize("how", ["action", "button"])
def test_resubmitting_a_used_rotation_confirmation_rotates_nothing_again(client, operator, issued, token_response, how):
    confirmation = ask_to_rotate(client, "action" if how == "action" else "button-get", [issued.credential])
    (secret,) = secrets_on(confirm_rotation(client, how, [issued.credential], confirmation)).values()

    again = confirm_rotation(client, how, [issued.credential], confirmation)  # a reload, or the back button

    assert again.status_code == 200
    assert CONFIRM_TEMPLATE in templates_of(again) and ISSUED_TEMPLATE not in templates_of(again)
    assert "already used" in text_of(again.content.decode())
    assert secret not in again.content.decode()
    assert len(events(AuditEvent.Action.CREDENTIAL_ROTATED)) == 1
    assert token_status(token_response, issued.credential.client_id, secret) == 200


@pytest.mark.parametrize("how", ["action", "button"])
@pytest.mark.parametrize("kind", ["rotate", "delete"])
def test_a_change_posted_without_a_confirmation_the_console_handed_out_does_nothing(
    client, operator, issued, kind, how
):
    credential = issued.credential
    if how == "action":
        response = confirm_action(client, "credential", f"{kind}_selected", [credential], grace_period_seconds="0")
    else:
        response = client.post(url(f"credential_{kind}", credential.pk), {"post": "yes", "grace_period_seconds": "0"})

    assert response.status_code == 200
    assert CONFIRM_TEMPLATE in templates_of(response)
    assert f"<td>{credential.client_id}</td>" in response.content.decode()
    assert not AuditEvent.objects.exclude(action="credential.created").exists()
    assert Credential.objects.get(pk=credential.pk).secret_hash == credential.secret_hash
    assert authenticates(credential.client_id, issued.client_secret)


def test_credential_page_offers_rotate_and_delete_only_with_their_permissions(client, login, issued):
    credential = issued.credential
    login("view_credential", "rotate_credential", "delete_credential", username="full")
    full = client.get(url("credential_change", credential.pk)).content.decode()
    login("view_credential", username="viewer")
    viewer = client.get(url("credential_change", credential.pk)).content.decode()

    assert f'href="{url("credential_rotate", credential.pk)}" id="rotate-credential"' in full
    assert f'href="{url("credential_delete", credential.pk)}" id="delete-credential"' in full
    assert 'id="rotate-credential"' not in viewer and 'id="delete-credential"' not in viewer


def test_staff_without_rotate_permission_cannot_rotate(client, login, issued):
    login("view_credential", "delete_credential")
    credential = issued.credential

    changelist = client.get(url("credential_changelist"))
    by_action = confirm_action(client, "credential", "rotate_selected", [credential], grace_period_seconds="0")
    by_button = client.post(url("credential_rotate", credential.pk), {"post": "yes", "grace_period_seconds": "0"})

    choices = [name for name, _ in changelist.context["action_form"].fields["action"].choices]
    assert "rotate_selected" not in choices and "delete_selected" in choices
    assert by_action.status_code in (200, 302)
    assert ISSUED_TEMPLATE not in templates_of(by_action)
    assert by_button.status_code == 403
    assert client.get(url("credential_rotate", credential.pk)).status_code == 403
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert authenticates(credential.client_id, issued.client_secret)


def test_staff_with_view_permission_only_gets_no_credential_actions(client, login, issued):
    login("view_credential")

    response = client.get(url("credential_changelist"))

    assert response.status_code == 200
    assert response.context["action_form"] is None
    assert b"rotate_selected" not in response.content and b"delete_selected" not in response.content


def test_rotation_reports_a_refused_rotation_next_to_the_ones_that_worked(client, operator, agent, token_response):
    busy, fresh = make_credential(agent), make_credential(agent)
    for _ in range(services.MAX_GRACE_SECRETS):
        services.credential_rotate(acting=None, credential=busy.credential, grace_period_seconds=600)
    hash_before = Credential.objects.get(pk=busy.credential.pk).secret_hash

    response = rotate(client, "action", [busy.credential, fresh.credential], grace="600")

    new_secrets = secrets_on(response)
    assert set(new_secrets) == {fresh.credential.client_id}
    failed_row = row_of_result(response.content.decode(), busy.credential.client_id)
    assert 'class="failed"' in failed_row and "still in their grace period" in text_of(failed_row)
    assert Credential.objects.get(pk=busy.credential.pk).secret_hash == hash_before
    assert token_status(token_response, fresh.credential.client_id, new_secrets[fresh.credential.client_id]) == 200
    assert token_status(token_response, fresh.credential.client_id, fresh.client_secret) == 200  # its grace period
    assert [e.credential_id for e in events(AuditEvent.Action.CREDENTIAL_ROTATED) if e.actor_type == "user"] == [
        fresh.credential.pk
    ]


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("name", ["credential_rotate", "credential_delete"])
@pytest.mark.parametrize("object_id", ["00000000-0000-4000-8000-000000000000", "not-a-uuid"])
def test_rotate_and_delete_pages_of_an_unknown_credential_redirect(client, operator, issued, name, method, object_id):
    response = getattr(client, method)(url(name, object_id), {"post": "yes"} if method == "post" else None)

    assert response.status_code == 302
    assert Credential.objects.filter(pk=issued.credential.pk).exists()
    assert not AuditEvent.objects.exclude(action="credential.created").exists()


def test_rotation_reports_each_credential_that_vault_refused(
    client, operator, agent, vault_enabled, settings, token_response
):
    server = vault_enabled.require_server()
    settings.VAULTSTORE = vault_enabled.vaultstore_setting(default="bcrypt")
    moving = make_credential(agent)
    settings.VAULTSTORE = vault_enabled.vaultstore_setting()
    refused = make_credential(agent)
    old_version = Credential.objects.get(pk=refused.credential.pk).vault_version
    server.inject("status", status=500, path=f"/credentials/{refused.credential.pk}", method="POST")

    response = rotate(client, "action", [moving.credential, refused.credential])

    assert_never_cached(response)
    new_secrets = secrets_on(response)
    assert set(new_secrets) == {moving.credential.client_id}
    failed_row = row_of_result(response.content.decode(), refused.credential.client_id)
    assert 'class="failed"' in failed_row
    assert "Nothing was changed for this credential" in text_of(failed_row)
    assert "1 failed" in response.content.decode()
    assert token_status(token_response, moving.credential.client_id, new_secrets[moving.credential.client_id]) == 200
    assert Credential.objects.get(pk=moving.credential.pk).storage == "vault"
    assert token_status(token_response, refused.credential.client_id, refused.client_secret) == 200
    assert Credential.objects.get(pk=refused.credential.pk).vault_version == old_version
    assert [event.credential_id for event in events(AuditEvent.Action.CREDENTIAL_ROTATED)] == [moving.credential.pk]


# --- deletion -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["action", "button"])
def test_deleting_confirms_first_then_deletes_through_the_service(client, operator, issued, other_issued, how):
    token = token_for(client, issued)
    assert is_active(client, other_issued, token)

    response = delete(client, how, [issued.credential])

    assert response.status_code == 302
    assert response["Location"] == url("credential_changelist")
    assert not Credential.objects.filter(pk=issued.credential.pk).exists()
    (event,) = events(AuditEvent.Action.CREDENTIAL_DELETED)
    assert_by(event, operator)
    assert (event.credential_id, event.agent_id) == (issued.credential.pk, issued.credential.agent_id)
    assert not is_active(client, other_issued, token)
    assert not authenticates(issued.credential.client_id, issued.client_secret)
    assert "Deleted 1 credentials." in [str(m) for m in get_messages(response.wsgi_request)]
    assert Credential.objects.filter(pk=other_issued.credential.pk).exists()


def test_delete_action_replaces_djangos_bulk_delete(client, operator, agent):
    first, second = make_credential(agent).credential, make_credential(agent).credential

    changelist = client.get(url("credential_changelist"))
    confirmation = run_action(client, "credential", "delete_selected", [first, second])

    actions = changelist.context["cl"].model_admin.get_actions(changelist.wsgi_request)
    assert actions["delete_selected"][0] is CredentialAdmin.delete_selected
    assert actions["delete_selected"][0] is not django_delete_selected
    assert CONFIRM_TEMPLATE in templates_of(confirmation)
    assert not templates_of(confirmation) & DJANGO_DELETE_TEMPLATES
    assert "deleted_objects" not in confirmation.context
    page = confirmation.content.decode()
    assert f"<td>{first.client_id}</td>" in page and f"<td>{second.client_id}</td>" in page
    assert Credential.objects.count() == 2

    deleted = confirm_action(client, "credential", "delete_selected", [first, second], **confirmation_of(confirmation))

    assert deleted.status_code == 302
    assert not Credential.objects.exists()
    assert len(events(AuditEvent.Action.CREDENTIAL_DELETED)) == 2


@pytest.mark.parametrize("how", ["action", "button"])
def test_deleting_destroys_the_vault_entry(
    client, operator, agent, vault_enabled, django_capture_on_commit_callbacks, how
):
    issued = make_credential(agent)
    path = Credential.objects.get(pk=issued.credential.pk).vault_path
    assert vault_enabled.metadata(path) is not None

    with django_capture_on_commit_callbacks(execute=True):
        response = delete(client, how, [issued.credential])

    assert response.status_code == 302
    assert vault_enabled.metadata(path) is None
    assert not SecretPurge.objects.exists()
    assert not Credential.objects.filter(pk=issued.credential.pk).exists()


def test_deleting_while_vault_is_down_takes_effect_and_queues_the_purge(
    client, operator, agent, vault_enabled, django_capture_on_commit_callbacks, token_response
):
    server = vault_enabled.require_server()
    issued = make_credential(agent)
    path = Credential.objects.get(pk=issued.credential.pk).vault_path
    server.go_down()

    with django_capture_on_commit_callbacks(execute=True):
        response = delete(client, "action", [issued.credential])

    assert response.status_code == 302
    assert not Credential.objects.filter(pk=issued.credential.pk).exists()
    purge = SecretPurge.objects.get()
    assert (purge.storage, purge.vault_path, purge.credential_id) == ("vault", path, issued.credential.pk)
    assert_by(events(AuditEvent.Action.CREDENTIAL_DELETED)[0], operator)
    # Refused: 503 while Vault (the default store, where an unknown client's dummy read goes) is down.
    assert token_status(token_response, issued.credential.client_id, issued.client_secret) == 503


def test_staff_without_delete_permission_cannot_delete(client, login, issued):
    login("view_credential", "rotate_credential")
    credential = issued.credential

    choices = [
        name for name, _ in client.get(url("credential_changelist")).context["action_form"].fields["action"].choices
    ]
    by_action = confirm_action(client, "credential", "delete_selected", [credential])
    by_button = client.post(url("credential_delete", credential.pk), {"post": "yes"})

    assert "delete_selected" not in choices and "rotate_selected" in choices
    assert by_action.status_code in (200, 302)
    assert by_button.status_code == 403
    assert client.get(url("credential_delete", credential.pk)).status_code == 403
    assert Credential.objects.filter(pk=credential.pk).exists()
    assert not events(AuditEvent.Action.CREDENTIAL_DELETED)


# --- issuing --------------------------------------------------------------------------------


def test_issuing_a_credential_shows_its_secret_once_and_it_authenticates(
    client, operator, agent, token_response, caplog
):
    caplog.set_level(logging.DEBUG)
    form = client.get(url("credential_add"), {"agent": str(agent.pk)})
    assert form.status_code == 200
    assert str(form.context["form"]["agent"].value()) == str(agent.pk)

    response = issue(client, agent, description="nightly job")

    assert_never_cached(response)
    ((client_id, secret),) = secrets_on(response).items()
    credential = Credential.objects.get(client_id=client_id)
    assert (credential.agent_id, credential.description, credential.storage) == (agent.pk, "nightly job", "bcrypt")
    (event,) = events(AuditEvent.Action.CREDENTIAL_CREATED)
    assert_by(event, operator)
    assert event.credential_id == credential.pk
    assert token_status(token_response, client_id, secret) == 200
    assert all(secret not in str(m) for m in get_messages(response.wsgi_request))
    assert secret not in client.get(url("credential_change", credential.pk)).content.decode()
    assert_logs_keep(caplog, secret)


def test_resubmitting_the_issue_form_issues_no_second_credential(client, operator, agent):
    form = client.get(url("credential_add"), {"agent": str(agent.pk)})
    data = {"agent": str(agent.pk), **confirmation_of(form)}
    (secret,) = secrets_on(client.post(url("credential_add"), data)).values()

    again = client.post(url("credential_add"), data)

    assert again.status_code == 200
    assert ISSUE_FORM_TEMPLATE in templates_of(again) and ISSUED_TEMPLATE not in templates_of(again)
    assert 'class="errornote"' in again.content.decode()
    assert secret not in again.content.decode()
    assert Credential.objects.count() == 1
    assert len(events(AuditEvent.Action.CREDENTIAL_CREATED)) == 1


def test_issuing_with_vault_on_stores_the_secret_in_vault(client, operator, agent, vault_enabled, token_response):
    response = issue(client, agent)

    ((client_id, secret),) = secrets_on(response).items()
    credential = Credential.objects.get(client_id=client_id)
    assert credential.storage == "vault"
    assert vault_enabled.read(credential.vault_path) == {"clientSecret": secret}
    assert token_status(token_response, client_id, secret) == 200


def test_issuing_beyond_the_credential_limit_shows_the_conflict_and_creates_nothing(client, operator, issued, settings):
    settings.AGENTIDP_MAX_ACTIVE_CREDENTIALS = 1

    response = issue(client, issued.credential.agent)

    assert response.status_code == 200
    assert ISSUE_FORM_TEMPLATE in templates_of(response)
    assert "already has 1 active credentials" in text_of(response.content.decode())
    assert Credential.objects.count() == 1
    assert not events(AuditEvent.Action.CREDENTIAL_CREATED)[1:]


def test_issuing_with_an_expiry_in_the_past_shows_an_error_and_creates_nothing(client, operator, agent):
    response = issue(client, agent, expires_at="2001-01-01 00:00")

    assert response.status_code == 200
    assert ISSUE_FORM_TEMPLATE in templates_of(response)
    assert 'class="errornote"' in response.content.decode()
    assert "future" in text_of(response.content.decode())
    assert not Credential.objects.exists()
    assert not events(AuditEvent.Action.CREDENTIAL_CREATED)


@pytest.mark.parametrize("description", ["bell\x07", "x" * 1001])
def test_issuing_refuses_what_the_api_refuses_in_a_description(client, operator, agent, description):
    response = issue(client, agent, description=description)

    assert response.status_code == 200
    assert ISSUE_FORM_TEMPLATE in templates_of(response)
    assert "errorlist" in response.content.decode()
    assert not Credential.objects.exists()


def test_issuing_with_an_expiry_sets_it(client, operator, agent):
    response = issue(client, agent, expires_at="2099-06-30 12:00")

    ((client_id, _),) = secrets_on(response).items()
    assert Credential.objects.get(client_id=client_id).expires_at == datetime.datetime(
        2099, 6, 30, 12, 0, tzinfo=datetime.UTC
    )


def test_issuing_needs_the_add_permission(client, login, agent):
    login("view_credential", "view_agent", "rotate_credential", "delete_credential")

    agent_page = client.get(url("agent_change", agent.pk)).content.decode()
    response = client.post(url("credential_add"), {"agent": str(agent.pk)})

    assert 'id="issue-credential"' not in agent_page
    assert response.status_code == 403
    assert not Credential.objects.exists()


# --- the audit trail ------------------------------------------------------------------------


def test_audit_events_cannot_be_added_changed_or_deleted(superuser_client, issued):
    event = AuditEvent.objects.get(credential_id=issued.credential.pk)

    change_page = superuser_client.get(url("auditevent_change", event.pk))
    changed = superuser_client.post(url("auditevent_change", event.pk), {"action": "agent.deleted"})
    deleted = superuser_client.post(url("auditevent_delete", event.pk), {"post": "yes"})
    bulk = run_action(superuser_client, "auditevent", "delete_selected", [event])
    changelist = superuser_client.get(url("auditevent_changelist"))

    assert change_page.status_code == 200
    assert not re.search(r'<(textarea|select)\b|name="(action|actor_label|details)"', change_page.content.decode())
    assert changed.status_code == deleted.status_code == 403
    assert superuser_client.get(url("auditevent_add")).status_code == 403
    assert bulk.status_code in (200, 302)
    assert changelist.context["action_form"] is None
    assert list(AuditEvent.objects.values_list("pk", "action")) == [(event.pk, "credential.created")]


@pytest.fixture
def trail(operator, client):
    """Events by two actors about two agents, one of which (with its credential) is deleted afterwards."""
    kept_agent = AgentFactory(name="kept")
    kept = make_credential(kept_agent)
    gone_agent = AgentFactory(name="gone")
    gone = make_credential(gone_agent)
    rotate(client, "button", [kept.credential])  # by the operator, through the console
    services.credential_rotate(acting=None, credential=gone.credential)  # by the system
    services.agent_delete(acting=None, agent=gone_agent)
    return {"kept": kept.credential, "gone": gone.credential, "operator": operator}


def ids_of(**filters) -> set:
    return set(AuditEvent.objects.filter(**filters).values_list("pk", flat=True))


def test_audit_trail_filters_on_action_actor_agent_and_credential(client, trail):
    kept, user = trail["kept"], trail["operator"]
    changelist = url("auditevent_changelist")

    assert shown(client.get(changelist, {"action__exact": "credential.rotated"})) == ids_of(action="credential.rotated")
    assert len(ids_of(action="credential.rotated")) == 2
    by_user = shown(client.get(changelist, {"actor": f"user:{user.pk}"}))
    assert by_user == ids_of(actor_type="user") and len(by_user) == 1
    assert shown(client.get(changelist, {"actor_type__exact": "system"})) == ids_of(actor_type="system")
    assert shown(client.get(changelist, {"agent_id": str(kept.agent_id)})) == ids_of(agent_id=kept.agent_id)
    assert shown(client.get(changelist, {"credential_id": str(kept.pk)})) == ids_of(credential_id=kept.pk)


def test_audit_trail_filters_on_ids_of_deleted_agents_and_credentials(client, trail):
    gone = trail["gone"]
    assert not Agent.objects.filter(pk=gone.agent_id).exists()

    by_agent = client.get(url("auditevent_changelist"), {"agent_id": str(gone.agent_id)})
    by_credential = client.get(url("auditevent_changelist"), {"credential_id": str(gone.pk)})

    assert {event.action for event in by_agent.context["cl"].result_list} == {
        "credential.created",
        "credential.rotated",
        "credential.deleted",
        "agent.deleted",
    }
    assert shown(by_credential) == ids_of(credential_id=gone.pk)
    assert {event.action for event in by_credential.context["cl"].result_list} == {
        "credential.created",
        "credential.rotated",
        "credential.deleted",
    }


def test_audit_trail_names_agents_and_credentials_also_after_they_are_deleted(client, trail):
    kept, gone = trail["kept"], trail["gone"]
    page = client.get(url("auditevent_changelist")).content.decode()

    def labels(param: str, value) -> set[str]:
        return set(re.findall(rf'<a href="\?{param}={value}" title="{value}">([^<]+)</a>', page))

    assert labels("agent_id", kept.agent_id) == {"kept"}
    assert labels("credential_id", kept.pk) == {kept.client_id}
    # Gone: the name or clientId an event recorded, else the id itself.
    assert labels("agent_id", gone.agent_id) == {"gone", str(gone.agent_id)}
    assert labels("credential_id", gone.pk) == {gone.client_id, str(gone.pk)}


@pytest.mark.parametrize("param", ["agent_id", "credential_id"])
def test_audit_trail_survives_a_malformed_id_filter(client, trail, param):
    response = client.get(url("auditevent_changelist"), {param: "not-a-uuid"})

    assert response.status_code < 500
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


@pytest.mark.parametrize("page", ["agent", "credential"])
def test_audit_trail_link_on_a_page_leads_to_its_events(client, trail, page):
    kept = trail["kept"]
    change_url = url("agent_change", kept.agent_id) if page == "agent" else url("credential_change", kept.pk)
    expected = ids_of(agent_id=kept.agent_id) if page == "agent" else ids_of(credential_id=kept.pk)

    text = client.get(change_url).content.decode()
    (link,) = re.findall(r'<a href="([^"]+)">Audit trail</a>', text)

    assert expected and expected != set(AuditEvent.objects.values_list("pk", flat=True))
    assert shown(client.get(html.unescape(link))) == expected


def test_a_result_page_that_cannot_be_rendered_still_shows_the_new_secret(
    client, operator, issued, token_response, monkeypatch, caplog
):
    from django.template.response import TemplateResponse

    render = TemplateResponse.render

    def failing(self):
        if str(self.template_name).endswith("issued.html"):
            raise RuntimeError("the template broke")
        return render(self)

    monkeypatch.setattr(TemplateResponse, "render", failing)
    confirmation = ask_to_rotate(client, "button-get", [issued.credential])

    response = confirm_rotation(client, "button", [issued.credential], confirmation)

    assert response.status_code == 200
    assert_never_cached(response)
    page = response.content.decode()
    [new] = re.findall(r"<code>([^<]+)</code>", page)
    assert issued.credential.client_id in page
    assert token_status(token_response, issued.credential.client_id, new) == 200
    assert_logs_keep(caplog, new)


def test_compromised_credentials_come_first_in_the_list_and_on_their_agents_page(client, operator, agent):
    from credentials.audit import Actor
    from credentials.leaks import Reported, leaks_check
    from credentials.models import AuditEvent as Event

    older, leaked = make_credential(agent), make_credential(agent)
    leaks_check(reported=[Reported(leaked.client_secret)], acting=Actor(type=Event.ActorType.REPORTER, label="test"))

    listing = client.get(url("credential_changelist")).content.decode()
    filtered = client.get(url("credential_changelist") + "?status=compromised").content.decode()
    page = client.get(url("agent_change", agent.pk)).content.decode()

    for html_page in (listing, page):
        assert html_page.index(leaked.credential.client_id) < html_page.index(older.credential.client_id)
        assert "compromised" in html_page
    assert leaked.credential.client_id in filtered and older.credential.client_id not in filtered
