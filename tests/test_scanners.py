"""
A real secret scanner (detect-secrets, with the plugin in docs/scanners) finds exactly the
secrets AgentIdP issued in a tree of files, near misses left alone; and one found that way,
reported in a signed partner call, is refused at the token endpoint from that request on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from credentials import secretformat
from tests.conftest import basic_auth, form_post
from tests.factories import make_credential, near_miss, wrong_secret
from tests.oauth.conftest import TOKEN_URL
from tests.oauth.test_leak_reports import GITHUB_URL, GitHubKeys, matches

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "docs" / "scanners" / "detect_secrets_agentidp.py"
DETECT_SECRETS = [sys.executable, "-c", "import sys; from detect_secrets.main import main; sys.exit(main())"]


def scan(tree: Path) -> dict[str, list[dict]]:
    """Run detect-secrets over `tree` with the AgentIdP plugin alone; return its results by file."""
    built_in = subprocess.run(
        [*DETECT_SECRETS, "scan", "--list-all-plugins"], capture_output=True, text=True, check=True
    ).stdout.split()
    disabled = [arg for name in built_in for arg in ("--disable-plugin", name)]
    result = subprocess.run(
        [*DETECT_SECRETS, "scan", "--all-files", "--plugin", str(PLUGIN), *disabled, "."],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)["results"]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (detect-secrets names secrets by their SHA-1)


def test_the_scanner_finds_exactly_the_issued_secrets_and_no_near_miss(tmp_path, agent):
    real = [make_credential(agent).client_secret for _ in range(3)]
    legacy_shaped = "Zr4_-" + "q" * 38
    near = [
        near_miss(real[0])[:-1] + ("A" if near_miss(real[0])[-1] != "A" else "B"),  # checksum off
        real[1][:-1] + ("A" if real[1][-1] != "A" else "B"),
        real[2][:-1],  # one short
        real[2] + "Z",  # one long: not a word of its own
        "aidp_" + "x" * 61,
        "AIDP_" + real[0][5:],
        "aidp-" + real[0][5:],
    ]
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "settings.py").write_text(f'CLIENT_SECRET = "{real[0]}"\nOTHER = "{near[0]}"\n')
    (tmp_path / "app" / ".env").write_text(f"AGENTIDP_SECRET={real[1]}\nLEGACY={legacy_shaped}\n")
    (tmp_path / "notes.md").write_text("\n".join([f"- {n}" for n in near[1:]] + [f"found in a paste: {real[2]}"]))

    results = scan(tmp_path)

    found = {(name, item["line_number"], item["hashed_secret"]) for name, items in results.items() for item in items}
    assert found == {
        ("app/settings.py", 1, sha1(real[0])),
        ("app/.env", 1, sha1(real[1])),
        ("notes.md", len(near), sha1(real[2])),
    }
    assert {item["type"] for items in results.values() for item in items} == {"AgentIdP Client Secret"}


def test_the_plugins_checksum_is_agentidps():
    spec = importlib.util.spec_from_file_location("detect_secrets_agentidp", PLUGIN)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    rng = random.Random(7)
    for _ in range(500):
        secret = wrong_secret()
        assert plugin.has_valid_checksum(secret)
        index = rng.randrange(5, len(secret))
        changed = secret[:index] + ("0" if secret[index] != "0" else "1") + secret[index + 1 :]
        assert plugin.has_valid_checksum(changed) == (secretformat.secret_ref(changed) is not None)


@pytest.mark.parametrize("scanner", ["detect-secrets"])
def test_a_secret_found_by_the_scanner_and_reported_by_github_is_refused_in_that_same_request(
    tmp_path, client, settings, agent, scanner
):
    github = GitHubKeys()
    settings.AGENTIDP_GITHUB_SECRET_SCANNING_KEYS = github.document()
    issued = make_credential(agent)
    auth = {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)}
    assert form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, **auth).status_code == 200
    pushed = tmp_path / "deploy.yaml"
    pushed.write_text(f"env:\n  - name: AGENTIDP_CLIENT_SECRET\n    value: {issued.client_secret}\n")

    [item] = scan(tmp_path)["deploy.yaml"]
    line = pushed.read_text().splitlines()[item["line_number"] - 1]
    [found] = [word for word in line.split() if sha1(word) == item["hashed_secret"]]
    body = matches(found)
    answer = client.post(
        GITHUB_URL,
        body,
        content_type="application/json",
        HTTP_GITHUB_PUBLIC_KEY_IDENTIFIER="current-key",
        HTTP_GITHUB_PUBLIC_KEY_SIGNATURE=github.sign(body),
    )

    assert answer.status_code == 200 and answer.json()[0]["label"] == "true_positive"
    assert form_post(client, TOKEN_URL, {"grant_type": "client_credentials"}, **auth).status_code == 401
