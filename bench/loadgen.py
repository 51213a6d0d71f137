"""
The benchmark's load generator: a process of its own, standard library only.

bench/harness.py starts it (`python bench/loadgen.py`) and talks to it in JSON lines:

1. harness -> loadgen: the job (see `Job`).
2. loadgen: warms up if the job asks (untimed), then prints {"event": "ready", ...}.
3. harness -> loadgen: "go" (after taking its CPU snapshot).
4. loadgen: runs `concurrency` client threads until `duration` seconds have passed (the
   requests in flight then are finished and counted), `max_requests` are sent, or a
   pool of never-used credentials runs out; prints {"event": "done"} as soon as the
   window closes and then {"event": "result", ...}.

Each client thread holds one connection to the server and keeps it open for the next
request unless the server answers `Connection: close` (gunicorn's sync workers always
do), in which case it reconnects; a request's latency runs from before the connect (when
one is needed) to the last byte of the response. Requests are pre-encoded bytes and
responses are parsed only as far as the status line and the headers it needs, to keep
this process's CPU low; it reports the CPU it used during the window.

Every response whose status is not the job's expected one counts as an error (0 stands
for a connection that failed or closed without an answer). Secrets read from the
credentials file are only ever sent to the server.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote_plus

FORM_BODY = b"grant_type=client_credentials"
#: A warm-up stops after this many passes over the pool even if some worker never served a credential.
WARMUP_MAX_PASSES = 40
#: Per-request counts the bench middleware reports (bench/middleware.py), and their names in the result.
COUNTED_HEADERS = {
    "x-bench-queries": "sql_queries_per_request",
    "x-bench-bcrypt": "bcrypt_checks_per_request",
}


@dataclass
class Job:
    host: str
    port: int
    path: str  # "/api/v1/token" or "/bench/ceiling?agent=<uuid>"
    expected_status: int
    concurrency: int
    duration: float  # seconds; the window's limit
    max_requests: int | None = None  # stop after this many requests (the soak), else None
    credentials_file: str | None = None  # JSON {"credentials": [[client_id, secret], ...]}
    order: str = "cycle"  # "cycle": round robin; "once": each credential at most once (cold)
    wrong_secret: bool = False  # present each credential's clientId with a fresh random secret
    random_client: bool = False  # a fresh random clientId (never issued) and secret per request
    warmup_workers: int = 0  # before the window, until each credential was served by this many workers


@dataclass
class Tally:
    """What one client thread saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)  # header -> sum over the responses that carried it
    counted: Counter = field(default_factory=Counter)  # header -> responses that carried it
    workers: dict[int, set[str]] = field(default_factory=dict)  # credential index -> worker pids


class Requests:
    """The requests to send, pre-encoded; shared by the client threads."""

    def __init__(self, job: Job, pairs: list[list[str]]) -> None:
        self.job = job
        self.head = (
            f"POST {job.path} HTTP/1.1\r\n"
            f"Host: {job.host}:{job.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(FORM_BODY)}\r\n"
            "Accept: application/json\r\n"
        ).encode()
        self.client_ids = [client_id for client_id, _ in pairs]
        self.encoded = [self.encode(client_id, secret) for client_id, secret in pairs]
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.exhausted = False

    def encode(self, client_id: str, secret: str) -> bytes:
        basic = base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()
        return self.head + f"Authorization: Basic {basic}\r\n\r\n".encode() + FORM_BODY

    def next(self) -> tuple[int, bytes] | None:
        """Return (credential index, request bytes), or None when a once-only pool is used up."""
        job = self.job
        if job.random_client:
            return -1, self.encode(secrets.token_hex(16), secrets.token_urlsafe(32))
        with self._lock:
            number = next(self._counter)
        if job.order == "once":
            if number >= len(self.encoded):
                self.exhausted = True
                return None
            return number, self.encoded[number]
        index = number % len(self.encoded)
        if job.wrong_secret:
            return index, self.encode(self.client_ids[index], secrets.token_urlsafe(32))
        return index, self.encoded[index]


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


def client(
    job: Job,
    source: Requests,
    tally: Tally,
    start: threading.Event,
    deadline: list[float],
    budget: itertools.count | None,
) -> None:
    """Send requests one after another until the deadline, the budget or the pool ends."""
    connection = Connection(job.host, job.port)
    start.wait()
    clock = time.perf_counter
    try:
        while clock() < deadline[0]:
            if budget is not None and next(budget) >= job.max_requests:
                break
            item = source.next()
            if item is None:
                break
            index, data = item
            began = clock()
            status, headers = connection.request(data)
            tally.latencies.append(clock() - began)
            tally.statuses[status] += 1
            for name in COUNTED_HEADERS:
                value = headers.get(name)
                if value is not None:
                    tally.counts[name] += int(value)
                    tally.counted[name] += 1
            worker = headers.get("x-bench-worker")
            if worker is not None and index >= 0:
                tally.workers.setdefault(index, set()).add(worker)
    finally:
        connection.close()


def run_window(job: Job, source: Requests, *, duration: float) -> tuple[list[Tally], float]:
    """Run the client threads; return their tallies and the elapsed seconds."""
    tallies = [Tally() for _ in range(job.concurrency)]
    start = threading.Event()
    deadline = [float("inf")]
    budget = itertools.count() if job.max_requests else None
    threads = [
        threading.Thread(target=client, args=(job, source, tally, start, deadline, budget), daemon=True)
        for tally in tallies
    ]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + duration
    start.set()
    for thread in threads:
        thread.join()
    return tallies, time.perf_counter() - began


def load_pairs(job: Job) -> list[list[str]]:
    """Return the job's [client_id, secret] pairs (none for random clients)."""
    if not job.credentials_file:
        return []
    with open(job.credentials_file, encoding="utf-8") as handle:
        return json.load(handle)["credentials"]


def warm_up(job: Job, pairs: list[list[str]]) -> dict:
    """Present every credential until `warmup_workers` distinct workers have verified it (untimed)."""
    once = Job(**{**job.__dict__, "order": "once", "wrong_secret": False, "max_requests": None})
    seen: dict[int, set[str]] = {}
    requests = 0
    began = time.perf_counter()
    for _ in range(WARMUP_MAX_PASSES):
        pending = [i for i in range(len(pairs)) if len(seen.get(i, ())) < job.warmup_workers]
        if not pending:
            break
        # One pass: each pending credential once, shared out over the client threads.
        tallies, _ = run_window(once, Requests(once, [pairs[i] for i in pending]), duration=float("inf"))
        for tally in tallies:
            requests += sum(tally.statuses.values())
            for position, workers in tally.workers.items():
                seen.setdefault(pending[position], set()).update(workers)
    covered = sum(1 for i in range(len(pairs)) if len(seen.get(i, ())) >= job.warmup_workers)
    return {
        "requests": requests,
        "seconds": round(time.perf_counter() - began, 3),
        "credentials": len(pairs),
        "covered": covered,
    }


def percentile(ordered: list[float], share: float) -> float | None:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * share // 1))
    return ordered[int(rank) - 1]


def summarize(job: Job, tallies: list[Tally], elapsed: float, cpu: float, exhausted: bool) -> dict:
    latencies = sorted(value for tally in tallies for value in tally.latencies)
    statuses: Counter = Counter()
    for tally in tallies:
        statuses.update(tally.statuses)
    total = sum(statuses.values())
    counts: Counter = Counter()
    counted: Counter = Counter()
    for tally in tallies:
        counts.update(tally.counts)
        counted.update(tally.counted)
    ms = lambda value: None if value is None else round(value * 1000, 3)  # noqa: E731
    return {
        "requests": total,
        "elapsed_s": round(elapsed, 3),
        "rps": round(total / elapsed, 2) if elapsed > 0 else 0.0,
        "expected_status": job.expected_status,
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "errors": total - statuses.get(job.expected_status, 0),
        "latency_ms": {
            "p50": ms(percentile(latencies, 0.50)),
            "p95": ms(percentile(latencies, 0.95)),
            "p99": ms(percentile(latencies, 0.99)),
            "max": ms(latencies[-1] if latencies else None),
            "mean": ms(sum(latencies) / len(latencies) if latencies else None),
        },
        **{
            label: round(counts[name] / counted[name], 3) if counted[name] else None
            for name, label in COUNTED_HEADERS.items()
        },
        "loadgen_cpu_s": round(cpu, 3),
        "pool_exhausted": exhausted,
    }


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    job = Job(**json.loads(sys.stdin.readline()))
    pairs = load_pairs(job)
    warmup = warm_up(job, pairs) if job.warmup_workers and pairs else None
    source = Requests(job, pairs)
    emit({"event": "ready", "warmup": warmup})
    if sys.stdin.readline().strip() != "go":
        return
    cpu_before = time.process_time()
    tallies, elapsed = run_window(job, source, duration=job.duration)
    cpu = time.process_time() - cpu_before
    emit({"event": "done"})
    emit({"event": "result", **summarize(job, tallies, elapsed, cpu, source.exhausted)})


if __name__ == "__main__":
    main()
