"""
The credential rows each process keeps for the lookup by clientId, checked against the database on every read.

Every token request looks its credential up by clientId, with its agent: a join of two
tables whose columns become two model instances. A process keeps what that lookup found,
together with the database's change token read in the same query, and hands out a copy again
while the token is still the same. Reading the token is one query of one row by its
primary key, which takes PostgreSQL a fraction of the join's time and Python a fraction of
building the two instances.

The token (one row of ChangeToken) is changed by PostgreSQL's own triggers, in the
transaction that makes the change, by every UPDATE that changes a column of an agent or of a
credential (but a credential's last_used_at), and by every DELETE and TRUNCATE of either
table, whoever makes it: the services, the console's bulk actions, a queryset's update(), a
migration or an operator's SQL. A new token is random, never a count, so a transaction that
rolls back, or a database restored from a backup, cannot bring back a token that a process
kept different rows under.

Why a kept row is the row as it is now: the token is read in the same statement as the rows
(one snapshot), and a change and its new token become visible in the same commit. So if the
token read now is the one read with the kept rows, no change has committed since they were
read, and a rotation, deletion, compromise, expiry change or suspension acts on the very
next request in every process, as it does when every request reads the rows. Two things do
not change the token:

- INSERT. Only rows that were found are kept (a clientId that is not found is looked up
  every time), and a new row changes none of them.
- A credential's last_used_at, written at most once a minute per credential, which decides
  nothing about a client. A kept row's last_used_at may be older than the database's (a
  process then writes once more than it had to); the process that writes a newer one raises
  its own kept copy (note_last_used).

The token's one row is written by every change, so changes to agents and credentials commit
one at a time, each holding that row's lock from its first change to its commit. A
transaction that changes several of them locks them all before it changes the first
(agent_delete does): it then never waits for another's row while holding the token's, which
would be a deadlock with a transaction that holds that row and will change it.

Only PostgreSQL has the triggers (migration 0015); on another database, and with
AGENTIDP_KEPT_CREDENTIAL_ROWS=0, every lookup reads the rows.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import connections, router
from django.db.models import Model
from django.db.models.base import ModelState
from django.db.models.expressions import RawSQL

from .bounded import keep_bounded
from .metrics import KEPT_ROWS
from .models import ChangeToken, Credential

TOKEN_SQL = f"SELECT token FROM {ChangeToken._meta.db_table} WHERE id = 1"  # noqa: S608  (no input in it)
#: The attribute of a credential that `load` read with its change token.
CHANGE_TOKEN = "change_token"  # noqa: S105  (a column's name)


def token_column() -> dict[str, RawSQL]:
    """
    The change token as a column of the lookup's query, for `annotate(**token_column())`: read
    in the same statement as the rows, it is the token of exactly those rows.
    """
    return {CHANGE_TOKEN: RawSQL(TOKEN_SQL, ())}  # noqa: S611  (constant SQL, no parameters)


_HITS, _MISSES = KEPT_ROWS.labels("hit"), KEPT_ROWS.labels("miss")


class KeptCredentials:
    """
    `find(client_id)` returns what `load(client_id)` would return now (a credential with its
    agent, or None), from the rows this process kept when the database says nothing changed.

    `load` reads the rows and the change token in one query (see `token_column`) and returns
    the credential with the token as its CHANGE_TOKEN attribute. A lookup of a clientId this
    process keeps reads the token alone; any other lookup is that one query. So a kept
    credential, a credential read for the first time and an unknown clientId each cost one
    query (two only when the token has changed since the rows were kept).

    Each call returns instances of its own, which the caller may change. Readers take no
    lock; every change holds the lock.
    """

    def __init__(self, load: Callable[[str], Credential | None]) -> None:
        self._load = load
        self._kept: dict[str, tuple[int, Credential]] = {}
        self._token: int | None = None  # the token of the rows kept last
        self._lock = threading.Lock()

    def find(self, client_id: str) -> Credential | None:
        limit = settings.AGENTIDP_KEPT_CREDENTIAL_ROWS
        connection = connections[router.db_for_read(Credential)]
        keeping = limit > 0 and connection.vendor == "postgresql"
        kept = self._kept.get(client_id) if keeping else None
        if kept is not None and current_token(connection) == kept[0]:
            _HITS.inc()
            return _copy(kept[1])
        credential = self._load(client_id)
        if keeping:
            _MISSES.inc()
            token = getattr(credential, CHANGE_TOKEN, None)
            if token is not None:
                self._keep(client_id, token, _copy(credential), limit)
        return credential

    def note_last_used(self, credential: Credential, at: datetime.datetime) -> None:
        """Raise the kept copy's last_used_at to `at`, which this process has just written."""
        kept = self._kept.get(credential.client_id)
        if kept is not None and kept[1].pk == credential.pk:
            with self._lock:
                kept[1].last_used_at = max(kept[1].last_used_at or at, at)

    def forget_all(self) -> None:
        with self._lock:
            self._kept.clear()
            self._token = None

    def _keep(self, client_id: str, token: int, credential: Credential, limit: int) -> None:
        with self._lock:
            if token != self._token:
                # What was kept under another token is of no use under this one (nor under any
                # later one): the database has changed since.
                self._kept.clear()
                self._token = token
            keep_bounded(self._kept, client_id, (token, credential), limit)


def current_token(connection) -> int | None:
    """Return the database's change token; None when it has none (a flushed test database)."""
    with connection.cursor() as cursor:
        cursor.execute(TOKEN_SQL)
        row = cursor.fetchone()
    return None if row is None else row[0]


def _copy(instance: Model) -> Model:
    """
    Return a copy of a model instance that was read from the database, with copies of the
    related instances it holds (its agent), sharing nothing that can be changed in place.
    """
    state = ModelState()
    state.db = instance._state.db
    state.adding = False
    clone = object.__new__(type(instance))
    values = instance.__dict__.copy()
    for name, value in values.items():
        if type(value) is list or type(value) is dict:  # a JSON column's value
            values[name] = _json_copy(value)
    values["_state"] = state
    clone.__dict__ = values
    for name, related in instance._state.fields_cache.items():
        state.fields_cache[name] = None if related is None else _copy(related)
    return clone


def _json_copy(value):
    """A copy of decoded JSON: lists and dicts copied all the way down, the rest is immutable."""
    if type(value) is list:
        return [_json_copy(item) for item in value]
    if type(value) is dict:
        return {key: _json_copy(item) for key, item in value.items()}
    return value
