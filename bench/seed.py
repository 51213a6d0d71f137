"""
Fill the benchmark's database with the credentials its scenarios present.

Run by bench/orchestrator.py as `python -m bench.seed ...` from the project root, with
AgentIdP's environment (DJANGO_SETTINGS_MODULE=agentidp.settings, DATABASE_URL, and
VAULT_ADDR/VAULT_TOKEN when Vault is the default store). Secrets go only to the JSON file
named by --out (mode 0600, in the orchestrator's private temporary directory); nothing
here prints one.

    warm --name NAME --count N --out FILE
        An agent and N credentials made by credentials.services (agent_create,
        credential_create): bcrypt with VAULT_ADDR unset, Vault with it set.
    cold --storage bcrypt|vault --name NAME --count N --out FILE [--vault-out FILE]
        An agent and N credentials inserted in bulk, each with its own clientId and its
        own random secret. bcrypt: each row its own hash at the configured cost (hashed on
        every core), so no two requests can share a verification. Vault: each row its own
        KV key, version 1; the [kv_key, secret] pairs go to --vault-out for
        bench/vault_server.py to load.

The out file is {"agent_id": ..., "storage": ..., "credentials": [[client_id, secret], ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")

import django

django.setup()

from credentials.models import Credential  # noqa: E402
from credentials.services import (  # noqa: E402
    agent_create,
    credential_create,
    generate_client_id,
    generate_client_secret,
)
from vaultstore.backends import get_backend, get_default_backend  # noqa: E402

#: Rows per INSERT when filling a cold pool.
BATCH_SIZE = 1000


def seed_warm(*, name: str, count: int) -> dict:
    agent = agent_create(acting=None, name=name, description="bench: warm credentials")
    credentials = []
    storage = ""
    for _ in range(count):
        issued = credential_create(acting=None, agent=agent, description="bench warm")
        credentials.append([issued.credential.client_id, issued.client_secret])
        storage = issued.credential.storage
    return {"agent_id": str(agent.id), "storage": storage, "credentials": credentials}


def seed_cold(*, storage: str, name: str, count: int, vault_out: Path | None) -> dict:
    agent = agent_create(acting=None, name=name, description=f"bench: cold {storage} credentials")
    secrets = [generate_client_secret() for _ in range(count)]
    rows = [
        Credential(agent=agent, client_id=generate_client_id(), description=f"bench cold {storage}")
        for _ in range(count)
    ]
    if storage == "bcrypt":
        backend = get_backend("bcrypt")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # bcrypt releases the GIL
            stored = list(pool.map(lambda secret: backend.store(owner=None, secret=secret), secrets))
        for row, location in zip(rows, stored, strict=True):
            row.set_stored_secret(location)
    else:
        backend = get_default_backend()
        if backend.name != "vault":
            raise SystemExit("seed cold --storage vault needs VAULT_ADDR (Vault as the default store).")
        entries = []
        for row, secret in zip(rows, secrets, strict=True):
            location = backend.location(owner=row)
            row.set_stored_secret(location)
            row.vault_version = 1
            entries.append([location.vault_path.removeprefix(f"{backend.mount}/data/"), secret])
        write_private(vault_out, entries)
    Credential.objects.bulk_create(rows, batch_size=BATCH_SIZE)
    return {
        "agent_id": str(agent.id),
        "storage": storage,
        "credentials": [[row.client_id, secret] for row, secret in zip(rows, secrets, strict=True)],
    }


def write_private(path: Path, data: object) -> None:
    """Write JSON to a new file that only this user can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Seed the benchmark database (see the module docstring).")
    sub = parser.add_subparsers(dest="kind", required=True)
    warm = sub.add_parser("warm")
    cold = sub.add_parser("cold")
    cold.add_argument("--storage", choices=["bcrypt", "vault"], required=True)
    cold.add_argument("--vault-out", type=Path)
    for command in (warm, cold):
        command.add_argument("--name", required=True)
        command.add_argument("--count", type=int, required=True)
        command.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.kind == "warm":
        result = seed_warm(name=args.name, count=args.count)
    else:
        if args.storage == "vault" and args.vault_out is None:
            parser.error("--storage vault needs --vault-out")
        result = seed_cold(storage=args.storage, name=args.name, count=args.count, vault_out=args.vault_out)
    write_private(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
