#!/usr/bin/env python3
"""
Measure AgentIdP's token endpoint, POST /api/v1/token, against a ceiling project, on PostgreSQL.

    python3 bench/run.py [--duration 10] [--concurrency 8] [--scenarios a,b,...]
                         [--bcrypt-rounds 12] [--soak N] [--vault test|bao] [--cache auto|redis|locmem] [--keep]

Needs Python 3.11+ and PostgreSQL on 127.0.0.1:5432 (trust authentication, user
postgres; --postgres to point elsewhere). Like dev.py, it creates ./.venv and installs
the project there (with the `bench` extra: gunicorn, psutil) when needed, then runs itself
from that environment. Prints a table and writes bench/results/<UTC time>.json and
bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project root, not bench/, so that `bench.*` and dev.py import as packages

from bench.bootstrap import enter_project_environment, in_project_environment  # noqa: E402
from bench.options import add_bcrypt_rounds, add_installation_arguments, positive, scenario_list  # noqa: E402

SCENARIO_NAMES = (
    "ceiling",
    "bcrypt-warm",
    "private_key_jwt",
    "jwt-bearer",
    "bcrypt-cold",
    "vault-warm",
    "vault-cold",
    "wrong-secret-bcrypt",
    "wrong-secret-vault",
    "unknown-client",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 bench/run.py",
        description="Benchmark AgentIdP's token endpoint against a minimal DRF project's one-SELECT view on "
        "PostgreSQL (bench/README.md).",
    )
    parser.add_argument("--duration", type=positive(float), default=10.0, help="seconds per scenario (default 10)")
    parser.add_argument("--concurrency", type=positive(int), default=8, help="concurrent clients (default 8)")
    parser.add_argument(
        "--scenarios",
        type=scenario_list(SCENARIO_NAMES),
        default=list(SCENARIO_NAMES),
        help="comma-separated, run in this order: "
        + ",".join(SCENARIO_NAMES)
        + " (default: all; ceiling always runs, and bcrypt-warm with private_key_jwt or jwt-bearer)",
    )
    add_bcrypt_rounds(parser)
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
    parser.add_argument(
        "--loadgen",
        choices=("python", "wrk"),
        default="python",
        help="the load generator: bench/loadgen.py (every scenario), or wrk (the ceiling and bcrypt-warm only: "
        "bench/wrk_bench.py)",
    )
    parser.add_argument(
        "--rounds",
        type=positive(int),
        default=5,
        help="each warm secret scenario's --duration (wrk: each side's) in this many rounds, taking turns with "
        "the ceiling's (default 5)",
    )
    add_installation_arguments(
        parser, database="agentidp_bench", example_setting="AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS=0"
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args(sys.argv[1:])
    if not in_project_environment():
        enter_project_environment(__file__)  # does not return
    os.chdir(ROOT)
    from bench import orchestrator, token_bench, wrk_bench

    return orchestrator.run(args, wrk_bench if args.loadgen == "wrk" else token_bench)


if __name__ == "__main__":
    sys.exit(main())
