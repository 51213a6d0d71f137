"""
Key credentials (private_key_jwt) through the management API: created with public keys
(a JWK Set or its https URL) and no secret, rotated to new keys with a grace period,
deleted with nothing left to purge; and kept away from every path that handles secrets.
"""

import datetime
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from credentials import services
from credentials.errors import ValidationFailed
from credentials.models import AuditEvent, Credential, GraceKeys, SecretPurge
from credentials.services import MAX_GRACE_SECRETS
from tests.credentials.helpers import CREDENTIAL_KEYS, events
from tests.credentials.test_api import assert_error, credentials_url, rotate_url
from tests.factories import make_credential, make_key_credential, public_jwk, public_jwks

JWKS_URI = "https://keys.example.com/agent/jwks.json"


def create(api, agent_id, **body):
    return api.post(credentials_url(agent_id), body, format="json")


# --- create -----------------------------------------------------------------------------------


def test_create_a_key_credential_with_a_jwks_returns_it_without_a_secret(api, agent):
    jwks = public_jwks("laptop")

    response = create(api, agent.id, kind="key", jwks=jwks, description="signs its own assertions")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == CREDENTIAL_KEYS
    assert "clientSecret" not in body
    assert (body["kind"], body["storage"], body["jwksUri"]) == ("key", None, None)
    assert body["jwks"]["keys"][0]["kid"] == "laptop"
    assert "d" not in body["jwks"]["keys"][0]
    assert response["Cache-Control"] == "no-store"
    assert api.get(response["Location"]).json() == body
    row = Credential.objects.get(pk=body["credentialId"])
    assert (row.kind, row.storage, row.secret_hash, row.vault_path) == ("key", "", "", None)


def test_create_a_key_credential_with_a_jwks_uri(api, agent):
    response = create(api, agent.id, kind="key", jwksUri=JWKS_URI)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["kind"], body["jwks"], body["jwksUri"], body["storage"]) == ("key", None, JWKS_URI, None)


def test_a_secret_credential_shows_its_kind_and_no_keys(api, agent):
    body = create(api, agent.id).json()

    assert (body["kind"], body["jwks"], body["jwksUri"], body["storage"]) == ("secret", None, None, "bcrypt")
    assert body["clientSecret"]


def test_creating_a_key_credential_is_audited_with_its_kind_and_kids_only(api, agent):
    jwk = public_jwk("ci")
    body = create(api, agent.id, kind="key", jwks={"keys": [jwk]}).json()

    (event,) = events(AuditEvent.Action.CREDENTIAL_CREATED)[-1:]
    assert str(event.credential_id) == body["credentialId"]
    assert event.details == {"clientId": body["clientId"], "kind": "key", "kids": ["ci"]}
    assert jwk["x"] not in str(event.details)


def test_a_key_credential_in_vault_mode_writes_nothing_to_vault(api, agent, vault_enabled):
    body = create(api, agent.id, kind="key", jwks=public_jwks()).json()

    assert body["storage"] is None
    assert not any(agent_id == str(agent.id) for agent_id in vault_enabled.agents())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "key"}, "jwks"),
        ({"kind": "key", "jwks": None, "jwksUri": None}, "jwks"),
        ({"kind": "key", "jwks": "keys", "jwksUri": None}, "jwks"),
        ({"kind": "key", "jwks": {"keys": []}}, "jwks"),
        ({"kind": "key", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "jwks"),
        ({"kind": "key", "jwksUri": "http://keys.example.com/jwks.json"}, "jwksUri"),
        ({"kind": "key", "jwksUri": "https://169.254.169.254/latest/meta-data"}, "jwksUri"),
        ({"kind": "key", "jwksUri": "https://127.0.0.1/jwks.json"}, "jwksUri"),
        ({"kind": "key", "jwksUri": "https://user:pass@keys.example.com/jwks.json"}, "jwksUri"),
        ({"kind": "key", "jwksUri": 42}, "jwksUri"),
        ({"kind": "secret", "jwksUri": JWKS_URI}, "jwksUri"),
        ({"jwks": {"keys": []}}, "jwks"),
        ({"kind": "certificate"}, "kind"),
        ({"kind": 1}, "kind"),
    ],
)
def test_create_refuses_bad_key_bodies_with_validation_error_and_creates_nothing(api, agent, body, field):
    response = create(api, agent.id, **body)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert field in error.get("details", {}), error
    assert not Credential.objects.filter(agent=agent).exists()


def test_create_refuses_both_jwks_and_jwks_uri(api, agent):
    error = assert_error(
        create(api, agent.id, kind="key", jwks=public_jwks(), jwksUri=JWKS_URI), 400, "VALIDATION_ERROR"
    )

    assert {"jwks", "jwksUri"} <= set(error["details"])


def test_create_refuses_a_private_key_and_never_echoes_it(api, agent):
    from joserfc.jwk import ECKey

    private = ECKey.generate_key("P-256").as_dict(private=True)

    response = create(api, agent.id, kind="key", jwks={"keys": [private]})

    assert_error(response, 400, "VALIDATION_ERROR")
    assert private["d"] not in response.content.decode()
    assert not Credential.objects.filter(agent=agent).exists()


@override_settings(AGENTIDP_MAX_ACTIVE_CREDENTIALS=2)
def test_key_credentials_count_towards_the_active_credential_limit(api, agent):
    make_credential(agent)
    make_key_credential(agent)

    assert_error(create(api, agent.id, kind="key", jwks=public_jwks()), 409, "CONFLICT")
    assert_error(create(api, agent.id), 409, "CONFLICT")


def test_list_shows_secret_and_key_credentials_with_their_kinds(api, agent):
    make_credential(agent)
    make_key_credential(agent, jwks_uri=JWKS_URI)

    results = api.get(credentials_url(agent.id)).json()["results"]

    assert [(item["kind"], item["storage"], item["jwksUri"]) for item in results] == [
        ("secret", "bcrypt", None),
        ("key", None, JWKS_URI),
    ]


# --- rotate -----------------------------------------------------------------------------------


def test_rotate_a_key_credential_keeps_the_old_keys_for_the_grace_period(api, agent):
    credential = make_key_credential(agent, jwks=public_jwks("old"))
    before = timezone.now()

    response = api.post(
        rotate_url(agent.id, credential.id), {"jwks": public_jwks("new"), "gracePeriodSeconds": 600}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert "clientSecret" not in body
    assert [key["kid"] for key in body["jwks"]["keys"]] == ["new"]
    assert (body["credentialId"], body["clientId"]) == (str(credential.id), credential.client_id)
    assert body["rotatedAt"] is not None
    (grace,) = GraceKeys.objects.filter(credential=credential)
    assert [key["kid"] for key in grace.jwks["keys"]] == ["old"]
    assert (
        before + datetime.timedelta(seconds=600)
        <= grace.valid_until
        <= timezone.now() + datetime.timedelta(seconds=600)
    )
    event = events(AuditEvent.Action.CREDENTIAL_ROTATED)[-1]
    assert event.details == {"kind": "key", "gracePeriodSeconds": 600, "kids": ["new"]}


def test_rotate_a_key_credential_without_grace_keeps_no_old_keys(api, agent):
    credential = make_key_credential(agent)

    response = api.post(rotate_url(agent.id, credential.id), {"jwksUri": JWKS_URI}, format="json")

    assert response.status_code == 200, response.content
    assert (response.json()["jwks"], response.json()["jwksUri"]) == (None, JWKS_URI)
    assert not GraceKeys.objects.filter(credential=credential).exists()


def test_rotate_from_a_jwks_uri_keeps_the_old_uri_in_grace(api, agent):
    credential = make_key_credential(agent, jwks_uri=JWKS_URI)

    api.post(rotate_url(agent.id, credential.id), {"jwks": public_jwks(), "gracePeriodSeconds": 60}, format="json")

    (grace,) = GraceKeys.objects.filter(credential=credential)
    assert (grace.jwks, grace.jwks_uri) == (None, JWKS_URI)


def test_rotate_a_key_credential_without_new_keys_is_a_validation_error(api, agent):
    credential = make_key_credential(agent, jwks=public_jwks("kept"))

    assert_error(api.post(rotate_url(agent.id, credential.id), {}, format="json"), 400, "VALIDATION_ERROR")
    assert_error(
        api.post(rotate_url(agent.id, credential.id), {"gracePeriodSeconds": 60}, format="json"),
        400,
        "VALIDATION_ERROR",
    )
    credential.refresh_from_db()
    assert credential.jwks["keys"][0]["kid"] == "kept" and credential.rotated_at is None


def test_rotate_a_secret_credential_with_keys_is_a_validation_error(api, agent):
    issued = make_credential(agent)

    for body in ({"jwks": public_jwks()}, {"jwksUri": JWKS_URI}):
        response = api.post(rotate_url(agent.id, issued.credential.id), body, format="json")
        assert_error(response, 400, "VALIDATION_ERROR")
    issued.credential.refresh_from_db()
    assert issued.credential.rotated_at is None


def test_rotate_a_key_credential_refuses_a_private_key(api, agent):
    from joserfc.jwk import ECKey

    credential = make_key_credential(agent)

    response = api.post(
        rotate_url(agent.id, credential.id),
        {"jwks": {"keys": [ECKey.generate_key("P-256").as_dict(private=True)]}},
        format="json",
    )

    assert_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("grace", [-1, services.MAX_GRACE_PERIOD_SECONDS + 1])
def test_rotate_a_key_credential_with_a_grace_period_out_of_bounds_is_refused(api, agent, grace):
    credential = make_key_credential(agent)

    response = api.post(
        rotate_url(agent.id, credential.id), {"jwks": public_jwks(), "gracePeriodSeconds": grace}, format="json"
    )

    assert_error(response, 400, "VALIDATION_ERROR")


def test_at_most_ten_key_rotations_fall_inside_one_grace_window(api, agent):
    credential = make_key_credential(agent)
    for index in range(MAX_GRACE_SECRETS):
        response = api.post(
            rotate_url(agent.id, credential.id),
            {"jwks": public_jwks(f"k{index}"), "gracePeriodSeconds": 600},
            format="json",
        )
        assert response.status_code == 200, response.content

    refused = api.post(
        rotate_url(agent.id, credential.id),
        {"jwks": public_jwks("one-too-many"), "gracePeriodSeconds": 600},
        format="json",
    )

    assert_error(refused, 409, "CONFLICT")
    assert GraceKeys.objects.filter(credential=credential).count() == MAX_GRACE_SECRETS
    # Without a grace period the rotation goes through: nothing more stays valid.
    assert api.post(rotate_url(agent.id, credential.id), {"jwks": public_jwks("now")}, format="json").status_code == 200


def test_expired_grace_keys_do_not_count_and_are_cleared_by_the_next_rotation(api, agent):
    credential = make_key_credential(agent)
    for _ in range(MAX_GRACE_SECRETS):
        services.credential_rotate(acting=None, credential=credential, jwks=public_jwks(), grace_period_seconds=60)
    GraceKeys.objects.filter(credential=credential).update(valid_until=timezone.now() - datetime.timedelta(seconds=1))

    services.credential_rotate(acting=None, credential=credential, jwks=public_jwks(), grace_period_seconds=60)

    assert GraceKeys.objects.filter(credential=credential).count() == 1
    assert services.grace_keys_expire() == 0


# --- delete -----------------------------------------------------------------------------------


def test_delete_a_key_credential_queues_no_purge_and_drops_its_grace_keys(api, agent, vault_enabled):
    credential = make_key_credential(agent)
    services.credential_rotate(acting=None, credential=credential, jwks=public_jwks(), grace_period_seconds=60)

    response = api.delete(credentials_url(agent.id, credential.id))

    assert response.status_code == 204
    assert not Credential.objects.filter(pk=credential.pk).exists()
    assert not GraceKeys.objects.filter(credential_id=credential.pk).exists()
    assert not SecretPurge.objects.exists()
    assert events(AuditEvent.Action.CREDENTIAL_DELETED)[-1].details == {"clientId": credential.client_id, "kind": "key"}


def test_deleting_an_agent_deletes_its_key_credentials(api, agent):
    credential = make_key_credential(agent)

    assert api.delete(f"/api/v1/agents/{agent.id}").status_code == 204

    assert not Credential.objects.filter(pk=credential.pk).exists()
    assert not SecretPurge.objects.exists()


# --- paths that handle secrets leave key credentials alone ---------------------------------------


def test_moving_a_secret_to_the_default_store_skips_a_key_credential(agent, vault_enabled):
    credential = make_key_credential(agent)

    assert services.credential_move_to_default(acting=None, credential=credential, secret="anything") is False

    credential.refresh_from_db()
    assert (credential.storage, credential.vault_path) == ("", None)
    assert not events(AuditEvent.Action.CREDENTIAL_MOVED)


def test_a_key_credential_has_no_secrets_to_check_or_to_report_lost(agent):
    from credentials.trust import current_secret

    credential = make_key_credential(agent)

    assert services.credential_secrets_check(credential=credential, record=True) == []
    assert (
        services.credential_secret_missing(
            acting=None, credential=credential, trusted=current_secret(credential), detected_by="test"
        )
        is False
    )
    assert not events(AuditEvent.Action.CREDENTIAL_SECRET_MISSING)


def test_a_migration_never_gives_a_key_credential_a_secret(agent):
    credential = make_key_credential(agent)

    for storage in ("bcrypt", ""):
        with pytest.raises(ValidationFailed):
            services.credential_migrate(acting=None, credential=credential, from_storage=storage)
    credential.refresh_from_db()
    assert (credential.kind, credential.storage, credential.rotated_at) == ("key", "", None)


def test_check_secrets_skips_key_credentials(agent):
    make_credential(agent)
    make_key_credential(agent)
    out = StringIO()

    call_command("check_secrets", "--record", stdout=out, stderr=StringIO())

    assert "Checked 1 secrets of 1 credentials: 0 missing" in out.getvalue()


def test_migrate_to_vault_reports_and_moves_only_secret_credentials(agent, vault_enabled, tmp_path, settings):
    settings.AGENTIDP_UPGRADE_ON_USE = False
    make_credential(agent)
    key = make_key_credential(agent)
    out = StringIO()

    call_command("migrate_to_vault", stdout=out, stderr=StringIO())

    assert out.getvalue().startswith("1 credentials on vault, 0 on bcrypt (0 of them expired).")
    output = tmp_path / "new.jsonl"
    call_command("migrate_to_vault", "--rotate", "--output", str(output), stdout=StringIO(), stderr=StringIO())
    key.refresh_from_db()
    assert (key.kind, key.storage, key.rotated_at) == ("key", "", None)
    assert not output.exists() or not output.read_text().strip()


def test_readiness_stays_ready_with_key_credentials(client, agent):
    make_key_credential(agent)
    call_command("check_secrets", "--record", stdout=StringIO(), stderr=StringIO())

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["status"] == "ready"
