"""
The console with key credentials and trust policies: an agent's page lists its secrets, its
keys (kid, kty and alg only, or the key URL, and previous keys until when) and its trust
policies; key credentials never enter the flows that hand out secrets; trust policies are
listed, searched, shown read-only and deleted through the service, with the operator in the trail.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages

from credentials import services
from credentials.models import AuditEvent, Credential, TrustPolicy
from tests.credentials.helpers import events
from tests.credentials.test_admin import CONSOLE_PERMISSIONS, confirm_action, run_action, url
from tests.factories import AgentFactory, make_credential, make_key_credential, make_trust_policy, public_jwks

POLICY_PERMISSIONS = ("view_trustpolicy", "delete_trustpolicy")


@pytest.fixture
def login(client, django_user_model):
    """Return a function that logs `client` in as a new staff user holding exactly these permissions."""

    def login(*codenames: str):
        user = django_user_model.objects.create_user(username="operator", password="unused", is_staff=True)
        user.user_permissions.add(
            *Permission.objects.filter(content_type__app_label="credentials", codename__in=codenames)
        )
        client.force_login(user)
        return user

    return login


@pytest.fixture
def operator(login):
    return login(*CONSOLE_PERMISSIONS, *POLICY_PERMISSIONS)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- the agent's page ------------------------------------------------------------------------------


def test_agent_page_lists_secrets_keys_with_their_grace_and_trust_policies(client, operator, agent):
    secret = make_credential(agent).credential
    jwks = public_jwks("laptop")
    key = make_key_credential(agent, jwks=jwks)
    services.credential_rotate(acting=None, credential=key, jwks=public_jwks("ci"), grace_period_seconds=600)
    by_url = make_key_credential(agent, jwks_uri="https://keys.example.com/jwks.json")
    policy = make_trust_policy(agent, claims={"repository_owner": "example"})
    pattern = make_trust_policy(agent, subject="", subject_pattern="repo:example/*", audience="https://aud.example")

    page = client.get(url("agent_change", agent.pk)).content.decode()

    for credential in (secret, key, by_url):
        assert credential.client_id in page
    assert "<code>ci</code> (EC ES256)" in page or "<code>ci</code> (EC)" in page
    assert "previous, until" in page and "<code>laptop</code>" in page
    assert "https://keys.example.com/jwks.json" in page
    for key_member in ("x", "y"):
        assert jwks["keys"][0][key_member] not in page
    assert policy.issuer in page and policy.subject in page
    assert "repository_owner=example" in page
    assert "repo:example/* (pattern)" in page and "https://aud.example" in page
    assert url("trustpolicy_change", policy.pk) in page and url("trustpolicy_change", pattern.pk) in page


# --- key credentials in the credential console --------------------------------------------------------


def test_a_key_credentials_page_shows_its_kind_and_kids_and_offers_no_rotation(client, operator, agent):
    jwks = public_jwks("laptop")
    key = make_key_credential(agent, jwks=jwks)

    page = client.get(url("credential_change", key.pk)).content.decode()

    assert "<code>laptop</code>" in page and "Key" in page
    assert jwks["keys"][0]["x"] not in page
    assert 'id="rotate-credential"' not in page
    assert 'id="delete-credential"' in page


def test_the_credential_list_filters_on_kind(client, operator, agent):
    secret = make_credential(agent).credential
    key = make_key_credential(agent)

    response = client.get(url("credential_changelist"), {"kind__exact": "key"})

    assert [credential.pk for credential in response.context["cl"].result_list] == [key.pk]
    assert secret.client_id not in response.content.decode()


def test_the_rotate_action_leaves_key_credentials_alone_and_rotates_the_secrets(client, operator, agent):
    secret = make_credential(agent).credential
    key = make_key_credential(agent)

    confirmation = run_action(client, "credential", "rotate_selected", [secret, key])

    assert any("Not rotated" in message and key.client_id in message for message in messages_of(confirmation))
    page = confirmation.content.decode()
    assert f"<td>{secret.client_id}</td>" in page and f"<td>{key.client_id}</td>" not in page


def test_the_rotate_action_on_key_credentials_alone_rotates_nothing(client, operator, agent):
    key = make_key_credential(agent)

    response = run_action(client, "credential", "rotate_selected", [key])

    assert response.status_code == 302
    assert any("has no secret" in message for message in messages_of(response))
    key.refresh_from_db()
    assert key.rotated_at is None
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)


def test_the_rotate_page_of_a_key_credential_shows_no_secret_form(client, operator, agent):
    key = make_key_credential(agent)

    response = client.post(url("credential_rotate", key.pk), {"post": "yes", "grace_period_seconds": "0"})

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.rotated_at is None


def test_deleting_a_key_credential_in_the_console_goes_through_the_service(client, operator, agent):
    key = make_key_credential(agent)
    confirmation = run_action(client, "credential", "delete_selected", [key])
    token = confirmation.content.decode().split('name="confirmation" value="')[1].split('"')[0]

    confirm_action(client, "credential", "delete_selected", [key], confirmation=token)

    assert not Credential.objects.filter(pk=key.pk).exists()
    (event,) = events(AuditEvent.Action.CREDENTIAL_DELETED)
    assert (event.details["kind"], event.actor_label) == ("key", "operator")


# --- the trust policy console ------------------------------------------------------------------------


def test_trust_policy_list_is_searchable_by_issuer_and_subject(client, operator):
    github = make_trust_policy(AgentFactory(name="gh"))
    spiffe = make_trust_policy(
        AgentFactory(name="mesh"),
        issuer="spiffe://prod.example.org",
        subject="spiffe://prod.example.org/ns/agents/sa/bot",
        jwks=public_jwks("spire"),
    )

    by_issuer = client.get(url("trustpolicy_changelist"), {"q": "spiffe://prod"})
    by_subject = client.get(url("trustpolicy_changelist"), {"q": "repo:example/reports"})

    assert [p.pk for p in by_issuer.context["cl"].result_list] == [spiffe.pk]
    assert [p.pk for p in by_subject.context["cl"].result_list] == [github.pk]


def test_trust_policy_page_is_read_only_and_shows_no_key_material(client, operator):
    jwks = public_jwks("spire")
    policy = make_trust_policy(issuer="spiffe://example.org", subject="spiffe://example.org/a", jwks=jwks)

    response = client.get(url("trustpolicy_change", policy.pk))

    page = response.content.decode()
    assert response.status_code == 200
    assert "<code>spire</code>" in page and jwks["keys"][0]["x"] not in page
    assert 'name="_save"' not in page
    assert client.get(url("trustpolicy_add")).status_code == 403


def test_deleting_a_trust_policy_goes_through_the_service_with_the_operator_in_the_trail(client, operator):
    policy = make_trust_policy()

    response = client.post(url("trustpolicy_delete", policy.pk), {"post": "yes"})

    assert response.status_code == 302
    assert not TrustPolicy.objects.filter(pk=policy.pk).exists()
    (event,) = events(AuditEvent.Action.TRUST_POLICY_DELETED)
    assert (event.actor_type, event.actor_label, event.details["trustPolicyId"]) == ("user", "operator", str(policy.pk))


def test_the_bulk_delete_of_trust_policies_goes_through_the_service(client, operator):
    first, second = make_trust_policy(), make_trust_policy()

    confirm_action(client, "trustpolicy", "delete_selected", [first, second])

    assert not TrustPolicy.objects.exists()
    assert len(events(AuditEvent.Action.TRUST_POLICY_DELETED)) == 2


def test_an_operator_without_the_delete_permission_cannot_delete_a_policy(client, login):
    login(*CONSOLE_PERMISSIONS, "view_trustpolicy")
    policy = make_trust_policy()

    assert client.post(url("trustpolicy_delete", policy.pk), {"post": "yes"}).status_code == 403
    assert TrustPolicy.objects.filter(pk=policy.pk).exists()
