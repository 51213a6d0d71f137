"""
The suite's real-Vault mode, exercised against a server that speaks Vault's HTTP API.

Without VAULT_ADDR the "real" runs of the Vault tests are skipped, so their set-up (a
policy written by an admin token, a least-privilege token for the run, reads through the
root client) would otherwise never run here. This runs a sample of them in a child pytest
whose VAULT_ADDR/VAULT_TOKEN name the test server, as a developer's would name a real Vault.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.vaultserver import VaultTestServer

ROOT = Path(__file__).resolve().parent.parent


def test_the_real_vault_runs_pass_against_a_server_speaking_vaults_api():
    with VaultTestServer() as server:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "DATABASE_URL"))}
        env.update(VAULT_ADDR=server.url, VAULT_TOKEN=server.ROOT_TOKEN)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-k",
                "real",
                "tests/credentials/test_vault_services.py",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        policies_written = [
            r for r in server.requests if r.method in ("PUT", "POST") and r.path.startswith("/v1/sys/policy/")
        ]

    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "failed" not in summary and "error" not in summary, summary
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 10, summary  # the fault-free Vault tests ran, not only skips
    # The runs used a token holding only the contract's policy, written through Vault's API.
    assert len(policies_written) == 1
    assert 'capabilities = ["create", "read", "update", "delete"]' in policies_written[0].json["policy"]
