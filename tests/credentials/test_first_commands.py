"""A newcomer's first commands on a fresh installation, run as separate processes: no signing key exists yet."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh(tmp_path, installation_database) -> dict[str, str]:
    """The environment of a fresh deployment: its own database, and a key file that does not exist yet."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AGENTIDP_", "VAULT_", "DJANGO_"))
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="agentidp.settings",
        SECRET_KEY="a-fresh-installation",
        DATABASE_URL=installation_database,
        AGENTIDP_SIGNING_KEY_FILE=str(tmp_path / "signing-key.pem"),
        LOG_LEVEL="WARNING",
    )
    return environment


def manage(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_migrate_and_bootstrap_admin_work_before_any_signing_key_exists(fresh):
    migrated = manage(fresh, "migrate", "--noinput", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr

    made = manage(fresh, "bootstrap_admin", "--json")
    assert made.returncode == 0, made.stderr
    assert set(json.loads(made.stdout)) == {"agentId", "clientId", "clientSecret"}


def test_what_serves_or_deploys_still_refuses_a_missing_signing_key(fresh):
    assert manage(fresh, "migrate", "--noinput", "--verbosity", "0").returncode == 0

    deploy = manage(fresh, "check", "--deploy")
    serve = subprocess.run(
        [sys.executable, "-c", "import agentidp.wsgi"], cwd=ROOT, env=fresh, capture_output=True, text=True, timeout=120
    )

    assert deploy.returncode != 0 and "oauth.E001" in deploy.stderr
    assert serve.returncode != 0 and "oauth.E001" in serve.stderr and "signing-key.pem" in serve.stderr

    assert manage(fresh, "create_signing_key").returncode == 0
    served = subprocess.run(
        [sys.executable, "-c", "import agentidp.wsgi"], cwd=ROOT, env=fresh, capture_output=True, text=True, timeout=120
    )
    assert served.returncode == 0, served.stderr
