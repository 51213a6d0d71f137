"""The Redis cache backend: Django's, with one client per connection pool."""

import threading

import pytest
from django.core.cache import caches
from django.test import override_settings

from agentidp.cache import RedisCache
from tests.credentials.test_verified_cache import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_listening

LOCATION = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"

pytestmark = pytest.mark.skipif(not redis_listening(), reason="needs Redis on 127.0.0.1:6379")


@pytest.fixture
def redis_cache():
    with override_settings(CACHES={"default": {"BACKEND": "agentidp.cache.RedisCache", "LOCATION": LOCATION}}):
        cache = caches["default"]
        cache.clear()
        yield cache
        cache.clear()


def test_a_redis_cache_url_gets_this_backend(monkeypatch):
    import importlib

    import agentidp.settings as project_settings

    monkeypatch.setenv("CACHE_URL", LOCATION)
    monkeypatch.setenv("SECRET_KEY", "x")
    try:
        reloaded = importlib.reload(project_settings)
        assert reloaded.CACHES["default"]["BACKEND"] == "agentidp.cache.RedisCache"
        assert reloaded.CACHES["default"]["LOCATION"] == LOCATION
    finally:
        monkeypatch.undo()
        importlib.reload(project_settings)


def test_every_call_shares_one_client_per_pool(redis_cache):
    assert isinstance(redis_cache, RedisCache)
    client = redis_cache._cache

    assert client.get_client("a") is client.get_client("b", write=True)


def test_each_thread_keeps_its_own_client_and_connection(redis_cache):
    client = redis_cache._cache
    mine = client.get_client("a")
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(client.get_client("a")))
    worker.start()
    worker.join()

    assert theirs[0] is not mine
    assert mine.connection is not None and mine.connection is not theirs[0].connection


def test_a_forked_process_makes_its_own_client_and_connection(redis_cache):
    import os

    redis_cache.set("k", 1, timeout=30)
    parent = redis_cache._cache.get_client("k")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker forked from a master that had used the cache
        ok = False
        try:
            child = redis_cache._cache.get_client("k")
            ok = child is not parent and child.connection is not parent.connection and redis_cache.get("k") == 1
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)

    assert answer == b"1"
    assert redis_cache.get("k") == 1  # the parent's connection is still its own


def test_a_connection_the_server_closed_is_made_again_on_the_next_call(redis_cache):
    import redis

    redis_cache.set("k", 1, timeout=30)
    own = redis_cache._cache.get_client("k")
    with redis.Redis.from_url(LOCATION) as admin:
        assert admin.client_kill_filter(_id=own.client_id()) == 1

    assert redis_cache.get("k") == 1


def test_it_answers_as_djangos_does(redis_cache):
    assert redis_cache.add("k", 1, timeout=30) is True
    assert redis_cache.add("k", 2, timeout=30) is False
    assert redis_cache.incr("k") == 2
    redis_cache.set_many({"a": "x", "b": {"y": 1}}, timeout=30)
    assert redis_cache.get_many(["a", "b", "missing"]) == {"a": "x", "b": {"y": 1}}
    redis_cache.delete("a")
    assert redis_cache.get("a", "gone") == "gone"


def test_threads_share_the_client_without_mixing_answers(redis_cache):
    errors = []

    def worker(number: int) -> None:
        for round_ in range(50):
            key = f"t{number}:{round_}"
            redis_cache.set(key, number * 1000 + round_, timeout=30)
            if redis_cache.get(key) != number * 1000 + round_:
                errors.append(key)

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []


def commands_sent(monkeypatch, client) -> list[str]:
    """The names of the commands `client` (a redis-py client) sends from now on, one per round trip."""
    commands = []
    original = client.execute_command

    def counting(*args, **kwargs):
        commands.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    return commands


def test_incr_is_djangos_in_one_round_trip(redis_cache, monkeypatch):
    redis_cache.set("n", 5, timeout=30)
    commands = commands_sent(monkeypatch, redis_cache._cache.get_client("n"))

    assert redis_cache.incr("n") == 6
    assert redis_cache.incr("n", 4) == 10
    with pytest.raises(ValueError, match="not found"):
        redis_cache.incr("missing")

    assert commands == ["EVALSHA", "EVALSHA", "EVALSHA"]
    assert redis_cache.get("missing") is None  # a missing counter is not made by incr


def test_incr_keeps_the_counters_expiry(redis_cache):
    redis_cache.add("window", 0, timeout=30)
    redis_cache.incr("window")

    client = redis_cache._cache.get_client("window")
    assert 0 < client.ttl(redis_cache.make_and_validate_key("window")) <= 30


def test_count_and_get_many_counts_and_reads_in_one_round_trip(redis_cache, monkeypatch):
    redis_cache.set_many({"failures": 4, "mark": 1, "other": {"y": 1}}, timeout=30)
    client = redis_cache._cache.get_client("window")
    commands = commands_sent(monkeypatch, client)

    assert redis_cache.count_and_get_many("window", ["failures", "mark", "missing"], timeout=30) == (
        1,
        {"failures": 4, "mark": 1},
    )
    assert redis_cache.count_and_get_many("window", ["other"], timeout=30) == (2, {"other": {"y": 1}})
    assert redis_cache.count_and_get_many("window", [], timeout=30) == (3, {})
    assert commands == ["EVALSHA", "EVALSHA", "EVALSHA"]
    monkeypatch.undo()

    assert redis_cache.get("window") == 3  # a counter Django's own calls read and increment
    assert redis_cache.incr("window") == 4
    assert 0 < client.ttl(redis_cache.make_and_validate_key("window")) <= 30  # started with its expiry, kept


def test_keys_memcached_would_refuse_are_redis_keys_and_raise_no_warning(redis_cache):
    import warnings

    long_key = "k" * 300
    spaced = "a key with spaces"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Django's CacheKeyWarning would fail this
        redis_cache.set(long_key, 1, timeout=30)
        redis_cache.set(spaced, 2, timeout=30)
        assert redis_cache.get_many([long_key, spaced]) == {long_key: 1, spaced: 2}
