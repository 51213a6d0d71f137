"""
The project's Vault test server (tests/vaultserver.py) in a process of its own, for the benchmarks.

`TestVault` starts it (`python -m bench.vault_server`, from the project root) and speaks
to it; `main` is that process. It prints one JSON line, {"url": ..., "token": ...}: the
token has AgentIdP's least-privilege policy (`agentidp`) and never expires. Then it
answers commands, one JSON line each way:

    {"op": "count"}              -> {"count": <requests received since the last clear>}
    {"op": "clear"}              -> {"ok": true}   (also forgets the recorded requests)
    {"op": "load", "file": PATH} -> {"written": N} PATH holds JSON [[kv_key, secret], ...]
    {"op": "down"}               -> {"ok": true}   stop listening: connections are refused, open ones closed
    {"op": "up"}                 -> {"ok": true}   listen again on the same port, with the same secrets

and stops when its standard input closes. `load` writes each secret as version 1 of its
key directly into the server's memory: it fills Vault for cold-credential scenarios much
faster than HTTP writes would, and the read path that the benchmark measures is unchanged.
`down` and `up` are bench/load.py's Vault outage: the process and its data stay.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTION = "tests/vaultserver.py VaultTestServer (KV v2 over HTTP, in its own process), agentidp policy"


class TestVault:
    """The orchestrator's side: start the process, send it commands, stop it (the same interface as OpenBaoVault)."""

    name = "Vault test server"

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> dict[str, str]:
        """Start the server; return AgentIdP's VAULT_ADDR and VAULT_TOKEN."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.vault_server"],
            cwd=ROOT,
            env={**self.env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        hello = self._answer()
        return {"VAULT_ADDR": hello["url"], "VAULT_TOKEN": hello["token"]}

    def command(self, command: dict) -> dict:
        assert self.process is not None and self.process.stdin
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        from bench.errors import BenchError

        assert self.process is not None and self.process.stdout
        line = self.process.stdout.readline()
        if not line:
            raise BenchError("The Vault test server stopped.")
        return json.loads(line)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def describe(self) -> str:
        return DESCRIPTION

    def close(self) -> None:
        from bench.servers import stop_process

        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the server stops when its input ends
            stop_process(self.process, None, 5)
            self.process = None


def main() -> None:
    from tests.vaultserver import VaultTestServer
    from vaultstore.backends.vault import SECRET_KEY

    server = VaultTestServer().start()
    token = server.create_token(policies=("agentidp",))
    reply({"url": server.url, "token": token})
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "count":
                reply({"count": len(server.requests)})
            elif op == "clear":
                server.clear_requests()
                reply({"ok": True})
            elif op == "load":
                with open(command["file"], encoding="utf-8") as handle:
                    entries = json.load(handle)
                for key, secret in entries:
                    server.write_secret(key, {SECRET_KEY: secret})
                reply({"written": len(entries)})
            elif op == "down":
                server.go_down()
                reply({"ok": True})
            elif op == "up":
                server.come_up()
                reply({"ok": True})
            else:
                reply({"error": f"unknown op {op!r}"})
    finally:
        server.stop()


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
