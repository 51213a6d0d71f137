import pytest
from django.urls import reverse

from credentials import services
from credentials.models import AuditEvent, Credential, GraceSecret


@pytest.fixture
def superuser_client(client, django_user_model):
    user = django_user_model.objects.create_superuser(username="root", password="unused", email="root@example.com")
    client.force_login(user)
    return client


@pytest.fixture
def rotated(issued):
    """A credential rotated with a grace period: a current and a previous secret, both hashed."""
    new = services.credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)
    return issued, new


def _secrets_and_hashes(rotated) -> list[str]:
    issued, new = rotated
    credential = Credential.objects.get(pk=issued.credential.pk)
    return [
        issued.client_secret,
        new.client_secret,
        credential.secret_hash,
        *GraceSecret.objects.values_list("secret_hash", flat=True),
    ]


def _pages(credential) -> list[str]:
    event = AuditEvent.objects.filter(credential_id=credential.pk).first()
    return [
        reverse("admin:credentials_agent_changelist"),
        reverse("admin:credentials_agent_change", args=[credential.agent_id]),
        reverse("admin:credentials_credential_changelist"),
        reverse("admin:credentials_credential_change", args=[credential.pk]),
        reverse("admin:credentials_auditevent_changelist"),
        reverse("admin:credentials_auditevent_change", args=[event.pk]),
    ]


def test_admin_pages_render_without_any_secret_or_hash(superuser_client, rotated):
    issued, _ = rotated
    hidden = _secrets_and_hashes(rotated)
    assert all(hidden)

    for url in _pages(issued.credential):
        response = superuser_client.get(url)
        assert response.status_code == 200, url
        text = response.content.decode()
        for value in hidden:
            assert value not in text, url
        assert "$2b$" not in text, url


def test_admin_credential_pages_show_the_client_id(superuser_client, issued):
    credential = issued.credential

    changelist = superuser_client.get(reverse("admin:credentials_credential_changelist"))
    change = superuser_client.get(reverse("admin:credentials_credential_change", args=[credential.pk]))

    assert credential.client_id in changelist.content.decode()
    assert credential.client_id in change.content.decode()
    assert "secret_hash" not in change.content.decode()


def test_admin_search_and_filters_render(superuser_client, issued):
    credential = issued.credential

    by_client = superuser_client.get(reverse("admin:credentials_credential_changelist"), {"q": credential.client_id})
    by_storage = superuser_client.get(reverse("admin:credentials_credential_changelist"), {"storage": "bcrypt"})
    agents = superuser_client.get(reverse("admin:credentials_agent_changelist"), {"status__exact": "active"})
    events = superuser_client.get(
        reverse("admin:credentials_auditevent_changelist"), {"action__exact": "credential.created"}
    )

    assert by_client.status_code == by_storage.status_code == agents.status_code == events.status_code == 200
    assert by_client.context["cl"].result_count == 1
    assert events.context["cl"].result_count == 1


@pytest.mark.parametrize("model", ["agent", "credential", "auditevent"])
def test_admin_has_no_add_page(superuser_client, model):
    response = superuser_client.get(reverse(f"admin:credentials_{model}_add"))

    assert response.status_code == 403


def test_admin_cannot_delete_agents_or_credentials(superuser_client, issued):
    credential = issued.credential

    for url in (
        reverse("admin:credentials_agent_delete", args=[credential.agent_id]),
        reverse("admin:credentials_credential_delete", args=[credential.pk]),
    ):
        assert superuser_client.get(url).status_code == 403, url
        assert superuser_client.post(url, {"post": "yes"}).status_code == 403, url

    assert Credential.objects.filter(pk=credential.pk).exists()


def test_admin_cannot_delete_audit_events(superuser_client, issued):
    event = AuditEvent.objects.get(credential_id=issued.credential.pk)

    response = superuser_client.post(reverse("admin:credentials_auditevent_delete", args=[event.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.parametrize("model", ["agent", "credential", "auditevent"])
def test_admin_changelist_offers_no_delete_action(superuser_client, issued, model):
    response = superuser_client.get(reverse(f"admin:credentials_{model}_changelist"))

    assert response.status_code == 200
    assert b"delete_selected" not in response.content
    assert "delete_selected" not in response.context["cl"].model_admin.get_actions(response.wsgi_request)


def test_admin_bulk_delete_action_is_refused(superuser_client, issued):
    credential = issued.credential

    response = superuser_client.post(
        reverse("admin:credentials_credential_changelist"),
        {"action": "delete_selected", "_selected_action": [credential.pk], "post": "yes"},
    )

    assert response.status_code == 200  # the changelist again: there is no such action to run
    assert Credential.objects.filter(pk=credential.pk).exists()


def test_admin_change_page_does_not_change_a_credential(superuser_client, issued):
    credential = issued.credential
    url = reverse("admin:credentials_credential_change", args=[credential.pk])

    response = superuser_client.post(url, {"description": "changed through the admin"})

    assert response.status_code == 403
    assert Credential.objects.get(pk=credential.pk).description == credential.description


def test_admin_requires_a_staff_login(client, issued):
    response = client.get(reverse("admin:credentials_credential_changelist"))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
