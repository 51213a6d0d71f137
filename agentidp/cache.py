"""
Django's Redis cache, with fewer round trips where the token endpoint makes them.

- One redis-py client per connection pool and thread, holding one connection of the pool:
  Django's RedisCacheClient makes a new `redis.Redis` for every cache call, and redis-py
  builds its table of response callbacks (some 170 entries) in each one; and a client that
  borrows a connection from the pool for each command pays for the pool's bookkeeping and
  its check that the connection has nothing left to read, each time. A thread keeps its
  connection, made again once at once if the server closed it meanwhile (a restart, an
  idle timeout), so a gunicorn worker holds as many as it has threads, the most it would
  borrow at once anyway. A forked process (a worker of a gunicorn master that had used the
  cache) makes its own.
- `incr` in one round trip: Django asks EXISTS and then INCRBY (two round trips, and not
  atomic); here one script does both, with Django's answer (ValueError for a missing key).
- `count_and_get_many`, which Django's caches do not have: add to a counter (starting it,
  with its expiry, when it is missing) and read other keys, in one round trip. The rate
  limits count token requests (a process reserves several of an address's at once when it
  is far from its ceiling) and read the failure counters of its address and client with
  them (oauth.throttling falls back to `incr`, `add` and `get_many` on other caches).
- No memcached rules on keys: Django's caches warn about a key memcached would refuse (over
  250 characters, or with spaces or control characters) by looking at every character of
  every key on every call; Redis takes any key, so this backend does not look.

Everything else is Django's.
"""

from __future__ import annotations

import os
import threading

from django.core.cache.backends import redis as django_redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: INCRBY only an existing key (so that a counter never outlives its expiry); nil when there is none.
INCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
"""


#: INCRBY ARGV[2], or SET ARGV[2] with the expiry ARGV[1] when the key is missing; then MGET the other keys.
COUNT_AND_MGET = """
local count
if redis.call('EXISTS', KEYS[1]) == 1 then
    count = redis.call('INCRBY', KEYS[1], ARGV[2])
else
    count = tonumber(ARGV[2])
    redis.call('SET', KEYS[1], count, 'EX', ARGV[1])
end
if #KEYS == 1 then
    return {count, {}}
end
return {count, redis.call('MGET', unpack(KEYS, 2))}
"""


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A thread keeps its connection (get_client): one the server closed while it was idle
        # (a restart, a timeout) is made again once, at once, instead of failing the call.
        self._pool_options.setdefault("retry", Retry(NoBackoff(), 1))
        self._local = threading.local()
        self._scripts: dict[str, object] = {}

    def _run(self, client, source: str, *, keys: list, args: list):
        """Run the script `source` with this client: EVALSHA, loading it once if Redis does not know it."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts.setdefault(source, client.register_script(source))
        return script(keys=keys, args=args, client=client)

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        clients = self._local.__dict__
        # By process too: a process forked from one that had a client (gunicorn's workers from
        # its master) must not share that client's connection with its parent and siblings.
        mine = (id(pool), os.getpid())
        client = clients.get(mine)
        if client is None:
            client = clients[mine] = self._client(connection_pool=pool, single_connection_client=True)
        return client

    def incr(self, key, delta):
        client = self.get_client(key, write=True)
        value = self._run(client, INCR_IF_EXISTS, keys=[key], args=[delta])
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return value

    def count_and_get_many(self, key, keys, timeout, delta=1):
        client = self.get_client(key, write=True)
        count, values = self._run(client, COUNT_AND_MGET, keys=[key, *keys], args=[max(1, int(timeout)), int(delta)])
        return count, {k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient

    def validate_key(self, key: str) -> None:
        """Accept every key: memcached's limits on keys are not Redis's."""

    def count_and_get_many(
        self, key: str, keys: list[str], *, timeout: int, delta: int = 1, version=None
    ) -> tuple[int, dict]:
        """
        Add `delta` to the counter `key` (`delta`, expiring in `timeout` seconds, when missing)
        and return its new value with the values of `keys` that exist, in one round trip.
        """
        counter = self.make_and_validate_key(key, version=version)
        key_map = {self.make_and_validate_key(name, version=version): name for name in keys}
        count, found = self._cache.count_and_get_many(counter, list(key_map), timeout, delta)
        return count, {key_map[name]: value for name, value in found.items()}
