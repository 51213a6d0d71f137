"""
Fuzz the management API from the OpenAPI document it serves (schemathesis on hypothesis).

Whatever an admin client sends, the answer keeps the contract: never a 5xx; every error is
{"code", "message"[, "details"]} with an UPPER_SNAKE code; status, content type, headers and
body match the schema; an id in the path that names nothing (malformed or unknown) is 404
AGENT_NOT_FOUND or CREDENTIAL_NOT_FOUND; and a credential made before the fuzz still gets a token.
Runs are deterministic (derandomized) and bounded, so CI sees the same examples every time.
"""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import quote

import pytest
import schemathesis
from django.conf import settings
from django.test import Client
from django.test.client import ClientHandler
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from credentials.services import IssuedCredential
from tests.conftest import token_for
from tests.factories import AgentFactory, make_credential, make_trust_policy, public_jwks

OPERATIONS = [
    "GET /api/v1/agents",
    "POST /api/v1/agents",
    "GET /api/v1/agents/{agent_id}",
    "PATCH /api/v1/agents/{agent_id}",
    "DELETE /api/v1/agents/{agent_id}",
    "GET /api/v1/agents/{agent_id}/credentials",
    "POST /api/v1/agents/{agent_id}/credentials",
    "GET /api/v1/agents/{agent_id}/credentials/{credential_id}",
    "DELETE /api/v1/agents/{agent_id}/credentials/{credential_id}",
    "POST /api/v1/agents/{agent_id}/credentials/{credential_id}/rotate",
    "GET /api/v1/agents/{agent_id}/trust-policies",
    "POST /api/v1/agents/{agent_id}/trust-policies",
    "GET /api/v1/agents/{agent_id}/trust-policies/{trust_policy_id}",
    "DELETE /api/v1/agents/{agent_id}/trust-policies/{trust_policy_id}",
]
BODY_OPERATIONS = [label for label in OPERATIONS if label.startswith(("POST", "PATCH"))]
PATH_OPERATIONS = [label for label in OPERATIONS if "{agent_id}" in label]
SCHEMA_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
ERROR_CODE = re.compile(r"[A-Z]+(?:_[A-Z]+)*")
ROUTES_WITH_IDS = {
    "agent-detail",
    "credential-list",
    "credential-detail",
    "credential-rotate",
    "trust-policy-list",
    "trust-policy-detail",
}
#: The 404 code for an id in the path that names nothing, by the path parameter it is in.
NOT_FOUND_CODES = {
    "agent_id": "AGENT_NOT_FOUND",
    "credential_id": "CREDENTIAL_NOT_FOUND",
    "trust_policy_id": "TRUST_POLICY_NOT_FOUND",
}
FUZZ = hypothesis_settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)


class InProcessApp:
    """
    A WSGI application that serves each request the way Django's test client does: in the
    test's database transaction. It keeps the last Django request, to see which route answered.
    """

    def __init__(self) -> None:
        self.handler = ClientHandler(enforce_csrf_checks=False)
        self.last_request = None

    def __call__(self, environ, start_response):
        response = self.handler(environ)
        self.last_request = response.wsgi_request
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        return [response.content]


@pytest.fixture(scope="module")
def schema():
    """The OpenAPI document as /api/v1/schema/ serves it, loaded by schemathesis."""
    response = Client().get("/api/v1/schema/?format=json")
    assert response.status_code == 200, response.content
    config = schemathesis.Config()
    # The admin token is added to each call; generated Authorization headers would only test the 401 path.
    config.projects.default.generation.update(with_security_parameters=False)
    return schemathesis.openapi.from_dict(json.loads(response.content), config=config)


@pytest.fixture
def bystander(db) -> IssuedCredential:
    """A credential that exists before the fuzz and that no generated request names."""
    return make_credential(AgentFactory(name="bystander"))


@pytest.fixture
def admin_headers(admin_issued) -> dict[str, str]:
    return {"Authorization": "Bearer " + token_for(Client(), admin_issued)}


def operation(schema, label: str):
    found = schema.find_operation_by_label(label)
    assert found is not None, f"{label} is not in the served OpenAPI document"
    return found


def assert_contract_answer(status: int, content_type: str, content: bytes) -> dict | None:
    """Assert that an answer is no 5xx and that an error is the contract's JSON shape; return the error body."""
    assert status < 500, content[:2000]
    assert b"Traceback" not in content and b'File "' not in content
    if status < 400:
        return None
    assert content_type.split(";")[0].strip() == "application/json", (status, content_type, content[:500])
    body = json.loads(content)
    assert isinstance(body, dict) and {"code", "message"} <= set(body) <= {"code", "message", "details"}, body
    assert ERROR_CODE.fullmatch(body["code"]), body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body.get("details", {}), dict), body
    return body


def assert_still_gets_a_token(issued: IssuedCredential) -> None:
    token_for(Client(), issued)


# --- the schema and the fuzz agree on what there is to fuzz ------------------------------------


def test_the_fuzz_covers_every_operation_of_the_served_schema(schema):
    served = sorted(result.ok().label for result in schema.get_all_operations())

    assert served == sorted(OPERATIONS)


# --- generated requests -----------------------------------------------------------------------


#: A trust policy body that passes validation: what "valid" aiming puts over a generated body.
VALID_POLICY = {"issuer": "spiffe://fuzz.example.org", "audience": "https://agentidp.example", "subject": "workload"}


def aim_body(case, draw) -> None:
    """
    Make a generated body valid, half the time, where the schema alone cannot say what is: a trust
    policy (its issuer must be a URL the key fetcher accepts unless keys are given, and its keys
    must be real) and the rotation of the secret credential `aim` points at (which takes no keys).
    Without this the positive fuzz would rarely, or never, get past validation.
    """
    if case.method.upper() != "POST" or not isinstance(case.body, dict):
        return
    if case.path.endswith("/rotate") and draw(st.booleans(), label="secret rotation"):
        case.body = {key: value for key, value in case.body.items() if key not in ("jwks", "jwksUri")}
        return
    if not case.path.endswith("/trust-policies"):
        return
    if draw(st.booleans(), label="valid policy"):
        body = {key: value for key, value in case.body.items() if key in ("description", "maxTokenAgeSeconds")}
        case.body = {**body, **VALID_POLICY, "jwks": public_jwks("fuzz")}


def aim(case, draw) -> tuple[set[uuid.UUID], dict[str, set[uuid.UUID]]]:
    """
    Point the case's path at a real agent, credential or trust policy, or leave the generated ids, as drawn.

    Returns the agent ids and, per other path parameter, the ids that exist for this request, so the
    expected 404 code can be worked out from the ids Django actually routed.
    """
    aim_body(case, draw)
    params = case.path_parameters or {}
    if "agent_id" not in params:
        return set(), {}
    victim = make_credential(AgentFactory())
    agent = victim.credential.agent
    policy = make_trust_policy(agent)
    agent_id = agent.id
    owned = {"credential_id": victim.credential.id, "trust_policy_id": policy.id}
    child = next((name for name in owned if name in params), None)
    choices = ["generated", "agent", "agent"]
    if child is not None:
        choices = ["generated", "agent", "child", "child", "foreign"]
    aim_at = draw(st.sampled_from(choices), label="aim")
    if aim_at != "generated":
        params["agent_id"] = str(agent_id)
    if aim_at == "child":
        params[child] = str(owned[child])
    elif aim_at == "foreign":
        other = AgentFactory()
        foreign = {
            "credential_id": make_credential(other).credential.id,
            "trust_policy_id": make_trust_policy(other).id,
        }
        params[child] = str(foreign[child])
    return {agent_id}, {name: {value} for name, value in owned.items()}


def named(value: str, existing: set[uuid.UUID]) -> bool:
    try:
        return uuid.UUID(value) in existing
    except ValueError:
        return False


def expected_not_found(django_request, agents: set[uuid.UUID], owned: dict[str, set[uuid.UUID]]) -> str | None:
    """The 404 code the contract requires for the path Django routed, or None if the ids name real things."""
    match = django_request.resolver_match
    if match is None or match.url_name not in ROUTES_WITH_IDS | {"agent-list"}:
        return "NOT_FOUND"
    if "agent_id" in match.kwargs and not named(match.kwargs["agent_id"], agents):
        return "AGENT_NOT_FOUND"
    for name, existing in owned.items():
        if name in match.kwargs and not named(match.kwargs[name], existing):
            return NOT_FOUND_CODES[name]
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_requests_get_documented_answers_and_never_a_server_error(
    schema, label, mode, admin_headers, bystander
):
    app = InProcessApp()
    statuses: list[int] = []

    @FUZZ
    @given(case=operation(schema, label).as_strategy(generation_mode=mode), data=st.data())
    def fuzz(case, data):
        agents, owned = aim(case, data.draw)

        response = case.call(app=app, headers=admin_headers)

        statuses.append(response.status_code)
        case.validate_response(response, checks=SCHEMA_CHECKS)
        content_type = (response.headers.get("content-type") or [""])[0]
        error = assert_contract_answer(response.status_code, content_type, response.content)
        assert response.status_code not in (401, 403), response.content
        code = expected_not_found(app.last_request, agents, owned)
        if code is not None:
            assert response.status_code == 404 and error["code"] == code, (app.last_request.path, response.content)
        elif response.status_code == 404:
            assert error["code"] == "NOT_FOUND" and "page" in error["message"], response.content

    fuzz()

    # The fuzz reached past validation (positive) and was refused (negative), so its checks saw both.
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for status in statuses), statuses
    else:
        assert any(400 <= status < 500 for status in statuses), statuses
    assert_still_gets_a_token(bystander)


# --- hostile bodies -------------------------------------------------------------------------------

NON_JSON_MEDIA_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=fuzz",
    "application/xml",
    "application/json-patch+json",
    "",
]
# Bodies the parser may read one way or another; the answer must still keep the contract.
AMBIGUOUS_MEDIA_TYPES = [
    "application/json; charset=utf-16",
    "application/json; charset=latin-1",
    "application/json; charset=no-such-charset",
    "APPLICATION/JSON",
    "application/json;;",
]
VALIDATION = (400, "VALIDATION_ERROR")
ANY_ANSWER = (None, None)

hostile_text = st.one_of(
    st.text(min_size=1, max_size=20).map(lambda text: text + "\x00"),
    st.text(max_size=20).map(lambda text: "\ud800" + text + "\udfff"),
    st.sampled_from(["\x00", "\ud800", "\u202e", "\x1b[31m", "\ufeff", "\u2028", "\x7f"]),
)
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def wrong_type_for(field_schema: dict, value) -> bool:
    """Whether `value` has a JSON type the field's schema does not allow (null counts where not nullable)."""
    if value is None:
        return not field_schema.get("nullable", False)
    expected = field_schema.get("type", "string" if "enum" in field_schema else None)
    if expected == "string":
        return not isinstance(value, str)
    if expected == "integer":
        return isinstance(value, bool) or not isinstance(value, int)
    if expected == "array":
        return not isinstance(value, list)
    if expected == "object":
        return not isinstance(value, dict)
    return False


HOSTILE_CHANGES = [
    "hostile-text-value",
    "hostile-text-in-list",
    "hostile-key",
    "unknown-key",
    "huge-string",
    "over-limit",
    "huge-list",
    "wrong-type",
    "nested-value",
    "deep-nesting",
    "array-body",
    "scalar-body",
    "invalid-utf8",
    "truncated",
    "nan",
    "huge-number",
    "duplicate-keys",
    "media-type",
    "ambiguous-media-type",
]


def hostile_arguments(change: str, field_schema: dict):
    """Draw what a change puts into the body: small values, so a failure report stays readable."""
    arguments = {
        "hostile-text-value": hostile_text,
        "hostile-text-in-list": hostile_text,
        "hostile-key": hostile_text,
        "unknown-key": st.text(max_size=30),
        "huge-string": st.sampled_from([10_000, 200_000, settings.AGENTIDP_MAX_BODY_SIZE - 50_000]),
        "wrong-type": wrong_types.filter(lambda value: wrong_type_for(field_schema, value)),
        "nested-value": st.integers(2, 500),
        "deep-nesting": st.sampled_from(["[", '{"a":', "{field}"]),
        "scalar-body": st.sampled_from(["x", 0, 1.5, True, False, None]),
        "nan": st.sampled_from(["NaN", "Infinity", "-Infinity"]),
        "media-type": st.sampled_from(NON_JSON_MEDIA_TYPES),
        "ambiguous-media-type": st.sampled_from(AMBIGUOUS_MEDIA_TYPES),
    }
    return arguments.get(change, st.none())


def hostile_body(change: str, field: str, argument, base: dict) -> tuple[bytes, str, int | None, str | None]:
    """Return (body, content type, expected status, expected code) for one hostile change of `base`."""
    limit = settings.AGENTIDP_MAX_BODY_SIZE
    key = json.dumps(field).encode()
    encode = lambda value: json.dumps(value).encode()  # noqa: E731  (ASCII: lone surrogates as \\ud800)
    json_type = "application/json"
    if change in ("hostile-text-value", "wrong-type"):
        return encode({**base, field: argument}), json_type, *VALIDATION
    if change == "hostile-text-in-list":
        return encode({**base, field: [argument]}), json_type, *VALIDATION
    if change in ("hostile-key", "unknown-key"):
        return encode({**base, argument: "x"}), json_type, *VALIDATION
    if change == "huge-string":
        return encode({**base, field: "x" * argument}), json_type, *VALIDATION
    if change == "over-limit":
        return encode({**base, field: "x" * limit}), json_type, 413, "PAYLOAD_TOO_LARGE"
    if change == "huge-list":
        return encode({**base, field: ["a"] * 100_000}), json_type, *VALIDATION
    if change == "nested-value":
        return encode({**base, field: nested(argument)}), json_type, *VALIDATION
    if change == "deep-nesting":
        opener = (key + b":") if argument == "{field}" else argument.encode()
        if argument == "{field}":
            opener = b"{" + opener
        return opener * min(100_000, (limit - 10) // len(opener)) + b"1", json_type, *VALIDATION
    if change == "array-body":
        return encode([base]), json_type, *VALIDATION
    if change == "scalar-body":
        return encode(argument), json_type, *VALIDATION
    if change == "invalid-utf8":
        return b"{" + key + b': "\xff\xfe\xc3"}', json_type, *VALIDATION
    if change == "truncated":
        return encode({**base, field: "x"})[:-1], json_type, *VALIDATION
    if change == "nan":
        return b"{" + key + b": " + argument.encode() + b"}", json_type, *VALIDATION
    if change == "huge-number":
        return b"{" + key + b": 1" + b"0" * 5000 + b"}", json_type, *VALIDATION
    if change == "duplicate-keys":
        value = encode(base.get(field, "x"))
        return b"{" + key + b": " + value + b", " + key + b": " + value + b"}", json_type, *ANY_ANSWER
    if change == "media-type":
        return encode(base), argument, 415, "UNSUPPORTED_MEDIA_TYPE"
    return encode(base), argument, *ANY_ANSWER


def request_body_properties(schema, label: str) -> dict:
    body = operation(schema, label).definition.raw["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    properties = schema.raw_schema["components"]["schemas"][name]["properties"]
    resolved = {}
    for key, value in properties.items():
        if "$ref" in value:
            value = schema.raw_schema["components"]["schemas"][value["$ref"].rsplit("/", 1)[-1]]
        resolved[key] = value
    return resolved


@pytest.mark.parametrize("change", HOSTILE_CHANGES)
@pytest.mark.parametrize("label", BODY_OPERATIONS)
def test_hostile_json_bodies_are_refused_in_the_contract_shape_never_a_server_error(
    schema, label, change, admin_headers, bystander
):
    victim = make_credential(AgentFactory(name="victim"))
    method, template = label.split(" ")
    path = template.format(agent_id=victim.credential.agent_id, credential_id=victim.credential.id)
    properties = request_body_properties(schema, label)
    client = Client(raise_request_exception=False)
    fields = st.sampled_from(sorted(properties))

    @hypothesis_settings(FUZZ, max_examples=6)
    @given(case=operation(schema, label).as_strategy(generation_mode=GenerationMode.POSITIVE), data=st.data())
    def fuzz(case, data):
        base = case.body if isinstance(case.body, dict) else {}
        field = data.draw(fields, label="field")
        argument = data.draw(hostile_arguments(change, properties[field]), label="argument")
        if change == "unknown-key" and argument in properties:
            argument += "-unknown"
        body, content_type, status, code = hostile_body(change, field, argument, base)

        response = client.generic(
            method, path, body, content_type=content_type, HTTP_AUTHORIZATION=admin_headers["Authorization"]
        )

        error = assert_contract_answer(response.status_code, response.get("Content-Type", ""), response.content)
        if status is not None:
            assert (response.status_code, error and error["code"]) == (status, code), response.content[:500]

    fuzz()

    assert_still_gets_a_token(bystander)


# --- malformed ids in the path ----------------------------------------------------------------


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


HOSTILE_IDS = [
    "\x00",
    "%00",
    "%",
    ".",
    "..",
    "null",
    "0",
    "-1",
    "' OR '1'='1",
    "a" * 10_000,
    "\ud800",
    "\ud800\udfff",
    "😀",
    "00000000-0000-0000-0000-00000000000g",
    "00000000-0000-0000-0000-0000000000000",
    "00000000-0000-0000-0000-000000000000\x00",
    "\u202e00000000-0000-0000-0000-000000000000",
    "\uff10" * 32,
]
malformed_ids = st.one_of(
    st.sampled_from(HOSTILE_IDS),
    st.text(min_size=1, max_size=100),
    st.binary(min_size=1, max_size=40).map(lambda raw: raw.decode("latin-1")),
).filter(lambda text: not is_uuid(text))


def path_segment(text: str) -> str:
    """Percent-encode an id as a path segment; a lone surrogate goes as the invalid UTF-8 bytes it would be."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@pytest.mark.parametrize("label", PATH_OPERATIONS)
def test_malformed_ids_in_the_path_are_404_with_the_resource_code(label, admin_headers, bystander):
    victim = make_credential(AgentFactory(name="victim"))
    policy = make_trust_policy(victim.credential.agent)
    method, template = label.split(" ")
    client = Client(raise_request_exception=False)

    @FUZZ
    @given(bad=malformed_ids, where=st.sampled_from(["agent_id", "child"]))
    def fuzz(bad, where):
        ids = {
            "agent_id": str(victim.credential.agent_id),
            "credential_id": str(victim.credential.id),
            "trust_policy_id": str(policy.id),
        }
        where = (
            next((name for name in ("credential_id", "trust_policy_id") if name in template), "agent_id")
            if (where == "child")
            else "agent_id"
        )
        ids[where] = path_segment(bad)
        body = b"{}" if method in ("POST", "PATCH") else b""

        response = client.generic(
            method,
            template.format(**ids),
            body,
            content_type="application/json",
            HTTP_AUTHORIZATION=admin_headers["Authorization"],
        )

        error = assert_contract_answer(response.status_code, response.get("Content-Type", ""), response.content)
        routed = response.wsgi_request.resolver_match
        expected = NOT_FOUND_CODES[where]
        if routed is None or routed.url_name not in ROUTES_WITH_IDS:
            expected = "NOT_FOUND"  # no route of the API matched: the id held a "/", say
        assert (response.status_code, error["code"]) == (404, expected), (bad, response.content[:300])

    fuzz()

    assert_still_gets_a_token(bystander)


@pytest.mark.parametrize("spelling", ["urn:uuid:{}", "{{{}}}", "uuid:{}"])
def test_non_canonical_spellings_of_a_real_agent_id_are_404_agent_not_found(api, spelling):
    agent = AgentFactory()

    response = api.get("/api/v1/agents/" + quote(spelling.format(agent.id), safe=""))

    assert response.status_code == 404
    assert response.json()["code"] == "AGENT_NOT_FOUND"
