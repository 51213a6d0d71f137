import json
import os
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from oauth.keys import generate_signing_key_pem
from tests.conftest import basic_auth, form_post

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("cacheworker.py")


@pytest.fixture
def token_response(client):
    """Return a function that asks the token endpoint for a token with HTTP Basic, and returns the response."""

    def request(client_id: str, client_secret: str, **params):
        return form_post(
            client,
            "/api/v1/token",
            {"grant_type": "client_credentials", **params},
            HTTP_AUTHORIZATION=basic_auth(client_id, client_secret),
        )

    return request


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(username="operator", password="unused", is_staff=True)


@pytest.fixture
def installation_database(tmp_path, django_db_setup) -> Iterator[str]:
    """
    A database of its own for an installation run as separate processes, as a DATABASE_URL.

    On the database the suite runs on: a throwaway database on the same PostgreSQL server
    (dropped afterwards), or a SQLite file.
    """
    if connection.vendor != "postgresql":
        yield f"sqlite:///{tmp_path / 'db.sqlite3'}"
        return
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    name = f"agentidp_installation_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    settings_dict = connection.settings_dict
    credentials = quote(settings_dict["USER"] or "", safe="")
    if settings_dict["PASSWORD"]:
        credentials += ":" + quote(settings_dict["PASSWORD"], safe="")
    host = settings_dict["HOST"] or "localhost"
    port = settings_dict["PORT"] or "5432"
    try:
        yield f"postgres://{credentials}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(**params, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Worker:
    """One long-lived AgentIdP process (cacheworker.py): a command line in, a JSON line out."""

    TIMEOUT = 30

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            bufsize=1,
        )

    def _read(self) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], self.TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        assert line, f"worker {self.name} gave no answer; its stderr:\n{self.log.read_text()}"
        return json.loads(line)

    def started(self) -> "Worker":
        assert self._read() == {"ready": True}
        return self

    def ask(self, *words: str) -> dict:
        self.process.stdin.write(" ".join(words) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        assert "error" not in answer, (self.name, words[0], answer)
        return answer

    def auth(self, client_id: str, secret: str) -> dict:
        return self.ask("auth", client_id, secret)

    def seed(self) -> dict[str, dict]:
        """Four agents with a credential each, named for what the tests do to them."""
        made = self.ask("seed", "4")["credentials"]
        return dict(zip(["rotated", "deleted", "expired", "suspended"], made, strict=True))

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)
        self.process.stdout.close()


@pytest.fixture
def start_workers(installation_database, tmp_path):
    """Start two workers (A and B) on the installation, with this CACHE_URL (None: local memory each)."""
    started: list[Worker] = []

    def start(cache_url: str | None) -> tuple[Worker, Worker]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DJANGO_SETTINGS_MODULE": "agentidp.settings",
            "SECRET_KEY": "verified-cache-tests",
            "DEBUG": "false",
            "AGENTIDP_SIGNING_KEY": generate_signing_key_pem("RS256").decode(),
            "AGENTIDP_BCRYPT_ROUNDS": "4",
            "DATABASE_URL": installation_database,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **({"CACHE_URL": cache_url} if cache_url else {}),
        }
        for name in ("A", "B"):
            started.append(Worker(name, env, tmp_path / f"worker-{name}.log"))
        return started[-2].started(), started[-1].started()

    yield start
    for worker in started:
        worker.stop()
