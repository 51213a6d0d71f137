"""
A separate AgentIdP process for the kill -9 tests of migrate_to_vault (tests/credentials/test_migrate_to_vault.py).

Run with the project's settings (DJANGO_SETTINGS_MODULE=agentidp.settings) and the
environment the test gives it (DATABASE_URL of its own SQLite file, VAULT_ADDR, ...):

    python tests/credentials/killpoint.py seed N
        Create the tables and one agent with N credentials (bcrypt: run it without VAULT_ADDR);
        print them as JSON lines shaped like migrate_to_vault's (agentId, credentialId, clientId, clientSecret).
    python tests/credentials/killpoint.py check < candidates.json
        For {"clientId": ["secret", ...], ...} print {"clientId": {"storage": ..., "works": [bool, ...]}}:
        which of the secrets authenticate now. Moves on use are switched off, so checking changes nothing.
    python tests/credentials/killpoint.py kill POINT N COMMAND [ARGS...]
        Run `manage.py COMMAND ARGS...`, killing this process with SIGKILL (no clean-up of any kind)
        right after the Nth return of POINT: "store" (VaultSecretBackend.store: Vault took the
        write), "record" (credentials.migration.SecretsFile.record: the line is in the file and
        fsynced) or "rotate" (credentials.services.credential_migrate: the rotation committed).
"""

import functools
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")


def kill_after(owner, name: str, nth: int) -> None:
    """Replace owner.name by a wrapper that SIGKILLs this process right after its nth call returns."""
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        result = original(*args, **kwargs)
        calls += 1
        if calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


def seed(count: int) -> None:
    from django.core.management import call_command

    from credentials import services
    from credentials.migration import SecretsFile

    call_command("migrate", verbosity=0)
    agent = services.agent_create(acting=None, name="migrating-agent")
    for _ in range(count):
        issued = services.credential_create(acting=None, agent=agent)
        assert issued.credential.storage == "bcrypt", "seed runs without VAULT_ADDR"
        print(json.dumps(SecretsFile.line_for(issued)), flush=True)


def check() -> None:
    from credentials.clientauth import InvalidClient
    from credentials.clientauth.secret import credential_authenticate
    from credentials.models import Credential

    result = {}
    for client_id, candidates in json.load(sys.stdin).items():
        works = []
        for secret in candidates:
            try:
                credential_authenticate(client_id=client_id, client_secret=secret)
            except InvalidClient:
                works.append(False)
            else:
                works.append(True)
        storage = Credential.objects.get(client_id=client_id).storage
        result[client_id] = {"storage": storage, "works": works}
    print(json.dumps(result))


def kill(point: str, nth: int, argv: list[str]) -> None:
    from django.core.management import execute_from_command_line

    from credentials import services
    from credentials.migration import SecretsFile
    from vaultstore.backends.vault import VaultSecretBackend

    owner, name = {
        "store": (VaultSecretBackend, "store"),
        "record": (SecretsFile, "record"),
        "rotate": (services, "credential_migrate"),
    }[point]
    kill_after(owner, name, nth)
    execute_from_command_line(["manage.py", *argv])


def main() -> None:
    mode, *rest = sys.argv[1:]
    if mode == "check":
        # Checking must not move anything (a move on use would take a credential out of the migration).
        os.environ["AGENTIDP_UPGRADE_ON_USE"] = "false"
    import django

    django.setup()
    if mode == "seed":
        seed(int(rest[0]))
    elif mode == "check":
        check()
    elif mode == "kill":
        kill(rest[0], int(rest[1]), rest[2:])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
