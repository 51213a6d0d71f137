"""
The load generator of both benchmarks: a process of its own, standard library only, that sends
the requests bench/traffic.py makes over `concurrency` connections and records every answer.

bench/orchestrator.py starts it (`python -m bench.loadgen`, from the project root) and talks
to it in JSON lines:

1. orchestrator -> loadgen: the job (see `Job`).
2. loadgen: sends the warm-up batches (untimed), then prints {"event": "ready", "warmup": {...}}.
3. orchestrator -> loadgen: "go" (after taking its CPU snapshot).
4. loadgen: runs the connections until the window closes (see `Job`; requests in flight then
   are finished and recorded), prints {"event": "done"} at once, writes every request to
   `records_file`, and prints {"event": "result", ...}.

Each connection sends one request after another and keeps the connection open unless the
server answers `Connection: close` (gunicorn's sync workers always do), in which case it
reconnects; latency runs from before the connect (when one is needed) to the last byte.
Responses are parsed only as far as the status line and the headers, to keep this process's
CPU low; it reports the CPU it used during the window. Times are time.monotonic() seconds, the
clock the orchestrator marks a Vault outage with (one clock for every process on Linux).
The records file holds no secret.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.traffic import TRAFFIC, Encoder

#: Headers only the counting diagnostic server sets (bench/counting/middleware.py), summed when present.
COUNTED_HEADERS = ("x-bench-queries", "x-bench-bcrypt")


@dataclass
class Job:
    host: str
    port: int
    path: str
    concurrency: int
    traffic: dict  # {"kind": "pool" | "agents", ...options of bench.traffic's class}
    credentials_file: str | None  # JSON the traffic draws from ({"pool": [[client_id, secret], ...]}, ...)
    records_file: str
    # The window closes when max_seconds have passed, when max_requests were sent, or once both
    # min_requests were sent and min_seconds have passed (None: no such bound).
    min_requests: int = 0
    min_seconds: float = 0.0
    max_seconds: float | None = None
    max_requests: int | None = None
    warmup_passes: int = 0


class Connection:
    """One client's connection: send a request, read the answer, reconnect when the server closes."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, data: bytes) -> tuple[int, dict[str, str]]:
        """Return the status and the headers (lower-case names); status 0 if the connection failed."""
        reused = self.sock is not None
        try:
            return self._exchange(data)
        except OSError:
            self.close()
            if not reused:
                return 0, {}
        try:  # a kept-alive connection the server had closed meanwhile: once more on a new one
            return self._exchange(data)
        except OSError:
            self.close()
            return 0, {}

    def _exchange(self, data: bytes) -> tuple[int, dict[str, str]]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=120)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        sock.sendall(data)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the headers")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is not None:
            remaining = int(length) - len(body)
            while remaining > 0:
                chunk = sock.recv(min(remaining, 65536))
                if not chunk:
                    raise ConnectionError("closed inside the body")
                remaining -= len(chunk)
        if length is None or headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers


@dataclass
class Limits:
    soft: float = float("inf")  # min_seconds from the start
    hard: float = float("inf")  # max_seconds from the start


def client(job: Job, source, records: list, sums: Counter, start: threading.Event, limits: Limits, issued) -> None:
    """Send requests one after another until the window closes or the source runs dry."""
    connection = Connection(job.host, job.port)
    clock = time.monotonic
    start.wait()
    try:
        while True:
            now = clock()
            if now >= limits.hard:
                break
            number = next(issued)
            if job.max_requests is not None and number >= job.max_requests:
                break
            if number >= job.min_requests and now >= limits.soft:
                break
            item = source.next(number)
            if item is None:
                break
            began = clock()
            status, headers = connection.request(item[2])
            records.append((began, clock(), status, item[1], item[0]))
            source.answered(item, status)
            for name in COUNTED_HEADERS:
                value = headers.get(name)
                if value is not None:
                    sums[name] += int(value)
                    sums[name + ":responses"] += 1
    finally:
        connection.close()


def run_window(job: Job, traffic) -> tuple[list[tuple], Counter, float, float]:
    """Run the connections; return the records, the counted headers' sums, and the window's start and end."""
    records: list[list[tuple]] = [[] for _ in range(job.concurrency)]
    sums = [Counter() for _ in range(job.concurrency)]
    start = threading.Event()
    limits = Limits()
    issued = itertools.count()
    threads = [
        threading.Thread(
            target=client,
            args=(job, traffic.source(t, job.concurrency), records[t], sums[t], start, limits, issued),
            daemon=True,
        )
        for t in range(job.concurrency)
    ]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    limits.soft = began + job.min_seconds
    if job.max_seconds is not None:
        limits.hard = began + job.max_seconds
    start.set()
    for thread in threads:
        thread.join()
    return [row for rows in records for row in rows], sum(sums, Counter()), began, time.monotonic()


def send_once(job: Job, data: bytes) -> int:
    connection = Connection(job.host, job.port)
    try:
        return connection.request(data)[0]
    finally:
        connection.close()


def warm_up(job: Job, traffic) -> dict | None:
    """Send the traffic's warm-up batches, each batch's requests at once over the connections (untimed)."""
    batches = traffic.warmup(job.warmup_passes) if job.warmup_passes else []
    if not batches:
        return None
    began = time.monotonic()
    statuses: Counter = Counter()
    with ThreadPoolExecutor(max_workers=job.concurrency) as pool:
        for batch in batches:
            statuses.update(pool.map(lambda data: send_once(job, data), batch))
    return {
        "requests": sum(statuses.values()),
        "passes": job.warmup_passes,
        "seconds": round(time.monotonic() - began, 3),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
    }


def write_records(path: str, rows: list[tuple]) -> None:
    rows.sort()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "columns": ["start", "end", "status", "agent", "kind"],
                "rows": [[round(a, 6), round(b, 6), status, agent, kind] for a, b, status, agent, kind in rows],
            },
            handle,
            separators=(",", ":"),
        )


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    job = Job(**json.loads(sys.stdin.readline()))
    credentials = {}
    if job.credentials_file:
        with open(job.credentials_file, encoding="utf-8") as handle:
            credentials = json.load(handle)
    options = {name: value for name, value in job.traffic.items() if name != "kind"}
    traffic = TRAFFIC[job.traffic["kind"]](options, Encoder(job.host, job.port, job.path), credentials)
    emit({"event": "ready", "warmup": warm_up(job, traffic)})
    if sys.stdin.readline().strip() != "go":
        return
    cpu_before = time.process_time()
    rows, sums, began, ended = run_window(job, traffic)
    cpu = time.process_time() - cpu_before
    emit({"event": "done"})
    write_records(job.records_file, rows)
    counted = {
        name: round(sums[name] / sums[name + ":responses"], 3) if sums[name + ":responses"] else None
        for name in COUNTED_HEADERS
    }
    emit(
        {
            "event": "result",
            "requests": len(rows),
            "began": began,
            "ended": ended,
            "elapsed_s": round(ended - began, 3),
            "loadgen_cpu_s": round(cpu, 3),
            "stopped_by_time_limit": job.max_seconds is not None
            and ended >= began + job.max_seconds
            and len(rows) < job.min_requests,
            "per_request": counted,
            **traffic.summary(),
        }
    )


if __name__ == "__main__":
    main()
