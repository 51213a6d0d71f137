"""
Hostile input at the OAuth endpoints (token, introspection, revocation).

Each request is refused with a 4xx, never a 5xx, in the RFC 6749 section 5.2 shape
{"error", "error_description"} with Cache-Control: no-store and no stack trace; and the
credential made before the request still gets a token after it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
from django.conf import settings
from django.test import Client

from credentials.services import IssuedCredential
from tests.conftest import basic_auth, token_for
from tests.oauth.conftest import INTROSPECT_URL, REVOKE_URL, TOKEN_URL, assert_oauth_error, client_auth

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
GRANT = {"grant_type": "client_credentials"}


@pytest.fixture(autouse=True)
def _no_rate_limits(settings):
    """Keep these tests about input, whatever the rate limits of the OAuth endpoints are."""
    settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR = 0
    settings.AGENTIDP_AUTH_FAILURES_TOTAL = 0


@pytest.fixture
def raw_client() -> Client:
    """A test client that returns a 500 response instead of re-raising the view's exception."""
    return Client(raise_request_exception=False)


@dataclass
class Hostile:
    """One hostile request and the refusal it must get."""

    body: bytes
    status: int
    error: str
    content_type: str = FORM
    extra: dict[str, str] = field(default_factory=dict)
    query: str = ""


def send(client: Client, url: str, request: Hostile):
    path = url + ("?" + request.query if request.query else "")
    return client.generic("POST", path, request.body, content_type=request.content_type, **request.extra)


def assert_refused(response, request: Hostile, issued: IssuedCredential) -> None:
    """Assert the refusal the request must get, and that the credential still gets a token afterwards."""
    assert response.status_code < 500, response.content[:1000]
    assert_oauth_error(response, request.status, request.error)
    assert b"Traceback" not in response.content and b'File "' not in response.content
    if request.status == 401 and request.extra.get("HTTP_AUTHORIZATION", "").lower().startswith("basic"):
        assert response["WWW-Authenticate"].startswith("Basic ")
    token_for(Client(), issued)


def form(params: dict[str, str] | list[tuple[str, str]]) -> bytes:
    return urlencode(params).encode()


def raw_basic(payload: bytes) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(payload).decode()}


def post_credentials(issued: IssuedCredential, **overrides: str) -> dict[str, str]:
    return {"client_id": issued.credential.client_id, "client_secret": issued.client_secret, **overrides}


def over_the_limit() -> int:
    return settings.AGENTIDP_MAX_BODY_SIZE + 1


# Each case builds its request from the credential under test. Cases marked token-only depend
# on what the token endpoint does with grant_type and scope; the others hold at every endpoint.
Case = Callable[[IssuedCredential], Hostile]
ANY_ENDPOINT: dict[str, Case] = {}
TOKEN_ONLY: dict[str, Case] = {}


def case(name: str, *, token_only: bool = False):
    def register(build: Case) -> Case:
        (TOKEN_ONLY if token_only else ANY_ENDPOINT)[name] = build
        return build

    return register


# --- NUL bytes ------------------------------------------------------------------------------

for transport in ("form", "json"):
    encode, media_type = (form, FORM) if transport == "form" else ((lambda p: json.dumps(p).encode()), JSON)

    case(f"{transport}-nul-in-client-id")(
        lambda i, e=encode, m=media_type: Hostile(
            e({**GRANT, **post_credentials(i, client_id=i.credential.client_id + "\x00")}), 401, "invalid_client", m
        )
    )
    case(f"{transport}-nul-in-client-secret")(
        lambda i, e=encode, m=media_type: Hostile(
            e({**GRANT, **post_credentials(i, client_secret="\x00" + i.client_secret)}), 401, "invalid_client", m
        )
    )
    case(f"{transport}-nul-in-grant-type", token_only=True)(
        lambda i, e=encode, m=media_type: Hostile(
            e({"grant_type": "client_credentials\x00", **post_credentials(i)}), 400, "unsupported_grant_type", m
        )
    )
    case(f"{transport}-nul-in-scope", token_only=True)(
        lambda i, e=encode, m=media_type: Hostile(
            e({**GRANT, "scope": "reports:read\x00", **post_credentials(i)}), 400, "invalid_scope", m
        )
    )
    case(f"{transport}-10kb-client-id")(
        lambda i, e=encode, m=media_type: Hostile(
            e({**GRANT, **post_credentials(i, client_id="c" * 10_000)}), 401, "invalid_client", m
        )
    )
    case(f"{transport}-10kb-client-secret")(
        lambda i, e=encode, m=media_type: Hostile(
            e({**GRANT, **post_credentials(i, client_secret=i.client_secret + "s" * 10_000)}), 401, "invalid_client", m
        )
    )
    case(f"{transport}-900kb-client-id")(
        lambda i, e=encode, m=media_type: Hostile(
            e({**GRANT, **post_credentials(i, client_id="c" * 900_000)}), 401, "invalid_client", m
        )
    )
    case(f"{transport}-900kb-client-secret")(
        lambda i, e=encode, m=media_type: Hostile(
            e({**GRANT, **post_credentials(i, client_secret="s" * 900_000)}), 401, "invalid_client", m
        )
    )

case("raw-nul-byte-in-the-form-body", token_only=True)(
    lambda i: Hostile(b"grant_type=client_credentials\x00", 400, "unsupported_grant_type", extra=client_auth(i))
)
case("basic-nul-in-client-id")(
    lambda i: Hostile(
        form(GRANT),
        401,
        "invalid_client",
        extra={"HTTP_AUTHORIZATION": basic_auth(quote(i.credential.client_id + "\x00"), quote(i.client_secret))},
    )
)
case("basic-nul-in-client-secret")(
    lambda i: Hostile(
        form(GRANT),
        401,
        "invalid_client",
        extra={"HTTP_AUTHORIZATION": basic_auth(quote(i.credential.client_id), quote(i.client_secret + "\x00"))},
    )
)
case("basic-raw-nul-bytes")(lambda i: Hostile(form(GRANT), 401, "invalid_client", extra=raw_basic(b"\x00:\x00")))

# --- broken Basic headers ----------------------------------------------------------------------

for name, header in {
    "basic-scheme-alone": "Basic",
    "basic-no-colon": "Basic " + base64.b64encode(b"no-colon-here").decode(),
    "basic-bad-base64": "Basic %%%not-base64%%%",
    "basic-base64-with-inner-space": "Basic YWJj ZDplZmdo",
    "basic-non-utf8-after-decoding": "Basic " + base64.b64encode(b"\xc3\x28:\xa0\xa1").decode(),
    "basic-empty-user": "Basic " + base64.b64encode(b":secret").decode(),
    "basic-empty-password": "Basic " + base64.b64encode(b"client:").decode(),
    "basic-non-ascii-header": "Basic \u00e9\u00e9\u00e9\u00e9",
    "basic-percent-nul": "Basic " + base64.b64encode(b"%00:%00").decode(),
    "basic-percent-invalid-utf8": "Basic " + base64.b64encode(b"%ff%fe:%c3%28").decode(),
    "basic-percent-lone-surrogate": "Basic " + base64.b64encode(b"%ed%a0%80:%ed%b0%80").decode(),
    "basic-huge-header": "Basic " + base64.b64encode(b"i" * 50_000 + b":" + b"s" * 50_000).decode(),
}.items():
    case(name)(lambda i, h=header: Hostile(form(GRANT), 401, "invalid_client", extra={"HTTP_AUTHORIZATION": h}))

# --- oversized and malformed bodies ------------------------------------------------------------

case("declared-length-over-the-limit")(
    lambda i: Hostile(
        b"grant_type=client_credentials&pad=" + b"x" * over_the_limit(), 413, "invalid_request", extra=client_auth(i)
    )
)
case("declared-length-over-the-limit-json")(
    lambda i: Hostile(
        json.dumps({**GRANT, "pad": "x" * over_the_limit()}).encode(),
        413,
        "invalid_request",
        JSON,
        extra=client_auth(i),
    )
)
case("declared-length-huge-small-body")(
    lambda i: Hostile(form(GRANT), 413, "invalid_request", extra={**client_auth(i), "CONTENT_LENGTH": str(10**12)})
)
for bad_length in ("abc", "1e3", "-1", "0x10"):
    case(f"malformed-content-length-{bad_length}")(
        lambda i, n=bad_length: Hostile(
            form(GRANT), 400, "invalid_request", extra={**client_auth(i), "CONTENT_LENGTH": n}
        )
    )
case("1001-form-fields")(
    lambda i: Hostile(
        form([*GRANT.items(), *((f"f{n}", "1") for n in range(1001))]), 400, "invalid_request", extra=client_auth(i)
    )
)
case("10000-form-fields")(lambda i: Hostile(b"&".join([b"a=1"] * 10_000), 400, "invalid_request", extra=client_auth(i)))

# --- repeated parameters ---------------------------------------------------------------------------

for name, params in {
    "grant-type-twice": [("grant_type", "client_credentials"), ("grant_type", "client_credentials")],
    "grant-type-empty-then-set": [("grant_type", ""), ("grant_type", "client_credentials")],
    "scope-twice": [("grant_type", "client_credentials"), ("scope", "reports:read"), ("scope", "reports:read")],
    "token-twice": [("grant_type", "client_credentials"), ("token", "a"), ("token", "a")],
}.items():
    case(name)(lambda i, p=params: Hostile(form(p), 400, "invalid_request", extra=client_auth(i)))
for repeated in ("client_id", "client_secret"):
    case(f"{repeated}-twice")(
        lambda i, r=repeated: Hostile(
            form([*GRANT.items(), *post_credentials(i).items(), (r, post_credentials(i)[r])]), 400, "invalid_request"
        )
    )
case("json-duplicate-grant-type")(
    lambda i: Hostile(
        b'{"grant_type": "client_credentials", "grant_type": "client_credentials"}',
        400,
        "invalid_request",
        JSON,
        extra=client_auth(i),
    )
)
case("json-duplicate-client-id")(
    lambda i: Hostile(
        (
            '{"grant_type": "client_credentials", "client_id": "%s", "client_id": "%s", "client_secret": "%s"}'
            % (i.credential.client_id, i.credential.client_id, i.client_secret)
        ).encode(),
        400,
        "invalid_request",
        JSON,
    )
)

# --- non-UTF-8 bytes and wrong content types --------------------------------------------------

case("non-utf8-client-id-and-secret-in-the-form")(
    lambda i: Hostile(b"grant_type=client_credentials&client_id=\xff\xfe&client_secret=\xfd\xfc", 401, "invalid_client")
)
case("non-utf8-grant-type-in-the-form", token_only=True)(
    lambda i: Hostile(b"grant_type=\xff\xfeclient_credentials", 400, "unsupported_grant_type", extra=client_auth(i))
)
case("percent-encoded-invalid-utf8-scope", token_only=True)(
    lambda i: Hostile(b"grant_type=client_credentials&scope=%ff%fe", 400, "invalid_scope", extra=client_auth(i))
)
case("percent-encoded-lone-surrogate-client-id")(
    lambda i: Hostile(b"grant_type=client_credentials&client_id=%ed%a0%80&client_secret=x", 401, "invalid_client")
)
for name, media_type in {
    "text-plain": "text/plain",
    "application-xml": "application/xml",
    "missing-content-type": "",
    "form-charset-utf16": FORM + "; charset=utf-16",
    "form-charset-latin1": FORM + "; charset=ISO-8859-1",
    "json-lookalike": "application/jsonx",
}.items():
    case(name)(lambda i, m=media_type: Hostile(form(GRANT), 400, "invalid_request", m, extra=client_auth(i)))
case("multipart-form-data")(
    lambda i: Hostile(
        b'--b\r\nContent-Disposition: form-data; name="grant_type"\r\n\r\nclient_credentials\r\n--b--\r\n',
        400,
        "invalid_request",
        "multipart/form-data; boundary=b",
        extra=client_auth(i),
    )
)

# --- JSON that is not an object of strings ----------------------------------------------------------

for name, body in {
    "json-array": b'["grant_type", "client_credentials"]',
    "json-string": b'"client_credentials"',
    "json-number": b"1",
    "json-null": b"null",
    "json-true": b"true",
    "json-100000-brackets": b"[" * 100_000,
    "json-100000-nested-objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "json-number-instead-of-string": b'{"grant_type": 1}',
    "json-object-instead-of-string": b'{"grant_type": {"value": "client_credentials"}}',
    "json-nan": b'{"grant_type": NaN}',
    "json-huge-integer": b'{"grant_type": 1' + b"0" * 5000 + b"}",
    "json-invalid-utf8": b'{"grant_type": "\xff\xfe"}',
    "json-truncated": b'{"grant_type": "client_credentials"',
    "json-lone-surrogate-value": b'{"grant_type": "client_credentials", "scope": "\\ud800"}',
}.items():
    case(name)(lambda i, b=body: Hostile(b, 400, "invalid_request", JSON, extra=client_auth(i)))
case("json-numbers-as-client-credentials")(
    lambda i: Hostile(
        b'{"grant_type": "client_credentials", "client_id": 1, "client_secret": 2}', 400, "invalid_request", JSON
    )
)

# --- secrets in the URL ---------------------------------------------------------------------------

case("client-secret-in-the-query-string")(
    lambda i: Hostile(form(GRANT), 400, "invalid_request", extra=client_auth(i), query="client_secret=x")
)
case("empty-client-secret-in-the-query-string")(
    lambda i: Hostile(form(GRANT), 400, "invalid_request", extra=client_auth(i), query="client_secret")
)


@pytest.mark.parametrize("name", sorted(ANY_ENDPOINT) + sorted(TOKEN_ONLY))
def test_hostile_token_request_is_a_4xx_in_the_oauth_shape(raw_client, issued, name):
    request = {**ANY_ENDPOINT, **TOKEN_ONLY}[name](issued)

    response = send(raw_client, TOKEN_URL, request)

    assert_refused(response, request, issued)


@pytest.mark.parametrize("name", sorted(ANY_ENDPOINT))
@pytest.mark.parametrize("url", [INTROSPECT_URL, REVOKE_URL])
def test_hostile_introspection_and_revocation_requests_are_4xx_in_the_oauth_shape(raw_client, issued, url, name):
    request = ANY_ENDPOINT[name](issued)

    response = send(raw_client, url, request)

    assert_refused(response, request, issued)


def test_undeclared_body_over_the_limit_gets_no_token(raw_client, issued):
    # What a WSGI server hands over for a chunked body: no Content-Length. Django then reads no body at all.
    body = b"grant_type=client_credentials&pad=" + b"x" * over_the_limit()

    response = raw_client.generic(
        "POST",
        TOKEN_URL,
        body,
        content_type=FORM,
        CONTENT_LENGTH="",
        HTTP_TRANSFER_ENCODING="chunked",
        **client_auth(issued),
    )

    assert response.status_code in (400, 413), response.content
    assert_oauth_error(response, response.status_code, "invalid_request")
    token_for(Client(), issued)


@pytest.mark.parametrize(
    "token",
    [
        "\x00",
        "\ud800",
        "x" * 900_000,
        "\u00e9.\u00e9.\u00e9",
        "a.b.c",
        "." * 10_000,
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').decode().rstrip("=") + ".e30.",
        base64.urlsafe_b64encode(b"[1]").decode().rstrip("=") + ".e30.c2ln",
    ],
    ids=["nul", "lone-surrogate", "900kb", "non-ascii", "not-base64", "dots", "alg-none", "array-header"],
)
@pytest.mark.parametrize("url", [INTROSPECT_URL, REVOKE_URL])
def test_hostile_token_parameter_is_an_inactive_token_not_an_error(raw_client, issued, url, token):
    body = b"token=" + quote(token.encode("utf-8", "surrogatepass"), safe="").encode()

    response = raw_client.generic("POST", url, body, content_type=FORM, **client_auth(issued))

    assert response.status_code == 200, response.content[:500]
    assert response.json() == ({"active": False} if url == INTROSPECT_URL else {})
    assert response["Cache-Control"] == "no-store"
    token_for(Client(), issued)
