"""
The production server command: `agentidp-server` (gunicorn with agentidp/gunicorn_conf.py)
started on a free port against PostgreSQL and Redis, as docs/devops/deployment.md runs it,
gives a token; its access log is JSON with no query string, no header but the User-Agent,
and no secret or token.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_DB = 12


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def deployment(tmp_path):
    """A database of its own on PostgreSQL, a Redis database, a signing key and the settings deployment.md sets."""
    if not (_reachable("127.0.0.1", 5432) and _reachable("127.0.0.1", 6379)):
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (as in CI)")
    name = "agentidp_server_" + secrets.token_hex(4)
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("AGENTIDP_", "VAULT_"))},
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "false",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
        "CACHE_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "ALLOWED_HOSTS": "127.0.0.1",
        "AGENTIDP_ISSUER": f"http://127.0.0.1:{port}",
        "AGENTIDP_SIGNING_KEY_FILE": str(tmp_path / "signing-key.pem"),
        "CONN_MAX_AGE": "60",
        "AGENTIDP_BCRYPT_ROUNDS": "4",
        "DJANGO_SETTINGS_MODULE": "agentidp.settings",
    }
    yield env, port
    redis.Redis(db=REDIS_DB).flushdb()
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def wait_for(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1][-2000:]
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_the_server_command_serves_a_token_and_logs_json_without_queries_or_headers(deployment, tmp_path):
    env, port = deployment
    manage(env, "create_signing_key")
    manage(env, "migrate", "--verbosity", "0")
    admin = json.loads(manage(env, "bootstrap_admin", "--json"))
    stdout, stderr = open(tmp_path / "out.log", "w"), open(tmp_path / "err.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "agentidp.server", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=stdout,
        stderr=stderr,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", server)
        basic = base64.b64encode(f"{admin['clientId']}:{admin['clientSecret']}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/token?trace=query-value",
            data=b"grant_type=client_credentials",
            headers={"Authorization": "Basic " + basic, "User-Agent": "server-test"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.loads(response.read())["access_token"]
            assert response.status == 200
        # Metrics in multi-process mode: whichever worker answers, it reads every worker's counts.
        issued = (
            "agentidp_token_requests_total"
            '{grant="client_credentials",method="client_secret_basic",outcome="issued"} 1.0'
        )
        for _ in range(4):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                metrics = response.read().decode()
            assert issued in metrics
            assert 'agentidp_credentials{kind="secret",status="active"} 1.0' in metrics
    finally:
        server.terminate()
        server.wait(30)
        stdout.close()
        stderr.close()

    assert token.count(".") == 2
    access = [json.loads(line) for line in (tmp_path / "out.log").read_text().splitlines() if line.startswith("{")]
    [token_line] = [line for line in access if line["path"] == "/api/v1/token"]
    assert (token_line["method"], token_line["status"], token_line["user_agent"]) == ("POST", 200, "server-test")
    assert set(token_line) == {
        "time",
        "event",
        "method",
        "path",
        "status",
        "bytes",
        "duration_ms",
        "address",
        "user_agent",
    }
    everything = (tmp_path / "out.log").read_text() + (tmp_path / "err.log").read_text()
    for value in ("query-value", basic, admin["clientSecret"], token):
        assert value not in everything
        assert value not in metrics
    assert "Booting worker" in everything
