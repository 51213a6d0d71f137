"""
The token benchmark with an external load generator: wrk (https://github.com/wg/wrk; Debian's
`wrk` package) instead of bench/loadgen.py, for the ceiling and the warm secret request.

`python3 bench/run.py --loadgen wrk` runs it on the same machinery as the Python load
generator (the same databases, Redis, gunicorn shape, settings and ceiling project): the
ceiling project's one-SELECT view, then AgentIdP's token endpoint with 8 warm bcrypt
credentials in turn (client_secret_basic, each one's secret verified once before the window).
wrk keeps `--concurrency` connections open on 2 threads and reports the rate and the
latency distribution; the CPU of each group of processes is measured as for the Python runs.
"""

from __future__ import annotations

import base64
import http.client
import re
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .errors import BenchError
from .machine import CpuSnapshot
from .orchestrator import CONN_MAX_AGE, Orchestrator
from .servers import Shape
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


def _wrk(orc: Orchestrator, script: Path, *, seconds: float, measured: bool) -> dict[str, Any]:
    url = f"http://127.0.0.1:{orc.server.port}"
    command = [
        "wrk", "--threads", str(_threads(orc.args.concurrency)), "--connections", str(orc.args.concurrency),
        "--duration", f"{seconds:g}s", "--latency", "--script", str(script), url,
    ]  # fmt: skip
    before = CpuSnapshot.take(orc.cpu_pids()) if measured else None
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
        figures["cpu_s"] = CpuSnapshot.take(orc.cpu_pids()).minus(before, loadgen=wrk_cpu)
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
    rows = []
    orc.log(f"Serving the ceiling project under gunicorn ({shape.describe()}, CONN_MAX_AGE={CONN_MAX_AGE})")
    orc.serve(
        "ceiling", application="bench.ceiling.wsgi:application", env=ceiling_env, shape=shape, ready_path=ceiling_path
    )
    script = _script(orc.tmp / "ceiling.lua", method="GET", target=ceiling_path, headers=[{"Accept": "*/*"}])
    _wrk(orc, script, seconds=WARM_UP_SECONDS, measured=False)
    orc.log(f"wrk: ceiling ({args.duration:g} s, {args.concurrency} connections)")
    rows.append({"scenario": "ceiling", **_wrk(orc, script, seconds=args.duration, measured=True)})
    orc.log(f"Serving AgentIdP under gunicorn ({shape.describe()}, CONN_MAX_AGE={CONN_MAX_AGE}, cache {orc.cache})")
    orc.serve_agentidp(shape)
    _warm(orc, basic)
    script = _script(
        orc.tmp / "token.lua", method="POST", target=TOKEN_PATH, headers=basic, body="grant_type=client_credentials"
    )
    _wrk(orc, script, seconds=WARM_UP_SECONDS, measured=False)
    orc.log(f"wrk: bcrypt-warm ({args.duration:g} s, {args.concurrency} connections)")
    rows.append({"scenario": "bcrypt-warm", **_wrk(orc, script, seconds=args.duration, measured=True)})
    ceiling = rows[0]["rps"]
    for row in rows:
        row["ratio_to_ceiling"] = round(row["rps"] / ceiling, 3) if ceiling else None
    return {
        **orc.results_header(),
        "settings": {
            "load_generator": f"wrk, {_threads(args.concurrency)} threads, {args.concurrency} connections",
            "duration_s": args.duration,
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
        f"{settings['duration_s']:g} s each, gunicorn {settings['gunicorn']['workers']} sync workers, "
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
    return "\n".join(lines)


def exit_status(results: dict[str, Any]) -> int:
    return 0 if all(row["errors"] == 0 for row in results["scenarios"]) else 1
