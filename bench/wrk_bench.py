"""
The token benchmark with an external load generator: wrk (https://github.com/wg/wrk; Debian's
`wrk` package) instead of bench/loadgen.py, for the ceiling and the warm secret request.

`python3 bench/run.py --loadgen wrk` runs it on the same machinery as the Python load
generator (the same databases, Redis, gunicorn shape, settings and ceiling project): the
ceiling project's one-SELECT view, then AgentIdP's token endpoint with 8 warm bcrypt
credentials in turn (client_secret_basic, each one's secret verified once before the window).
wrk keeps `--concurrency` connections open on 2 threads and reports the rate and the
latency distribution; the CPU of each group of processes is measured as for the Python runs.

Both are served at once, and each one's `--duration` is cut into `--rounds` rounds that take
turns (ceiling then AgentIdP, then AgentIdP then ceiling, ...). On a shared host how much
work a CPU second buys drifts by tens of percent within a minute, so one side measured
after the other can meet another machine: a run that measured the ceiling, then AgentIdP,
for 30 s each printed ratios from 0.48 to 1.21 on the same code. Each round's ratio compares
the two sides on the same stretch of time; the ratio reported is the median of the rounds'.
"""

from __future__ import annotations

import base64
import http.client
import re
import resource
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from .errors import BenchError
from .machine import CpuSnapshot
from .orchestrator import CONN_MAX_AGE, Orchestrator
from .servers import Gunicorn, Shape
from .token_bench import RATE_LIMITS, TOKEN_PATH, WARM_POOL, WORKERS, prepare_ceiling

RESULTS_PREFIX = "wrk-"
#: The exit status when the benchmark could not run (requests that failed make it 1 too).
ERROR_STATUS = 1
#: wrk's threads, fewer when there are fewer connections (wrk refuses more threads than connections).
WRK_THREADS = 2
WARM_UP_SECONDS = 3


def _script(path: Path, *, method: str, target: str, headers: list[dict[str, str]], body: str = "") -> Path:
    """A wrk Lua script sending `method target` with each set of `headers` in turn."""
    rows = ",\n".join(
        "  {" + ", ".join(f'["{name}"] = "{value}"' for name, value in header.items()) + "}" for header in headers
    )
    path.write_text(
        f"local headers = {{\n{rows}\n}}\n"
        "local counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        f'  return wrk.format("{method}", "{target}", headers[(counter % #headers) + 1], "{body}")\n'
        "end\n"
    )
    return path


def _parse(output: str) -> dict[str, Any]:
    """Rate, requests, non-2xx count and latency percentiles (ms) from wrk's --latency report."""

    def milliseconds(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    percentiles = {
        f"p{int(float(p))}": milliseconds(value)
        for p, value in re.findall(r"^\s+([\d.]+)%\s+([\d.]+(?:us|ms|s|m))$", output, re.M)
    }
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": requests,
        "rps": rps,
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
        "latency_ms": percentiles,
    }


def _threads(connections: int) -> int:
    return max(1, min(WRK_THREADS, connections))


def _wrk(orc: Orchestrator, server: Gunicorn, script: Path, *, seconds: float, measured: bool) -> dict[str, Any]:
    """wrk against `server` for `seconds`; measured: with the CPU of each group of processes meanwhile."""
    url = f"http://127.0.0.1:{server.port}"
    command = [
        "wrk", "--threads", str(_threads(orc.args.concurrency)), "--connections", str(orc.args.concurrency),
        "--duration", f"{seconds:g}s", "--latency", "--script", str(script), url,
    ]  # fmt: skip
    pids = {**orc.cpu_pids(), "gunicorn": server.pids()}  # this side's gunicorn; the other idles meanwhile
    before = CpuSnapshot.take(pids) if measured else None
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise BenchError(f"wrk failed: {result.stderr.strip()[-500:]}")
    figures = _parse(result.stdout)
    if before is not None:
        wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        figures["cpu_s"] = CpuSnapshot.take(pids).minus(before, loadgen=wrk_cpu)
        figures["server_cpu_ms_per_request"] = round(figures["cpu_s"]["gunicorn"] / figures["requests"] * 1000, 3)
    return figures


def _warm(orc: Orchestrator, headers: list[dict[str, str]]) -> None:
    """Present each credential once, so its secret is in the verified-secret cache before the window."""
    for header in headers:
        connection = http.client.HTTPConnection("127.0.0.1", orc.server.port, timeout=30)
        connection.request("POST", TOKEN_PATH, body="grant_type=client_credentials", headers=header)
        status = connection.getresponse().status
        if status != 200:
            raise BenchError(f"a warm-up token request answered {status}")


def _combined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One side's rounds as one row: requests, errors and CPU summed, the rate over all its
    time, and each latency percentile as the median of the rounds' (wrk reports percentiles,
    which cannot be merged), with the highest p99 of any round beside it.
    """
    requests = sum(measured["requests"] for measured in rounds)
    seconds = sum(measured["requests"] / measured["rps"] for measured in rounds if measured["rps"])
    cpu = {group: round(sum(measured["cpu_s"][group] for measured in rounds), 3) for group in rounds[0]["cpu_s"]}
    latency = {
        name: round(statistics.median(measured["latency_ms"][name] for measured in rounds), 3)
        for name in rounds[0]["latency_ms"]
    }
    return {
        "requests": requests,
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "errors": sum(measured["errors"] for measured in rounds),
        "latency_ms": latency,
        "p99_max_ms": max(measured["latency_ms"].get("p99", 0.0) for measured in rounds),
        "cpu_s": cpu,
        "server_cpu_ms_per_request": round(cpu["gunicorn"] / requests * 1000, 3) if requests else None,
        "rounds": rounds,
    }


def measure(orc: Orchestrator) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt install wrk).")
    args = orc.args
    shape = Shape(WORKERS)
    orc.prepare_agentidp(RATE_LIMITS)
    ceiling_env, ceiling_path = prepare_ceiling(orc)
    orc.log(f"Seeding {WARM_POOL} bcrypt credentials (bcrypt cost {args.bcrypt_rounds})")
    pool = orc.seed_warm("bcrypt", name="bench-wrk-warm", count=WARM_POOL)
    basic = [
        {
            "Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        for client_id, secret in pool
    ]
    orc.log(f"Serving the ceiling project under gunicorn ({shape.describe()}, CONN_MAX_AGE={CONN_MAX_AGE})")
    ceiling = Gunicorn(
        name="ceiling", application="bench.ceiling.wsgi:application", env=ceiling_env, shape=shape, logs=orc.tmp
    )
    ceiling.start(ceiling_path)
    try:
        orc.log(f"Serving AgentIdP under gunicorn ({shape.describe()}, CONN_MAX_AGE={CONN_MAX_AGE}, cache {orc.cache})")
        orc.serve_agentidp(shape)
        _warm(orc, basic)
        sides = {
            "ceiling": (
                ceiling,
                _script(orc.tmp / "ceiling.lua", method="GET", target=ceiling_path, headers=[{"Accept": "*/*"}]),
            ),
            "bcrypt-warm": (
                orc.server,
                _script(
                    orc.tmp / "token.lua",
                    method="POST",
                    target=TOKEN_PATH,
                    headers=basic,
                    body="grant_type=client_credentials",
                ),
            ),
        }
        for server, script in sides.values():
            _wrk(orc, server, script, seconds=WARM_UP_SECONDS, measured=False)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        seconds = args.duration / args.rounds
        orc.log(
            f"wrk: the ceiling and bcrypt-warm in turn, {args.rounds} rounds of {seconds:g} s each, "
            f"{args.concurrency} connections"
        )
        for name in orc.in_turns(args.rounds, *sides):
            server, script = sides[name]
            rounds[name].append(_wrk(orc, server, script, seconds=seconds, measured=True))
    finally:
        ceiling.stop()
    ratios = [
        round(warm["rps"] / base["rps"], 3) if base["rps"] else None
        for base, warm in zip(rounds["ceiling"], rounds["bcrypt-warm"], strict=True)
    ]
    rows = [{"scenario": name, **_combined(measured)} for name, measured in rounds.items()]
    rows[0]["ratio_to_ceiling"] = 1.0
    rows[1]["ratio_to_ceiling"] = statistics.median(ratios) if None not in ratios else None
    rows[1]["round_ratios"] = ratios
    return {
        **orc.results_header(),
        "settings": {
            "load_generator": f"wrk, {_threads(args.concurrency)} threads, {args.concurrency} connections",
            "duration_s": args.duration,
            "rounds": args.rounds,
            "gunicorn": shape.as_json(),
            "conn_max_age": CONN_MAX_AGE,
            "cache": orc.cache,
            "agentidp": orc.agentidp_settings(),
        },
        "scenarios": rows,
        "run_seconds": None,
    }


def render(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        f"AgentIdP POST {TOKEN_PATH} against the ceiling project, load from {settings['load_generator']}, "
        f"{settings['duration_s']:g} s each in {settings['rounds']} rounds, "
        f"gunicorn {settings['gunicorn']['workers']} sync workers, "
        f"cache {settings['cache']}",
        f"{'scenario':<12} {'rps':>9} {'x ceil':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'srv ms/req':>11} {'cpu gunicorn':>13} {'postgres':>9} {'redis':>6} {'wrk':>6}",
    ]
    for row in results["scenarios"]:
        latency, cpu = row["latency_ms"], row["cpu_s"]
        lines.append(
            f"{row['scenario']:<12} {row['rps']:>9.1f} {row['ratio_to_ceiling']:>7.2f} {latency.get('p50', 0):>8.2f} "
            f"{latency.get('p90', 0):>8.2f} {latency.get('p99', 0):>8.2f} {row['errors']:>7} "
            f"{row['server_cpu_ms_per_request']:>11.3f} {cpu['gunicorn']:>13.1f} {cpu['postgres']:>9.1f} "
            f"{cpu['redis']:>6.1f} {cpu['loadgen']:>6.1f}"
        )
    for row in results["scenarios"]:
        if "round_ratios" in row:
            shown = " ".join(f"{ratio:.2f}" for ratio in row["round_ratios"])
            lines.append(
                f"x ceil: the median of {len(row['round_ratios'])} rounds' ratios ({shown}), each round both sides "
                f"in turn; p50-p99: medians of the rounds'; highest p99 of a round: {row['p99_max_ms']:.2f} ms"
            )
    return "\n".join(lines)


def exit_status(results: dict[str, Any]) -> int:
    return 0 if all(row["errors"] == 0 for row in results["scenarios"]) else 1
