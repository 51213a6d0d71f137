"""Log records: one line each, control characters escaped, client authentications structured."""

import io
import json
import logging
import logging.config
from unittest import mock

import pytest
from django.conf import settings

from agentidp.logformat import EscapingFormatter
from tests.conftest import basic_auth, form_post
from tests.factories import wrong_secret
from tests.oauth.conftest import INTROSPECT_URL, TOKEN_URL, client_auth

FORGED = "\r\n2026-11-28 12:00:00,000 INFO agentidp.auth client authentication outcome=success"


@pytest.fixture
def auth_records():
    """The records of agentidp.auth, whatever the configured handlers."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("agentidp.auth")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def formatter(name: str) -> logging.Formatter:
    """Build a formatter of settings.LOGGING exactly as logging.config would."""
    stream = io.StringIO()
    config = {
        "version": 1,
        "formatters": {name: settings.LOGGING["formatters"][name]},
        "handlers": {"h": {"class": "logging.StreamHandler", "formatter": name, "stream": stream}},
        "loggers": {"agentidp-log-format-test": {"handlers": ["h"], "propagate": False}},
    }
    logging.config.dictConfig({**config, "disable_existing_loggers": False})
    return logging.getLogger("agentidp-log-format-test").handlers[0].formatter


def test_the_plain_format_escapes_control_characters_so_no_value_forges_a_line():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value=%s", ("a" + FORGED + "\x1b[31m\u2028",), None)

    line = formatter("plain").format(record)

    assert isinstance(formatter("plain"), EscapingFormatter)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert line.endswith(
        "value=a\\r\\n2026-11-28 12:00:00,000 INFO agentidp.auth client authentication outcome=success\\x1b[31m\\u2028"
    )


def test_escaping_and_redaction_skip_only_text_in_which_their_patterns_cannot_match():
    from agentidp import logformat

    # Every character of the Basic Multilingual Plane, alone and inside a line: the quick path
    # (printable text) gives what the pattern gives.
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        for text in (chr(code), f"outcome=success user_agent=a{chr(code)}b"):
            expected = logformat._CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
            assert logformat.escape_controls(text) == expected, hex(code)
    # A secret parameter always follows ? or &; without either there is nothing to redact.
    for text in (
        "GET /api/v1/token?client_secret=s3cret HTTP/1.1",
        "GET /x?a=1&Client_Secret=s3cret&token=t HTTP/1.1",
        "client authentication outcome=success client_secret=not-a-query-parameter",
        "password=hunter2 secret=x",
    ):
        assert logformat.redact_secret_parameters(text) == logformat._SECRET_PARAMETER.sub(r"\1[redacted]", text)
    assert "s3cret" not in logformat.redact_secret_parameters("GET /api/v1/token?client_secret=s3cret HTTP/1.1")


def test_a_traceback_still_follows_the_escaped_message_on_its_own_lines():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed\nhere", (), sys.exc_info())

    text = formatter("plain").format(record)

    assert text.splitlines()[0].endswith("failed\\nhere")
    assert "Traceback (most recent call last):" in text.splitlines()[1]


def test_each_client_authentication_is_one_structured_record_with_outcome_reason_and_ids(client, issued, auth_records):
    hostile_agent = "curl/8" + FORGED + "\x00"
    form_post(
        client,
        TOKEN_URL,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, issued.client_secret),
        HTTP_USER_AGENT=hostile_agent,
    )
    form_post(
        client,
        TOKEN_URL,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic_auth("unknown\nid", wrong_secret()),
    )
    form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION="Basic %%%")

    success, unknown, malformed = (record.auth for record in auth_records)
    assert {key: success[key] for key in ("outcome", "reason", "endpoint", "auth_method", "client_id")} == {
        "outcome": "success",
        "reason": "verified",
        "endpoint": "token",
        "auth_method": "client_secret_basic",
        "client_id": issued.credential.client_id,
    }
    assert (success["credential_id"], success["agent_id"]) == (
        str(issued.credential.id),
        str(issued.credential.agent_id),
    )
    assert success["address"] == "127.0.0.1"
    assert success["user_agent"] == json.dumps(hostile_agent)
    assert (unknown["outcome"], unknown["reason"], unknown["client_id"]) == ("failure", "unknown_client", "")
    assert len(unknown["client_ref"]) == 16 and "unknown" not in unknown["client_ref"]
    assert (malformed["outcome"], malformed["reason"]) == ("failure", "malformed_credentials")
    for record in auth_records:
        line = formatter("plain").format(record)
        assert "\n" not in line and "\r" not in line and "\x00" not in line
        assert issued.client_secret not in line


@pytest.fixture
def every_record():
    """Every record at INFO or above, of any logger, as the default configuration writes them."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    root = logging.getLogger()
    handler = Keep(level=logging.INFO)
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)


def test_an_issued_token_is_one_record_the_authentication_with_its_result(client, issued, every_record):
    response = form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, **client_auth(issued))

    assert response.status_code == 200
    [record] = every_record
    assert record.name == "agentidp.auth"
    assert (record.auth["outcome"], record.auth["endpoint"], record.auth["result"]) == ("success", "token", "issued")
    assert record.auth["credential_id"] == str(issued.credential.id)
    assert record.getMessage().endswith(" result=issued")


def test_an_authenticated_request_refused_after_authentication_is_logged_with_the_refusal(client, issued, every_record):
    response = form_post(
        client, TOKEN_URL, {"grant_type": "client_credentials", "scope": "not-granted"}, **client_auth(issued)
    )

    assert response.status_code == 400
    # Besides Django's own line for every 4xx (django.request), one record: the authentication's.
    [record] = [record for record in every_record if record.name != "django.request"]
    assert (record.auth["outcome"], record.auth["result"]) == ("success", "invalid_scope")


def test_a_failed_authentication_is_logged_at_once_with_the_error_it_was_answered_with(client, issued, auth_records):
    form_post(
        client,
        TOKEN_URL,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, wrong_secret()),
    )
    form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION="Basic %%%")

    wrong, malformed = (record.auth for record in auth_records)
    assert (wrong["outcome"], wrong["result"]) == ("failure", "invalid_client")
    assert (malformed["outcome"], malformed["result"]) == ("failure", "invalid_client")


def test_introspection_logs_its_authentication_once_with_result_ok(client, issued, every_record):
    form_post(client, INTROSPECT_URL, {"token": "not-a-token"}, **client_auth(issued))

    [record] = every_record
    assert (record.auth["endpoint"], record.auth["outcome"], record.auth["result"]) == ("introspect", "success", "ok")


def test_an_unexpected_error_after_authentication_still_logs_the_authentication(client, issued, auth_records):
    with mock.patch("oauth.views.access_token_issue", side_effect=RuntimeError("boom")):
        response = form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, **client_auth(issued))

    assert response.status_code == 500
    [record] = auth_records
    assert (record.auth["outcome"], record.auth["result"]) == ("success", "server_error")


def test_the_json_format_writes_one_object_per_record_with_the_authentication_fields(client, issued, auth_records):
    form_post(
        client,
        TOKEN_URL,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, wrong_secret()),
        HTTP_USER_AGENT="agent\nline",
    )

    [record] = auth_records
    line = formatter("json").format(record)

    assert "\n" not in line
    document = json.loads(line)
    assert (document["level"], document["logger"]) == ("INFO", "agentidp.auth")
    assert document["message"].startswith("client authentication outcome=failure reason=wrong_secret")
    assert document["auth"]["outcome"] == "failure" and document["auth"]["reason"] == "wrong_secret"
    assert document["auth"]["client_id"] == issued.credential.client_id


def test_a_secret_in_the_url_stays_out_of_the_request_line_that_the_development_server_logs(transactional_db, issued):
    """A real runserver request handler (django.server's request line), through the configured handler."""
    import threading
    import urllib.error
    import urllib.request

    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer

    [console] = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    written = io.StringIO()
    previous = console.setStream(written)
    server = WSGIServer(("127.0.0.1", 0), WSGIRequestHandler, ipv6=False)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = issued.client_secret
    try:
        url = f"http://127.0.0.1:{server.server_port}{TOKEN_URL}?client_secret={secret}&client_id=x"
        request = urllib.request.Request(url, data=b"grant_type=client_credentials", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
    finally:
        server.shutdown()
        server.server_close()
        console.setStream(previous)

    lines = written.getvalue()
    assert f"POST {TOKEN_URL}?client_secret=[redacted]&client_id=x" in lines
    assert secret not in lines
