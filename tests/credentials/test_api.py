import datetime
import re
import uuid

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from credentials import services
from credentials.models import Agent, AuditEvent, Credential
from credentials.services import MAX_GRACE_SECRETS
from tests.conftest import token_for
from tests.credentials.helpers import CREDENTIAL_KEYS, ISSUED_KEYS, end_grace_periods, expire
from tests.factories import AgentFactory, make_credential

TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SECRET_RE = re.compile(r"aidp_[0-9A-Za-z]{61}")
AGENT_KEYS = {
    "agentId",
    "name",
    "description",
    "owner",
    "status",
    "scopes",
    "allowedResources",
    "createdAt",
    "updatedAt",
}


def assert_error(response, status: int, code: str) -> dict:
    """Assert the contract's error body: exactly code and message, and details when present."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) in ({"code", "message"}, {"code", "message", "details"})
    if "details" in body:
        assert isinstance(body["details"], dict)
    return body


def agents_url(agent_id=None) -> str:
    return "/api/v1/agents" if agent_id is None else f"/api/v1/agents/{agent_id}"


def credentials_url(agent_id, credential_id=None) -> str:
    base = f"/api/v1/agents/{agent_id}/credentials"
    return base if credential_id is None else f"{base}/{credential_id}"


def rotate_url(agent_id, credential_id) -> str:
    return f"{credentials_url(agent_id, credential_id)}/rotate"


def bearer(token: str) -> APIClient:
    api_client = APIClient()
    api_client.credentials(HTTP_AUTHORIZATION="Bearer " + token)
    return api_client


def create_credential(api, agent_id, **body) -> dict:
    response = api.post(credentials_url(agent_id), body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


# --- agents ---------------------------------------------------------------------------------


def test_create_agent_returns_201_with_the_agent_in_camel_case(api):
    response = api.post(
        agents_url(),
        {"name": "report-bot", "description": "Nightly reports", "owner": "data-team", "scopes": ["reports:read"]},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == AGENT_KEYS
    agent = Agent.objects.get(name="report-bot")
    assert body["agentId"] == str(agent.id)
    assert (body["name"], body["description"], body["owner"]) == ("report-bot", "Nightly reports", "data-team")
    assert body["status"] == "active"
    assert body["scopes"] == ["reports:read"]
    assert TIME_RE.fullmatch(body["createdAt"]) and TIME_RE.fullmatch(body["updatedAt"])
    assert body["createdAt"] == agent.created_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert api.get(response["Location"]).json() == body


def test_create_agent_with_only_a_name_takes_the_defaults(api):
    response = api.post(agents_url(), {"name": "minimal"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert (body["description"], body["owner"], body["scopes"], body["allowedResources"]) == ("", "", [], [])


def test_create_agent_drops_duplicate_scopes_keeping_their_order(api):
    response = api.post(agents_url(), {"name": "bot", "scopes": ["b", "a", "b"]}, format="json")

    assert response.json()["scopes"] == ["b", "a"]


def test_create_agent_is_audited_as_the_admin_agent(api, admin_issued):
    agent_id = api.post(agents_url(), {"name": "bot"}, format="json").json()["agentId"]

    event = AuditEvent.objects.get(action="agent.created", agent_id=agent_id)
    assert event.actor_type == "agent"
    assert event.actor_id == str(admin_issued.credential.agent_id)
    assert admin_issued.credential.client_id in event.actor_label


@pytest.mark.parametrize("taken, wanted", [("report-bot", "report-bot"), ("Report-Bot", "rEPORT-bOT")])
def test_create_agent_with_a_taken_name_is_conflict(api, taken, wanted):
    api.post(agents_url(), {"name": taken}, format="json")

    response = api.post(agents_url(), {"name": wanted}, format="json")

    assert_error(response, 409, "CONFLICT")
    assert Agent.objects.filter(name__iexact=wanted).count() == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": None},
        {"name": ""},
        {"name": 123},
        {"name": ["bot"]},
        {"name": "x" * 129},
        {"name": "bot", "scopes": "x"},
        {"name": "bot", "scopes": "a b"},
        {"name": "bot", "scopes": ["has space"]},
        {"name": "bot", "scopes": [1]},
        {"name": "bot", "scopes": [f"s{i}" for i in range(101)]},
        {"name": "bot", "description": 5},
        {"name": "bot", "description": "x" * 1001},
        {"name": "bot", "owner": "x" * 257},
        {"name": "bot", "status": "active"},
        {"name": "bot", "agentId": str(uuid.uuid4())},
        {"name": "bad\x00name"},
    ],
    ids=[
        "empty",
        "null-name",
        "blank-name",
        "int-name",
        "list-name",
        "long-name",
        "scopes-string",
        "scopes-spaced-string",
        "scope-with-space",
        "scope-int",
        "too-many-scopes",
        "int-description",
        "long-description",
        "long-owner",
        "unknown-field-status",
        "unknown-field-agentId",
        "control-character",
    ],
)
def test_create_agent_with_an_invalid_body_is_validation_error(api, body):
    response = api.post(agents_url(), body, format="json")

    assert_error(response, 400, "VALIDATION_ERROR")
    assert Agent.objects.count() == 1  # the admin agent only


def test_validation_error_names_the_field_in_details(api):
    body = assert_error(api.post(agents_url(), {"name": 123}, format="json"), 400, "VALIDATION_ERROR")

    assert list(body["details"]) == ["name"]


def test_unknown_field_is_named_in_details(api):
    body = assert_error(
        api.post(agents_url(), {"name": "bot", "expires_at": "x"}, format="json"), 400, "VALIDATION_ERROR"
    )

    assert "expires_at" in body["details"]


@pytest.mark.parametrize("raw", ["{", '{"name": "bot",}', "nul", '{"name": "bot"} extra'])
def test_malformed_json_is_validation_error(api, raw):
    response = api.post(agents_url(), raw, content_type="application/json")

    assert_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("raw", ['{"name": "\\ud800"}', '{"name": "bot", "scopes": ["\\udfff"]}'])
def test_a_lone_surrogate_in_a_json_string_is_validation_error(api, raw):
    response = api.post(agents_url(), raw, content_type="application/json")

    assert_error(response, 400, "VALIDATION_ERROR")
    assert Agent.objects.count() == 1  # the admin agent only


@pytest.mark.parametrize("raw", ['[{"name": "bot"}]', '"bot"', "42", "null"])
def test_a_json_body_that_is_not_an_object_is_validation_error(api, raw):
    response = api.post(agents_url(), raw, content_type="application/json")

    assert_error(response, 400, "VALIDATION_ERROR")
    assert not Agent.objects.filter(name="bot").exists()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_body_that_is_not_json_is_unsupported_media_type(api, content_type):
    response = api.post(agents_url(), "name=bot", content_type=content_type)

    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert not Agent.objects.filter(name="bot").exists()


def test_a_body_over_the_size_limit_is_payload_too_large(api):
    with override_settings(AGENTIDP_MAX_BODY_SIZE=64):
        response = api.post(agents_url(), {"name": "bot", "description": "x" * 100}, format="json")
        small = api.post(agents_url(), {"name": "small"}, format="json")

    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert small.status_code == 201
    assert not Agent.objects.filter(name="bot").exists()


def test_get_agent_returns_the_agent(api, agent):
    response = api.get(agents_url(agent.id))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == AGENT_KEYS
    assert body["agentId"] == str(agent.id)
    assert body["name"] == agent.name
    assert body["scopes"] == agent.scopes


@pytest.mark.parametrize("agent_id", [uuid.uuid4(), "not-a-uuid", "123", "%20"])
def test_get_unknown_or_malformed_agent_id_is_agent_not_found(api, agent_id):
    assert_error(api.get(agents_url(agent_id)), 404, "AGENT_NOT_FOUND")


def test_list_agents_is_a_page_of_agents_oldest_first(api):
    names = [api.post(agents_url(), {"name": f"bot-{i}"}, format="json").json()["name"] for i in range(3)]

    response = api.get(agents_url())

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 4
    assert body["next"] is None and body["previous"] is None
    assert [a["name"] for a in body["results"]] == ["admin", *names]
    assert all(set(a) == AGENT_KEYS for a in body["results"])


def test_list_agents_honours_page_size(api):
    for i in range(4):
        AgentFactory(name=f"bot-{i}")

    first = api.get(agents_url(), {"pageSize": 2}).json()
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()

    assert first["count"] == 5
    assert len(first["results"]) == 2 and first["previous"] is None
    assert "pageSize=2" in first["next"]
    assert len(second["results"]) == 2 and second["previous"] is not None
    assert len(third["results"]) == 1 and third["next"] is None
    seen = [a["agentId"] for page in (first, second, third) for a in page["results"]]
    assert len(set(seen)) == 5


def test_list_agents_page_past_the_last_is_not_found(api):
    assert_error(api.get(agents_url(), {"page": 99}), 404, "NOT_FOUND")


def test_list_agents_filters_by_status(api, agent):
    suspended = AgentFactory(status=Agent.Status.SUSPENDED)

    only_suspended = api.get(agents_url(), {"status": "suspended"}).json()
    only_active = api.get(agents_url(), {"status": "active"}).json()

    assert [a["agentId"] for a in only_suspended["results"]] == [str(suspended.id)]
    assert str(agent.id) in {a["agentId"] for a in only_active["results"]}
    assert str(suspended.id) not in {a["agentId"] for a in only_active["results"]}


@pytest.mark.parametrize("status", ["deleted", "ACTIVE", "1"])
def test_list_agents_with_an_unknown_status_filter_is_validation_error(api, status):
    assert_error(api.get(agents_url(), {"status": status}), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("term", ["REPORT", "nightly", "data-TEAM"])
def test_list_agents_searches_name_description_and_owner_ignoring_case(api, term):
    match = AgentFactory(name="report-bot", description="Runs nightly", owner="data-team")
    AgentFactory(name="other", description="something else", owner="ops")

    results = api.get(agents_url(), {"search": term}).json()["results"]

    assert [a["agentId"] for a in results] == [str(match.id)]


def test_patch_agent_changes_the_given_fields(api, agent):
    response = api.patch(
        agents_url(agent.id),
        {"description": "new", "owner": "sec-team", "scopes": ["a", "a", "b"]},
        format="json",
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == AGENT_KEYS
    assert (body["description"], body["owner"], body["scopes"]) == ("new", "sec-team", ["a", "b"])
    assert body["name"] == agent.name
    agent.refresh_from_db()
    assert (agent.description, agent.owner, agent.scopes) == ("new", "sec-team", ["a", "b"])


@pytest.mark.parametrize(
    "body",
    [
        {"name": "renamed"},
        {"status": "deleted"},
        {"status": None},
        {"scopes": "x"},
        {"scopes": ["bad scope"]},
        {"description": 1},
        {"owner": None},
        {"createdAt": "2026-01-01T00:00:00Z"},
    ],
)
def test_patch_agent_with_an_invalid_body_is_validation_error(api, agent, body):
    assert_error(api.patch(agents_url(agent.id), body, format="json"), 400, "VALIDATION_ERROR")
    assert Agent.objects.get(pk=agent.pk).status == "active"


def test_patch_unknown_agent_is_agent_not_found(api):
    assert_error(api.patch(agents_url(uuid.uuid4()), {"description": "x"}, format="json"), 404, "AGENT_NOT_FOUND")


def test_suspending_an_agent_refuses_its_credentials_and_reactivating_restores_them(api, issued, token_response):
    agent_id = issued.credential.agent_id

    response = api.patch(agents_url(agent_id), {"status": "suspended"}, format="json")

    assert response.status_code == 200 and response.json()["status"] == "suspended"
    refused = token_response(issued.credential.client_id, issued.client_secret)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"

    api.patch(agents_url(agent_id), {"status": "active"}, format="json")

    assert token_response(issued.credential.client_id, issued.client_secret).status_code == 200


def test_delete_agent_returns_204_and_deletes_its_credentials(api, agent, token_response):
    first = create_credential(api, agent.id)
    second = create_credential(api, agent.id)

    response = api.delete(agents_url(agent.id))

    assert response.status_code == 204
    assert response.content == b""
    assert_error(api.get(agents_url(agent.id)), 404, "AGENT_NOT_FOUND")
    assert not Credential.objects.filter(agent_id=agent.id).exists()
    for issued in (first, second):
        refused = token_response(issued["clientId"], issued["clientSecret"])
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    deleted = AuditEvent.objects.filter(action="credential.deleted", agent_id=agent.id)
    assert {str(e.credential_id) for e in deleted} == {first["credentialId"], second["credentialId"]}


def test_delete_unknown_agent_is_agent_not_found(api):
    assert_error(api.delete(agents_url(uuid.uuid4())), 404, "AGENT_NOT_FOUND")


# --- credentials ----------------------------------------------------------------------------


def test_create_credential_returns_201_with_its_secret_once(api, agent, token_response):
    response = api.post(credentials_url(agent.id), {"description": "nightly job"}, format="json")

    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == ISSUED_KEYS
    credential = Credential.objects.get(pk=body["credentialId"])
    assert body["agentId"] == str(agent.id)
    assert body["clientId"] == credential.client_id
    assert body["description"] == "nightly job"
    assert (body["storage"], body["status"]) == ("bcrypt", "active")
    assert TIME_RE.fullmatch(body["createdAt"])
    assert body["rotatedAt"] is None and body["expiresAt"] is None
    assert SECRET_RE.fullmatch(body["clientSecret"])
    assert credential.secret_hash not in response.content.decode()
    assert response["Location"].endswith(credentials_url(agent.id, credential.id))
    token = token_response(body["clientId"], body["clientSecret"])
    assert token.status_code == 200
    assert token.json()["scope"] == " ".join(agent.scopes)


def test_create_credential_with_an_empty_body_is_allowed(api, agent):
    response = api.post(credentials_url(agent.id), {}, format="json")

    assert response.status_code == 201
    assert response.json()["description"] == ""


@pytest.mark.parametrize(
    "sent, shown",
    [
        ("2099-01-02T03:04:05Z", "2099-01-02T03:04:05Z"),
        ("2099-01-02T05:04:05+02:00", "2099-01-02T03:04:05Z"),
        ("2099-01-02T03:04:05", "2099-01-02T03:04:05Z"),
    ],
    ids=["utc", "offset", "naive-is-utc"],
)
def test_create_credential_with_an_expiry_shows_it_in_utc(api, agent, sent, shown):
    response = api.post(credentials_url(agent.id), {"expiresAt": sent}, format="json")

    assert response.status_code == 201
    assert response.json()["expiresAt"] == shown
    assert response.json()["status"] == "active"


@pytest.mark.parametrize(
    "body",
    [
        {"expiresAt": "2000-01-01T00:00:00Z"},
        {"expiresAt": "tomorrow"},
        {"expiresAt": 4102444800},
        {"description": 5},
        {"clientSecret": "chosen-by-me"},
        {"expires_at": "2099-01-01T00:00:00Z"},
    ],
    ids=["past-expiry", "bad-expiry", "int-expiry", "int-description", "own-secret", "snake-case"],
)
def test_create_credential_with_an_invalid_body_is_validation_error(api, agent, body):
    assert_error(api.post(credentials_url(agent.id), body, format="json"), 400, "VALIDATION_ERROR")
    assert not Credential.objects.filter(agent=agent).exists()


def test_create_credential_for_an_unknown_agent_is_agent_not_found(api):
    assert_error(api.post(credentials_url(uuid.uuid4()), {}, format="json"), 404, "AGENT_NOT_FOUND")


@override_settings(AGENTIDP_MAX_ACTIVE_CREDENTIALS=2)
def test_create_credential_beyond_the_limit_is_conflict(api, agent):
    create_credential(api, agent.id)
    create_credential(api, agent.id)

    response = api.post(credentials_url(agent.id), {}, format="json")

    assert_error(response, 409, "CONFLICT")
    assert response["Cache-Control"] == "no-store"
    assert Credential.objects.filter(agent=agent).count() == 2


@override_settings(AGENTIDP_MAX_ACTIVE_CREDENTIALS=1)
def test_expired_credentials_do_not_count_towards_the_limit(api, agent):
    expire(Credential.objects.get(pk=create_credential(api, agent.id)["credentialId"]))

    assert api.post(credentials_url(agent.id), {}, format="json").status_code == 201


def test_list_credentials_is_a_page_without_secrets(api, agent):
    created = [create_credential(api, agent.id) for _ in range(2)]
    make_credential(AgentFactory())  # another agent's credential is not listed

    response = api.get(credentials_url(agent.id))

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 2
    assert [c["credentialId"] for c in body["results"]] == [c["credentialId"] for c in created]
    assert all(set(c) == CREDENTIAL_KEYS for c in body["results"])
    text = response.content.decode()
    for issued in created:
        assert issued["clientSecret"] not in text
    assert "clientSecret" not in text
    for secret_hash in Credential.objects.filter(agent=agent).values_list("secret_hash", flat=True):
        assert secret_hash not in text


def test_list_credentials_honours_page_size(api, agent):
    for _ in range(3):
        create_credential(api, agent.id)

    body = api.get(credentials_url(agent.id), {"pageSize": 2}).json()

    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]


def test_list_credentials_of_an_unknown_agent_is_agent_not_found(api):
    assert_error(api.get(credentials_url(uuid.uuid4())), 404, "AGENT_NOT_FOUND")


def test_get_credential_returns_it_without_its_secret(api, agent):
    created = create_credential(api, agent.id, description="d")

    response = api.get(credentials_url(agent.id, created["credentialId"]))

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == CREDENTIAL_KEYS
    assert body == {k: v for k, v in created.items() if k != "clientSecret"}
    assert created["clientSecret"] not in response.content.decode()


def test_get_expired_credential_shows_status_expired(api, issued):
    expire(issued.credential)

    body = api.get(credentials_url(issued.credential.agent_id, issued.credential.id)).json()

    assert body["status"] == "expired"
    assert TIME_RE.fullmatch(body["expiresAt"])


@pytest.mark.parametrize("credential_id", [uuid.uuid4(), "not-a-uuid"])
def test_get_unknown_or_malformed_credential_id_is_credential_not_found(api, agent, credential_id):
    assert_error(api.get(credentials_url(agent.id, credential_id)), 404, "CREDENTIAL_NOT_FOUND")


def test_another_agents_credential_is_credential_not_found(api, issued):
    other = AgentFactory()

    for response in (
        api.get(credentials_url(other.id, issued.credential.id)),
        api.post(rotate_url(other.id, issued.credential.id), {}, format="json"),
        api.delete(credentials_url(other.id, issued.credential.id)),
    ):
        assert_error(response, 404, "CREDENTIAL_NOT_FOUND")
    assert Credential.objects.filter(pk=issued.credential.pk).exists()
    assert Credential.objects.get(pk=issued.credential.pk).rotated_at is None


def test_credential_under_an_unknown_or_malformed_agent_id_is_agent_not_found(api, issued):
    for agent_id in (uuid.uuid4(), "nope"):
        assert_error(api.get(credentials_url(agent_id, issued.credential.id)), 404, "AGENT_NOT_FOUND")


def test_rotate_credential_keeps_its_ids_and_returns_a_new_secret(api, issued, token_response):
    credential = issued.credential

    response = api.post(rotate_url(credential.agent_id, credential.id), {}, format="json")

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == ISSUED_KEYS
    assert body["credentialId"] == str(credential.id)
    assert body["clientId"] == credential.client_id
    assert body["agentId"] == str(credential.agent_id)
    assert SECRET_RE.fullmatch(body["clientSecret"]) and body["clientSecret"] != issued.client_secret
    assert TIME_RE.fullmatch(body["rotatedAt"])
    assert token_response(credential.client_id, body["clientSecret"]).status_code == 200


def test_rotate_without_grace_refuses_old_secret_at_once(api, issued, token_response):
    credential = issued.credential

    api.post(rotate_url(credential.agent_id, credential.id), {}, format="json")

    refused = token_response(credential.client_id, issued.client_secret)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"


def test_rotate_with_grace_period_accepts_both_secrets_until_it_ends(api, issued, token_response):
    credential = issued.credential

    body = api.post(rotate_url(credential.agent_id, credential.id), {"gracePeriodSeconds": 600}, format="json").json()

    assert token_response(credential.client_id, issued.client_secret).status_code == 200
    assert token_response(credential.client_id, body["clientSecret"]).status_code == 200

    end_grace_periods(credential)

    assert token_response(credential.client_id, issued.client_secret).status_code == 401
    assert token_response(credential.client_id, body["clientSecret"]).status_code == 200


def test_rotate_with_too_many_grace_periods_is_conflict(api, issued):
    url = rotate_url(issued.credential.agent_id, issued.credential.id)
    for _ in range(MAX_GRACE_SECRETS):
        assert api.post(url, {"gracePeriodSeconds": 60}, format="json").status_code == 200

    assert_error(api.post(url, {"gracePeriodSeconds": 60}, format="json"), 409, "CONFLICT")
    assert api.post(url, {}, format="json").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"gracePeriodSeconds": "10"},
        {"gracePeriodSeconds": True},
        {"gracePeriodSeconds": 86401},
        {"gracePeriodSeconds": -1},
        {"gracePeriodSeconds": 1.5},
        {"gracePeriodSeconds": None},
        {"grace": 10},
    ],
    ids=["string", "bool", "too-long", "negative", "float", "null", "unknown-field"],
)
def test_rotate_with_an_invalid_grace_period_is_validation_error(api, issued, token_response, body):
    response = api.post(rotate_url(issued.credential.agent_id, issued.credential.id), body, format="json")

    assert_error(response, 400, "VALIDATION_ERROR")
    assert token_response(issued.credential.client_id, issued.client_secret).status_code == 200


def test_rotate_accepts_grace_period_bounds(api, issued):
    url = rotate_url(issued.credential.agent_id, issued.credential.id)

    assert api.post(url, {"gracePeriodSeconds": 0}, format="json").status_code == 200
    assert api.post(url, {"gracePeriodSeconds": 86400}, format="json").status_code == 200


def test_rotate_unknown_credential_is_credential_not_found(api, agent):
    assert_error(api.post(rotate_url(agent.id, uuid.uuid4()), {}, format="json"), 404, "CREDENTIAL_NOT_FOUND")


def test_delete_credential_returns_204_and_refuses_its_secret(api, issued, token_response):
    credential = issued.credential

    response = api.delete(credentials_url(credential.agent_id, credential.id))

    assert response.status_code == 204
    assert response.content == b""
    assert not Credential.objects.filter(pk=credential.pk).exists()
    refused = token_response(credential.client_id, issued.client_secret)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert_error(api.get(credentials_url(credential.agent_id, credential.id)), 404, "CREDENTIAL_NOT_FOUND")
    assert_error(api.delete(credentials_url(credential.agent_id, credential.id)), 404, "CREDENTIAL_NOT_FOUND")


def test_tokens_of_a_deleted_credential_get_401(api, admin_issued, client):
    second = make_credential(admin_issued.credential.agent)
    second_api = bearer(token_for(client, second))
    assert second_api.get(agents_url()).status_code == 200

    api.delete(credentials_url(second.credential.agent_id, second.credential.id))

    response = second_api.get(agents_url())
    assert_error(response, 401, "UNAUTHORIZED")
    assert response["WWW-Authenticate"].startswith("Bearer")


# --- authentication and authorisation -------------------------------------------------------


def _all_calls(agent_id, credential_id):
    return [
        ("get", agents_url()),
        ("post", agents_url()),
        ("get", agents_url(agent_id)),
        ("patch", agents_url(agent_id)),
        ("delete", agents_url(agent_id)),
        ("get", credentials_url(agent_id)),
        ("post", credentials_url(agent_id)),
        ("get", credentials_url(agent_id, credential_id)),
        ("post", rotate_url(agent_id, credential_id)),
        ("delete", credentials_url(agent_id, credential_id)),
    ]


def test_every_call_without_a_token_is_unauthorized_with_a_bearer_challenge(issued):
    anonymous = APIClient()

    for method, url in _all_calls(issued.credential.agent_id, issued.credential.id):
        response = getattr(anonymous, method)(url, {}, format="json")
        assert_error(response, 401, "UNAUTHORIZED")
        assert response["WWW-Authenticate"].startswith("Bearer"), (method, url)
    assert Credential.objects.filter(pk=issued.credential.pk).exists()


@pytest.mark.parametrize(
    "authorization",
    ["Bearer garbage", "Bearer ", "Bearer a.b.c", "Bearer two tokens", "bearer " + "x" * 9000],
    ids=["garbage", "empty", "jwt-shaped", "two-parts", "huge"],
)
def test_an_invalid_bearer_token_is_unauthorized(agent, authorization):
    api_client = APIClient()
    api_client.credentials(HTTP_AUTHORIZATION=authorization)

    response = api_client.get(agents_url())

    assert_error(response, 401, "UNAUTHORIZED")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_expired_token_is_unauthorized(admin_issued, client):
    with override_settings(AGENTIDP_ACCESS_TOKEN_TTL=-10):
        token = token_for(client, admin_issued)

    response = bearer(token).get(agents_url())

    assert_error(response, 401, "UNAUTHORIZED")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_token_of_a_suspended_agent_is_unauthorized(admin_issued, client):
    token = token_for(client, admin_issued)
    Agent.objects.filter(pk=admin_issued.credential.agent_id).update(status=Agent.Status.SUSPENDED)

    assert_error(bearer(token).get(agents_url()), 401, "UNAUTHORIZED")


def test_a_token_of_an_expired_credential_is_unauthorized(admin_issued, client):
    token = token_for(client, admin_issued)
    expire(admin_issued.credential)

    assert_error(bearer(token).get(agents_url()), 401, "UNAUTHORIZED")


def test_a_token_after_the_admin_scope_is_removed_is_forbidden(admin_issued, client):
    token = token_for(client, admin_issued)
    services.agent_update(acting=None, agent=admin_issued.credential.agent, scopes=["other"])

    assert_error(bearer(token).get(agents_url()), 403, "FORBIDDEN")


def test_every_call_with_a_token_without_the_admin_scope_is_forbidden(issued, client):
    other = AgentFactory()
    other_issued = make_credential(other)
    token = token_for(client, issued)
    api_client = bearer(token)

    for method, url in _all_calls(other.id, other_issued.credential.id):
        assert_error(getattr(api_client, method)(url, {}, format="json"), 403, "FORBIDDEN")
    assert Agent.objects.filter(pk=other.pk).exists()
    assert Credential.objects.filter(pk=other_issued.credential.pk).exists()


def staff_session(user, *codenames: str) -> APIClient:
    """A signed-in staff user holding exactly these credentials-app permissions."""
    from django.contrib.auth.models import Permission

    user.user_permissions.set(Permission.objects.filter(content_type__app_label="credentials", codename__in=codenames))
    session = APIClient()
    session.force_login(user)
    return session


def test_a_staff_session_without_permissions_is_forbidden_every_call_and_changes_nothing(staff_user, issued):
    session = staff_session(staff_user)
    credential = issued.credential
    before = Credential.objects.get(pk=credential.pk)

    for method, url in _all_calls(credential.agent_id, credential.id):
        assert_error(getattr(session, method)(url, {}, format="json"), 403, "FORBIDDEN")

    after = Credential.objects.get(pk=credential.pk)
    assert (after.secret_hash, after.rotated_at) == (before.secret_hash, before.rotated_at)
    assert Agent.objects.filter(pk=credential.agent_id).exists()
    assert not AuditEvent.objects.filter(actor_type="user").exists()


def test_a_view_only_operator_cannot_make_an_admin_agent_or_take_over_a_credential(staff_user, issued):
    session = staff_session(staff_user, "view_agent", "view_credential")
    credential = issued.credential

    assert session.get(agents_url()).status_code == 200
    assert session.get(credentials_url(credential.agent_id, credential.id)).status_code == 200
    made = session.post(agents_url(), {"name": "escalated", "scopes": ["agentidp:admin"]}, format="json")
    assert_error(made, 403, "FORBIDDEN")
    taken = session.post(rotate_url(credential.agent_id, credential.id), {"gracePeriodSeconds": 86400}, format="json")
    assert_error(taken, 403, "FORBIDDEN")
    assert_error(session.post(credentials_url(credential.agent_id), {}, format="json"), 403, "FORBIDDEN")

    assert not Agent.objects.filter(name="escalated").exists()
    assert Credential.objects.get(pk=credential.pk).rotated_at is None


def test_creating_an_agent_with_scopes_needs_the_grant_scopes_permission_too(staff_user):
    session = staff_session(staff_user, "add_agent")

    assert session.post(agents_url(), {"name": "plain"}, format="json").status_code == 201
    assert_error(session.post(agents_url(), {"name": "scoped", "scopes": ["a"]}, format="json"), 403, "FORBIDDEN")

    session = staff_session(staff_user, "add_agent", "grant_scopes")
    assert session.post(agents_url(), {"name": "scoped", "scopes": ["a"]}, format="json").status_code == 201


@pytest.mark.parametrize(
    "change, permission",
    [
        ({"description": "new"}, "change_agent"),
        ({"owner": "team"}, "change_agent"),
        ({"scopes": ["agentidp:admin"]}, "grant_scopes"),
        ({"status": "suspended"}, "suspend_agent"),
        ({}, "change_agent"),
    ],
)
def test_each_change_to_an_agent_needs_its_own_permission(staff_user, agent, change, permission):
    others = {"change_agent", "grant_scopes", "suspend_agent"} - {permission}

    assert_error(
        staff_session(staff_user, "view_agent", *others).patch(agents_url(agent.id), change, format="json"),
        403,
        "FORBIDDEN",
    )
    assert Agent.objects.get(pk=agent.pk).updated_at == agent.updated_at

    assert staff_session(staff_user, permission).patch(agents_url(agent.id), change, format="json").status_code == 200


@pytest.mark.parametrize(
    "call, permissions",
    [
        ("list_credentials", ["view_credential"]),
        ("issue", ["add_credential"]),
        ("rotate", ["rotate_credential"]),
        ("delete_credential", ["delete_credential"]),
        ("delete_agent", ["delete_agent", "delete_credential", "delete_trustpolicy"]),
    ],
)
def test_each_credential_call_needs_the_console_permission_for_it(staff_user, issued, call, permissions):
    credential = issued.credential
    calls = {
        "list_credentials": ("get", credentials_url(credential.agent_id), 200),
        "issue": ("post", credentials_url(credential.agent_id), 201),
        "rotate": ("post", rotate_url(credential.agent_id, credential.id), 200),
        "delete_credential": ("delete", credentials_url(credential.agent_id, credential.id), 204),
        "delete_agent": ("delete", agents_url(credential.agent_id), 204),
    }
    method, url, success = calls[call]
    for missing in permissions:
        held = [p for p in permissions if p != missing]
        assert_error(getattr(staff_session(staff_user, *held), method)(url, {}, format="json"), 403, "FORBIDDEN")

    assert getattr(staff_session(staff_user, *permissions), method)(url, {}, format="json").status_code == success


def test_a_staff_session_with_the_permissions_can_use_the_api_and_is_audited_as_the_user(staff_user, agent):
    session = staff_session(staff_user, "view_agent", "add_agent")

    listed = session.get(agents_url())
    created = session.post(agents_url(), {"name": "made-by-staff"}, format="json")

    assert listed.status_code == 200
    assert str(agent.id) in {a["agentId"] for a in listed.json()["results"]}
    assert created.status_code == 201
    event = AuditEvent.objects.get(action="agent.created", agent_id=created.json()["agentId"])
    assert (event.actor_type, event.actor_id, event.actor_label) == ("user", str(staff_user.pk), "operator")


def test_a_superuser_session_may_make_every_call(django_user_model, issued):
    user = django_user_model.objects.create_superuser(username="root", password="unused")
    session = APIClient()
    session.force_login(user)
    credential = issued.credential

    assert session.post(agents_url(), {"name": "any", "scopes": ["agentidp:admin"]}, format="json").status_code == 201
    assert session.post(rotate_url(credential.agent_id, credential.id), {}, format="json").status_code == 200


def test_a_staff_session_needs_a_csrf_token_for_unsafe_methods(staff_user):
    staff_session(staff_user, "add_agent")
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(staff_user)

    body = assert_error(session.post(agents_url(), {"name": "no-csrf"}, format="json"), 403, "FORBIDDEN")
    assert "CSRF" in body["message"]
    assert not Agent.objects.filter(name="no-csrf").exists()


def test_a_non_staff_session_is_forbidden(django_user_model, agent):
    user = django_user_model.objects.create_user(username="visitor", password="unused", is_staff=False)
    session = APIClient()
    session.force_login(user)

    assert_error(session.get(agents_url()), 403, "FORBIDDEN")
    assert_error(session.delete(agents_url(agent.id)), 403, "FORBIDDEN")
    assert Agent.objects.filter(pk=agent.pk).exists()


def test_the_session_of_a_deactivated_staff_user_is_unauthorized(staff_user):
    session = APIClient()
    session.force_login(staff_user)
    staff_user.is_active = False
    staff_user.save()

    assert_error(session.get(agents_url()), 401, "UNAUTHORIZED")


# --- routing ------------------------------------------------------------------------------


def test_every_route_answers_with_a_trailing_slash_too(api, agent):
    created = api.post(f"{credentials_url(agent.id)}/", {}, format="json")
    assert created.status_code == 201
    credential_id = created.json()["credentialId"]

    assert api.get(f"{agents_url()}/").status_code == 200
    assert api.post(f"{agents_url()}/", {"name": "slashed"}, format="json").status_code == 201
    assert api.get(f"{agents_url(agent.id)}/").status_code == 200
    assert api.patch(f"{agents_url(agent.id)}/", {"owner": "o"}, format="json").status_code == 200
    assert api.get(f"{credentials_url(agent.id)}/").json()["count"] == 1
    assert api.get(f"{credentials_url(agent.id, credential_id)}/").status_code == 200
    assert api.post(f"{rotate_url(agent.id, credential_id)}/", {}, format="json").status_code == 200
    assert api.delete(f"{credentials_url(agent.id, credential_id)}/").status_code == 204
    assert api.delete(f"{agents_url(agent.id)}/").status_code == 204


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete"])
@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/agents", "/api/", "/api/v1/agents/x/y/z/w/v"])
def test_unknown_api_route_is_not_found_in_json(api, method, path):
    assert_error(getattr(api, method)(path, {}, format="json"), 404, "NOT_FOUND")


def test_unknown_api_route_is_not_found_without_a_token(client):
    assert_error(client.get("/api/v1/nope"), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("put", "/api/v1/agents", {"GET", "POST"}),
        ("delete", "/api/v1/agents", {"GET", "POST"}),
        ("put", "/api/v1/agents/{agent}", {"GET", "PATCH", "DELETE"}),
        ("post", "/api/v1/agents/{agent}", {"GET", "PATCH", "DELETE"}),
        ("patch", "/api/v1/agents/{agent}/credentials", {"GET", "POST"}),
        ("put", "/api/v1/agents/{agent}/credentials/{credential}", {"GET", "DELETE"}),
        ("patch", "/api/v1/agents/{agent}/credentials/{credential}", {"GET", "DELETE"}),
        ("get", "/api/v1/agents/{agent}/credentials/{credential}/rotate", {"POST"}),
        ("delete", "/api/v1/agents/{agent}/credentials/{credential}/rotate", {"POST"}),
    ],
)
def test_wrong_method_is_method_not_allowed_with_allow(api, issued, method, path, allowed):
    url = path.format(agent=issued.credential.agent_id, credential=issued.credential.id)

    response = getattr(api, method)(url, {}, format="json")

    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    methods = {m.strip() for m in response["Allow"].split(",")}
    assert allowed <= methods
    assert method.upper() not in methods
    assert Credential.objects.filter(pk=issued.credential.pk).exists()


# --- OpenAPI --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, headers",
    [({"format": "json"}, {}), ({}, {"HTTP_ACCEPT": "application/vnd.oai.openapi+json"})],
    ids=["format-json", "accept-header"],
)
def test_openapi_schema_is_served_and_names_the_contract_paths(client, query, headers):
    response = client.get("/api/v1/schema/", query, **headers)

    assert response.status_code == 200
    assert "json" in response["Content-Type"]
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert {
        "/api/v1/agents",
        "/api/v1/agents/{agent_id}",
        "/api/v1/agents/{agent_id}/credentials",
        "/api/v1/agents/{agent_id}/credentials/{credential_id}",
        "/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate",
    } <= set(paths)
    assert set(paths["/api/v1/agents"]) >= {"get", "post"}
    assert set(paths["/api/v1/agents/{agent_id}"]) >= {"get", "patch", "delete"}
    assert set(paths["/api/v1/agents/{agent_id}/credentials/{credential_id}"]) >= {"get", "delete"}


def test_openapi_schema_describes_rotate_with_its_body_and_the_issued_credential(client):
    schema = client.get("/api/v1/schema/", {"format": "json"}).json()

    rotate = schema["paths"]["/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate"]["post"]
    assert "requestBody" in rotate
    assert {"200", "400", "401", "403", "404", "409"} <= set(rotate["responses"])
    ok = rotate["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][ok.rsplit("/", 1)[1]]
    assert "clientSecret" in component["properties"]


def test_openapi_schema_declares_bearer_authentication(client):
    schema = client.get("/api/v1/schema/", {"format": "json"}).json()

    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())


def test_api_docs_are_served_as_html(client):
    response = client.get("/api/v1/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"/api/v1/schema" in response.content


# --- secrets never leak ---------------------------------------------------------------------


def test_client_secret_appears_only_in_create_and_rotate_responses(api, agent):
    created = create_credential(api, agent.id)
    rotated = api.post(rotate_url(agent.id, created["credentialId"]), {}, format="json").json()
    secrets = {created["clientSecret"], rotated["clientSecret"]}

    responses = [
        api.get(agents_url()),
        api.get(agents_url(agent.id)),
        api.get(credentials_url(agent.id)),
        api.get(credentials_url(agent.id, created["credentialId"])),
        api.patch(agents_url(agent.id), {"description": "x"}, format="json"),
    ]

    for response in responses:
        assert response.status_code == 200
        text = response.content.decode()
        assert "clientSecret" not in text
        assert not any(secret in text for secret in secrets)
        assert "$2b$" not in text
