"""dev.py: the demo's issuer, and the real Vault the test command gives the real-Vault tests."""

import json
import os
import urllib.request

import pytest

import dev


@pytest.mark.parametrize(
    ("addrport", "issuer"),
    [
        ("127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("8001", "http://127.0.0.1:8001"),  # a port alone: runserver binds 127.0.0.1
        ("localhost:9000", "http://localhost:9000"),
        ("[::1]:8000", "http://[::1]:8000"),
        ("0.0.0.0:8000", "http://localhost:8000"),  # every interface: advertised as this machine's own name
        ("0:8000", "http://localhost:8000"),
        ("[::]:8000", "http://localhost:8000"),
    ],
)
def test_the_demo_advertises_the_address_it_serves(addrport, issuer):
    assert dev.issuer_for(addrport) == issuer


def test_a_vault_addr_set_by_the_user_wins_and_nothing_is_started(monkeypatch, capsys):
    monkeypatch.setenv("VAULT_ADDR", "http://vault.example:8200")
    monkeypatch.setenv("VAULT_TOKEN", "not-printed")
    env = dict(os.environ)

    with dev.real_vault(env):
        assert env["VAULT_ADDR"] == "http://vault.example:8200"

    said = capsys.readouterr().out
    assert "http://vault.example:8200" in said and "not-printed" not in said


def test_without_vault_addr_the_tests_get_an_openbao_dev_server_that_is_stopped_after_a_failure(monkeypatch, capsys):
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.setenv("VAULT_NAMESPACE", "someone-elses")
    env = dict(os.environ)

    with pytest.raises(RuntimeError), dev.real_vault(env):
        url, token = env["VAULT_ADDR"], env["VAULT_TOKEN"]
        assert "VAULT_NAMESPACE" not in env
        request = urllib.request.Request(f"{url}/v1/auth/token/lookup-self", headers={"X-Vault-Token": token})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert "root" in json.load(response)["data"]["policies"]
        raise RuntimeError("pytest failed")

    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/v1/sys/health", timeout=2)
    said = capsys.readouterr().out
    assert f"OpenBao dev server on {url}" in said and token not in said
