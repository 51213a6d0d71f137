"""
Failed sign-ins at the operators' console: limited per account and per address, without locking operators out.

Each test signs in through the admin's own login page with Django's test client, from the
address a request carries, and counts the password hasher's work behind it.
"""

from __future__ import annotations

import logging
from unittest import mock

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from agentidp import console_login
from credentials.models import AuditEvent
from tests.conftest import assert_logs_keep

LOGIN_URL = "/admin/login/"
PASSWORD = "correct horse battery staple"
ATTACKER, OWNER, ELSEWHERE = "203.0.113.66", "198.51.100.7", "192.0.2.44"
THROTTLED = "Too many failed sign-ins; try again in {} seconds."


@pytest.fixture
def limits(settings):
    """The documented defaults, in a window of 60 seconds."""
    settings.AGENTIDP_RATE_LIMIT_WINDOW_SECONDS = 60
    settings.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ACCOUNT = 5
    settings.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS = 20
    return settings


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(username="operator", password=PASSWORD, is_staff=True)


@pytest.fixture
def hashing(monkeypatch):
    """Count the password hasher's work (a check of a password, or the dummy one for an unknown username)."""
    calls = []
    original = MD5PasswordHasher.encode

    def counting(self, password, salt):
        calls.append(1)
        return original(self, password, salt)

    monkeypatch.setattr(MD5PasswordHasher, "encode", counting)
    return calls


def sign_in(username: str, password: str, address: str):
    """Post the console's login form from `address`, as a browser without a session would."""
    return Client().post(
        LOGIN_URL, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )


def signed_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def errors(response) -> list[str]:
    assert response.status_code == 200, response.status_code
    return list(response.context["form"].non_field_errors())


def throttled(response) -> int:
    """Assert that the login page refused the sign-in for too many failures; return the seconds it asks to wait."""
    [message] = errors(response)
    assert message.startswith("Too many failed sign-ins; try again in "), message
    seconds = int(message.removeprefix("Too many failed sign-ins; try again in ").removesuffix(" seconds."))
    assert message == THROTTLED.format(seconds) and 1 <= seconds <= 60
    assert THROTTLED.format(seconds) in response.content.decode()
    return seconds


def wrong_password(response) -> bool:
    [message] = errors(response)
    return message.startswith("Please enter the correct username and password for a staff account.")


def limit_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditEvent.Action.RATE_LIMITED).order_by("id"))


# --- per account ----------------------------------------------------------------------------------


def test_forty_wrong_passwords_then_the_right_one_is_refused_without_hashing_once_over_the_limit(
    db, staff, limits, hashing, caplog
):
    caplog.set_level(logging.INFO)
    for attempt in range(40):
        response = sign_in("operator", f"guess-{attempt}", ATTACKER)
        assert wrong_password(response) if attempt < 5 else throttled(response)
    assert len(hashing) == 5

    throttled(sign_in("operator", PASSWORD, ATTACKER))
    throttled(sign_in("operator", PASSWORD, ELSEWHERE))  # a new address waits for the window too
    assert len(hashing) == 5

    [event] = limit_events()
    assert (event.action, event.actor_type, event.agent_id, event.credential_id) == (
        "client.rate_limited",
        "system",
        None,
        None,
    )
    assert event.details == {
        "limit": "console_account_failures",
        "address": ATTACKER,
        "windowSeconds": 60,
        "accountRef": console_login.account_ref("operator"),
        "username": "operator",
    }
    assert "rate limit reached limit=console_account_failures" in caplog.text
    assert_logs_keep(caplog, PASSWORD, "guess-3")


def test_the_operator_signs_in_from_a_known_address_while_the_account_is_attacked(db, staff, limits, hashing):
    assert signed_in(sign_in("operator", PASSWORD, OWNER))
    for attempt in range(40):
        sign_in("operator", f"guess-{attempt}", ATTACKER)

    assert signed_in(sign_in("operator", PASSWORD, OWNER))
    assert wrong_password(sign_in("operator", "typo", OWNER))  # heard, and refused as usual
    assert signed_in(sign_in("operator", PASSWORD, OWNER))
    throttled(sign_in("operator", PASSWORD, ATTACKER))


def test_a_neighbour_failing_on_the_operators_address_does_not_lock_the_operator_out(db, staff, limits):
    assert signed_in(sign_in("operator", PASSWORD, OWNER))
    for attempt in range(30):
        sign_in(f"made-up-{attempt}", "guess", OWNER)
    for attempt in range(10):
        sign_in("operator", f"guess-{attempt}", OWNER)

    throttled(sign_in("someone-else", "guess", OWNER))
    assert signed_in(sign_in("operator", PASSWORD, OWNER))


def test_an_unknown_username_is_limited_exactly_like_a_known_one(db, staff, limits, hashing):
    for username in ("operator", "nobody-here"):
        for attempt in range(5):
            assert wrong_password(sign_in(username, f"guess-{attempt}", ATTACKER if username == "operator" else OWNER))
    assert len(hashing) == 10  # the checks, and the dummy hashing an unknown username costs

    answers = {}
    for username, address in (("operator", ELSEWHERE), ("nobody-here", ELSEWHERE)):
        with CaptureQueriesContext(connection) as queries:
            response = sign_in(username, PASSWORD, address)
        answers[username] = (response.status_code, errors(response), len(queries))
    assert answers["operator"] == answers["nobody-here"]
    throttled(sign_in("nobody-here", PASSWORD, ELSEWHERE))
    assert len(hashing) == 10

    events = limit_events()
    assert [event.details["limit"] for event in events] == ["console_account_failures"] * 2
    unknown = events[1].details
    assert unknown == {
        "limit": "console_account_failures",
        "address": OWNER,
        "windowSeconds": 60,
        "accountRef": console_login.account_ref("nobody-here"),
    }
    assert "nobody-here" not in str(unknown)


def test_spellings_of_one_username_count_as_one_account(db, staff, limits):
    for attempt, spelling in enumerate(("Operator", "OPERATOR", "operator", "oPerator", "OPERATOR")):
        sign_in(spelling, f"guess-{attempt}", ATTACKER)

    throttled(sign_in("operator", PASSWORD, ELSEWHERE))


# --- per address ----------------------------------------------------------------------------------


def test_an_address_spraying_usernames_is_refused_for_every_account_and_others_are_not(db, staff, limits, hashing):
    for attempt in range(20):
        assert wrong_password(sign_in(f"user-{attempt}", "guess", ATTACKER))

    throttled(sign_in("user-99", "guess", ATTACKER))
    throttled(sign_in("operator", PASSWORD, ATTACKER))
    assert len(hashing) == 20
    assert signed_in(sign_in("operator", PASSWORD, OWNER))
    [event] = limit_events()
    assert event.details == {"limit": "console_address_failures", "address": ATTACKER, "windowSeconds": 60}


def test_the_address_is_the_one_the_trusted_proxy_saw(db, staff, limits):
    limits.AGENTIDP_TRUSTED_PROXIES = 1
    for attempt in range(20):
        Client().post(
            LOGIN_URL,
            {"username": f"user-{attempt}", "password": "guess"},
            REMOTE_ADDR="10.0.0.2",
            HTTP_X_FORWARDED_FOR=f"10.9.{attempt}.1, {ATTACKER}",
        )
    proxied = {"REMOTE_ADDR": "10.0.0.2"}

    response = Client().post(
        LOGIN_URL, {"username": "operator", "password": PASSWORD}, HTTP_X_FORWARDED_FOR=ATTACKER, **proxied
    )
    throttled(response)
    response = Client().post(
        LOGIN_URL, {"username": "operator", "password": PASSWORD}, HTTP_X_FORWARDED_FOR=OWNER, **proxied
    )
    assert response.status_code == 302


# --- windows, settings and the cache ------------------------------------------------------------


def test_the_limits_lift_when_the_window_ends_and_each_window_writes_one_event(db, staff, limits):
    with mock.patch("time.time", return_value=6_000_000.0):
        for attempt in range(8):
            sign_in("operator", f"guess-{attempt}", ATTACKER)
        assert throttled(sign_in("operator", PASSWORD, ATTACKER)) == 60
    with mock.patch("time.time", return_value=6_000_045.5):
        assert throttled(sign_in("operator", PASSWORD, ATTACKER)) == 15
    assert len(limit_events()) == 1

    with mock.patch("time.time", return_value=6_000_060.0):
        assert signed_in(sign_in("operator", PASSWORD, ATTACKER))
        for attempt in range(8):
            sign_in("someone-else", f"guess-{attempt}", ELSEWHERE)
        for attempt in range(8):
            sign_in("operator", f"guess-{attempt}", ELSEWHERE)
        throttled(sign_in("operator", PASSWORD, ELSEWHERE))
    assert [(event.details["limit"], event.details["address"]) for event in limit_events()] == [
        ("console_account_failures", ATTACKER),
        ("console_account_failures", ELSEWHERE),
        ("console_account_failures", ELSEWHERE),
    ]
    assert [event.details["accountRef"] for event in limit_events()] == [
        console_login.account_ref("operator"),
        console_login.account_ref("someone-else"),
        console_login.account_ref("operator"),
    ]


def test_zero_turns_a_limit_off(db, staff, limits):
    limits.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ACCOUNT = 0
    limits.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS = 0
    for attempt in range(30):
        assert wrong_password(sign_in("operator", f"guess-{attempt}", ATTACKER))

    assert signed_in(sign_in("operator", PASSWORD, ATTACKER))
    assert limit_events() == []


def test_a_failing_cache_does_not_block_sign_ins(db, staff, limits, settings, caplog):
    limits.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ACCOUNT = 1
    limits.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS = 1
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }
    caplog.set_level(logging.WARNING)

    for attempt in range(3):
        assert wrong_password(sign_in("operator", f"guess-{attempt}", ATTACKER))
    assert signed_in(sign_in("operator", PASSWORD, ATTACKER))
    assert "rate limit counter unavailable; not limiting" in caplog.text
    assert limit_events() == []


def test_signing_in_without_a_request_is_not_limited(db, staff, limits):
    from django.contrib.auth import authenticate

    for attempt in range(10):
        assert authenticate(username="operator", password=f"guess-{attempt}") is None
    assert authenticate(username="operator", password=PASSWORD) == staff


def test_someone_on_the_operators_own_address_gets_no_more_guesses_than_the_address_limit(db, staff, limits, hashing):
    assert signed_in(sign_in("operator", PASSWORD, OWNER))
    before = len(hashing)

    answers = [sign_in("operator", f"guess-{attempt}", OWNER) for attempt in range(30)]

    assert all(wrong_password(response) for response in answers[:20])
    assert all(throttled(response) for response in answers[20:])
    assert len(hashing) == before + 20
    assert "console_pair_failures" in [event.details["limit"] for event in limit_events()]
