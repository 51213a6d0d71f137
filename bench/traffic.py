"""
What the load generator sends: pre-encoded token requests, drawn either from one pool of
credentials (the token benchmark, bench/run.py) or from simulated agents and attackers, each
with its own address in X-Forwarded-For (the load benchmark, bench/load.py). A pool's
requests are `client_secret_basic` (a clientId and its secret), `private_key_jwt` (a
clientId and a client assertion, signed before the run: the generator signs nothing) or the
jwt-bearer grant (a workload's subject and its platform token); agents' are
`client_secret_basic`.

Both kinds offer `source(connection, connections)` (what one connection sends next, and
what it hears back), `warmup(passes)` (batches of requests to send before the window) and
`summary()`.
Standard library only. Secrets are only ever encoded into requests.

Kinds of request, in the records: the pool traffic's label (its scenario); for agents,
"bw"/"bc" a bcrypt agent's warm/never-used credential, "vw"/"vc" a Vault agent's, "xb"/"xv"
an attacker's wrong secret for a known bcrypt/Vault clientId, "xu" an attacker's unknown
clientId, "yb"/"yv" (shared addresses only) an attacker's wrong secret for a known clientId
that an agent of the attacker's address holds.
"""

from __future__ import annotations

import base64
import itertools
import math
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote_plus

FORM_BODY = b"grant_type=client_credentials"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Attack kinds as the command line names them.
ATTACK_KINDS = {"known-bcrypt": "xb", "known-vault": "xv", "unknown": "xu"}
#: Spreads consecutive attack requests over the attackers' addresses (coprime with any count it is used with).
ADDRESS_STRIDE = 7919

#: One request: its kind, the agent (or credential index) it is for (-1: none), its bytes.
Item = tuple[str, int, bytes]


class Encoder:
    """
    Make the bytes of one token request: from a clientId and a secret (HTTP Basic) and,
    optionally, a client address; or from a pool's pair as its scenario's `request` says.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Accept: application/json\r\n"
        ).encode()

    def __call__(self, client_id: str, secret: str, address: str | None = None) -> bytes:
        basic = base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()
        return self.form(FORM_BODY, f"Authorization: Basic {basic}\r\n", address)

    def form(self, body: bytes, headers: str = "", address: str | None = None) -> bytes:
        forwarded = f"X-Forwarded-For: {address}\r\n" if address else ""
        return self.head + f"Content-Length: {len(body)}\r\n{forwarded}{headers}\r\n".encode() + body

    def pair(self, request: str, first: str, second: str) -> bytes:
        """
        One pool entry as a request. "basic": [clientId, secret]; "client_assertion":
        [clientId, assertion] (private_key_jwt, the clientId is the assertion's subject and
        is not sent); "jwt_bearer": [subject, platform token] (no client authentication).
        """
        if request == "basic":
            return self(first, second)
        if request == "client_assertion":
            body = (
                f"grant_type=client_credentials&client_assertion_type={quote_plus(CLIENT_ASSERTION_TYPE)}"
                f"&client_assertion={second}"  # a compact JWT: base64url and dots, nothing to escape
            )
        elif request == "jwt_bearer":
            body = f"grant_type={quote_plus(JWT_BEARER_GRANT)}&assertion={second}"
        else:
            raise ValueError(f"unknown request kind {request!r}")
        return self.form(body.encode())


class PoolTraffic:
    """
    One pool for every connection: its credentials in turn ("cycle", warm), each at most once
    ("once": never used before, or a client assertion, whose jti is accepted once), each
    clientId with a fresh wrong secret, or a fresh unknown clientId per request. options:
    label, order, wrong_secret, random_client, request ("basic", "client_assertion",
    "jwt_bearer"; see Encoder.pair). A once-only pool may come with its own warm-up
    requests (credentials["warmup"]: single-use assertions the window must not reuse).
    """

    def __init__(self, options: dict, encode: Encoder, credentials: dict[str, list[list[str]]]) -> None:
        self.label = options["label"]
        self.order = options.get("order", "cycle")
        self.wrong_secret = options.get("wrong_secret", False)
        self.random_client = options.get("random_client", False)
        self.request = options.get("request", "basic")
        self.encode = encode
        pairs = credentials.get("pool", [])
        self.client_ids = [client_id for client_id, _ in pairs]
        self.encoded = [encode.pair(self.request, *pair) for pair in pairs]
        self.warmup_encoded = [encode.pair(self.request, *pair) for pair in credentials.get("warmup", [])]
        self._counter = itertools.count()
        self.exhausted = False

    def source(self, connection: int, connections: int) -> PoolTraffic:
        return self

    def next(self, number: int) -> Item | None:
        """The next request, or None when a once-only pool is used up."""
        if self.random_client:
            return self.label, -1, self.encode(secrets.token_hex(16), secrets.token_urlsafe(32))
        index = next(self._counter)
        if self.order == "once":
            if index >= len(self.encoded):
                self.exhausted = True
                return None
            return self.label, index, self.encoded[index]
        index %= len(self.encoded)
        if self.wrong_secret:
            return self.label, index, self.encode(self.client_ids[index], secrets.token_urlsafe(32))
        return self.label, index, self.encoded[index]

    def answered(self, item: Item, status: int) -> None:
        pass

    def warmup(self, passes: int) -> list[list[bytes]]:
        """
        Each credential of a warm pool, with its right secret, `passes` times; for a
        once-only pool, its own warm-up requests in `passes` batches.
        """
        if self.random_client or not passes:
            return []
        if self.order == "once":
            if not self.warmup_encoded:
                return []
            size = math.ceil(len(self.warmup_encoded) / passes)
            return [self.warmup_encoded[i : i + size] for i in range(0, len(self.warmup_encoded), size)]
        return [self.encoded] * passes

    def summary(self) -> dict:
        used = min(next(self._counter), len(self.encoded)) if self.order == "once" else None
        return {"pool_exhausted": self.exhausted, "pool_used": used}


def address(network: int, index: int) -> str:
    """10.<network>.x.y: agents on 1, attackers on 2, shared addresses on 3."""
    return f"10.{network}.{index // 256 % 256}.{index % 256}"


def agent_storage(index: int, vault_share: float) -> str:
    """Spread the Vault agents evenly among the others: agent j is a Vault agent when j's share crosses a whole."""
    return "vault" if int((index + 1) * vault_share) > int(index * vault_share) else "bcrypt"


class Pool:
    """Never-used credentials of one store, each handed out once."""

    def __init__(self, pairs: list[list[str]]) -> None:
        self.pairs = pairs
        self.taken = 0
        self.short = 0  # turns that found the pool empty (a warm credential was presented instead)
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
    pending: Item | None = None  # presented again until it is answered 200


@dataclass
class AgentOptions:
    mode: str  # "legit" or "attack"
    agents: int
    vault_share: float
    cold_every: dict[str, int]  # store -> every n-th request of an agent is cold (0: never)
    attack_ratio: int = 10
    attack_mix: list[list] = field(default_factory=lambda: [["known-bcrypt", 1], ["known-vault", 1], ["unknown", 1]])
    attacker_addresses: int = 1000
    shared_addresses: int = 0  # > 0: agents and attackers share this many addresses (10.3.x.y)


class AgentTraffic:
    """
    `agents` legitimate clients, each with its own address (10.1.x.y), or sharing
    `shared_addresses` addresses with the attackers (10.3.x.y: a NAT, a cluster's egress).
    A share `vault_share` hold Vault credentials, the others bcrypt ones; the agents of one
    store share its warm credentials in turn (replicas of one deployment share a credential).
    Connection c serves agents c, c + concurrency, ... in turn. Every `cold_every[store]`-th
    request of an agent presents a never-used credential, as a new agent does. An agent whose
    request was not answered 200 presents the same credential again on its next turn.

    In "attack" mode, of every attack_ratio + 1 requests one is an agent's and the others an
    attacker's, from `attacker_addresses` addresses (10.2.x.y) or round the shared ones: a
    known clientId with a fresh wrong secret, or a fresh unknown clientId, as `attack_mix` says.
    """

    def __init__(self, options: dict, encode: Encoder, credentials: dict[str, list[list[str]]]) -> None:
        self.options = opts = AgentOptions(**options)
        self.encode = encode
        self.warm_ids = {store: [pair[0] for pair in credentials[f"{store}-warm"]] for store in ("bcrypt", "vault")}
        self.cold = {store: Pool(credentials[f"{store}-cold"]) for store in ("bcrypt", "vault")}
        seen: Counter = Counter()
        self.agents: list[Agent] = []
        for index in range(opts.agents):
            storage = agent_storage(index, opts.vault_share)
            warm = credentials[f"{storage}-warm"]
            rank = seen[storage]
            seen[storage] += 1
            position = rank % len(warm)
            where = address(3, index % opts.shared_addresses) if opts.shared_addresses else address(1, index)
            self.agents.append(Agent(index, storage, where, encode(*warm[position], where), rank, (storage, position)))
        #: Which clientIds each address's agents hold (and authenticated from it during the warm-up).
        self.held_at: dict[str, set[str]] = {}
        for agent in self.agents:
            store, position = agent.credential
            self.held_at.setdefault(agent.address, set()).add(self.warm_ids[store][position])
        self.attack_cycle = [ATTACK_KINDS[name] for name, weight in opts.attack_mix for _ in range(int(weight))]
        self._attacks = itertools.count()

    def source(self, connection: int, connections: int) -> AgentSource:
        return AgentSource(self, self.agents[connection::connections])

    def agent_request(self, agent: Agent) -> Item:
        if agent.pending is not None:
            return agent.pending
        agent.turns += 1
        every = self.options.cold_every.get(agent.storage, 0)
        if every and (agent.turns + agent.rank) % every == 0:
            pair = self.cold[agent.storage].take()
            if pair is not None:
                return agent.storage[0] + "c", agent.index, self.encode(*pair, agent.address)
        return agent.storage[0] + "w", agent.index, agent.warm

    def attack_request(self) -> Item:
        opts = self.options
        number = next(self._attacks)
        kind = self.attack_cycle[number % len(self.attack_cycle)]
        turn = number // len(self.attack_cycle)
        if opts.shared_addresses:
            # A turn of the cycle per address, the addresses in turn: every address meets every kind and clientId.
            where = address(3, turn % opts.shared_addresses)
            turn //= opts.shared_addresses
        else:
            where = address(2, number * ADDRESS_STRIDE % opts.attacker_addresses)
        if kind == "xu":
            client_id = secrets.token_hex(16)
        else:
            known = self.warm_ids["bcrypt" if kind == "xb" else "vault"]
            client_id = known[turn % len(known)]
            if client_id in self.held_at.get(where, ()):
                kind = "y" + kind[1]  # a neighbour's clientId: this address authenticated it
        return kind, -1, self.encode(client_id, secrets.token_urlsafe(32), where)

    def warmup(self, passes: int) -> list[list[bytes]]:
        """Each warm credential from the address of an agent that holds it, `passes` times; then every agent once."""
        holders: dict[tuple[str, int], Agent] = {}
        for agent in self.agents:
            holders.setdefault(agent.credential, agent)
        return [[agent.warm for agent in holders.values()]] * passes + [[agent.warm for agent in self.agents]]

    def summary(self) -> dict:
        return {
            "cold_used": {store: pool.taken for store, pool in self.cold.items()},
            "cold_short": {store: pool.short for store, pool in self.cold.items()},
            # Pairs of address and clientId the warm-up authenticated: each a known pair to the limits.
            "known_pairs": sum(len(held) for held in self.held_at.values()),
            "pool_exhausted": False,
        }


class AgentSource:
    """One connection's agents, in turn, with the attackers' requests among them in attack mode."""

    def __init__(self, traffic: AgentTraffic, agents: list[Agent]) -> None:
        self.traffic = traffic
        self.agents = agents
        self.turn = 0
        self.attack = traffic.options.mode == "attack"
        self.ratio = traffic.options.attack_ratio + 1

    def next(self, number: int) -> Item:
        if self.attack and number % self.ratio:
            return self.traffic.attack_request()
        agent = self.agents[self.turn % len(self.agents)]
        self.turn += 1
        return self.traffic.agent_request(agent)

    def answered(self, item: Item, status: int) -> None:
        index = item[1]
        if index >= 0:
            self.traffic.agents[index].pending = None if status == 200 else item


TRAFFIC = {"pool": PoolTraffic, "agents": AgentTraffic}
