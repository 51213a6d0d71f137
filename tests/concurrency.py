"""
Work done at the same time from several threads, each with its own database connection, and
the invariants between the database and Vault that must hold whatever happened meanwhile.

The invariants, after `manage.py purge_secrets` has worked off the queue:
- no lost secret: every Vault-backed row (a credential or a grace entry) trusts a version
  that Vault holds, with a client secret in it;
- no orphan: every key Vault holds under agentidp/ is the location of such a row;
- nothing left queued: every purge job succeeded.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import hvac.exceptions
from django.core.management import CommandError, call_command
from django.db import connection, connections

from credentials.models import Credential, GraceSecret, SecretPurge
from vaultstore.backends.vault import DUMMY_KEY

#: How long a thread or a condition is waited for before the test fails.
PATIENCE_SECONDS = 30.0


@dataclasses.dataclass
class Outcome:
    """What one thread's call returned or raised, and when it started and ended (time.monotonic())."""

    value: Any = None
    error: BaseException | None = None
    started: float = 0.0
    ended: float = 0.0

    def get(self) -> Any:
        """Return the value, or raise what the call raised."""
        if self.error is not None:
            raise self.error
        return self.value


class InThread:
    """Run `call` in a new thread with its own database connection, closed when the call ends."""

    def __init__(self, call: Callable[[], Any], *, barrier: threading.Barrier | None = None) -> None:
        self.outcome = Outcome()
        self._call = call
        self._barrier = barrier
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._barrier is not None:
                self._barrier.wait(PATIENCE_SECONDS)
            self.outcome.started = time.monotonic()
            self.outcome.value = self._call()
        except BaseException as exc:  # handed to the test thread
            self.outcome.error = exc
        finally:
            self.outcome.ended = time.monotonic()
            connections.close_all()

    def result(self, timeout: float = PATIENCE_SECONDS) -> Outcome:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "a thread did not finish in time"
        return self.outcome


def run_together(*calls: Callable[[], Any]) -> list[Outcome]:
    """Start every call in its own thread at the same moment; return their outcomes in order."""
    barrier = threading.Barrier(len(calls))
    threads = [InThread(call, barrier=barrier) for call in calls]
    return [thread.result() for thread in threads]


def wait_until(
    condition: Callable[[], Any], what: str, *, timeout: float = PATIENCE_SECONDS, interval: float = 0.002
) -> Any:
    """Poll `condition` every `interval` seconds until it is true; return its value, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(interval)


# --- PostgreSQL ------------------------------------------------------------------------------


def backend_pid() -> int:
    """The PostgreSQL backend serving this thread's connection."""
    connection.ensure_connection()
    return connection.connection.info.backend_pid


def lock_waiters() -> int:
    """How many other sessions on this database wait for a lock now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def last_query_of(pid: int) -> str:
    """The statement a session runs now, or ran last if it is idle."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row[0] if row else ""


def terminate_backend(pid: int) -> bool:
    """End another session as an operator (or a failover) would: its client sees the connection drop."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        return cursor.fetchone()[0]


# --- Vault and the database agree --------------------------------------------------------------


def vault_keys(vault) -> set[str]:
    """
    Every key Vault holds under agentidp/ (root view), as the vault_path a row records it.

    On a real Vault that the whole run shares, the keys of agents that were there before the
    test (`vault.agents_before`) are other tests' and are left out.
    """
    found: set[str] = set()
    skipped = {f"agentidp/agents/{agent_id}" for agent_id in getattr(vault, "agents_before", ())}
    prefixes = ["agentidp"]
    while prefixes:
        prefix = prefixes.pop()
        try:
            listed = vault.root.secrets.kv.v2.list_secrets(path=prefix, mount_point=vault.mount)
        except hvac.exceptions.InvalidPath:
            continue
        for key in listed["data"]["keys"]:
            if key.endswith("/"):
                if f"{prefix}/{key.rstrip('/')}" not in skipped:
                    prefixes.append(f"{prefix}/{key.rstrip('/')}")
            else:
                found.add(f"{vault.mount}/data/{prefix}/{key}")
    return found


def store_problems(vault) -> list[str]:
    """Work off the purge queue as an operator would, then list every broken invariant (see the module)."""
    try:
        call_command("purge_secrets", verbosity=0)
    except CommandError as exc:  # something stays queued: named below
        problems = [f"purge_secrets failed: {exc}"]
    else:
        problems = []
    problems += [f"still queued: {purge}" for purge in SecretPurge.objects.all()]
    rows = [*Credential.objects.filter(storage="vault"), *GraceSecret.objects.filter(storage="vault")]
    for row in rows:
        held = vault.read(row.vault_path, version=row.vault_version)
        if not isinstance(held, dict) or not isinstance(held.get("clientSecret"), str):
            problems.append(f"lost secret: {row!r} trusts version {row.vault_version}, which Vault does not hold")
    # The entry unknown clients' dummy verifications read is no credential's and belongs there.
    trusted = {row.vault_path for row in rows} | {f"{vault.mount}/data/{DUMMY_KEY}"}
    problems += [f"orphaned Vault entry: {path}" for path in sorted(vault_keys(vault) - trusted)]
    return problems


def assert_store_consistent(vault) -> None:
    problems = store_problems(vault)
    assert not problems, "\n".join(problems)
