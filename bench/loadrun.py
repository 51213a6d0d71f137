"""
Load under faults and abuse: AgentIdP under gunicorn on PostgreSQL, many clients at once,
through a Vault outage and an attack. bench/load.py parses the options and calls `run`.

It reuses bench/harness.py's machinery (fresh database, Vault test server process, seeding,
gunicorn, CPU accounting, clean shutdown) and drives bench/loadmix.py, a load generator
whose requests carry each simulated client's address in X-Forwarded-For. Everything
started here is stopped in `LoadBench.close`, on success, on an error, on Ctrl-C and on
SIGTERM; the optional Redis server too.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench import harness
from bench.harness import PYTHON, ROOT, BenchError, receive, send, shown, without_password

SCENARIO_NAMES = ("clean", "vault-outage", "attack", "shared-address")
#: Scenarios with attackers among the agents' requests (the load generator's "attack" mode).
ATTACK_SCENARIOS = ("attack", "shared-address")
#: The server's failure limits in the load runs (AgentIdP's defaults), per window of this many seconds:
#: what the shared-address scenario checks the attackers' verifications against.
LIMIT_WINDOW_SECONDS = 60
AUTH_FAILURES_PER_ADDRESS = 30
AUTH_FAILURES_PER_KNOWN_PAIR = 3
#: Rates no 2-core run reaches, per core: the cold pools are sized from it, so that they do not run out.
RATE_BOUND_PER_CORE = 1000
#: A cold pool holds this much more than the expected need, and this many credentials more on top.
COLD_POOL_MARGIN = 1.5
COLD_POOL_EXTRA = 5
#: Warn when the load generator kept this share of one core busy: being one Python process, it has about one.
LOADGEN_CORE_WARNING = 0.6
#: Warn when other processes kept this share of one core busy during a window.
OTHER_CPU_WARNING = 0.15
REDIS_STARTUP_TIMEOUT = 10
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


class LoadBench(harness.Bench):
    """harness.Bench plus an optional private Redis server for the shared cache."""

    #: The limits on, with their defaults, each request's client address taken from X-Forwarded-For.
    extra_environment = {"AGENTIDP_TRUSTED_PROXIES": "1"}

    def __init__(self, args) -> None:
        super().__init__(args)
        self.redis: subprocess.Popen | None = None

    def start_redis(self) -> str:
        """Start a private, memory-only Redis on a free port; return its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("--cache redis needs redis-server on PATH (or use --cache locmem).")
        port = harness.free_port()
        with open(self.tmp / "redis.log", "wb") as output:
            self.redis = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.tmp), "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
                cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + REDIS_STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.redis.poll() is not None:
                raise BenchError(f"redis-server exited (code {self.redis.returncode}).")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.1)
        raise BenchError(f"redis-server did not answer within {REDIS_STARTUP_TIMEOUT} s.")

    def cpu_snapshot(self) -> harness.CpuSnapshot:
        snapshot = super().cpu_snapshot()
        snapshot.groups["redis"] = {}
        if self.redis is not None:
            with contextlib.suppress(psutil.Error):
                snapshot.groups["redis"][self.redis.pid] = harness.cpu_seconds(psutil.Process(self.redis.pid))
        return snapshot

    def close(self) -> None:
        super().close()
        if self.redis is not None:
            harness.stop_process(self.redis, signal.SIGTERM, 5)


# --- statistics ------------------------------------------------------------------------------------


def percentile(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    rank = max(1, math.ceil(len(ordered) * share))
    return ordered[rank - 1]


def stats(rows: list[list], seconds: float | None) -> dict[str, Any]:
    """Count, rate, statuses and latency of some requests (rows: start, end, status, agent, kind)."""
    latencies = sorted(row[1] - row[0] for row in rows)
    statuses = Counter(row[2] for row in rows)
    ms = lambda value: None if value is None else round(value * 1000, 2)  # noqa: E731
    return {
        "requests": len(rows),
        "rps": round(len(rows) / seconds, 1) if seconds else None,
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "status_200": statuses.get(200, 0),
        "status_401": statuses.get(401, 0),
        "status_429": statuses.get(429, 0),
        "status_503": statuses.get(503, 0),
        "status_500": statuses.get(500, 0),
        "status_5xx_other_than_503": sum(n for status, n in statuses.items() if status >= 500 and status != 503),
        "failed_connections": statuses.get(0, 0),
        "latency_ms": {
            "p50": ms(percentile(latencies, 0.50)),
            "p95": ms(percentile(latencies, 0.95)),
            "p99": ms(percentile(latencies, 0.99)),
            "max": ms(latencies[-1] if latencies else None),
            "mean": ms(sum(latencies) / len(latencies) if latencies else None),
        },
    }


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


# --- scenarios -------------------------------------------------------------------------------------


def expected_requests(args, scenario: str) -> int:
    """The most requests a scenario can plausibly make, to size its pools of never-used credentials."""
    if scenario == "vault-outage":
        pre, outage, post = outage_timeline(args)
        bound = RATE_BOUND_PER_CORE * (psutil.cpu_count() or 1) * (pre + outage + post)
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


def write_private(path: Path, data: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def seed(bench: LoadBench, names: list[str]) -> dict[str, dict[str, list]]:
    """Seed the warm credentials and every scenario's never-used ones; return each scenario's credentials."""
    args = bench.args
    warm = {}
    for store in ("bcrypt", "vault"):
        out = bench.tmp / f"{store}-warm.json"
        arguments = ["warm", "--name", f"load-{store}-warm", "--count", str(args.credentials), "--out", str(out)]
        warm[store] = bench.seed(*arguments, vault=store == "vault")["credentials"]
    needs = {store: [cold_need(args, name, store) for name in names] for store in ("bcrypt", "vault")}
    cold = {}
    for store in ("bcrypt", "vault"):
        count = sum(needs[store])
        cold[store] = []
        if not count:
            continue
        bench.log(f"Seeding {count} never-used {store} credentials")
        out = bench.tmp / f"{store}-cold.json"
        arguments = ["cold", "--storage", store, "--name", f"load-{store}-cold"]
        arguments += ["--count", str(count), "--out", str(out)]
        if store == "vault":
            entries = bench.tmp / "vault-cold-entries.json"
            cold[store] = bench.seed(*arguments, "--vault-out", str(entries), vault=True)["credentials"]
            bench.vault_command({"op": "load", "file": str(entries)})
            entries.unlink()
        else:
            cold[store] = bench.seed(*arguments, vault=False)["credentials"]
        out.unlink()
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


def measure(bench: LoadBench, name: str, credentials: dict[str, list]) -> dict[str, Any]:
    """Run one scenario through a fresh load-generator process; return its results."""
    args = bench.args
    credentials_file = bench.tmp / f"{name}-credentials.json"
    records_file = bench.tmp / f"{name}-records.json"
    write_private(credentials_file, credentials)
    pre, outage, post = outage_timeline(args)
    job = {
        "host": "127.0.0.1",
        "port": bench.port,
        "path": harness.TOKEN_PATH,
        "concurrency": args.concurrency,
        "mode": "attack" if name in ATTACK_SCENARIOS else "legit",
        "min_requests": args.requests,
        "min_seconds": pre + outage + post if name == "vault-outage" else 0.0,
        "max_seconds": args.max_seconds,
        "agents": args.agents,
        "vault_share": args.vault_share,
        "cold_every": {
            "bcrypt": cold_every(args.bcrypt_cold_share),
            "vault": cold_every(args.vault_cold_share),
        },
        "credentials_file": str(credentials_file),
        "records_file": str(records_file),
        "attack_ratio": args.attack_ratio,
        "attack_mix": args.attack_mix,
        "attacker_addresses": args.attacker_addresses,
        "shared_addresses": args.shared_addresses if name == "shared-address" else 0,
        "warmup_workers": args.workers,
    }
    ready = bench.start_loadgen([PYTHON, "-m", "bench.loadmix"], job)
    before = bench.cpu_snapshot()
    send(bench.loadgen.stdin, "go")
    marks: dict[str, float] = {}
    if name == "vault-outage":
        go = time.monotonic()
        time.sleep(max(0.0, go + pre - time.monotonic()))
        bench.vault_command({"op": "down"})
        marks["down"] = time.monotonic()
        bench.log(f"  Vault down (for {outage:g} s)")
        time.sleep(max(0.0, marks["down"] + outage - time.monotonic()))
        bench.vault_command({"op": "up"})
        marks["up"] = time.monotonic()
        bench.log("  Vault up again")
    receive(bench.loadgen.stdout, "done")
    after = bench.cpu_snapshot()
    vault_calls = bench.vault_command({"op": "count"})["count"]
    rss = bench.worker_rss_mb()
    result = receive(bench.loadgen.stdout, "result")
    bench.loadgen.wait(timeout=60)
    bench.loadgen = None
    rows = json.loads(records_file.read_text())["rows"]
    records_file.unlink()
    credentials_file.unlink()

    cpu = after.minus(before)
    cpu["loadgen"] = result["loadgen_cpu_s"]
    measured = ("gunicorn", "postgres", "vault", "redis", "loadgen")
    cpu["other"] = round(max(0.0, cpu["machine_busy"] - sum(cpu.get(group, 0.0) for group in measured)), 3)
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
        "vault_calls": vault_calls,
        "cpu_s": cpu,
        "loadgen_core_share": round(cpu["loadgen"] / elapsed, 3) if elapsed else None,
        "worker_rss_mb": rss,
        "warmup": ready.get("warmup"),
    }
    if name == "clean":
        report["groups"] = legit_groups(rows, elapsed)
    elif name in ATTACK_SCENARIOS:
        report["groups"] = {"legitimate, all": stats(of_kinds(rows, LEGIT_KINDS), elapsed)}
        if name == "shared-address":
            groups = report["groups"]
            groups["established agents (warm credential)"] = stats(of_kinds(rows, ESTABLISHED_KINDS), elapsed)
            groups["new agents (never-used credential)"] = stats(of_kinds(rows, ("bc", "vc")), elapsed)
        report["groups"]["attackers, all"] = stats(of_kinds(rows, ATTACK_KINDS), elapsed)
        if name == "shared-address":
            # Fixed windows: a run of this length touches at most this many of them.
            windows = math.floor(elapsed / LIMIT_WINDOW_SECONDS) + 2
            pairs = result["known_pairs"]
            report["attackers_verified_bound"] = {
                "windows": windows,
                "known_pairs": pairs,
                "neighbours": windows * pairs * AUTH_FAILURES_PER_KNOWN_PAIR,
                "all": windows
                * (job["shared_addresses"] * AUTH_FAILURES_PER_ADDRESS + pairs * AUTH_FAILURES_PER_KNOWN_PAIR),
            }
        legit = report["groups"]["legitimate, all"]["requests"]
        report["attack_ratio_measured"] = (
            round(report["groups"]["attackers, all"]["requests"] / legit, 2) if legit else None
        )
    else:
        report.update(outage_report(rows, began=result["began"], ended=result["ended"], **marks))
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


# --- checks and reports ----------------------------------------------------------------------------


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
            f"500: {everything['status_500']}, other 5xx: {other}, failed connections: {everything['failed_connections']}",
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
            f"{attackers['status_401']} verified, at most {bound['all']}; 429: {attackers['status_429']}; by kind: {verified}",
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


def render(results: dict) -> str:
    settings = results["settings"]
    gunicorn = settings["gunicorn"]
    lines = [
        f"AgentIdP POST {harness.TOKEN_PATH} under load: {settings['concurrency']} connections, {settings['agents']} "
        f"agents ({settings['vault_share']:.0%} Vault), bcrypt cost {settings['bcrypt_rounds']} "
        f"({settings['bcrypt_verify_ms']:.1f} ms/verify), gunicorn {gunicorn['workers']} {gunicorn['worker_class']} workers, "
        f"cache {settings['cache']}, PostgreSQL",
    ]
    columns = [
        ("scenario / group", 52, "<"), ("requests", 8, ">"), ("rps", 7, ">"), ("p50 ms", 8, ">"), ("p95 ms", 8, ">"),
        ("p99 ms", 8, ">"), ("max ms", 8, ">"), ("200", 6, ">"), ("401", 6, ">"), ("429", 6, ">"), ("503", 6, ">"),
        ("500", 4, ">"), ("oth", 4, ">"),
    ]  # fmt: skip
    header = "  ".join(f"{title:{align}{width}}" for title, width, align in columns)
    lines += [header, "-" * len(header)]

    def number(value, digits=1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def line(label: str, group: dict) -> None:
        latency = group["latency_ms"]
        other = group["requests"] - sum(group[f"status_{s}"] for s in (200, 401, 429, 503, 500))
        cells = [
            label, str(group["requests"]), number(group["rps"]), number(latency["p50"]), number(latency["p95"]),
            number(latency["p99"]), number(latency["max"]), str(group["status_200"]), str(group["status_401"]),
            str(group["status_429"]), str(group["status_503"]), str(group["status_500"]), str(other),
        ]  # fmt: skip
        lines.append(
            "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, columns, strict=True))
        )

    for name, report in results["scenarios"].items():
        line(f"{name}: every request", report["all"])
        for label, group in report["groups"].items():
            line(f"  {label}", group)
        if name in ATTACK_SCENARIOS:
            for label, group in report["kinds"].items():
                if label.startswith("attackers"):
                    line(f"  {label}", group)
        extra = [
            f"{report['elapsed_s']:.1f} s",
            f"loadgen {report['loadgen_core_share']:.0%} of a core",
            f"other processes {report['cpu_s']['other']:.1f} CPU s",
            f"Vault calls {report['vault_calls']}",
        ]
        if name in ATTACK_SCENARIOS and report.get("attack_ratio_measured") is not None:
            extra.append(f"attack:legitimate {report['attack_ratio_measured']}:1")
        lines.append(f"  ({', '.join(extra)})")
        if name == "vault-outage":
            timeline, agents = report["timeline_s"], report["vault_agents"]
            lines.append(
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
    lines.append(
        "rps: requests of the group per second of its scenario (of its phase, for the outage). oth: any other status "
        "(0 = failed connection). Latency from before the connect to the last byte."
    )
    lines += ["", "Checks:"]
    lines += [f"  {c['result']:<5} {c['scenario']}: {c['check']}: {c['detail']}" for c in results["checks"]]
    return "\n".join(lines)


def write_results(results: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"load-{stamp}.json"
    text = json.dumps(results, indent=2) + "\n"
    path.write_text(text)
    (directory / "load-latest.json").write_text(text)
    return path


# --- the run ---------------------------------------------------------------------------------------


def run(args) -> int:
    """Run the load scenarios as `args` say; return the exit status (1 if a check failed)."""
    bench = LoadBench(args)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:
        return _run(bench, started)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping.", file=sys.stderr)
        return 130
    finally:
        bench.close()
        signal.signal(signal.SIGTERM, previous)


def _run(bench: LoadBench, started: float) -> int:
    args = bench.args
    names = args.scenarios
    cache = args.cache
    if cache == "auto":
        cache = "redis" if shutil.which("redis-server") else "locmem"
    if "vault-outage" in names and args.max_seconds < sum(outage_timeline(args)):
        raise BenchError(f"--max-seconds must leave room for the outage scenario's {sum(outage_timeline(args)):g} s.")
    if "vault-outage" in names and bench.vault_kind != "test":
        raise BenchError(
            "The vault-outage scenario takes the Vault server down and up again with its secrets, which only the "
            "in-process test server can do: use --vault test, or leave vault-outage out of --scenarios."
        )
    bench.log(f"PostgreSQL: fresh database {args.database}")
    pg_version = bench.create_database()
    env = bench.base_environment()
    if cache == "redis":
        bench.log("Starting a private Redis for the shared cache")
        env["CACHE_URL"] = bench.start_redis()
        env.update(args.settings)  # --set still wins
    bench.env = env
    bench.log("Making a signing key and migrating the database")
    bench.manage("create_signing_key", env=bench.env)
    bench.manage("migrate", "--noinput", "--verbosity", "0", env=bench.env)
    bench.log(f"Starting the {bench.vault_name()}")
    bench.start_vault()
    bench.log(
        f"Seeding {args.credentials} bcrypt and {args.credentials} Vault credentials shared by {args.agents} agents "
        f"(bcrypt cost {args.bcrypt_rounds})"
    )
    credentials = seed(bench, names)
    shape = f"{args.workers} {args.worker_class} workers" + (
        f" × {args.threads} threads" if args.worker_class == "gthread" else ""
    )
    bench.log(f"Starting AgentIdP under gunicorn ({shape}, cache {cache}, AGENTIDP_TRUSTED_PROXIES=1)")
    bench.start_gunicorn(workers=args.workers, worker_class=args.worker_class, threads=args.threads)

    verify_s = harness.bcrypt_verify_seconds(args.bcrypt_rounds)
    reports: dict[str, dict] = {}
    for name in names:
        bench.log(f"Scenario {name}: {describe(args, name)}")
        report = measure(bench, name, credentials[name])
        reports[name] = report
        print(
            f"    {report['requests']} requests in {report['elapsed_s']:.1f} s ({report['rps']:.0f} rps), "
            f"statuses {report['all']['statuses']}",
            flush=True,
        )
        if report["loadgen_core_share"] and report["loadgen_core_share"] > LOADGEN_CORE_WARNING:
            print(f"    note: the load generator used {report['loadgen_core_share']:.0%} of a core", flush=True)
        if report["cpu_s"]["other"] > OTHER_CPU_WARNING * report["elapsed_s"]:
            print(f"    note: other processes used {report['cpu_s']['other']:.1f} CPU s meanwhile", flush=True)
        if report["stopped_by_time_limit"]:
            print(f"    stopped by --max-seconds {args.max_seconds:g}", flush=True)

    pre, outage, post = outage_timeline(args)
    results = {
        "generated_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": harness.machine_info(pg_version),
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
            "gunicorn": {
                "workers": args.workers,
                "worker_class": args.worker_class,
                "threads": args.threads if args.worker_class == "gthread" else 1,
                "bind": "127.0.0.1",
            },
            "cache": cache,
            "trusted_proxies": 1,
            "outage": {"seconds": outage, "load_before_s": pre, "load_after_s": post},
            "attack": {
                "ratio": args.attack_ratio,
                "mix": {kind: weight for kind, weight in args.attack_mix},
                "addresses": args.attacker_addresses,
            },
            "shared_address": {"addresses": args.shared_addresses},
            "max_seconds": args.max_seconds,
            "conn_max_age": harness.CONN_MAX_AGE,
            "debug": False,
            "log_level": "WARNING",
            "vault_server": bench.vault_kind,
            "vault": bench.vault_description(),
            "vault_default_store": True,
            "upgrade_on_use": False,
            "extra_environment": {name: shown(name, value) for name, value in args.settings},
            "database": args.database,
            "postgres": without_password(args.postgres),
            "client_auth": "client_secret_basic, grant_type=client_credentials form body, X-Forwarded-For per client",
        },
        "scenarios": reports,
        "checks": evaluate_checks(reports),
        "run_seconds": None,
    }
    results["run_seconds"] = round(time.monotonic() - started, 1)
    print()
    print(render(results))
    path = write_results(results, Path(args.output_dir))
    print(
        f"\nResults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} (and load-latest.json beside it)"
    )
    failed = [check for check in results["checks"] if check["result"] != "PASS"]
    if failed:
        print(f"{len(failed)} check(s) failed.", file=sys.stderr)
        return 1
    return 0


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
