"""
The one orchestrator of both benchmarks: it owns every resource of a run and measures windows.

A benchmark (bench/token_bench.py, bench/load_bench.py) asks it for fresh PostgreSQL
databases, AgentIdP's environment as the deployment guide has it, a signing key and
migrations, a Vault server (the test server or OpenBao), a cache (a private Redis, or each
worker's memory), seeded credentials (secret and key credentials, trust policies, and the
JWTs their clients present), gunicorn serving one application at a time (AgentIdP, the
ceiling project, or AgentIdP with per-request counting), and windows of load, each
through a fresh load-generator process (bench/loadgen.py). `run` calls the benchmark, prints
its report and writes its results; `close` stops everything this run started, in order, on
success, on an error, and on Ctrl-C (SIGINT) or SIGTERM, and drops the databases unless --keep.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.errors import BenchError
from bench.machine import CpuSnapshot, load_average, machine_info
from bench.options import shown, without_password
from bench.servers import PYTHON, ROOT, Gunicorn, Redis, Shape

#: Seconds Django keeps a database connection open (persistent connections), for AgentIdP and the ceiling.
CONN_MAX_AGE = 600
#: Variables AgentIdP reads, removed from the inherited environment so that only the run's own apply.
AGENTIDP_PREFIXES = ("VAULT_", "AGENTIDP_", "DJANGO_")
AGENTIDP_NAMES = {
    "DATABASE_URL", "CONN_MAX_AGE", "CACHE_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "LOG_LEVEL", "LOG_FORMAT",
    "STATIC_ROOT", "CSRF_TRUSTED_ORIGINS",
}  # fmt: skip


def write_private(path: Path, data: object) -> None:
    """Write JSON to a new file that only this user can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def clean_environment() -> dict[str, str]:
    """This machine's environment less anything AgentIdP reads, plus the project on PYTHONPATH."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(AGENTIDP_PREFIXES) and name not in AGENTIDP_NAMES
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


class Orchestrator:
    """The resources of one run; `close` releases whatever was acquired."""

    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="agentidp-bench-"))  # mode 0700: it holds the secrets files
        self.admin: psycopg.Connection | None = None
        self.pg_version = ""
        self.databases: list[str] = []
        self.vault = None  # bench.vault_server.TestVault or bench.openbao.OpenBaoVault
        self.vault_env: dict[str, str] = {}
        self.redis: Redis | None = None
        self.server: Gunicorn | None = None
        self.loadgen: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.cache = args.cache
        if self.cache == "auto":
            self.cache = "redis" if shutil.which("redis-server") else "locmem"
        self.load_average_start = load_average()

    def log(self, message: str) -> None:
        print(f"==> {message}", flush=True)

    # -- set-up ------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """(Re)create a database on the benchmark's PostgreSQL; return its URL (the same server and role)."""
        if self.admin is None:
            try:
                self.admin = psycopg.connect(self.args.postgres, autocommit=True)
            except psycopg.OperationalError as exc:
                where = without_password(self.args.postgres)
                raise BenchError(f"Cannot connect to PostgreSQL at {where}: {exc}") from None
            self.pg_version = self.admin.execute("SELECT version()").fetchone()[0]
        identifier = sql.Identifier(name)
        self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
        self.databases.append(name)
        return urlunsplit(urlsplit(self.args.postgres)._replace(path=f"/{name}"))

    def prepare_agentidp(self, settings: dict[str, str]) -> None:
        """
        A fresh database, AgentIdP's environment, a signing key, migrations, the cache and the Vault server.

        AgentIdP runs as docs/devops/deployment.md has it: DEBUG off, a random SECRET_KEY, its
        default logging (INFO to standard error; LOG_LEVEL is not set), persistent database
        connections, the shared cache when Redis is there, the benchmark's `settings`, then --set.
        """
        args = self.args
        self.log(f"PostgreSQL: fresh database {args.database}")
        database_url = self.create_database(args.database)
        (self.tmp / "static").mkdir()
        env = clean_environment()
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "agentidp.settings",
                "DATABASE_URL": database_url,
                "CONN_MAX_AGE": str(CONN_MAX_AGE),
                "DEBUG": "false",
                "SECRET_KEY": secrets.token_urlsafe(48),
                "ALLOWED_HOSTS": "127.0.0.1",
                "STATIC_ROOT": str(self.tmp / "static"),
                "AGENTIDP_SIGNING_KEY_FILE": str(self.tmp / "signing-key.pem"),
                "AGENTIDP_BCRYPT_ROUNDS": str(args.bcrypt_rounds),
                # Vault is on for the server, so a bcrypt credential would move into Vault on its first use.
                "AGENTIDP_UPGRADE_ON_USE": "false",
            }
        )
        if self.cache == "redis":
            self.log("Starting a private Redis for the shared cache")
            self.redis = Redis(self.tmp)
            env["CACHE_URL"] = self.redis.start()
        env.update(settings)
        env.update(args.settings)  # --set NAME=VALUE, last so that it wins
        self.env = env
        self.log("Making a signing key and migrating the database")
        self.manage("create_signing_key")  # before migrate: its system checks want the key
        self.manage("migrate", "--noinput", "--verbosity", "0")
        if args.vault == "bao":
            from bench.openbao import OpenBaoVault

            self.vault = OpenBaoVault()
        else:
            from bench.vault_server import TestVault

            self.vault = TestVault(self.env)
        self.log(f"Starting the {self.vault.name}")
        self.vault_env = self.vault.start()

    def manage(self, *command: str, env: dict[str, str] | None = None) -> None:
        self.run_quietly([PYTHON, "manage.py", *command], env=env or self.env, what=f"manage.py {command[0]}")

    def run_quietly(self, command: list[str], *, env: dict[str, str], what: str) -> None:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError(f"{what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")

    def agentidp_settings(self) -> dict[str, str]:
        """The AgentIdP variables this run set, as the results may show them."""
        return {
            name: shown(name, value)
            for name, value in sorted(self.env.items())
            if (name.startswith(AGENTIDP_PREFIXES) or name in AGENTIDP_NAMES) and name != "STATIC_ROOT"
        }

    # -- credentials -------------------------------------------------------------------------

    def seed_warm(self, store: str, *, name: str, count: int) -> list[list[str]]:
        """`count` credentials made through credentials.services: bcrypt with Vault off, Vault with it on."""
        out = self.tmp / f"{name}.json"
        self.seed("warm", "--name", name, "--count", str(count), "--out", str(out), vault=store == "vault")
        return self.read_and_remove(out)["credentials"]

    def seed_cold(self, store: str, *, name: str, count: int) -> list[list[str]]:
        """`count` never-used credentials, written in bulk (Vault ones also into the Vault server)."""
        out = self.tmp / f"{name}.json"
        arguments = ["cold", "--storage", store, "--name", name, "--count", str(count), "--out", str(out)]
        if store == "vault":
            entries = self.tmp / f"{name}-vault-entries.json"
            self.seed(*arguments, "--vault-out", str(entries), vault=True)
            self.vault.command({"op": "load", "file": str(entries)})
            entries.unlink()
        else:
            self.seed(*arguments, vault=False)
        return self.read_and_remove(out)["credentials"]

    def seed_keys(self, *, name: str, count: int) -> Path:
        """
        `count` key credentials made through credentials.services, each with its own ES256 key held
        inline; return the file of their private keys (in the private directory), for seed_assertions.
        """
        out = self.tmp / f"{name}-keys.json"
        self.seed("keys", "--name", name, "--count", str(count), "--out", str(out), vault=False)
        return out

    def seed_assertions(self, keys: Path, *, count: int) -> list[list[str]]:
        """
        `count` client assertions for the AgentIdP being served (its issuer names their audience), the
        keys of `keys` in turn, each with its own jti: [clientId, assertion].
        """
        assert self.server is not None
        out = self.tmp / "assertions.json"
        issuer = {"AGENTIDP_ISSUER": self.server.env["AGENTIDP_ISSUER"]}
        self.seed("assertions", "--keys", str(keys), "--count", str(count), "--out", str(out), vault=False, env=issuer)
        return self.read_and_remove(out)["credentials"]

    def seed_platform(self, *, name: str, count: int) -> list[list[str]]:
        """A trust policy of a Kubernetes-like platform and `count` workloads' tokens: [subject, token]."""
        out = self.tmp / f"{name}.json"
        self.seed("platform", "--name", name, "--count", str(count), "--out", str(out), vault=False)
        return self.read_and_remove(out)["credentials"]

    def seed(self, *arguments: str, vault: bool, env: dict[str, str] | None = None) -> None:
        env = {**self.env, **(self.vault_env if vault else {}), **(env or {})}
        self.run_quietly([PYTHON, "-m", "bench.seed", *arguments], env=env, what="seeding")

    @staticmethod
    def read_and_remove(path: Path) -> dict:
        data = json.loads(path.read_text())
        path.unlink()
        return data

    # -- serving -----------------------------------------------------------------------------

    def serve(self, name: str, *, application: str, env: dict[str, str], shape: Shape, ready_path: str) -> None:
        """Stop the application being served, if any, and serve this one under gunicorn."""
        self.stop_server()
        self.server = Gunicorn(name=name, application=application, env=env, shape=shape, logs=self.tmp)
        self.server.start(ready_path)

    def serve_agentidp(self, shape: Shape, *, settings_module: str = "agentidp.settings", name: str = "agentidp"):
        """Serve AgentIdP (or, with bench.counting.settings, AgentIdP with per-request counting) with Vault on."""
        env = {**self.env, **self.vault_env, "DJANGO_SETTINGS_MODULE": settings_module}
        self.serve(name, application="agentidp.wsgi:application", env=env, shape=shape, ready_path="/healthz")

    @staticmethod
    def in_turns(rounds: int, first: str, second: str):
        """The sides of `rounds` rounds that take turns: first then second, then second then first, ..."""
        for number in range(rounds):
            yield from (first, second) if number % 2 == 0 else (second, first)

    @contextlib.contextmanager
    def serving(self, server: Gunicorn):
        """Point the windows opened meanwhile at `server`, an application served beside the current one."""
        current, self.server = self.server, server
        try:
            yield
        finally:
            self.server = current

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- measuring ---------------------------------------------------------------------------

    def window(
        self,
        job: dict[str, Any],
        credentials: dict[str, list] | None,
        *,
        during: Callable[[Orchestrator], dict[str, float]] | None = None,
    ) -> dict[str, Any]:
        """
        Run one window of load on the served application through a fresh load generator.

        Return its records, the load generator's result, the CPU each group of processes used,
        the Vault calls and Redis commands made during the window, the workers' RSS, the
        warm-up, and the marks `during` (run while the window is open) returned.
        """
        assert self.server is not None
        records_file = self.tmp / "records.json"
        credentials_file = None
        if credentials is not None:
            credentials_file = self.tmp / "credentials.json"
            write_private(credentials_file, credentials)
        job = {
            "host": "127.0.0.1",
            "port": self.server.port,
            "credentials_file": str(credentials_file) if credentials_file else None,
            "records_file": str(records_file),
            **job,
        }
        self.loadgen = subprocess.Popen(
            [PYTHON, "-m", "bench.loadgen"],
            cwd=ROOT,
            env=clean_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        send(self.loadgen.stdin, json.dumps(job))
        ready = receive(self.loadgen.stdout, "ready")
        self.vault.command({"op": "clear"})
        redis_before = self.redis.commands() if self.redis is not None else None
        before = CpuSnapshot.take(self.cpu_pids())
        send(self.loadgen.stdin, "go")
        marks = during(self) if during is not None else {}
        receive(self.loadgen.stdout, "done")
        after = CpuSnapshot.take(self.cpu_pids())
        vault = self.vault.command({"op": "count"})
        # Less one: the INFO that took the first count is among the commands counted by the second.
        redis_calls = self.redis.commands() - redis_before - 1 if redis_before is not None else None
        rss = self.server.worker_rss_mb()
        result = receive(self.loadgen.stdout, "result")
        self.loadgen.wait(timeout=60)
        self.loadgen = None
        records = self.read_and_remove(records_file)["rows"]
        if credentials_file is not None:
            credentials_file.unlink()
        result.pop("event")
        return {
            "records": records,
            "result": result,
            "cpu_s": after.minus(before, loadgen=result["loadgen_cpu_s"]),
            "vault_calls": vault["count"],
            # OpenBao only: the time its core spent handling those calls (bench/openbao.py).
            "vault_handling_ms": vault.get("handling_ms"),
            "redis_calls": redis_calls,
            "worker_rss_mb": rss,
            "warmup": ready.get("warmup"),
            "marks": marks,
        }

    def cpu_pids(self) -> dict[str, list[int]]:
        pids: dict[str, list[int]] = {"gunicorn": self.server.pids() if self.server else []}
        pids["postgres"] = self.postgres_pids()
        pids["vault"] = [self.vault.pid] if self.vault is not None and self.vault.pid else []
        pids["redis"] = [self.redis.pid] if self.redis is not None and self.redis.pid else []
        return pids

    def postgres_pids(self) -> list[int]:
        """The server's own processes and the backends of this run's databases (not other databases')."""
        import psutil

        assert self.admin is not None
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND (datname = ANY(%s) OR backend_type <> 'client backend')",
            (self.databases,),
        ).fetchall()
        pids = [pid for (pid,) in rows]
        with contextlib.suppress(psutil.Error):  # the postmaster is not in pg_stat_activity
            pids += [psutil.Process(pids[0]).ppid()] if pids else []
        return pids

    def results_header(self) -> dict[str, Any]:
        return {
            "generated_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {**machine_info(self.pg_version), "load_average": {"start": self.load_average_start}},
        }

    # -- tear-down ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this run started, in order; never raise."""
        from bench.servers import stop_process

        if self.loadgen is not None:
            stop_process(self.loadgen, signal.SIGKILL, 5)
        with contextlib.suppress(Exception):
            self.stop_server()
        if self.vault is not None:
            with contextlib.suppress(Exception):
                self.vault.close()
        if self.redis is not None:
            self.redis.close()
        if self.admin is not None:
            for name in self.databases:
                if self.args.keep:
                    self.log(f"Kept the database {name} (--keep)")
                    continue
                with contextlib.suppress(psycopg.Error):
                    self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            self.admin.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def send(stream: TextIO | None, line: str) -> None:
    assert stream is not None
    stream.write(line + "\n")
    stream.flush()


def receive(stream: TextIO | None, event: str) -> dict:
    assert stream is not None
    line = stream.readline()
    if not line:
        raise BenchError(f"The load generator stopped before '{event}'.")
    message = json.loads(line)
    if message.get("event") != event:
        raise BenchError(f"The load generator said {message.get('event')!r}, not {event!r}.")
    return message


def run(args, benchmark) -> int:
    """
    Run `benchmark` (a module with measure, render, exit_status, RESULTS_PREFIX and ERROR_STATUS)
    as `args` say; print its report, write its results, and return the exit status.
    """
    orchestrator = Orchestrator(args)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    started = time.monotonic()
    try:
        results = benchmark.measure(orchestrator)
        results["machine"]["load_average"]["end"] = load_average()
        results["run_seconds"] = round(time.monotonic() - started, 1)
        print()
        print(benchmark.render(results))
        path = write_results(results, Path(args.output_dir), benchmark.RESULTS_PREFIX)
        shown_path = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"\nResults: {shown_path} (and {benchmark.RESULTS_PREFIX}latest.json beside it)")
        return benchmark.exit_status(results)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return benchmark.ERROR_STATUS
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping.", file=sys.stderr)
        return 130
    finally:
        orchestrator.close()
        signal.signal(signal.SIGTERM, previous)


def write_results(results: dict, directory: Path, prefix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{prefix}{stamp}.json"
    text = json.dumps(results, indent=2) + "\n"
    path.write_text(text)
    (directory / f"{prefix}latest.json").write_text(text)
    return path
