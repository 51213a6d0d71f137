"""
The project's Vault test server (tests/vaultserver.py) in a process of its own, for the benchmark.

Run by bench/harness.py as `python -m bench.vault_server` from the project root. It
prints one JSON line, {"url": ..., "token": ...}: the token has AgentIdP's least-privilege
policy (`agentidp`) and never expires. Then it answers commands, one JSON line each way:

    {"op": "count"}              -> {"count": <requests received since the last clear>}
    {"op": "clear"}              -> {"ok": true}   (also forgets the recorded requests)
    {"op": "load", "file": PATH} -> {"written": N} PATH holds JSON [[kv_key, secret], ...]
    {"op": "down"}               -> {"ok": true}   stop listening: connections are refused, open ones closed
    {"op": "up"}                 -> {"ok": true}   listen again on the same port, with the same secrets

and stops when its standard input closes. `load` writes each secret as version 1 of its
key directly into the server's memory: it fills Vault for cold-credential scenarios much
faster than HTTP writes would, and the read path that the benchmark measures is unchanged.
`down` and `up` are the Vault outage of bench/load.py: the process and its data stay.
"""

from __future__ import annotations

import json
import sys

from tests.vaultserver import VaultTestServer
from vaultstore.backends.vault import SECRET_KEY


def main() -> None:
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
