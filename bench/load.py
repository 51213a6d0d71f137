#!/usr/bin/env python3
"""
Load AgentIdP's token endpoint with many clients at once, through a Vault outage and attacks
(from addresses of their own, and from the agents' own addresses).

    python3 bench/load.py [--requests 12000] [--concurrency 100] [--bcrypt-rounds 12]
                          [--workers 4] [--scenarios clean,vault-outage,attack,shared-address] [--keep]

Needs Python 3.11+ and PostgreSQL on 127.0.0.1:5432 (trust authentication, user postgres;
--postgres to point elsewhere), and redis-server for the shared cache (else --cache locmem).
Like bench/run.py, it creates ./.venv and installs the project there (with the `bench`
extra) when needed, then runs itself from that environment. Prints a table and writes
bench/results/load-<UTC time>.json and bench/results/load-latest.json; exits 1 when a
check failed. See bench/README.md, "Load under faults and abuse".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project root, not bench/, so that `bench.*` and dev.py import as packages

from bench.bootstrap import enter_project_environment, in_project_environment  # noqa: E402
from bench.options import (  # noqa: E402
    add_bcrypt_rounds,
    add_installation_arguments,
    positive,
    scenario_list,
    share,
)

SCENARIO_NAMES = ("clean", "vault-outage", "attack", "shared-address")
ATTACK_KINDS = ("known-bcrypt", "known-vault", "unknown")


def attack_mix(text: str) -> list[list]:
    parts = text.split(":")
    if len(parts) != len(ATTACK_KINDS) or not all(part.isdigit() for part in parts) or not any(int(p) for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected three whole weights known-bcrypt:known-vault:unknown such as 1:1:1, not {text!r}"
        )
    return [[kind, int(part)] for kind, part in zip(ATTACK_KINDS, parts, strict=True)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 bench/load.py",
        description="Sustained mixed load on AgentIdP's token endpoint: clean, Vault outage, attack, attack from the "
        "agents' addresses (bench/README.md).",
    )
    parser.add_argument(
        "--scenarios",
        type=scenario_list(SCENARIO_NAMES),
        default=list(SCENARIO_NAMES),
        help="comma-separated, run in this order: " + ",".join(SCENARIO_NAMES) + " (default: all)",
    )
    parser.add_argument(
        "--requests", type=positive(int), default=12000, help="requests per scenario, at least (default 12000)"
    )
    parser.add_argument("--concurrency", type=positive(int), default=100, help="concurrent connections (default 100)")
    parser.add_argument(
        "--agents", type=positive(int), default=1000, help="legitimate clients, each its own address (default 1000)"
    )
    parser.add_argument("--vault-share", type=share, default=0.5, help="share of agents on Vault (default 0.5)")
    parser.add_argument(
        "--credentials",
        type=positive(int),
        default=10,
        help="warm credentials per store, shared by agents (default 10)",
    )
    parser.add_argument(
        "--vault-cold-share",
        type=share,
        default=0.05,
        help="share of a Vault agent's requests with a never-used credential (default 0.05)",
    )
    parser.add_argument(
        "--bcrypt-cold-share",
        type=share,
        default=0.001,
        help="share of a bcrypt agent's requests with a never-used credential (default 0.001)",
    )
    add_bcrypt_rounds(parser)
    parser.add_argument("--workers", type=positive(int), default=4, help="gunicorn workers (default 4)")
    parser.add_argument(
        "--worker-class", choices=("sync", "gthread"), default="sync", help="gunicorn worker class (default sync)"
    )
    parser.add_argument("--threads", type=positive(int), default=4, help="threads per gthread worker (default 4)")
    parser.add_argument(
        "--outage-seconds", type=positive(float), default=20.0, help="how long Vault is down (default 20)"
    )
    parser.add_argument(
        "--attack-ratio", type=positive(int), default=10, help="attackers' requests per legitimate one (default 10)"
    )
    parser.add_argument(
        "--attack-mix",
        type=attack_mix,
        default=attack_mix("1:1:1"),
        help="weights known-bcrypt:known-vault:unknown of the attackers' requests (default 1:1:1)",
    )
    parser.add_argument(
        "--attacker-addresses", type=positive(int), default=1000, help="addresses the attack comes from (default 1000)"
    )
    parser.add_argument(
        "--shared-addresses",
        type=positive(int),
        default=25,
        help="addresses the agents and the attackers share in the shared-address scenario, agent j on the "
        "(j %% N)-th (default 25)",
    )
    parser.add_argument(
        "--max-seconds",
        type=positive(float),
        default=300.0,
        help="a scenario stops after this long even if its requests were not all sent (default 300)",
    )
    add_installation_arguments(parser, database="agentidp_load", example_setting="AGENTIDP_AUTH_FAILURES_PER_CLIENT=0")
    args = parser.parse_args(argv)
    if args.agents < args.concurrency:
        parser.error("--agents must be at least --concurrency (each connection serves its own agents)")
    if args.agents > 65536 or args.attacker_addresses > 65536:
        parser.error("--agents and --attacker-addresses go up to 65536 (addresses 10.1.x.y and 10.2.x.y)")
    if args.shared_addresses > args.agents:
        parser.error("--shared-addresses must be at most --agents (each shared address has its agents)")
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    if not in_project_environment():
        enter_project_environment(__file__)  # does not return
    os.chdir(ROOT)
    from bench import load_bench, orchestrator

    return orchestrator.run(args, load_bench)


if __name__ == "__main__":
    sys.exit(main())
