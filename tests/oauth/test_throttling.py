"""Rate limits at the OAuth endpoints: failed authentications per address and per clientId, a ceiling per address."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from django.test import RequestFactory

from credentials.models import AuditEvent
from oauth import throttling
from oauth.throttling import client_address
from tests.conftest import basic_auth, form_post
from tests.credentials.test_verified_cache import REDIS_HOST, REDIS_PORT, redis_listening
from tests.factories import make_credential, wrong_secret
from tests.oauth.conftest import INTROSPECT_URL, TOKEN_URL
from tests.test_cache import commands_sent

#: A well-formed secret no credential has: a failure that reaches the store.
WRONG = wrong_secret()
GRANT = {"grant_type": "client_credentials"}
ATTACKER, OWNER, ELSEWHERE = "203.0.113.66", "198.51.100.7", "192.0.2.44"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=[0, 1_000_000], ids=["no ceiling", "ceiling far off"])
def limits(request, settings):
    """
    Small limits, one per kind, so that tests reach them in a few requests; with no ceiling
    per address, and with one far off (each process then reserves its slots in batches, and
    reads the failure counters only when a store would be asked or an authentication failed).
    """
    settings.AGENTIDP_RATE_LIMIT_WINDOW_SECONDS = 60
    settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = request.param
    settings.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 0
    settings.AGENTIDP_AUTH_FAILURES_TOTAL = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR = 0
    return settings


@pytest.fixture
def bcrypt_checks(monkeypatch):
    """Count bcrypt verifications (the dummy one for unknown clients included)."""
    import bcrypt

    calls = []
    original = bcrypt.checkpw

    def counting(password, hashed):
        calls.append(1)
        return original(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def token(client, client_id: str, secret: str, address: str, **extra):
    return form_post(
        client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, secret), REMOTE_ADDR=address, **extra
    )


def assert_rate_limited(response) -> int:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body == {
        "error": "temporarily_unavailable",
        "error_description": body["error_description"],
        "code": "RATE_LIMITED",
    }
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    assert f"{retry_after} seconds" in body["error_description"]
    assert response["Cache-Control"] == "no-store"
    return retry_after


def rate_limit_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditEvent.Action.RATE_LIMITED).order_by("id"))


# --- failures per clientId ----------------------------------------------------------------------


def test_a_client_id_over_its_failure_limit_is_refused_from_new_addresses_without_any_bcrypt_work(
    client, issued, limits, bcrypt_checks
):
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 3
    client_id = issued.credential.client_id
    for _ in range(3):
        assert token(client, client_id, WRONG, ATTACKER).status_code == 401
    assert len(bcrypt_checks) == 3

    for presented in (WRONG, issued.client_secret):
        assert_rate_limited(token(client, client_id, presented, ATTACKER))
    assert_rate_limited(token(client, client_id, issued.client_secret, ELSEWHERE))

    assert len(bcrypt_checks) == 3
    [event] = rate_limit_events()
    assert (event.action, event.actor_type, event.agent_id, event.credential_id) == (
        "client.rate_limited",
        "system",
        issued.credential.agent_id,
        issued.credential.id,
    )
    assert event.details == {
        "limit": "client_failures",
        "address": ATTACKER,
        "windowSeconds": 60,
        "clientRef": throttling.client_ref(client_id),
        "clientId": client_id,
    }


def test_the_owner_keeps_getting_tokens_from_its_known_address_during_an_attack_on_its_client_id(
    client, issued, limits, settings
):
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 3
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0  # no help from the cache: the address alone
    client_id = issued.credential.client_id
    assert token(client, client_id, issued.client_secret, OWNER).status_code == 200

    for _ in range(10):
        token(client, client_id, WRONG, ATTACKER)

    for _ in range(3):
        assert token(client, client_id, issued.client_secret, OWNER).status_code == 200
    assert token(client, client_id, WRONG, OWNER).status_code == 401  # heard, and refused as usual
    assert_rate_limited(token(client, client_id, WRONG, ATTACKER))


def test_a_secret_the_verified_cache_vouches_for_gets_tokens_from_a_new_address_during_an_attack(
    client, issued, limits, bcrypt_checks
):
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 3
    client_id = issued.credential.client_id
    assert token(client, client_id, issued.client_secret, OWNER).status_code == 200
    for _ in range(3):
        token(client, client_id, WRONG, ATTACKER)
    checks = len(bcrypt_checks)

    assert token(client, client_id, issued.client_secret, ELSEWHERE).status_code == 200
    assert len(bcrypt_checks) == checks


def test_an_unknown_client_id_is_limited_like_a_known_one(client, db, limits, bcrypt_checks):
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 2
    for _ in range(2):
        assert token(client, "no-such-client", WRONG, ATTACKER).status_code == 401
    assert_rate_limited(token(client, "no-such-client", WRONG, ELSEWHERE))

    assert len(bcrypt_checks) == 2  # the two dummy verifications, none once throttled
    [event] = rate_limit_events()
    assert event.agent_id is None and "clientId" not in event.details
    assert event.details["clientRef"] == throttling.client_ref("no-such-client")


# --- failures in all ------------------------------------------------------------------------------


def test_failures_spread_over_addresses_and_client_ids_are_limited_in_all_and_known_addresses_still_heard(
    client, issued, limits, bcrypt_checks
):
    limits.AGENTIDP_AUTH_FAILURES_TOTAL = 5
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 2
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 2
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    for index in range(5):
        assert token(client, f"guessed-{index}", WRONG, f"203.0.113.{index}").status_code == 401
    checks = len(bcrypt_checks)

    assert_rate_limited(token(client, "guessed-9", WRONG, "203.0.113.99"))
    assert_rate_limited(token(client, issued.credential.client_id, WRONG, ELSEWHERE))
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    assert len(bcrypt_checks) == checks
    assert [event.details["limit"] for event in rate_limit_events()] == ["total_failures"]


def test_over_the_total_limit_a_new_client_on_a_known_host_is_heard_and_one_on_a_new_address_is_not(
    client, agent, issued, limits, settings
):
    limits.AGENTIDP_AUTH_FAILURES_TOTAL = 3
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    for index in range(3):
        token(client, f"guessed-{index}", WRONG, f"203.0.113.{index}")
    newcomer = make_credential(agent)  # a new agent's first token: no address knows its clientId yet

    assert token(client, newcomer.credential.client_id, newcomer.client_secret, OWNER).status_code == 200
    assert_rate_limited(token(client, make_credential(agent).credential.client_id, WRONG, ELSEWHERE))


# --- failures per address -----------------------------------------------------------------------


def test_an_address_spraying_client_ids_is_refused_for_every_client_and_others_are_not(
    client, issued, limits, bcrypt_checks
):
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 4
    for index in range(4):
        assert token(client, f"guessed-{index}", WRONG, ATTACKER).status_code == 401

    assert_rate_limited(token(client, "guessed-9", WRONG, ATTACKER))
    assert_rate_limited(token(client, issued.credential.client_id, issued.client_secret, ATTACKER))
    assert len(bcrypt_checks) == 4
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    assert [event.details["limit"] for event in rate_limit_events()] == ["address_failures"]


@pytest.mark.parametrize("vouched_by", ["verified-secret cache", "known address"])
def test_neighbours_failing_on_a_shared_address_never_lock_out_an_agent_that_authenticated_from_it(
    client, issued, settings, bcrypt_checks, vouched_by
):
    # The default limits: a NAT, a cluster's egress or a CI runner pool shared with an attacker.
    if vouched_by == "known address":
        settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0
    shared = "198.51.100.20"
    client_id = issued.credential.client_id
    assert token(client, client_id, issued.client_secret, shared).status_code == 200

    for index in range(60):
        token(client, f"made-up-{index}", WRONG, shared)

    for _ in range(3):
        assert token(client, client_id, issued.client_secret, shared).status_code == 200
    assert token(client, client_id, WRONG, shared).status_code == 401  # heard, and refused as usual


def test_over_the_address_limit_what_the_address_has_not_proven_waits_without_store_work(
    client, agent, issued, limits, bcrypt_checks
):
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 4
    shared = "198.51.100.21"
    assert token(client, issued.credential.client_id, issued.client_secret, shared).status_code == 200
    for index in range(4):
        token(client, f"made-up-{index}", WRONG, shared)
    newcomer = make_credential(agent)
    checks = len(bcrypt_checks)

    assert_rate_limited(token(client, newcomer.credential.client_id, newcomer.client_secret, shared))
    assert_rate_limited(token(client, "made-up-99", WRONG, shared))
    assert len(bcrypt_checks) == checks
    assert token(client, newcomer.credential.client_id, newcomer.client_secret, ELSEWHERE).status_code == 200
    assert token(client, issued.credential.client_id, issued.client_secret, shared).status_code == 200


def test_a_throttled_request_costs_the_same_for_an_unknown_client_id_and_a_known_one(client, db, limits):
    from django.core.cache import caches
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.oauth.conftest import failure_cases

    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 2
    cases = failure_cases()
    for index in range(2):
        token(client, f"made-up-{index}", WRONG, ATTACKER)
    costs = {}
    for reason in ("unknown_client", "wrong_secret"):
        client_id, secret = cases[reason]
        backend = caches["default"]
        with (
            CaptureQueriesContext(connection) as queries,
            mock.patch.object(backend, "get", wraps=backend.get) as gets,
            mock.patch.object(backend, "get_many", wraps=backend.get_many) as get_manys,
        ):
            assert_rate_limited(token(client, client_id, secret, ATTACKER))
        costs[reason] = (len(queries), gets.call_count, get_manys.call_count)

    assert costs["unknown_client"] == costs["wrong_secret"]
    assert costs["wrong_secret"][0] == 2  # the credential's row and its grace secrets


def test_failure_limits_apply_at_introspection_too(client, issued, limits):
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 2
    wrong = {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, WRONG), "REMOTE_ADDR": ATTACKER}
    for _ in range(2):
        assert form_post(client, INTROSPECT_URL, {"token": "x"}, **wrong).status_code == 401

    assert_rate_limited(form_post(client, INTROSPECT_URL, {"token": "x"}, **wrong))


def test_limits_lift_when_the_window_ends(client, issued, limits):
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 2
    with mock.patch("time.time", return_value=6_000_000.0):
        for _ in range(2):
            token(client, "guessed", WRONG, ATTACKER)
        assert assert_rate_limited(token(client, issued.credential.client_id, issued.client_secret, ATTACKER)) == 60
    with mock.patch("time.time", return_value=6_000_045.5):
        assert assert_rate_limited(token(client, issued.credential.client_id, issued.client_secret, ATTACKER)) == 15
    with mock.patch("time.time", return_value=6_000_060.0):
        assert token(client, issued.credential.client_id, issued.client_secret, ATTACKER).status_code == 200


def test_successes_and_malformed_requests_do_not_count_as_failures(client, issued, limits):
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 2
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 2
    for _ in range(5):
        assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
        malformed = form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION="Basic !!", REMOTE_ADDR=OWNER)
        assert malformed.status_code == 401

    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    assert rate_limit_events() == []


# --- the ceiling per address --------------------------------------------------------------------


def test_the_token_endpoint_refuses_an_address_that_authenticated_nothing_over_its_ceiling_before_verifying(
    client, issued, limits, bcrypt_checks, any_cache
):
    limits.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 3
    for _ in range(3):
        assert token(client, issued.credential.client_id, WRONG, ATTACKER).status_code == 401
    checks = len(bcrypt_checks)

    assert_rate_limited(token(client, issued.credential.client_id, issued.client_secret, ATTACKER))
    assert_rate_limited(
        client.post(TOKEN_URL, b"\xff\xfe not even a form", content_type="text/plain", REMOTE_ADDR=ATTACKER)
    )
    assert len(bcrypt_checks) == checks
    assert token(client, issued.credential.client_id, issued.client_secret, ELSEWHERE).status_code == 200

    [event] = rate_limit_events()
    assert event.details == {"limit": "address_requests", "address": ATTACKER, "windowSeconds": 60}


def window_begun(settings) -> None:
    """Wait for a fresh window if this one is about to end, so that a test counts in one."""
    length = settings.AGENTIDP_RATE_LIMIT_WINDOW_SECONDS
    left = length - time.time() % length
    if left < 15:
        time.sleep(left)


def requests_counted(address: str) -> int:
    """The shared counter of `address`'s token requests in this window, as every process sees it."""
    from django.core.cache import cache

    window = int(time.time() // max(1, throttling.settings.AGENTIDP_RATE_LIMIT_WINDOW_SECONDS))
    return cache.get(throttling._key("requests", address, window)) or 0


def test_far_from_its_ceiling_a_process_reserves_an_addresss_requests_in_growing_batches(
    client, issued, limits, settings, flushed_redis, monkeypatch
):
    from django.core.cache import cache

    use_redis(settings, AGENTIDP_REDIS)
    limits.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 100_000
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 10
    window_begun(settings)
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    commands = commands_sent(monkeypatch, cache._cache.get_client())

    for _ in range(39):
        assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200

    # Reserved 1, 2, 4, 8, 16 and 32 at a time: six cache calls for forty requests, each reading
    # the limits with the reservation; the requests on reserved slots made none.
    assert commands == ["EVALSHA"] * 5
    assert requests_counted(OWNER) == 63
    monkeypatch.undo()
    commands = commands_sent(monkeypatch, cache._cache.get_client())
    # A failure on a reserved slot reads the limits before the store is asked, and counts itself.
    assert token(client, issued.credential.client_id, WRONG, OWNER).status_code == 401
    assert commands.index("MGET") < commands.index("EVALSHA")  # the limits read, then the failure counted
    assert requests_counted(OWNER) == 63


def test_near_its_ceiling_an_address_is_counted_request_by_request_and_never_heard_past_it(
    client, issued, limits, settings, flushed_redis
):
    import redis as redis_py

    use_redis(settings, AGENTIDP_REDIS)
    limits.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 40
    window_begun(settings)
    for _ in range(5):
        assert form_post(client, TOKEN_URL, {}, REMOTE_ADDR=ATTACKER).status_code == 400
    assert requests_counted(ATTACKER) == 5  # reserved 1, 2 and 2: a sixteenth of what is left, at most
    # Another process hears 30 requests of the address meanwhile.
    other = redis_py.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    [name] = [key for key in other.keys("*") if b"requests" in key]
    other.incrby(name, 30)
    other.close()

    heard = 0
    while form_post(client, TOKEN_URL, {}, REMOTE_ADDR=ATTACKER).status_code == 400:
        heard += 1
        assert heard <= 40
    assert heard == 5  # 5 + 30 + 5: the ceiling, and not one more
    assert requests_counted(ATTACKER) == 41
    [event] = rate_limit_events()
    assert event.details == {"limit": "address_requests", "address": ATTACKER, "windowSeconds": 60}


def test_a_forked_process_does_not_take_its_parents_reserved_slots(limits):
    throttling.reserved.reserved("192.0.2.1", 7, 10, 4)
    assert throttling.reserved.take("192.0.2.1", 7) == 8
    pid = os.fork()
    if pid == 0:  # the child: nothing reserved
        os._exit(0 if throttling.reserved.take("192.0.2.1", 7) is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert throttling.reserved.take("192.0.2.1", 7) == 9
    assert throttling.reserved.take("192.0.2.1", 8) is None  # another window


@pytest.mark.parametrize("vouched_by", ["verified-secret cache", "known address"])
def test_a_neighbour_flooding_a_shared_address_past_its_ceiling_never_locks_out_its_known_agents(
    client, agent, issued, limits, settings, bcrypt_checks, vouched_by, any_cache
):
    if vouched_by == "known address":
        settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0
    limits.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 5
    shared = "198.51.100.30"
    assert token(client, issued.credential.client_id, issued.client_secret, shared).status_code == 200
    newcomer = make_credential(agent)
    for index in range(10):  # the neighbour's flood, past the ceiling
        token(client, f"made-up-{index}", WRONG, shared)
    checks = len(bcrypt_checks)

    for _ in range(3):
        assert token(client, issued.credential.client_id, issued.client_secret, shared).status_code == 200
    assert_rate_limited(token(client, newcomer.credential.client_id, newcomer.client_secret, shared))
    assert_rate_limited(token(client, "made-up-99", WRONG, shared))
    assert len(bcrypt_checks) == checks + (3 if vouched_by == "known address" else 0)


def test_an_attacker_on_an_agents_own_address_gets_no_more_store_work_for_its_client_id_than_its_budget(
    client, issued, limits, bcrypt_checks
):
    limits.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 10
    limits.AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR = 3
    shared = "198.51.100.31"
    client_id = issued.credential.client_id
    assert token(client, client_id, issued.client_secret, shared).status_code == 200
    checks = len(bcrypt_checks)

    statuses = [token(client, client_id, wrong_secret(), shared).status_code for index in range(10)]

    assert statuses == [401] * 3 + [429] * 7
    assert len(bcrypt_checks) == checks + 3
    assert token(client, client_id, issued.client_secret, shared).status_code == 200  # the cache still vouches
    assert "pair_failures" in [event.details["limit"] for event in rate_limit_events()]


# --- the client's address -----------------------------------------------------------------------


def request_from(remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().post(TOKEN_URL, **extra)


@pytest.mark.parametrize(
    "trusted, remote, forwarded, expected",
    [
        (0, "10.0.0.5", "1.2.3.4", "10.0.0.5"),  # no proxy trusted: the header is anyone's
        (1, "10.0.0.5", "1.2.3.4", "1.2.3.4"),
        (1, "10.0.0.5", "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # what the client wrote on the left is ignored
        (2, "10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.9", "1.2.3.4"),
        (2, "10.0.0.5", "1.2.3.4", "10.0.0.5"),  # fewer hops than proxies: not through them
        (1, "10.0.0.5", "not-an-address", "10.0.0.5"),
        (1, "10.0.0.5", "", "10.0.0.5"),
        (0, "2001:db8:1:2:aaaa::1", None, "2001:db8:1:2::/64"),
        (0, "::ffff:192.0.2.1", None, "192.0.2.1"),
    ],
)
def test_the_client_address_believes_only_the_trusted_proxies(settings, trusted, remote, forwarded, expected):
    settings.AGENTIDP_TRUSTED_PROXIES = trusted

    assert client_address(request_from(remote, forwarded)) == expected


def test_x_forwarded_for_without_trusted_proxies_is_ignored_and_said_once(settings, caplog):
    settings.AGENTIDP_TRUSTED_PROXIES = 0
    caplog.set_level(logging.WARNING, logger="oauth.addresses")

    for _ in range(3):
        assert client_address(request_from("10.0.0.5", "1.2.3.4")) == "10.0.0.5"
    assert client_address(request_from("10.0.0.6")) == "10.0.0.6"

    warnings = [record.getMessage() for record in caplog.records if "X-Forwarded-For" in record.getMessage()]
    assert len(warnings) == 1 and "AGENTIDP_TRUSTED_PROXIES" in warnings[0]


@pytest.mark.parametrize("trusted", [0, 1])
def test_a_spoofed_x_forwarded_for_never_resets_a_limit(client, issued, limits, trusted):
    limits.AGENTIDP_TRUSTED_PROXIES = trusted
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 3
    # With a trusted proxy, the proxy appends the address it saw; the attacker controls only what comes before.
    seen_by_proxy = ATTACKER if trusted else None
    for index in range(6):
        spoofed = f"10.9.{index}.1" + (f", {seen_by_proxy}" if seen_by_proxy else "")
        response = token(
            client, f"guessed-{index}", WRONG, "10.0.0.2" if trusted else ATTACKER, HTTP_X_FORWARDED_FOR=spoofed
        )
        assert response.status_code == (401 if index < 3 else 429)


# --- the cache fails open -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["agentidp.cache.RedisCache", "django.core.cache.backends.redis.RedisCache"])
def test_a_cache_that_fails_does_not_limit_and_does_not_fail_requests(
    client, issued, limits, settings, caplog, backend
):
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 1
    limits.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 1
    settings.CACHES = {"default": {"BACKEND": backend, "LOCATION": "redis://127.0.0.1:1/0"}}
    caplog.set_level(logging.WARNING)

    for _ in range(3):
        assert token(client, "guessed", WRONG, ATTACKER).status_code == 401
        assert form_post(client, TOKEN_URL, {}, REMOTE_ADDR=ATTACKER).status_code == 400  # counted, not refused
    assert token(client, issued.credential.client_id, issued.client_secret, ATTACKER).status_code == 200
    assert "unavailable; not limiting kind=requests" in caplog.text


# --- shared between processes through Redis -------------------------------------------------------


REDIS_DB = 14
DJANGO_REDIS, AGENTIDP_REDIS = "django.core.cache.backends.redis.RedisCache", "agentidp.cache.RedisCache"


def use_redis(settings, backend: str) -> str:
    if not redis_listening():
        pytest.skip(f"nothing listens on {REDIS_HOST}:{REDIS_PORT}: start Redis to test limits shared by processes")
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    settings.CACHES = {"default": {"BACKEND": backend, "LOCATION": url}}
    return url


@pytest.fixture
def flushed_redis():
    import redis

    direct = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    if redis_listening():
        direct.flushdb()
    yield direct
    if redis_listening():
        direct.flushdb()
    direct.close()


@pytest.fixture(params=[AGENTIDP_REDIS, DJANGO_REDIS])
def redis_cache(request, settings, flushed_redis):
    """The shared cache: AgentIdP's Redis backend (counting and reading in one call), and Django's."""
    return use_redis(settings, request.param)


@pytest.fixture(params=["local memory", AGENTIDP_REDIS, DJANGO_REDIS])
def any_cache(request, settings, flushed_redis):
    """Each kind of cache the limits count in: each process's own, and Redis through either backend."""
    if request.param != "local memory":
        use_redis(settings, request.param)
    return request.param


def test_failures_counted_by_another_process_through_redis_count_here(client, issued, limits, redis_cache):
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 5
    # Both processes must count in one window: start a fresh one if this one is about to end.
    # Windows run from multiples of their length since the epoch (see test_limits_lift_when_the_window_ends).
    length = limits.AGENTIDP_RATE_LIMIT_WINDOW_SECONDS
    left = length - time.time() % length
    if left < 15:
        time.sleep(left)
    code = (
        "import django, json; django.setup()\n"
        "from oauth.throttling import AuthenticationGuard\n"
        f"guard = AuthenticationGuard(address={ATTACKER!r}, client_id='guessed')\n"
        "for _ in range(4): guard.failed()\n"
        "guard.check(); print(json.dumps({'heard': guard.store_allowed}))\n"
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "agentidp.settings",
        "SECRET_KEY": "another-process",
        "CACHE_URL": redis_cache,
        "AGENTIDP_AUTH_FAILURES_PER_ADDRESS": "5",
        "AGENTIDP_AUTH_FAILURES_PER_CLIENT": "0",
    }
    other = subprocess.run(
        [sys.executable, "-c", code], env=environment, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout) == {"heard": True}

    assert token(client, "guessed", WRONG, ATTACKER).status_code == 401  # the fifth failure, counted here
    assert_rate_limited(token(client, issued.credential.client_id, issued.client_secret, ATTACKER))
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200


def test_a_token_request_counts_against_its_ceiling_and_reads_its_limits_in_one_round_trip(
    client, issued, limits, settings, flushed_redis, monkeypatch
):
    from django.core.cache import cache

    use_redis(settings, AGENTIDP_REDIS)
    limits.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 3
    limits.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 10
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0  # only the limits use the cache here
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    commands = commands_sent(monkeypatch, cache._cache.get_client())

    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200
    assert commands == ["EVALSHA"]  # the count and the read; the known marks were written by the first
    commands.clear()
    assert token(client, issued.credential.client_id, WRONG, ATTACKER).status_code == 401
    assert commands[0] == "EVALSHA" and "MGET" not in commands
    monkeypatch.undo()

    for index in range(2):
        assert token(client, f"made-up-{index}", WRONG, ATTACKER).status_code == 401
    assert_rate_limited(token(client, issued.credential.client_id, issued.client_secret, ATTACKER))  # the fourth
    assert token(client, issued.credential.client_id, issued.client_secret, OWNER).status_code == 200


def test_check_deploy_warns_that_a_local_memory_cache_counts_per_process(settings):
    from oauth.checks import check_shared_cache

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert [warning.id for warning in check_shared_cache()] == ["oauth.W002"]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://x"}}
    assert check_shared_cache() == []
