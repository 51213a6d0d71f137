"""
Where a warm token request's CPU goes: AgentIdP and the ceiling, each in one process, no HTTP server.

    python3 bench/profile_token.py [--requests N] [--rounds R] [--profile] [--instructions] [--set NAME=VALUE ...]

Both run as bench/run.py runs them (AgentIdP as docs/devops/deployment.md has it: DEBUG off,
INFO logging, persistent connections, a private Redis as the shared cache, the rate limits
counting out of reach; the ceiling its own minimal DRF project), on fresh databases of the
PostgreSQL on 127.0.0.1:5432. Each is a process of its own that calls its WSGI application
directly with the request the load generator sends (a warm bcrypt credential's Basic header
and form body; the same bytes to the ceiling), so gunicorn's share, the same for both, is
left out. It prints each side's CPU per request (the median of R rounds of N requests,
time.process_time: this process only, not PostgreSQL's or Redis's), their ratio, and with
--profile, cProfile's view of one more round of AgentIdP's: the functions by their own time,
and the time by package (Django, joserfc, redis-py, psycopg, logging, AgentIdP's own).

CPU time moves with the machine (on a shared virtual machine, by half from one round to the
next): compare figures of one run only. --instructions counts instructions instead, under
valgrind's callgrind (N requests once, about 50 times slower), which stays the same on a
busy machine: the measure to compare a change with the code before it. Neither counts the
kernel's work (the system calls of each round trip to PostgreSQL or Redis) nor those servers'.
Logging goes to /dev/null, as a deployment's goes to a pipe that someone else reads.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: How many warm requests each process sends before it measures (caches, compiled queries, the JIT of nothing).
WARMUP = 300
BODY = b"grant_type=client_credentials"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side; the median counts (default 5)")
    parser.add_argument("--profile", action="store_true", help="also profile one round of AgentIdP's with cProfile")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions under valgrind's callgrind instead of timing (slow, but the same on a busy machine)",
    )
    parser.add_argument("--top", type=int, default=35, help="functions shown by --profile (default 35)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="NAME=VALUE", help="an environment variable"
    )
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--child", choices=["agentidp", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--callgrind", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- the parent: databases, Redis, the two children ----------------------------------------------


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    from bench.errors import BenchError
    from bench.orchestrator import CONN_MAX_AGE, clean_environment
    from bench.servers import PYTHON, Redis

    with tempfile.TemporaryDirectory(prefix="agentidp-profile-") as tmp_name:
        tmp = Path(tmp_name)
        redis = Redis(tmp)
        databases = []
        (tmp / "metrics").mkdir()
        try:
            base = clean_environment()
            base.update({"CONN_MAX_AGE": str(CONN_MAX_AGE), "DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1"})
            base["SECRET_KEY"] = secrets.token_urlsafe(48)
            agentidp = dict(base)
            agentidp.update(
                {
                    "DJANGO_SETTINGS_MODULE": "agentidp.settings",
                    "DATABASE_URL": create_database(args.postgres, "agentidp_profile", databases),
                    "CACHE_URL": redis.start(),
                    "STATIC_ROOT": str(tmp / "static"),
                    # prometheus-client's multi-process mode, as under gunicorn (agentidp/gunicorn_conf.py).
                    "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
                    "AGENTIDP_SIGNING_KEY_FILE": str(tmp / "signing-key.pem"),
                    "AGENTIDP_BCRYPT_ROUNDS": "4",
                    "AGENTIDP_UPGRADE_ON_USE": "false",
                    # Counting, out of reach: as bench/run.py has them.
                    "AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS": "1000000000",
                    "AGENTIDP_AUTH_FAILURES_PER_ADDRESS": "1000000000",
                    "AGENTIDP_AUTH_FAILURES_PER_CLIENT": "1000000000",
                    "AGENTIDP_AUTH_FAILURES_TOTAL": "1000000000",
                    "AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR": "1000000000",
                }
            )
            for item in args.settings:
                name, _, value = item.partition("=")
                agentidp[name] = value
            for command in (["create_signing_key"], ["migrate", "--noinput", "--verbosity", "0"]):
                subprocess.run([PYTHON, "manage.py", *command], cwd=ROOT, env=agentidp, check=True, capture_output=True)
            ceiling = dict(base)
            ceiling.update(
                {
                    "DJANGO_SETTINGS_MODULE": "bench.ceiling.settings",
                    "DATABASE_URL": create_database(args.postgres, "agentidp_profile_ceiling", databases),
                }
            )
            subprocess.run(
                [PYTHON, "-m", "django", "migrate", "--noinput", "--verbosity", "0"],
                cwd=ROOT,
                env=ceiling,
                check=True,
                capture_output=True,
            )
            passed = [f"--requests={args.requests}", f"--rounds={args.rounds}", f"--top={args.top}"]
            results = {}
            for name, env in (("ceiling", ceiling), ("agentidp", agentidp)):
                flags = passed + (["--profile"] if args.profile and name == "agentidp" else [])
                command = [PYTHON, str(Path(__file__).resolve()), f"--child={name}", *flags]
                out = tmp / f"callgrind.{name}.out"
                if args.instructions:
                    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
                    command = [*valgrind, *command, "--callgrind"]
                done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise BenchError(f"the {name} process failed:\n{done.stderr[-3000:]}")
                *report, last = done.stdout.rstrip("\n").split("\n")
                results[name] = json.loads(last)
                if args.instructions:
                    results[name]["instructions"] = callgrind_total(out) / args.requests
                if report:
                    print("\n".join(report))
        finally:
            redis.close()
            drop_databases(args.postgres, databases)
    if args.instructions:
        print(f"\nInstructions per request in one process ({args.requests} requests, callgrind):")
        for name in ("ceiling", "agentidp"):
            print(f"  {name:9} {results[name]['instructions']:12,.0f}")
        print(f"  AgentIdP / ceiling: {results['agentidp']['instructions'] / results['ceiling']['instructions']:.2f}")
        return
    ceiling_us, agentidp_us = results["ceiling"]["median_us"], results["agentidp"]["median_us"]
    print(f"\nCPU per request in one process ({args.rounds} rounds of {args.requests}; median, all rounds):")
    for name in ("ceiling", "agentidp"):
        rounds = ", ".join(f"{value:.0f}" for value in results[name]["rounds_us"])
        print(f"  {name:9} {results[name]['median_us']:7.0f} µs   ({rounds})")
    print(f"  AgentIdP / ceiling: {agentidp_us / ceiling_us:.2f}")


def callgrind_total(path: Path) -> int:
    """The instructions a callgrind output file counted in all."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"{path} has no totals")


def create_database(postgres: str, name: str, made: list[str]) -> str:
    import psycopg
    from psycopg import sql

    with psycopg.connect(postgres, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    made.append(name)
    scheme, _, rest = postgres.partition("://")
    return f"{scheme}://{rest.rsplit('/', 1)[0]}/{name}"


def drop_databases(postgres: str, names: list[str]) -> None:
    import psycopg
    from psycopg import sql

    with contextlib.suppress(psycopg.Error), psycopg.connect(postgres, autocommit=True) as connection:
        for name in names:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- a child: one side, measured in its own process -----------------------------------------------


def child(args: argparse.Namespace) -> None:
    import django

    # A deployment's log goes to a pipe someone else reads; here to /dev/null, so the terminal costs nothing.
    devnull = open(os.devnull, "w")  # noqa: SIM115 (open for the process's life)
    os.dup2(devnull.fileno(), 2)
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    application = WSGIHandler()
    if args.child == "agentidp":
        path, authorization = "/api/v1/token", agentidp_credential()
    else:
        from bench.ceiling.models import Row

        Row.objects.create(pk=1, name="ceiling")
        path, authorization = "/ceiling/1", "Basic " + base64.b64encode(b"client:secret").decode()

    def request() -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_AUTHORIZATION": authorization,
            "HTTP_USER_AGENT": "bench/profile",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(BODY)),
            "wsgi.input": io.BytesIO(BODY),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        statuses = []
        response = application(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(response)
        response.close()
        if not statuses[0].startswith("200"):
            raise SystemExit(f"{args.child} answered {statuses[0]}")

    for _ in range(WARMUP):
        request()
    if args.callgrind:
        count_instructions(request, args.requests)
        return
    rounds = []
    for _ in range(args.rounds):
        started = time.process_time()
        for _ in range(args.requests):
            request()
        rounds.append((time.process_time() - started) / args.requests * 1e6)
    if args.profile:
        profile(request, args.requests, args.top)
    print(json.dumps({"median_us": statistics.median(rounds), "rounds_us": rounds}))


def count_instructions(request, requests: int) -> None:
    """Under callgrind: instrument only the measured requests (callgrind_control switches it on and off)."""
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
    for _ in range(requests):
        request()
    subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
    print(json.dumps({"median_us": 0, "rounds_us": []}))


def agentidp_credential() -> str:
    from credentials.services import agent_create, credential_create

    agent = agent_create(acting=None, name="profile", description="bench: profile")
    issued = credential_create(acting=None, agent=agent, description="profile")
    pair = f"{issued.credential.client_id}:{issued.client_secret}".encode()
    return "Basic " + base64.b64encode(pair).decode()


#: The packages --profile adds time up by, by a part of the file's path; the first that matches counts.
PACKAGES = (
    ("joserfc", "/joserfc/"),
    ("cryptography", "/cryptography/"),
    ("redis-py", "/redis/"),
    ("psycopg", "/psycopg"),
    ("prometheus-client", "/prometheus_client/"),
    ("whitenoise", "/whitenoise/"),
    ("django (db)", "/django/db/"),
    ("django (http, handlers)", "/django/core/handlers/"),
    ("django (http, handlers)", "/django/http/"),
    ("django (middleware)", "/django/middleware/"),
    ("django (middleware)", "/django/contrib/"),
    ("django (urls)", "/django/urls/"),
    ("django (other)", "/django/"),
    ("logging", "/logging/"),
    ("AgentIdP: oauth", "/oauth/"),
    ("AgentIdP: credentials", "/credentials/"),
    ("AgentIdP: vaultstore", "/vaultstore/"),
    ("AgentIdP: agentidp", "/agentidp/"),
)


def profile(request, requests: int, top: int) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile(time.process_time)  # CPU, not waiting on PostgreSQL or Redis
    profiler.enable()
    for _ in range(requests):
        request()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(entry[2] for entry in stats.stats.values())  # own time of every function
    by_package: dict[str, float] = {}
    for (filename, _, _), (_, _, own, _, _) in stats.stats.items():
        package = next((name for name, part in PACKAGES if part in filename), "other (stdlib, builtins)")
        by_package[package] = by_package.get(package, 0.0) + own
    print(f"cProfile, {requests} warm requests: {total / requests * 1e6:.0f} µs each under the profiler")
    print("Own time by package (µs per request):")
    for package, own in sorted(by_package.items(), key=lambda item: -item[1]):
        print(f"  {package:28} {own / requests * 1e6:7.1f}  {own / total:6.1%}")
    print(f"Functions by own time (top {top}):")
    print_functions(stats, requests, top, by=2)
    print(f"Functions by cumulative time (top {top}):")
    print_functions(stats, requests, top, by=3)


def print_functions(stats, requests: int, top: int, *, by: int) -> None:
    """The `top` functions by own time (by=2) or cumulative time (by=3), per request."""
    for (filename, line, function), (_, calls, own, cumulative, _) in sorted(
        stats.stats.items(), key=lambda item: -item[1][by]
    )[:top]:
        where = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        print(
            f"  {own / requests * 1e6:7.1f} µs own {cumulative / requests * 1e6:7.1f} cum"
            f"  {calls / requests:5.1f}×  {function} ({where}:{line})"
        )


if __name__ == "__main__":
    main()
