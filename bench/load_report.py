"""
The load benchmark's report: each scenario's records grouped (legitimate agents by store,
attackers by kind, the outage's phases), the outage's recovery, the checks (bench/README.md),
and the printed table.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import Counter
from typing import Any

from bench.stats import number, percentile, stats, table

#: Scenarios with attackers among the agents' requests.
ATTACK_SCENARIOS = ("attack", "shared-address")
#: The server's failure limits in the load runs (AgentIdP's defaults), per window of this many seconds:
#: what the shared-address scenario checks the attackers' verifications against.
LIMIT_WINDOW_SECONDS = 60
AUTH_FAILURES_PER_ADDRESS = 30
AUTH_FAILURES_PER_KNOWN_PAIR = 3
KIND_NAMES = {
    "bw": "bcrypt agents, warm credential",
    "bc": "bcrypt agents, never-used credential",
    "vw": "Vault agents, warm credential",
    "vc": "Vault agents, never-used credential",
    "xb": "attackers, known bcrypt clientId",
    "xv": "attackers, known Vault clientId",
    "xu": "attackers, unknown clientId",
    "yb": "attackers, a neighbour's bcrypt clientId",
    "yv": "attackers, a neighbour's Vault clientId",
}
LEGIT_KINDS = ("bw", "bc", "vw", "vc")
ESTABLISHED_KINDS = ("bw", "vw")
ATTACK_KINDS = ("xb", "xv", "xu", "yb", "yv")


def of_kinds(rows: list[list], kinds) -> list[list]:
    return [row for row in rows if row[4] in kinds]


def by_kind(rows: list[list], seconds: float) -> dict[str, dict]:
    return {KIND_NAMES[kind]: stats(of_kinds(rows, (kind,)), seconds) for kind in KIND_NAMES if of_kinds(rows, (kind,))}


def legit_groups(rows: list[list], seconds: float) -> dict[str, dict]:
    return {
        "legitimate, all": stats(of_kinds(rows, LEGIT_KINDS), seconds),
        "bcrypt agents": stats(of_kinds(rows, ("bw", "bc")), seconds),
        "Vault agents": stats(of_kinds(rows, ("vw", "vc")), seconds),
    }


def scenario_report(name: str, window: dict[str, Any], *, shared_addresses: int) -> dict[str, Any]:
    """One scenario's report from its window (bench/orchestrator.py's Orchestrator.window)."""
    result, rows, cpu = window["result"], window["records"], window["cpu_s"]
    elapsed = result["elapsed_s"]
    report: dict[str, Any] = {
        "scenario": name,
        "requests": result["requests"],
        "elapsed_s": elapsed,
        "rps": round(result["requests"] / elapsed, 1) if elapsed else None,
        "stopped_by_time_limit": result["stopped_by_time_limit"],
        "all": stats(rows, elapsed),
        "groups": {},
        "kinds": by_kind(rows, elapsed),
        "never_used_credentials": {"used": result["cold_used"], "pool_ran_out": result["cold_short"]},
        "vault_calls": window["vault_calls"],
        "redis_calls": window["redis_calls"],
        "cpu_s": cpu,
        "loadgen_core_share": round(cpu["loadgen"] / elapsed, 3) if elapsed else None,
        "worker_rss_mb": window["worker_rss_mb"],
        "warmup": window["warmup"],
    }
    if name == "clean":
        report["groups"] = legit_groups(rows, elapsed)
    elif name in ATTACK_SCENARIOS:
        groups = report["groups"] = {"legitimate, all": stats(of_kinds(rows, LEGIT_KINDS), elapsed)}
        if name == "shared-address":
            groups["established agents (warm credential)"] = stats(of_kinds(rows, ESTABLISHED_KINDS), elapsed)
            groups["new agents (never-used credential)"] = stats(of_kinds(rows, ("bc", "vc")), elapsed)
        groups["attackers, all"] = stats(of_kinds(rows, ATTACK_KINDS), elapsed)
        if name == "shared-address":
            # Fixed windows: a run of this length touches at most this many of them.
            windows = math.floor(elapsed / LIMIT_WINDOW_SECONDS) + 2
            pairs = result["known_pairs"]
            report["attackers_verified_bound"] = {
                "windows": windows,
                "known_pairs": pairs,
                "neighbours": windows * pairs * AUTH_FAILURES_PER_KNOWN_PAIR,
                "all": windows * (shared_addresses * AUTH_FAILURES_PER_ADDRESS + pairs * AUTH_FAILURES_PER_KNOWN_PAIR),
            }
        legit = groups["legitimate, all"]["requests"]
        report["attack_ratio_measured"] = round(groups["attackers, all"]["requests"] / legit, 2) if legit else None
    else:
        report.update(outage_report(rows, began=result["began"], ended=result["ended"], **window["marks"]))
    return report


def outage_report(rows: list[list], *, began: float, ended: float, down: float, up: float) -> dict[str, Any]:
    """
    Split the outage scenario into before / during / after, and measure how Vault agents recovered.

    A request belongs to the phase in which it was answered: it waits in gunicorn's queue
    for most of its latency, and meets Vault (or the breaker) just before its answer.
    """
    phases = {"before": (began, down), "during": (down, up), "after": (up, math.inf)}
    groups = {}
    for phase, (start, end) in phases.items():
        inside = [row for row in rows if start <= row[1] < end]
        for label, group in legit_groups(inside, min(end, ended) - start).items():
            groups[f"{label}, {phase} the outage"] = group
    vault_rows = of_kinds(rows, ("vw", "vc"))
    failed = [row for row in vault_rows if row[2] == 503]
    failed_agents = {row[3] for row in failed}
    recovered: dict[int, float] = {}
    for row in sorted(vault_rows, key=lambda row: row[1]):
        if row[3] in failed_agents and row[2] == 200 and row[1] >= up and row[3] not in recovered:
            recovered[row[3]] = row[1] - up
    last_503 = max((row[1] for row in failed), default=None)
    starts: dict[int, list[float]] = {}
    for row in vault_rows:
        starts.setdefault(row[3], []).append(row[0])
    intervals = sorted(b - a for times in starts.values() for a, b in itertools.pairwise(sorted(times)))
    return {
        "groups": groups,
        "timeline_s": {
            "vault_down_at": round(down - began, 3),
            "vault_up_at": round(up - began, 3),
            "outage": round(up - down, 3),
            "end": round(ended - began, 3),
        },
        "vault_agents": {
            "status_503": len(failed),
            "status_503_during_outage": sum(1 for row in failed if down <= row[1] < up),
            "status_503_before_outage": sum(1 for row in failed if row[1] < down),
            "status_503_after_vault_was_back": sum(1 for row in failed if row[1] >= up),
            "status_503_by_kind": {
                KIND_NAMES[kind]: sum(1 for row in failed if row[4] == kind) for kind in ("vw", "vc")
            },
            "agents_with_503": len(failed_agents),
            "agents_recovered": len(recovered),
            "recovery_first_s": round(min(recovered.values()), 3) if recovered else None,
            "recovery_all_s": (
                round(max(recovered.values()), 3) if recovered and len(recovered) == len(failed_agents) else None
            ),
            "last_503_after_vault_was_back_s": (
                round(last_503 - up, 3) if last_503 is not None and last_503 >= up else None
            ),
            "request_interval_median_s": round(percentile(intervals, 0.5), 3) if intervals else None,
        },
    }


# --- checks and the printed report ------------------------------------------------------------


def evaluate_checks(reports: dict[str, dict]) -> list[dict]:
    checks = []

    def add(scenario: str, name: str, passed: bool, detail: str) -> None:
        checks.append({"scenario": scenario, "check": name, "result": "PASS" if passed else "FAIL", "detail": detail})

    for name, report in reports.items():
        everything = report["all"]
        other = everything["status_5xx_other_than_503"] - everything["status_500"]
        add(
            name,
            "no 500, no 5xx other than 503, no failed connection",
            everything["status_5xx_other_than_503"] == 0 and everything["failed_connections"] == 0,
            f"500: {everything['status_500']}, other 5xx: {other}, "
            f"failed connections: {everything['failed_connections']}",
        )
        short = report["never_used_credentials"]["pool_ran_out"]
        if any(short.values()):
            add(name, "the pools of never-used credentials lasted", False, f"cold turns without one: {short}")
        if report["stopped_by_time_limit"]:
            add(name, "every request sent within --max-seconds", False, f"stopped after {report['requests']} requests")
    if "clean" in reports:
        legit = reports["clean"]["groups"]["legitimate, all"]
        add("clean", "every legitimate request answered 200", legit["status_200"] == legit["requests"], statuses(legit))
    if "vault-outage" in reports:
        report = reports["vault-outage"]
        bcrypt = stats_sum(report, "bcrypt agents")
        add(
            "vault-outage",
            "bcrypt agents: every request answered 200, before, during and after the outage",
            bcrypt["status_200"] == bcrypt["requests"],
            statuses(bcrypt),
        )
        vault = stats_sum(report, "Vault agents")
        add(
            "vault-outage",
            "Vault agents: only 200 or 503",
            vault["status_200"] + vault["status_503"] == vault["requests"],
            statuses(vault),
        )
        agents = report["vault_agents"]
        add(
            "vault-outage",
            "every Vault agent that got a 503 got a 200 once Vault was back",
            agents["agents_recovered"] == agents["agents_with_503"],
            f"{agents['agents_recovered']} of {agents['agents_with_503']}",
        )
    for name, label, what in (
        ("attack", "legitimate, all", "every legitimate request answered 200 (no lockout)"),
        (
            "shared-address",
            "established agents (warm credential)",
            "established agents: every request answered 200 (no lockout by their address's attackers)",
        ),
    ):
        if name not in reports:
            continue
        groups = reports[name]["groups"]
        legit, attackers = groups[label], groups["attackers, all"]
        add(name, what, legit["status_200"] == legit["requests"], statuses(legit))
        add(
            name,
            "attackers answered only 401 or 429",
            attackers["status_401"] + attackers["status_429"] == attackers["requests"],
            statuses(attackers),
        )
    if "shared-address" in reports:
        report = reports["shared-address"]
        attackers = report["groups"]["attackers, all"]
        bound = report["attackers_verified_bound"]
        verified = ", ".join(
            f"{label.removeprefix('attackers, ')}: {group['status_401']} of {group['requests']}"
            for label, group in report["kinds"].items()
            if label.startswith("attackers")
        )
        add(
            "shared-address",
            "attackers verified (401) no more often than the limits allow: per window, "
            f"{AUTH_FAILURES_PER_ADDRESS} per address and {AUTH_FAILURES_PER_KNOWN_PAIR} per known pair",
            attackers["status_401"] <= bound["all"],
            f"{attackers['status_401']} verified, at most {bound['all']}; 429: {attackers['status_429']}; "
            f"by kind: {verified}",
        )
        neighbours = sum(group["status_401"] for label, group in report["kinds"].items() if "neighbour" in label)
        add(
            "shared-address",
            f"wrong secrets for a neighbour's clientId verified at most {AUTH_FAILURES_PER_KNOWN_PAIR} times "
            "per known pair and window",
            neighbours <= bound["neighbours"],
            f"{neighbours} verified, at most {bound['neighbours']}",
        )
    return checks


def stats_sum(report: dict, label: str) -> dict:
    """Counts of one group of the outage scenario over its three phases."""
    total = {"requests": 0, "status_200": 0, "status_503": 0, "statuses": Counter()}
    for phase in ("before the outage", "during the outage", "after the outage"):
        group = report["groups"][f"{label}, {phase}"]
        for key in ("requests", "status_200", "status_503"):
            total[key] += group[key]
        total["statuses"].update(group["statuses"])
    total["statuses"] = dict(sorted(total["statuses"].items()))
    return total


def statuses(group: dict) -> str:
    return ", ".join(f"{status}: {count}" for status, count in group["statuses"].items()) or "no requests"


COLUMNS = [
    ("scenario / group", 52, "<"), ("requests", 8, ">"), ("rps", 7, ">"), ("p50 ms", 8, ">"), ("p95 ms", 8, ">"),
    ("p99 ms", 8, ">"), ("max ms", 8, ">"), ("200", 6, ">"), ("401", 6, ">"), ("429", 6, ">"), ("503", 6, ">"),
    ("500", 4, ">"), ("oth", 4, ">"),
]  # fmt: skip


def cells(label: str, group: dict) -> list[str]:
    latency = group["latency_ms"]
    other = group["requests"] - sum(group[f"status_{s}"] for s in (200, 401, 429, 503, 500))
    return [
        label, str(group["requests"]), number(group["rps"]), number(latency["p50"]), number(latency["p95"]),
        number(latency["p99"]), number(latency["max"]), str(group["status_200"]), str(group["status_401"]),
        str(group["status_429"]), str(group["status_503"]), str(group["status_500"]), str(other),
    ]  # fmt: skip


def render(results: dict) -> str:
    settings = results["settings"]
    gunicorn = settings["gunicorn"]
    lines = [
        f"AgentIdP POST /api/v1/token under load: {settings['concurrency']} connections, {settings['agents']} "
        f"agents ({settings['vault_share']:.0%} Vault), bcrypt cost {settings['bcrypt_rounds']} "
        f"({settings['bcrypt_verify_ms']:.1f} ms/verify), gunicorn {gunicorn['workers']} {gunicorn['worker_class']} "
        f"workers, cache {settings['cache']}, log level INFO, PostgreSQL",
    ]
    for name, report in results["scenarios"].items():
        rows = [cells(f"{name}: every request", report["all"])]
        rows += [cells(f"  {label}", group) for label, group in report["groups"].items()]
        if name in ATTACK_SCENARIOS:
            kinds = report["kinds"].items()
            rows += [cells(f"  {label}", group) for label, group in kinds if label.startswith("attackers")]
        lines += table(COLUMNS, rows)[0 if name == next(iter(results["scenarios"])) else 2 :]
        extra = [
            f"{report['elapsed_s']:.1f} s",
            f"loadgen {report['loadgen_core_share']:.0%} of a core",
            f"other processes {report['cpu_s']['other']:.1f} CPU s",
            f"steal {report['cpu_s']['steal']:.1f} s",
            f"Vault calls {report['vault_calls']}",
        ]
        if name in ATTACK_SCENARIOS and report.get("attack_ratio_measured") is not None:
            extra.append(f"attack:legitimate {report['attack_ratio_measured']}:1")
        lines.append(f"  ({', '.join(extra)})")
        if name == "vault-outage":
            lines.append(render_outage(report))
    lines.append(
        "rps: requests of the group per second of its scenario (of its phase, for the outage). oth: any other status "
        "(0 = failed connection). Latency from before the connect to the last byte."
    )
    lines += ["", "Checks:"]
    lines += [f"  {c['result']:<5} {c['scenario']}: {c['check']}: {c['detail']}" for c in results["checks"]]
    return "\n".join(lines)


def render_outage(report: dict) -> str:
    timeline, agents = report["timeline_s"], report["vault_agents"]
    return (
        f"  Vault down at +{timeline['vault_down_at']:.1f} s for {timeline['outage']:.1f} s. Vault agents: "
        f"{agents['status_503']} × 503 ({agents['status_503_before_outage']} before, "
        f"{agents['status_503_during_outage']} during, {agents['status_503_after_vault_was_back']} after the "
        f"outage; {agents['status_503_by_kind'][KIND_NAMES['vc']]} on never-used credentials), "
        f"{agents['agents_with_503']} agents affected; "
        f"recovery after Vault was back: first {number(agents['recovery_first_s'], 2)} s, "
        f"all {number(agents['recovery_all_s'], 2)} s ({agents['agents_recovered']} of {agents['agents_with_503']}; "
        f"an agent asks every {number(agents['request_interval_median_s'], 2)} s, median); "
        f"last 503 at +{number(agents['last_503_after_vault_was_back_s'], 2)} s"
    )


def exit_status(results: dict) -> int:
    failed = [check for check in results["checks"] if check["result"] != "PASS"]
    if failed:
        print(f"{len(failed)} check(s) failed.", file=sys.stderr)
        return 1
    return 0
