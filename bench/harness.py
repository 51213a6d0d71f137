"""
The benchmark itself: PostgreSQL database, Vault server (the in-process test server, or
OpenBao's dev server with --vault bao), AgentIdP under gunicorn, the load generator, and
the report. bench/run.py parses the options and calls `run`.

Everything started here is stopped in `Bench.close`, which runs on success, on an error
and on Ctrl-C (SIGINT) or SIGTERM: the load generator, gunicorn, the Vault server, and the
database (dropped unless --keep). Children run in sessions of their own, so that a Ctrl-C
reaches only this process and the shutdown happens in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import http.client
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import bcrypt
import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

#: gunicorn's shape for every scenario.
WORKERS = 2
#: Seconds Django keeps a database connection open (persistent connections).
CONN_MAX_AGE = 600
#: Credentials in each warm pool (made through credentials.services, so each costs one hash to create).
WARM_POOL = 8
#: A cold pool holds this much more than the scenario's estimated need...
COLD_POOL_MARGIN = 1.3
#: ...and at least this many credentials per client on top.
COLD_POOL_EXTRA_PER_CLIENT = 4
#: How long gunicorn may take to answer /healthz after starting.
STARTUP_TIMEOUT = 60
TOKEN_PATH = "/api/v1/token"
#: The processes whose CPU is measured separately; the rest of the machine's is "other".
GROUPS = ("gunicorn", "postgres", "loadgen", "vault")
#: The Vault servers a run can use (--vault): the project's test server in a process of its own
#: (bench/vault_server.py), or a real Vault-API server, OpenBao's dev server (bench/openbao.py).
VAULT_SERVERS = ("test", "bao")
#: What the results say about the test server.
TEST_VAULT = "tests/vaultserver.py VaultTestServer (KV v2 over HTTP, in its own process), agentidp policy"
#: Warn when other processes kept this share of one core busy during a window.
OTHER_CPU_WARNING = 0.15
#: The rate limits, off: every request of this benchmark comes from one address (127.0.0.1), and its
#: wrong-secret scenarios measure what a failure costs the store, not the 429 that a limit answers.
RATE_LIMITS_OFF = {
    "AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS": "0",
    "AGENTIDP_AUTH_FAILURES_PER_ADDRESS": "0",
    "AGENTIDP_AUTH_FAILURES_PER_CLIENT": "0",
    "AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR": "0",
    "AGENTIDP_AUTH_FAILURES_TOTAL": "0",
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    pool: str | None  # "bcrypt-warm", "bcrypt-cold", "vault-warm", "vault-cold" or None (random clients)
    expected_status: int = 200
    ceiling: bool = False  # POST /bench/ceiling instead of the token endpoint
    wrong_secret: bool = False
    random_client: bool = False
    warm_up: bool = False  # every credential verified by every worker before the window

    @property
    def order(self) -> str:
        return "once" if self.pool and self.pool.endswith("-cold") else "cycle"


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "ceiling", "one primary-key SELECT, tiny JSON (the ceiling)", "bcrypt-warm", ceiling=True, warm_up=True
        ),
        Scenario("bcrypt-warm", f"{WARM_POOL} bcrypt credentials, each used before", "bcrypt-warm", warm_up=True),
        Scenario("bcrypt-cold", "a never-used bcrypt credential per request", "bcrypt-cold"),
        Scenario("vault-warm", f"{WARM_POOL} Vault credentials, each used before", "vault-warm", warm_up=True),
        Scenario("vault-cold", "a never-used Vault credential per request", "vault-cold"),
        Scenario(
            "wrong-secret-bcrypt",
            "known bcrypt clientIds, a random wrong secret",
            "bcrypt-warm",
            401,
            wrong_secret=True,
        ),
        Scenario(
            "wrong-secret-vault", "known Vault clientIds, a random wrong secret", "vault-warm", 401, wrong_secret=True
        ),
        Scenario(
            "unknown-client",
            "a random clientId never issued (Vault is the default store)",
            None,
            401,
            random_client=True,
        ),
    )
}


class BenchError(Exception):
    """The benchmark could not run; the message says why (and carries no secret)."""


# --- processes and measurements ---------------------------------------------------------------


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclasses.dataclass
class CpuSnapshot:
    """CPU seconds used so far by each process of each group, and the machine's busy seconds."""

    groups: dict[str, dict[int, float]]
    machine_busy: float

    def minus(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds each group used since `before` (a process started meanwhile counts whole)."""
        used = {
            group: round(sum(cpu - before.groups.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items()), 3)
            for group, pids in self.groups.items()
        }
        used["machine_busy"] = round(self.machine_busy - before.machine_busy, 3)
        return used


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent running something (guest time is inside user time; steal is not ours)."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def machine_info(pg_version: str) -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "git_commit": commit or None,
        "git_dirty": bool(dirty),
    }


class Bench:
    """The resources of one run; `close` releases whatever was acquired."""

    #: AgentIdP settings of this kind of run, applied before --set.
    extra_environment: dict[str, str] = RATE_LIMITS_OFF

    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="agentidp-bench-"))  # mode 0700: it holds the secrets files
        self.admin: psycopg.Connection | None = None
        self.database_created = False
        self.vault: subprocess.Popen | None = None
        self.bao = None  # bench.openbao.OpenBaoVault with --vault bao
        self.vault_env: dict[str, str] = {}
        self.gunicorn: subprocess.Popen | None = None
        self.loadgen: subprocess.Popen | None = None
        self.port = 0
        self.database_url = ""
        self.env: dict[str, str] = {}

    # -- set-up ------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        print(f"==> {message}", flush=True)

    def create_database(self) -> str:
        """(Re)create the benchmark database; return the PostgreSQL server's version."""
        args = self.args
        try:
            self.admin = psycopg.connect(args.postgres, autocommit=True)
        except psycopg.OperationalError as exc:
            raise BenchError(f"Cannot connect to PostgreSQL at {without_password(args.postgres)}: {exc}") from None
        name = sql.Identifier(args.database)
        self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
        self.database_created = True
        # The same server and role, the benchmark's database.
        self.database_url = urlunsplit(urlsplit(args.postgres)._replace(path=f"/{args.database}"))
        return self.admin.execute("SELECT version()").fetchone()[0]

    def base_environment(self) -> dict[str, str]:
        """The process environment for AgentIdP: this machine's, less anything AgentIdP reads, plus the bench's."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("VAULT_", "AGENTIDP_", "DJANGO_"))
            and name
            not in {
                "DATABASE_URL",
                "CONN_MAX_AGE",
                "CACHE_URL",
                "SECRET_KEY",
                "DEBUG",
                "ALLOWED_HOSTS",
                "LOG_LEVEL",
                "STATIC_ROOT",
                "CSRF_TRUSTED_ORIGINS",
            }
        }
        (self.tmp / "static").mkdir()
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "bench.settings",
                "PYTHONPATH": str(ROOT),
                "DATABASE_URL": self.database_url,
                "CONN_MAX_AGE": str(CONN_MAX_AGE),
                "DEBUG": "false",
                "SECRET_KEY": secrets.token_urlsafe(48),
                "ALLOWED_HOSTS": "127.0.0.1",
                "LOG_LEVEL": "WARNING",
                "STATIC_ROOT": str(self.tmp / "static"),
                "AGENTIDP_SIGNING_KEY_FILE": str(self.tmp / "signing-key.pem"),
                "AGENTIDP_BCRYPT_ROUNDS": str(self.args.bcrypt_rounds),
                # Vault is on for the server, so a bcrypt credential would move into Vault on its first use.
                "AGENTIDP_UPGRADE_ON_USE": "false",
            }
        )
        env.update(self.extra_environment)
        env.update(self.args.settings)  # --set NAME=VALUE, last so that it wins
        return env

    def manage(self, *command: str, env: dict[str, str]) -> None:
        self.run_quietly([PYTHON, "manage.py", *command], env=env, what=f"manage.py {command[0]}")

    def run_quietly(self, command: list[str], *, env: dict[str, str], what: str) -> None:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError(f"{what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")

    @property
    def vault_kind(self) -> str:
        return getattr(self.args, "vault", "test")

    def vault_name(self) -> str:
        return "OpenBao dev server" if self.vault_kind == "bao" else "Vault test server"

    def vault_description(self) -> str:
        return self.bao.describe() if self.bao is not None else TEST_VAULT

    def start_vault(self) -> None:
        """Start the chosen Vault server; AgentIdP's VAULT_ADDR and VAULT_TOKEN (only its policy) go to vault_env."""
        if self.vault_kind == "bao":
            from bench.openbao import OpenBaoVault

            self.bao = OpenBaoVault()
            self.vault_env = self.bao.start()
            return
        self.vault = subprocess.Popen(
            [PYTHON, "-m", "bench.vault_server"],
            cwd=ROOT,
            env={**self.env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        hello = self.vault_command(None)
        self.vault_env = {"VAULT_ADDR": hello["url"], "VAULT_TOKEN": hello["token"]}

    def vault_command(self, command: dict | None) -> dict:
        if self.bao is not None:
            assert command is not None
            return self.bao.command(command)
        assert self.vault is not None and self.vault.stdin and self.vault.stdout
        if command is not None:
            self.vault.stdin.write(json.dumps(command) + "\n")
            self.vault.stdin.flush()
        line = self.vault.stdout.readline()
        if not line:
            raise BenchError("The Vault test server stopped.")
        return json.loads(line)

    def seed(self, *arguments: str, vault: bool) -> dict:
        env = {**self.env, **self.vault_env} if vault else self.env
        self.run_quietly([PYTHON, "-m", "bench.seed", *arguments], env=env, what="seeding")
        out = Path(arguments[arguments.index("--out") + 1])
        return json.loads(out.read_text())

    def start_gunicorn(self, *, workers: int = WORKERS, worker_class: str = "sync", threads: int = 1) -> None:
        """Start AgentIdP under gunicorn (by default the benchmark's shape) and wait until every worker is up."""
        from gunicorn.config import KNOWN_SETTINGS

        self.port = free_port()
        self.env["AGENTIDP_ISSUER"] = f"http://127.0.0.1:{self.port}"
        command = [
            PYTHON, "-m", "gunicorn", "agentidp.wsgi:application",
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--bind", f"127.0.0.1:{self.port}",
            "--chdir", str(ROOT),
            "--log-level", "warning",
            "--error-logfile", str(self.tmp / "gunicorn.log"),
            "--timeout", "120",
            "--graceful-timeout", "10",
        ]  # fmt: skip
        if worker_class == "gthread":
            command += ["--threads", str(threads)]
        if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
            command.append("--no-control-socket")
        with open(self.tmp / "gunicorn.out", "wb") as output:  # AgentIdP's own log lines (LOG_LEVEL=WARNING)
            self.gunicorn = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**self.env, **self.vault_env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise BenchError(f"gunicorn exited (code {self.gunicorn.returncode}).\n{self.gunicorn_log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200 and len(self.workers()) == workers:
                    return
            time.sleep(0.2)
        raise BenchError(f"gunicorn did not answer /healthz within {STARTUP_TIMEOUT} s.\n{self.gunicorn_log()}")

    def gunicorn_log(self) -> str:
        """The end of gunicorn's log and of the output of AgentIdP under it."""
        parts = [path for path in (self.tmp / "gunicorn.log", self.tmp / "gunicorn.out") if path.exists()]
        return "\n".join(path.read_text(errors="replace")[-2000:] for path in parts)

    def workers(self) -> list[psutil.Process]:
        if self.gunicorn is None:
            return []
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.gunicorn.pid).children(recursive=True)
        return []

    # -- measuring -------------------------------------------------------------------------

    def cpu_snapshot(self) -> CpuSnapshot:
        groups: dict[str, dict[int, float]] = {"gunicorn": {}, "postgres": {}, "vault": {}}
        processes: list[tuple[str, int]] = []
        if self.gunicorn is not None:
            processes += [("gunicorn", self.gunicorn.pid)] + [("gunicorn", p.pid) for p in self.workers()]
        if self.vault is not None:
            processes.append(("vault", self.vault.pid))
        if self.bao is not None and self.bao.pid is not None:
            processes.append(("vault", self.bao.pid))
        processes += [("postgres", pid) for pid in self.postgres_pids()]
        for group, pid in processes:
            with contextlib.suppress(psutil.Error):
                groups[group][pid] = cpu_seconds(psutil.Process(pid))
        return CpuSnapshot(groups, machine_busy_seconds())

    def postgres_pids(self) -> list[int]:
        """The server's own processes and the backends of the benchmark database (not other databases')."""
        assert self.admin is not None
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND (datname = %s OR backend_type <> 'client backend')",
            (self.args.database,),
        ).fetchall()
        pids = [pid for (pid,) in rows]
        with contextlib.suppress(psutil.Error):  # the postmaster is not in pg_stat_activity
            pids += [psutil.Process(pids[0]).ppid()] if pids else []
        return pids

    def start_loadgen(self, command: list[str], job: dict) -> dict:
        """Start a load generator with `job`, wait until it is ready (its warm-up done), clear Vault's request count."""
        self.loadgen = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        send(self.loadgen.stdin, json.dumps(job))
        ready = receive(self.loadgen.stdout, "ready")
        self.vault_command({"op": "clear"})
        return ready

    def worker_rss_mb(self) -> list[float]:
        sizes = []
        for worker in self.workers():
            with contextlib.suppress(psutil.Error):
                sizes.append(round(worker.memory_info().rss / 2**20, 1))
        return sorted(sizes)

    def measure(
        self, scenario: Scenario, pools: dict[str, Path], *, duration: float, max_requests: int | None = None
    ) -> dict[str, Any]:
        """Run one scenario through a fresh load-generator process; return its row of results."""
        path = TOKEN_PATH
        if scenario.ceiling:
            path = f"/bench/ceiling?agent={json.loads(pools['bcrypt-warm'].read_text())['agent_id']}"
        job = {
            "host": "127.0.0.1",
            "port": self.port,
            "path": path,
            "expected_status": scenario.expected_status,
            "concurrency": self.args.concurrency,
            "duration": duration,
            "max_requests": max_requests,
            "credentials_file": str(pools[scenario.pool]) if scenario.pool else None,
            "order": scenario.order,
            "wrong_secret": scenario.wrong_secret,
            "random_client": scenario.random_client,
            "warmup_workers": WORKERS if scenario.warm_up else 0,
        }
        ready = self.start_loadgen([PYTHON, str(ROOT / "bench" / "loadgen.py")], job)
        before = self.cpu_snapshot()
        send(self.loadgen.stdin, "go")
        receive(self.loadgen.stdout, "done")
        after = self.cpu_snapshot()
        vault_count = self.vault_command({"op": "count"})
        vault_calls = vault_count["count"]
        rss = self.worker_rss_mb()
        result = receive(self.loadgen.stdout, "result")
        self.loadgen.wait(timeout=30)
        self.loadgen = None
        cpu = after.minus(before)
        cpu["loadgen"] = result.pop("loadgen_cpu_s")
        # Whatever else kept the machine's cores busy meanwhile (this harness, other people's work).
        cpu["other"] = round(max(0.0, cpu["machine_busy"] - sum(cpu[group] for group in GROUPS)), 3)
        requests = result["requests"]
        elapsed = result["elapsed_s"]
        result.pop("event")
        return {
            "scenario": scenario.name,
            "description": scenario.description,
            **result,
            "vault_calls_per_request": round(vault_calls / requests, 3) if requests else None,
            # OpenBao only: the mean time its core took to handle one of those calls (bench/openbao.py).
            "vault_handling_ms_per_call": (
                round(vault_count["handling_ms"] / vault_calls, 3) if "handling_ms" in vault_count and vault_calls else None
            ),
            "cpu_s": cpu,
            "server_cpu_ms_per_request": round(cpu["gunicorn"] / requests * 1000, 3) if requests else None,
            "loadgen_core_share": round(cpu["loadgen"] / elapsed, 3) if elapsed else None,
            "worker_rss_mb": rss,
            "warmup": ready.get("warmup"),
        }

    # -- tear-down ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this run started, in order; never raise."""
        if self.loadgen is not None:
            stop_process(self.loadgen, signal.SIGKILL, 5)
        if self.gunicorn is not None:
            stop_process(self.gunicorn, signal.SIGTERM, 15)
        if self.vault is not None:
            with contextlib.suppress(OSError):
                self.vault.stdin.close()  # the server stops when its input ends
            stop_process(self.vault, None, 5)
        if self.bao is not None:
            with contextlib.suppress(Exception):
                self.bao.close()  # SIGTERM to its own session, then SIGKILL
        if self.admin is not None:
            if self.database_created and not self.args.keep:
                with contextlib.suppress(psycopg.Error):
                    name = sql.Identifier(self.args.database)
                    self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            elif self.database_created:
                self.log(f"Kept the database {self.args.database} (--keep)")
            self.admin.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def stop_process(process: subprocess.Popen, sig: signal.Signals | None, grace: float) -> None:
    """Send `sig` (None: just wait), wait up to `grace` seconds, then kill the process's whole session."""
    with contextlib.suppress(ProcessLookupError):
        if process.poll() is None and sig is not None:
            process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: gunicorn's workers go with it
            process.wait(timeout=5)


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


# --- pools ---------------------------------------------------------------------------------------


def bcrypt_verify_seconds(rounds: int) -> float:
    """Time one bcrypt verification at `rounds` on this machine (the best of three)."""
    hashed = bcrypt.hashpw(b"bench", bcrypt.gensalt(rounds))
    best = math.inf
    for _ in range(3):
        began = time.perf_counter()
        bcrypt.checkpw(b"bench", hashed)
        best = min(best, time.perf_counter() - began)
    return best


def cold_pool_size(*, duration: float, rate: float, concurrency: int) -> int:
    return math.ceil(duration * rate * COLD_POOL_MARGIN) + COLD_POOL_EXTRA_PER_CLIENT * concurrency


# --- the run -------------------------------------------------------------------------------------


def run(args) -> int:
    """Run the benchmark as `args` say; return the exit status."""
    names = ["ceiling"] + [name for name in args.scenarios if name != "ceiling"]  # the ratios need the ceiling
    bench = Bench(args)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    started = time.monotonic()
    try:
        return _run(bench, names, started)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping.", file=sys.stderr)
        return 130
    finally:
        bench.close()
        signal.signal(signal.SIGTERM, previous)


def _run(bench: Bench, names: list[str], started: float) -> int:
    args = bench.args
    bench.log(f"PostgreSQL: fresh database {args.database}")
    pg_version = bench.create_database()
    bench.env = bench.base_environment()
    bench.log("Making a signing key and migrating the database")
    bench.manage("create_signing_key", env=bench.env)  # before migrate: its system checks want the key
    bench.manage("migrate", "--noinput", "--verbosity", "0", env=bench.env)
    bench.log(f"Starting the {bench.vault_name()}")
    bench.start_vault()

    pools: dict[str, Path] = {}
    bench.log(f"Seeding {WARM_POOL} bcrypt and {WARM_POOL} Vault credentials (bcrypt cost {args.bcrypt_rounds})")
    for storage in ("bcrypt", "vault"):
        out = bench.tmp / f"{storage}-warm.json"
        arguments = ["warm", "--name", f"bench-{storage}-warm", "--count", str(WARM_POOL), "--out", str(out)]
        bench.seed(*arguments, vault=storage == "vault")
        pools[f"{storage}-warm"] = out

    bench.log(f"Starting AgentIdP under gunicorn ({WORKERS} sync workers, CONN_MAX_AGE={CONN_MAX_AGE})")
    bench.start_gunicorn()

    rows: list[dict[str, Any]] = []
    verify_s = bcrypt_verify_seconds(args.bcrypt_rounds)
    for name in names:
        scenario = SCENARIOS[name]
        if scenario.pool and scenario.pool.endswith("-cold") and scenario.pool not in pools:
            pools[scenario.pool] = seed_cold_pool(bench, scenario.pool, rows[0]["rps"], verify_s)
        bench.log(f"Scenario {name}: {scenario.description} ({args.duration:g} s, {args.concurrency} clients)")
        row = bench.measure(scenario, pools, duration=args.duration)
        rows.append(row)
        if row["pool_exhausted"]:
            print(f"    the pool of never-used credentials ran out after {row['requests']} requests", flush=True)
        if row["cpu_s"]["other"] > OTHER_CPU_WARNING * row["elapsed_s"]:
            print(f"    note: other processes used {row['cpu_s']['other']:.1f} CPU s meanwhile", flush=True)

    ceiling_rps = rows[0]["rps"]
    for row in rows:
        row["ratio_to_ceiling"] = round(row["rps"] / ceiling_rps, 3) if ceiling_rps else None

    soak = None
    if args.soak:
        bench.log(f"Soak: {args.soak} bcrypt-warm requests (at most {args.soak_max_seconds:g} s)")
        before = bench.worker_rss_mb()
        soak = bench.measure(SCENARIOS["bcrypt-warm"], pools, duration=args.soak_max_seconds, max_requests=args.soak)
        soak["worker_rss_mb_before"] = before
        soak["stopped_by_time_limit"] = soak["requests"] < args.soak

    results = {
        "generated_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(pg_version),
        "settings": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "scenarios": names,
            "bcrypt_rounds": args.bcrypt_rounds,
            "bcrypt_verify_ms": round(verify_s * 1000, 3),
            "warm_pool": WARM_POOL,
            "gunicorn": {"workers": WORKERS, "worker_class": "sync", "bind": "127.0.0.1"},
            "conn_max_age": CONN_MAX_AGE,
            "debug": False,
            "log_level": "WARNING",
            "vault_server": bench.vault_kind,
            "vault": bench.vault_description(),
            "vault_default_store": True,
            "upgrade_on_use": False,
            "rate_limits": "off (" + ", ".join(f"{name}={value}" for name, value in RATE_LIMITS_OFF.items()) + ")",
            "extra_environment": {name: shown(name, value) for name, value in args.settings},
            "database": args.database,
            "postgres": without_password(args.postgres),
            "client_auth": "client_secret_basic, grant_type=client_credentials form body",
            "soak": args.soak or None,
        },
        "scenarios": rows,
        "soak": soak,
        "targets": evaluate_targets(rows, soak),
        "run_seconds": None,
    }
    results["run_seconds"] = round(time.monotonic() - started, 1)
    print()
    print(render_table(rows, results["settings"]))
    print(render_targets(results["targets"]))
    if soak:
        print(render_soak(soak))
    path = write_results(results, Path(args.output_dir))
    print(f"\nResults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} (and latest.json beside it)")
    return 0


def seed_cold_pool(bench: Bench, pool: str, ceiling_rps: float, verify_s: float) -> Path:
    """Make enough never-used credentials for one cold scenario, estimated from the ceiling and bcrypt's cost."""
    args = bench.args
    storage = pool.removesuffix("-cold")
    rate = ceiling_rps
    if storage == "bcrypt":  # each worker verifies one secret at a time
        rate = min(rate, min(WORKERS, psutil.cpu_count() or 1) / verify_s)
    count = cold_pool_size(duration=args.duration, rate=rate, concurrency=args.concurrency)
    bench.log(f"Seeding {count} never-used {storage} credentials for {pool}")
    out = bench.tmp / f"{pool}.json"
    arguments = ["cold", "--storage", storage, "--name", f"bench-{pool}", "--count", str(count), "--out", str(out)]
    if storage == "vault":
        entries = bench.tmp / "vault-cold-entries.json"
        bench.seed(*arguments, "--vault-out", str(entries), vault=True)
        bench.vault_command({"op": "load", "file": str(entries)})
        entries.unlink()
    else:
        bench.seed(*arguments, vault=False)
    return out


# --- targets and reports -------------------------------------------------------------------------


def evaluate_targets(rows: list[dict], soak: dict | None) -> list[dict]:
    """Check the README's targets against what was measured; a target without its scenarios is 'n/a'."""
    by_name = {row["scenario"]: row for row in rows}
    targets = []

    def add(name: str, passed: bool | None, detail: str) -> None:
        targets.append({"target": name, "result": {True: "PASS", False: "FAIL", None: "n/a"}[passed], "detail": detail})

    for name in ("bcrypt-warm", "vault-warm"):
        row = by_name.get(name)
        if row is None:
            add(f"{name}: >= 0.9 x ceiling rps, p99 < 20 ms", None, "not run")
            continue
        p99 = row["latency_ms"]["p99"]
        add(
            f"{name}: >= 0.9 x ceiling rps, p99 < 20 ms",
            row["ratio_to_ceiling"] >= 0.9 and p99 is not None and p99 < 20 and row["errors"] == 0,
            f"{row['ratio_to_ceiling']:.2f} x ceiling, p99 {p99} ms, {row['errors']} errors",
        )

    for cold, store, per_request in (
        ("bcrypt-cold", "bcrypt verification", "bcrypt_checks_per_request"),
        ("vault-cold", "Vault read", "vault_calls_per_request"),
    ):
        row = by_name.get(cold)
        label = f"{cold}: at most one {store} per request"
        if row is None:
            add(label, None, "not run")
            continue
        count = row[per_request]
        add(label, count is not None and count <= 1.0 and row["errors"] == 0, f"{count} per request")

    # "No cheaper": a wrong secret costs the store at least what a never-seen right one does.
    for wrong, cold, store, per_request in (
        ("wrong-secret-bcrypt", "bcrypt-cold", "bcrypt verifications", "bcrypt_checks_per_request"),
        ("wrong-secret-vault", "vault-cold", "Vault reads", "vault_calls_per_request"),
        ("unknown-client", "vault-cold", "Vault reads", "vault_calls_per_request"),
    ):
        a, b = by_name.get(wrong), by_name.get(cold)
        label = f"{wrong}: no cheaper than {cold} ({store} per request)"
        if a is None or b is None:
            add(label, None, "not run")
            continue
        passed = a[per_request] is not None and b[per_request] is not None and a[per_request] >= b[per_request]
        rps = a["rps"] / b["rps"] if b["rps"] else math.inf
        add(
            label,
            passed and a["errors"] == 0,
            f"{a[per_request]} vs {b[per_request]}; rps {rps:.2f} x, "
            f"p50 {a['latency_ms']['p50']} vs {b['latency_ms']['p50']} ms",
        )

    # Enumeration by timing: an unknown clientId must cost what a wrong secret for a known one does. Both
    # pay one verification in the default store (Vault here), so compare their latencies directly.
    unknown, wrong = by_name.get("unknown-client"), by_name.get("wrong-secret-vault")
    label = "unknown-client vs wrong-secret-vault: p50 and mean latency within 10%"
    if unknown is None or wrong is None:
        add(label, None, "not run")
    else:
        gaps = {}
        for stat in ("p50", "mean"):
            a, b = unknown["latency_ms"].get(stat), wrong["latency_ms"].get(stat)
            gaps[stat] = (a - b) / b if a is not None and b else math.inf
        add(
            label,
            all(abs(gap) <= 0.10 for gap in gaps.values()) and unknown["errors"] == 0 and wrong["errors"] == 0,
            ", ".join(
                f"{stat} {unknown['latency_ms'].get(stat)} vs {wrong['latency_ms'].get(stat)} ms ({gaps[stat]:+.1%})"
                for stat in gaps
            ),
        )

    if soak is None:
        add("worker RSS < 120 MB after 100,000 requests (--soak 100000)", None, "not run")
    else:
        largest = max(soak["worker_rss_mb"] or [math.inf])
        enough = soak["requests"] >= 100_000
        add(
            "worker RSS < 120 MB after 100,000 requests (--soak 100000)",
            (largest < 120) if enough else None,
            f"{largest} MB after {soak['requests']} requests" + ("" if enough else " (fewer than 100,000)"),
        )
    return targets


def render_table(rows: list[dict], settings: dict) -> str:
    header = (
        f"AgentIdP POST {TOKEN_PATH}: {settings['concurrency']} clients, {settings['duration_s']:g} s per scenario, "
        f"bcrypt cost {settings['bcrypt_rounds']} ({settings['bcrypt_verify_ms']:.1f} ms/verify), "
        f"gunicorn {WORKERS} sync workers, PostgreSQL, Vault: "
        + ("OpenBao dev server" if settings.get("vault_server") == "bao" else "test server")
    )
    columns = [
        ("scenario", 19, "<"), ("rps", 8, ">"), ("x ceil", 6, ">"), ("p50 ms", 8, ">"), ("p95 ms", 8, ">"),
        ("p99 ms", 8, ">"), ("errors", 6, ">"), ("sql/req", 7, ">"), ("bcrypt/req", 10, ">"), ("vault/req", 9, ">"), ("srv ms/req", 10, ">"),
        ("cpu gunicorn", 12, ">"), ("postgres", 8, ">"), ("loadgen", 7, ">"), ("vault", 6, ">"), ("other", 6, ">"), ("RSS MB", 11, ">"),
    ]  # fmt: skip
    lines = [header, "  ".join(f"{title:{align}{width}}" for title, width, align in columns)]
    lines.append("-" * len(lines[1]))

    def number(value, digits=1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        latency, cpu = row["latency_ms"], row["cpu_s"]
        errors = str(row["errors"]) + ("!" if row["pool_exhausted"] else "")
        cells = [
            row["scenario"], number(row["rps"]), number(row.get("ratio_to_ceiling"), 2),
            number(latency["p50"]), number(latency["p95"]), number(latency["p99"]), errors,
            number(row["sql_queries_per_request"], 2), number(row["bcrypt_checks_per_request"], 2),
            number(row["vault_calls_per_request"], 2),
            number(row["server_cpu_ms_per_request"], 2), number(cpu["gunicorn"]), number(cpu["postgres"]),
            number(cpu["loadgen"]), number(cpu["vault"]), number(cpu["other"]), "/".join(f"{mb:.0f}" for mb in row["worker_rss_mb"]),
        ]  # fmt: skip
        lines.append(
            "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, columns, strict=True))
        )
    lines.append(
        "errors: responses whose status was not the scenario's expected one (401 for wrong-secret and unknown-client); "
        "'!' = the pool of never-used credentials ran out. CPU in seconds over the window; RSS of each worker at its end."
    )
    return "\n".join(lines)


def render_targets(targets: list[dict]) -> str:
    lines = ["", "Targets (bench/README.md):"]
    lines += [f"  {t['result']:<5} {t['target']}: {t['detail']}" for t in targets]
    return "\n".join(lines)


def render_soak(soak: dict) -> str:
    return (
        f"\nSoak: {soak['requests']} bcrypt-warm requests in {soak['elapsed_s']:.0f} s ({soak['rps']:.0f} rps, "
        f"{soak['errors']} errors); worker RSS {soak['worker_rss_mb_before']} MB before, {soak['worker_rss_mb']} MB after"
        + (" (stopped by --soak-max-seconds)" if soak["stopped_by_time_limit"] else "")
    )


def shown(name: str, value: str) -> str:
    """A --set value as the results may show it: hidden if it could be a secret or hold one (a URL's password)."""
    if any(word in name.upper() for word in ("SECRET", "TOKEN", "PASSWORD", "KEY")) or "@" in value:
        return "(set, not shown)"
    return value


def write_results(results: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{stamp}.json"
    text = json.dumps(results, indent=2) + "\n"
    path.write_text(text)
    (directory / "latest.json").write_text(text)
    return path
