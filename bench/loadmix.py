"""
The load generator of bench/load.py: token requests from many simulated clients at once,
each with its own address in X-Forwarded-For. A process of its own, standard library only.

bench/loadrun.py starts it (`python -m bench.loadmix`) and talks to it in JSON lines, as
bench/harness.py talks to bench/loadgen.py:

1. harness -> loadmix: the job (see `Job`).
2. loadmix: warms up (untimed), then prints {"event": "ready", "warmup": {...}}.
3. harness -> loadmix: "go".
4. loadmix: runs `concurrency` connections until at least `min_requests` requests were sent
   and `min_seconds` have passed, or `max_seconds` have passed; prints {"event": "done"}
   as soon as the window closes, writes every request to `records_file`, and prints
   {"event": "result", ...}.

The simulated clients:

- `agents` legitimate clients, numbered 0..agents-1, each with its own address
  (10.1.x.y). A share `vault_share` of them hold Vault credentials, the others bcrypt ones;
  the agents of one store share its warm credentials in turn (replicas of one agent
  deployment share a credential). Each connection serves its own agents in turn (agent j
  belongs to connection j % concurrency). Every `cold_every[store]`-th request of an agent
  (0: never) presents a credential never used before, from the store's cold pool, as a
  newly created agent does. An agent whose request was not answered 200 presents the same
  credential again on its next turn, without waiting (it needs that token), so a Vault
  agent that met the outage keeps asking until Vault serves it again.
- In "attack" mode, of every `attack_ratio + 1` requests one is an agent's and the others
  are an attacker's, from `attacker_addresses` addresses (10.2.x.y): a known clientId (one
  of the warm credentials') with a fresh wrong secret, or a fresh unknown clientId, in the
  proportions of `attack_mix`.
- With `shared_addresses` N > 0 (the "shared-address" scenario), agents and attackers share
  N addresses (10.3.x.y): agent j sends from address j % N, and the attackers' requests go
  round the same N addresses, so that each address carries agents' and attackers' traffic
  (a NAT, a cluster's egress, a CI runner pool). An attacker's known clientId that an agent
  of its address holds (so that address authenticated it before the window) is recorded
  as its own kind: the limits still hear such a pair.

Requests are `client_secret_basic` form posts; responses are read as far as the status
and headers (bench/loadgen.py's Connection, which reconnects after `Connection: close`).
Times are time.monotonic() seconds, the clock the harness marks the outage with (one
clock for every process on Linux). Secrets read from the credentials file are only ever
sent to the server; the records file holds no secret.

Kinds of request, in the records: "bw"/"bc" a bcrypt agent's warm/cold credential, "vw"/"vc"
a Vault agent's, "xb"/"xv" an attacker's wrong secret for a known bcrypt/Vault clientId,
"xu" an attacker's unknown clientId, "yb"/"yv" (shared addresses only) an attacker's wrong
secret for a known bcrypt/Vault clientId that an agent of the attacker's address holds.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote_plus

from bench.loadgen import FORM_BODY, Connection

#: A warm-up stops after this many passes over the credentials even if some worker never served one.
WARMUP_MAX_PASSES = 40
#: Attack kinds as the command line names them.
ATTACK_KINDS = {"known-bcrypt": "xb", "known-vault": "xv", "unknown": "xu"}
#: Spreads consecutive attack requests over the attackers' addresses (coprime with any count it is used with).
ADDRESS_STRIDE = 7919


@dataclass
class Job:
    host: str
    port: int
    path: str
    concurrency: int
    mode: str  # "legit" or "attack"
    min_requests: int
    min_seconds: float
    max_seconds: float
    agents: int
    vault_share: float
    cold_every: dict[str, int]  # store -> every n-th request of an agent is cold (0: never)
    credentials_file: str  # {"bcrypt-warm": [[client_id, secret], ...], "vault-warm", "bcrypt-cold", "vault-cold"}
    records_file: str
    attack_ratio: int = 10
    attack_mix: list[list] = field(default_factory=lambda: [["known-bcrypt", 1], ["known-vault", 1], ["unknown", 1]])
    attacker_addresses: int = 1000
    shared_addresses: int = 0  # > 0: agents and attackers share this many addresses (10.3.x.y)
    warmup_workers: int = 0


def legit_address(index: int) -> str:
    return f"10.1.{index // 256 % 256}.{index % 256}"


def attacker_address(index: int) -> str:
    return f"10.2.{index // 256 % 256}.{index % 256}"


def shared_address(index: int) -> str:
    return f"10.3.{index // 256 % 256}.{index % 256}"


def agent_storage(index: int, vault_share: float) -> str:
    """Spread the Vault agents evenly among the others: agent j is a Vault agent when j's share crosses a whole."""
    return "vault" if int((index + 1) * vault_share) > int(index * vault_share) else "bcrypt"


class Encoder:
    """Make the bytes of one token request from a client address, a clientId and a secret."""

    def __init__(self, job: Job) -> None:
        self.head = (
            f"POST {job.path} HTTP/1.1\r\n"
            f"Host: {job.host}:{job.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(FORM_BODY)}\r\n"
            "Accept: application/json\r\n"
        ).encode()

    def __call__(self, address: str, client_id: str, secret: str) -> bytes:
        basic = base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()
        return self.head + f"X-Forwarded-For: {address}\r\nAuthorization: Basic {basic}\r\n\r\n".encode() + FORM_BODY


class Pool:
    """Never-used credentials of one store, each handed out once."""

    def __init__(self, pairs: list[list[str]]) -> None:
        self.pairs = pairs
        self.taken = 0
        self.short = 0  # cold turns that found the pool empty (a warm credential was presented instead)
        self._lock = threading.Lock()

    def take(self) -> list[str] | None:
        with self._lock:
            if self.taken >= len(self.pairs):
                self.short += 1
                return None
            self.taken += 1
            return self.pairs[self.taken - 1]


@dataclass
class Agent:
    index: int
    storage: str
    address: str
    warm: bytes
    rank: int  # among the agents of its store: staggers their cold turns evenly
    credential: tuple[str, int]  # its warm credential: store, position in the store's list
    turns: int = 0
    pending: tuple[str, bytes] | None = None  # presented again until it is answered 200


class Traffic:
    """What every connection draws its requests from."""

    def __init__(self, job: Job, credentials: dict[str, list[list[str]]]) -> None:
        self.job = job
        self.encode = Encoder(job)
        self.warm_ids = {store: [pair[0] for pair in credentials[f"{store}-warm"]] for store in ("bcrypt", "vault")}
        self.cold = {store: Pool(credentials[f"{store}-cold"]) for store in ("bcrypt", "vault")}
        seen = Counter()
        self.agents: list[Agent] = []
        for index in range(job.agents):
            storage = agent_storage(index, job.vault_share)
            warm = credentials[f"{storage}-warm"]
            rank = seen[storage]
            seen[storage] += 1
            position = rank % len(warm)
            if job.shared_addresses:
                address = shared_address(index % job.shared_addresses)
            else:
                address = legit_address(index)
            data = self.encode(address, *warm[position])
            self.agents.append(Agent(index, storage, address, data, rank, (storage, position)))
        #: Which clientIds each address's agents hold (and authenticated from it during the warm-up).
        self.held_at: dict[str, set[str]] = {}
        for agent in self.agents:
            store, position = agent.credential
            self.held_at.setdefault(agent.address, set()).add(self.warm_ids[store][position])
        self.attack_cycle = [ATTACK_KINDS[name] for name, weight in job.attack_mix for _ in range(int(weight))]
        self._attacks = itertools.count()

    def agent_request(self, agent: Agent) -> tuple[str, bytes]:
        if agent.pending is not None:
            return agent.pending
        agent.turns += 1
        every = self.job.cold_every.get(agent.storage, 0)
        if every and (agent.turns + agent.rank) % every == 0:
            pair = self.cold[agent.storage].take()
            if pair is not None:
                return agent.storage[0] + "c", self.encode(agent.address, *pair)
        return agent.storage[0] + "w", agent.warm

    def attack_request(self) -> tuple[str, bytes]:
        number = next(self._attacks)
        kind = self.attack_cycle[number % len(self.attack_cycle)]
        turn = number // len(self.attack_cycle)
        if self.job.shared_addresses:
            # A turn of the cycle per address, the addresses in turn: every address meets every kind and clientId.
            address = shared_address(turn % self.job.shared_addresses)
            turn //= self.job.shared_addresses
        else:
            address = attacker_address(number * ADDRESS_STRIDE % self.job.attacker_addresses)
        if kind == "xu":
            client_id = secrets.token_hex(16)
        else:
            known = self.warm_ids["bcrypt" if kind == "xb" else "vault"]
            client_id = known[turn % len(known)]
            if client_id in self.held_at.get(address, ()):
                kind = "y" + kind[1]  # a neighbour's clientId: this address authenticated it
        return kind, self.encode(address, client_id, secrets.token_urlsafe(32))


def client(
    job: Job,
    traffic: Traffic,
    agents: list[Agent],
    records: list[tuple],
    start: threading.Event,
    limits: dict[str, float],
    issued: itertools.count,
) -> None:
    """Send requests one after another until the window closes."""
    connection = Connection(job.host, job.port)
    clock = time.monotonic
    turn = 0
    attack = job.mode == "attack"
    start.wait()
    try:
        while True:
            now = clock()
            if now >= limits["hard"]:
                break
            number = next(issued)
            if number >= job.min_requests and now >= limits["soft"]:
                break
            agent = None
            if attack and number % (job.attack_ratio + 1):
                kind, data = traffic.attack_request()
            else:
                agent = agents[turn % len(agents)]
                turn += 1
                kind, data = traffic.agent_request(agent)
            began = clock()
            status, _ = connection.request(data)
            records.append((began, clock(), status, -1 if agent is None else agent.index, kind))
            if agent is not None:
                agent.pending = None if status == 200 else (kind, data)
    finally:
        connection.close()


def run_window(job: Job, traffic: Traffic) -> tuple[list[tuple], float, float, bool]:
    """Run the connections; return the records, the window's start and end, and whether max_seconds ended it."""
    shares = [traffic.agents[t :: job.concurrency] for t in range(job.concurrency)]
    records: list[list[tuple]] = [[] for _ in range(job.concurrency)]
    start = threading.Event()
    limits = {"soft": float("inf"), "hard": float("inf")}
    issued = itertools.count()
    threads = [
        threading.Thread(target=client, args=(job, traffic, shares[t], records[t], start, limits, issued), daemon=True)
        for t in range(job.concurrency)
    ]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    limits["soft"] = began + job.min_seconds
    limits["hard"] = began + job.max_seconds
    start.set()
    for thread in threads:
        thread.join()
    ended = time.monotonic()
    rows = [row for rows in records for row in rows]
    return rows, began, ended, ended >= limits["hard"] and len(rows) < job.min_requests


def send_once(job: Job, data: bytes) -> tuple[int, str | None]:
    connection = Connection(job.host, job.port)
    try:
        status, headers = connection.request(data)
    finally:
        connection.close()
    return status, headers.get("x-bench-worker")


def warm_up(job: Job, traffic: Traffic) -> dict:
    """
    Before the window: have every warm credential verified by `warmup_workers` workers (each
    from the address of an agent that holds it), then every agent heard once from its address.
    """
    began = time.perf_counter()
    statuses: Counter = Counter()
    holders: dict[tuple[str, int], Agent] = {}
    for agent in traffic.agents:
        holders.setdefault(agent.credential, agent)
    credentials = [agent.warm for agent in holders.values()]
    seen: dict[bytes, set[str]] = {data: set() for data in credentials}
    with ThreadPoolExecutor(max_workers=job.concurrency) as pool:
        for _ in range(WARMUP_MAX_PASSES if job.warmup_workers else 0):
            pending = [data for data in credentials if len(seen[data]) < job.warmup_workers]
            if not pending:
                break
            for data, (status, worker) in zip(pending, pool.map(lambda d: send_once(job, d), pending), strict=True):
                statuses[status] += 1
                if status == 200 and worker is not None:
                    seen[data].add(worker)
        for status, _ in pool.map(lambda agent: send_once(job, agent.warm), traffic.agents):
            statuses[status] += 1
    return {
        "requests": sum(statuses.values()),
        "seconds": round(time.perf_counter() - began, 3),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "credentials": len(credentials),
        "covered": sum(1 for data in credentials if len(seen[data]) >= job.warmup_workers),
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
    with open(job.credentials_file, encoding="utf-8") as handle:
        traffic = Traffic(job, json.load(handle))
    warmup = warm_up(job, traffic)
    emit({"event": "ready", "warmup": warmup})
    if sys.stdin.readline().strip() != "go":
        return
    cpu_before = time.process_time()
    rows, began, ended, cut_short = run_window(job, traffic)
    cpu = time.process_time() - cpu_before
    emit({"event": "done"})
    write_records(job.records_file, rows)
    emit(
        {
            "event": "result",
            "requests": len(rows),
            "began": began,
            "ended": ended,
            "elapsed_s": round(ended - began, 3),
            "loadgen_cpu_s": round(cpu, 3),
            "stopped_by_time_limit": cut_short,
            "cold_used": {store: pool.taken for store, pool in traffic.cold.items()},
            "cold_short": {store: pool.short for store, pool in traffic.cold.items()},
            # Pairs of address and clientId the warm-up authenticated: each a known pair to the limits.
            "known_pairs": sum(len(held) for held in traffic.held_at.values()),
        }
    )


if __name__ == "__main__":
    main()
