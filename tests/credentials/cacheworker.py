"""
A long-lived AgentIdP process for the cross-process tests of the verified-secret cache
(tests/credentials/test_verified_cache.py).

Run with the project's settings (DJANGO_SETTINGS_MODULE=agentidp.settings) and the
environment the test gives it (DATABASE_URL of the installation's own database, CACHE_URL,
...). It reads one command per line on stdin and answers each with one JSON line:

    seed N                  create the tables, then N agents with one bcrypt credential each:
                            {"credentials": [{"clientId": ..., "clientSecret": ...}, ...]}
    auth CLIENT_ID SECRET   {"ok": bool, "reason": str|null, "store_asked": int}: whether the
                            secret authenticates now, and how many secret verifications a store
                            ran for it (BcryptSecretBackend.verify / VaultSecretBackend.verify,
                            the dummy verification for an unknown client included)
    rotate CLIENT_ID        credential_rotate without a grace period: {"secret": NEW}
    delete CLIENT_ID        credential_delete: {}
    expire CLIENT_ID        the row's expires_at moves into the past (as tests.credentials.helpers.expire): {}
    suspend CLIENT_ID       agent_update(status="suspended"): {}
    reactivate CLIENT_ID    agent_update(status="active"): {}
    rows_read               {"rows_read": int}: how many times the lookup by clientId read the rows
                            from the database (rather than the rows the process kept) since the last
                            rows_read

A command that fails answers {"error": "..."} and the process keeps serving. EOF ends it.
"""

import functools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")

store_asked = 0
rows_read = 0


def count_calls(owner, name: str, counter: str = "store_asked") -> None:
    """Replace owner.name by a wrapper that counts its calls in the global `counter`."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        globals()[counter] += 1
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def seed(count: int) -> dict:
    from django.core.management import call_command

    from credentials import services

    call_command("migrate", verbosity=0)
    made = []
    for index in range(count):
        agent = services.agent_create(acting=None, name=f"cache-worker-agent-{index}")
        issued = services.credential_create(acting=None, agent=agent)
        made.append({"clientId": issued.credential.client_id, "clientSecret": issued.client_secret})
    return {"credentials": made}


def auth(client_id: str, secret: str) -> dict:
    from credentials.clientauth import InvalidClient
    from credentials.clientauth.secret import credential_authenticate

    global store_asked
    store_asked = 0
    try:
        credential_authenticate(client_id=client_id, client_secret=secret)
    except InvalidClient as exc:
        return {"ok": False, "reason": exc.reason, "store_asked": store_asked}
    return {"ok": True, "reason": None, "store_asked": store_asked}


def change(action: str, client_id: str) -> dict:
    import datetime

    from django.utils import timezone

    from credentials import services
    from credentials.models import Credential

    credential = Credential.objects.select_related("agent").get(client_id=client_id)
    if action == "rotate":
        return {"secret": services.credential_rotate(acting=None, credential=credential).client_secret}
    if action == "delete":
        services.credential_delete(acting=None, credential=credential)
    elif action == "expire":
        past = timezone.now() - datetime.timedelta(seconds=1)
        Credential.objects.filter(pk=credential.pk).update(expires_at=past)
    elif action in ("suspend", "reactivate"):
        status = "suspended" if action == "suspend" else "active"
        services.agent_update(acting=None, agent=credential.agent, status=status)
    else:
        raise ValueError(f"unknown command {action!r}")
    return {}


def answer(line: str) -> dict:
    command, *args = line.split()
    if command == "seed":
        return seed(int(args[0]))
    if command == "auth":
        return auth(args[0], args[1])
    if command == "rows_read":
        global rows_read
        read, rows_read = rows_read, 0
        return {"rows_read": read}
    return change(command, args[0])


def main() -> None:
    import django

    django.setup()
    from vaultstore.backends.bcrypt import BcryptSecretBackend
    from vaultstore.backends.vault import VaultSecretBackend

    count_calls(BcryptSecretBackend, "verify")
    count_calls(VaultSecretBackend, "verify")
    from credentials import selectors

    count_calls(selectors.kept_credentials, "_load", "rows_read")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = answer(line)
        except Exception as exc:  # report it and keep serving: the test decides
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
