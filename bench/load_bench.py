"""
The load benchmark (bench/load.py): AgentIdP's token endpoint under many clients at once,
through a Vault outage and attacks, from addresses of their own and from the agents' own.

The sequence: AgentIdP's database, environment, cache and Vault server (bench/orchestrator.py)
with each request's client address taken from X-Forwarded-For and every limit at its default;
the warm credentials and every scenario's never-used ones; AgentIdP served; then each scenario
as one window of the load generator's agent traffic (bench/traffic.py), the outage driven
from here while the window is open. bench/load_report.py groups the records and checks them.
"""

from __future__ import annotations

import math
import time
from typing import Any

import psutil

from bench import load_report
from bench.errors import BenchError
from bench.machine import bcrypt_verify_seconds, note_disturbance
from bench.options import shown, without_password
from bench.orchestrator import CONN_MAX_AGE, Orchestrator
from bench.servers import Shape

RESULTS_PREFIX = "load-"
#: The exit status when the benchmark could not run (1 is a failed check).
ERROR_STATUS = 2
TOKEN_PATH = "/api/v1/token"
#: Scenarios with attackers among the agents' requests (the traffic's "attack" mode).
ATTACK_SCENARIOS = load_report.ATTACK_SCENARIOS
#: Rates no 2-core run reaches, per core: the cold pools are sized from it, so that they do not run out.
RATE_BOUND_PER_CORE = 1000
#: A cold pool holds this much more than the expected need, and this many credentials more on top.
COLD_POOL_MARGIN = 1.5
COLD_POOL_EXTRA = 5
#: With each worker's own cache, the warm-up presents each warm credential this many times per worker.
WARMUP_PASSES_PER_WORKER = 10
#: Warn when the load generator kept this share of one core busy: being one Python process, it has about one.
LOADGEN_CORE_WARNING = 0.6


def measure(orc: Orchestrator) -> dict[str, Any]:
    """Run the load scenarios; return the results document."""
    args = orc.args
    names = args.scenarios
    if "vault-outage" in names and args.max_seconds < sum(outage_timeline(args)):
        raise BenchError(f"--max-seconds must leave room for the outage scenario's {sum(outage_timeline(args)):g} s.")
    if "vault-outage" in names and args.vault != "test":
        raise BenchError(
            "The vault-outage scenario takes the Vault server down and up again with its secrets, which only the "
            "in-process test server can do: use --vault test, or leave vault-outage out of --scenarios."
        )
    # The limits count with their defaults; each request's client address is its X-Forwarded-For.
    orc.prepare_agentidp({"AGENTIDP_TRUSTED_PROXIES": "1"})
    orc.log(
        f"Seeding {args.credentials} bcrypt and {args.credentials} Vault credentials shared by {args.agents} agents "
        f"(bcrypt cost {args.bcrypt_rounds})"
    )
    credentials = seed(orc, names)
    shape = Shape(args.workers, args.worker_class, args.threads if args.worker_class == "gthread" else 1)
    orc.log(f"Serving AgentIdP under gunicorn ({shape.describe()}, cache {orc.cache}, AGENTIDP_TRUSTED_PROXIES=1)")
    orc.serve_agentidp(shape)
    passes = 1 if orc.cache == "redis" else WARMUP_PASSES_PER_WORKER * args.workers

    verify_s = bcrypt_verify_seconds(args.bcrypt_rounds)
    reports: dict[str, dict] = {}
    for name in names:
        orc.log(f"Scenario {name}: {describe(args, name)}")
        report = measure_scenario(orc, name, credentials[name], passes)
        reports[name] = report
        print(
            f"    {report['requests']} requests in {report['elapsed_s']:.1f} s ({report['rps']:.0f} rps), "
            f"statuses {report['all']['statuses']}",
            flush=True,
        )
        if report["loadgen_core_share"] and report["loadgen_core_share"] > LOADGEN_CORE_WARNING:
            print(f"    note: the load generator used {report['loadgen_core_share']:.0%} of a core", flush=True)
        note_disturbance(report["cpu_s"], report["elapsed_s"])
        if report["stopped_by_time_limit"]:
            print(f"    stopped by --max-seconds {args.max_seconds:g}", flush=True)

    pre, outage, post = outage_timeline(args)
    return {
        **orc.results_header(),
        "settings": {
            "scenarios": names,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "agents": args.agents,
            "vault_share": args.vault_share,
            "credentials_per_store": args.credentials,
            "vault_cold_share": args.vault_cold_share,
            "bcrypt_cold_share": args.bcrypt_cold_share,
            "bcrypt_rounds": args.bcrypt_rounds,
            "bcrypt_verify_ms": round(verify_s * 1000, 3),
            "gunicorn": shape.as_json(),
            "cache": orc.cache,
            "warmup_passes": passes,
            "trusted_proxies": 1,
            "outage": {"seconds": outage, "load_before_s": pre, "load_after_s": post},
            "attack": {
                "ratio": args.attack_ratio,
                "mix": dict(args.attack_mix),
                "addresses": args.attacker_addresses,
            },
            "shared_address": {"addresses": args.shared_addresses},
            "max_seconds": args.max_seconds,
            "conn_max_age": CONN_MAX_AGE,
            "debug": False,
            "log_level": "INFO (AgentIdP's default: LOG_LEVEL is not set)",
            "vault_server": args.vault,
            "vault": orc.vault.describe(),
            "vault_default_store": True,
            "upgrade_on_use": False,
            "agentidp_environment": orc.agentidp_settings(),
            "extra_environment": {name: shown(name, value) for name, value in args.settings},
            "database": args.database,
            "postgres": without_password(args.postgres),
            "client_auth": "client_secret_basic, grant_type=client_credentials form body, X-Forwarded-For per client",
        },
        "scenarios": reports,
        "checks": load_report.evaluate_checks(reports),
        "run_seconds": None,
    }


def expected_requests(args, scenario: str) -> int:
    """The most requests a scenario can plausibly make, to size its pools of never-used credentials."""
    if scenario == "vault-outage":
        bound = RATE_BOUND_PER_CORE * (psutil.cpu_count() or 1) * sum(outage_timeline(args))
        return max(args.requests, int(bound))
    return args.requests


def outage_timeline(args) -> tuple[float, float, float]:
    """Seconds of load before Vault goes down, down, and after it is back."""
    outage = args.outage_seconds
    return max(5.0, outage / 2), outage, max(10.0, outage / 2)


def cold_every(share: float) -> int:
    return round(1 / share) if share > 0 else 0


def cold_need(args, scenario: str, store: str) -> int:
    every = cold_every(args.vault_cold_share if store == "vault" else args.bcrypt_cold_share)
    if not every:
        return 0
    legit = expected_requests(args, scenario)
    if scenario in ATTACK_SCENARIOS:
        legit = math.ceil(legit / (args.attack_ratio + 1))
    share = args.vault_share if store == "vault" else 1 - args.vault_share
    return math.ceil(legit * share / every * COLD_POOL_MARGIN) + COLD_POOL_EXTRA


def seed(orc: Orchestrator, names: list[str]) -> dict[str, dict[str, list]]:
    """Seed the warm credentials and every scenario's never-used ones; return each scenario's credentials."""
    args = orc.args
    warm = {
        store: orc.seed_warm(store, name=f"load-{store}-warm", count=args.credentials) for store in ("bcrypt", "vault")
    }
    needs = {store: [cold_need(args, name, store) for name in names] for store in ("bcrypt", "vault")}
    cold: dict[str, list] = {}
    for store in ("bcrypt", "vault"):
        count = sum(needs[store])
        cold[store] = []
        if count:
            orc.log(f"Seeding {count} never-used {store} credentials")
            cold[store] = orc.seed_cold(store, name=f"load-{store}-cold", count=count)
    per_scenario = {}
    offsets = {"bcrypt": 0, "vault": 0}
    for position, name in enumerate(names):
        credentials = {"bcrypt-warm": warm["bcrypt"], "vault-warm": warm["vault"]}
        for store in ("bcrypt", "vault"):
            need = needs[store][position]
            credentials[f"{store}-cold"] = cold[store][offsets[store] : offsets[store] + need]
            offsets[store] += need
        per_scenario[name] = credentials
    return per_scenario


def measure_scenario(orc: Orchestrator, name: str, credentials: dict[str, list], passes: int) -> dict[str, Any]:
    """Run one scenario's window; return its report."""
    args = orc.args
    pre, outage, post = outage_timeline(args)
    shared = args.shared_addresses if name == "shared-address" else 0
    job = {
        "path": TOKEN_PATH,
        "concurrency": args.concurrency,
        "traffic": {
            "kind": "agents",
            "mode": "attack" if name in ATTACK_SCENARIOS else "legit",
            "agents": args.agents,
            "vault_share": args.vault_share,
            "cold_every": {"bcrypt": cold_every(args.bcrypt_cold_share), "vault": cold_every(args.vault_cold_share)},
            "attack_ratio": args.attack_ratio,
            "attack_mix": args.attack_mix,
            "attacker_addresses": args.attacker_addresses,
            "shared_addresses": shared,
        },
        "min_requests": args.requests,
        "min_seconds": pre + outage + post if name == "vault-outage" else 0.0,
        "max_seconds": args.max_seconds,
        "warmup_passes": passes,
    }

    def outage_during(orc: Orchestrator) -> dict[str, float]:
        go = time.monotonic()
        time.sleep(max(0.0, go + pre - time.monotonic()))
        orc.vault.command({"op": "down"})
        down = time.monotonic()
        orc.log(f"  Vault down (for {outage:g} s)")
        time.sleep(max(0.0, down + outage - time.monotonic()))
        orc.vault.command({"op": "up"})
        orc.log("  Vault up again")
        return {"down": down, "up": time.monotonic()}

    window = orc.window(job, credentials, during=outage_during if name == "vault-outage" else None)
    return load_report.scenario_report(name, window, shared_addresses=shared)


def describe(args, name: str) -> str:
    if name == "clean":
        return f"{args.requests} legitimate requests, {args.concurrency} connections"
    if name == "vault-outage":
        pre, outage, post = outage_timeline(args)
        return (
            f"at least {args.requests} legitimate requests and {pre + outage + post:g} s; "
            f"Vault down from +{pre:g} s for {outage:g} s"
        )
    if name == "shared-address":
        return (
            f"{args.requests} requests, {args.attack_ratio} attackers' to one legitimate, "
            f"agents and attackers sharing {args.shared_addresses} addresses"
        )
    return (
        f"{args.requests} requests, {args.attack_ratio} attackers' to one legitimate, "
        f"from {args.attacker_addresses} attacker addresses"
    )


render = load_report.render
exit_status = load_report.exit_status
