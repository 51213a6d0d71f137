"""
The server processes a run starts besides Vault: gunicorn (serving AgentIdP, the ceiling
project, or AgentIdP with per-request counting) and a private Redis. Each runs in a session
of its own, so that a Ctrl-C reaches only the orchestrator and the shutdown happens in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: How long gunicorn may take to answer its readiness path after starting.
STARTUP_TIMEOUT = 60
REDIS_STARTUP_TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, sig: signal.Signals | None, grace: float) -> None:
    """Send `sig` (None: just wait), wait up to `grace` seconds, then kill the process's whole session."""
    with contextlib.suppress(ProcessLookupError):
        if process.poll() is None and sig is not None:
            process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: gunicorn's workers go with it
            process.wait(timeout=5)


@dataclasses.dataclass(frozen=True)
class Shape:
    """gunicorn's shape: the same for AgentIdP and the ceiling in one run."""

    workers: int
    worker_class: str = "sync"
    threads: int = 1

    def describe(self) -> str:
        threads = f" × {self.threads} threads" if self.worker_class == "gthread" else ""
        return f"{self.workers} {self.worker_class} workers{threads}"

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "bind": "127.0.0.1"}


class Gunicorn:
    """One WSGI application under gunicorn on 127.0.0.1 and a free port, with gunicorn's default logging."""

    def __init__(self, *, name: str, application: str, env: dict[str, str], shape: Shape, logs: Path) -> None:
        self.name = name
        self.application = application
        self.shape = shape
        self.logs = logs
        self.port = free_port()
        # prometheus-client's multi-process mode, as agentidp-server sets it up: /metrics counts every worker.
        metrics_dir = logs / f"{name}-metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        self.env = {
            **env,
            "AGENTIDP_ISSUER": f"http://127.0.0.1:{self.port}",  # read by AgentIdP only
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        self.process: subprocess.Popen | None = None

    def start(self, ready_path: str) -> None:
        """Start, and wait until `ready_path` answers 200 and every worker is up."""
        from gunicorn.config import KNOWN_SETTINGS

        shape = self.shape
        command = [
            PYTHON, "-m", "gunicorn", self.application,
            "--workers", str(shape.workers),
            "--worker-class", shape.worker_class,
            "--bind", f"127.0.0.1:{self.port}",
            "--chdir", str(ROOT),
            "--timeout", "120",
            "--graceful-timeout", "10",
        ]  # fmt: skip
        if shape.worker_class == "gthread":
            command += ["--threads", str(shape.threads)]
        if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
            command.append("--no-control-socket")
        # Standard error, where gunicorn and the application log, goes to a file as a deployment's goes to its journal.
        with open(self.logs / f"{self.name}.log", "wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"gunicorn ({self.name}) exited (code {self.process.returncode}).\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", ready_path)
                if connection.getresponse().status == 200 and len(self.workers()) == shape.workers:
                    return
            time.sleep(0.2)
        raise BenchError(
            f"gunicorn ({self.name}) did not answer {ready_path} within {STARTUP_TIMEOUT} s.\n{self.log_tail()}"
        )

    def log_tail(self) -> str:
        path = self.logs / f"{self.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def workers(self) -> list[psutil.Process]:
        if self.process is None:
            return []
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.process.pid).children(recursive=True)
        return []

    def pids(self) -> list[int]:
        if self.process is None:
            return []
        return [self.process.pid] + [worker.pid for worker in self.workers()]

    def get(self, path: str) -> str:
        """GET `path` from the server (from 127.0.0.1, which /metrics admits) and return the body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        if response.status != 200:
            raise BenchError(f"GET {path} answered {response.status}")
        return body

    def worker_rss_mb(self) -> list[float]:
        sizes = []
        for worker in self.workers():
            with contextlib.suppress(psutil.Error):
                sizes.append(round(worker.memory_info().rss / 2**20, 1))
        return sorted(sizes)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM, 15)
            self.process = None


class Redis:
    """A private, memory-only redis-server on a free port: the cache every gunicorn worker shares."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("--cache redis needs redis-server on PATH (or use --cache locmem).")
        port = free_port()
        with open(self.directory / "redis.log", "wb") as output:
            self.process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.directory), "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + REDIS_STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"redis-server exited (code {self.process.returncode}).")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    self.url = f"redis://127.0.0.1:{port}/0"
                    return self.url
            time.sleep(0.1)
        raise BenchError(f"redis-server did not answer within {REDIS_STARTUP_TIMEOUT} s.")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def commands(self) -> int:
        """The commands the server has processed so far (INFO stats; the INFO itself included)."""
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"INFO stats\r\n")
            answer = b""
            while b"total_commands_processed:" not in answer or not answer.endswith(b"\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        for line in answer.decode().splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.partition(":")[2])
        raise BenchError("redis-server did not say how many commands it processed.")

    def close(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM, 5)
            self.process = None
