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

    keys --name NAME --count N --out FILE
        An agent and N key credentials made by credential_create (kind "key"), each with
        its own ES256 key, the public half held inline (jwks). The out file's pairs are
        [client_id, private JWK]: the private keys stay in the orchestrator's private
        directory, for `assertions`.
    assertions --keys FILE --count N --out FILE
        N client assertions (private_key_jwt), the keys of --keys (a `keys` out file) in
        turn, each with its own jti, as a client signs them: iss = sub = the clientId, aud
        = the token endpoint's URL, and the longest lifetime AgentIdP accepts, so that they
        outlast the run. Minted here, before the window, so the load generator signs nothing.
    platform --name NAME --count N --out FILE
        A Kubernetes-like platform: an agent with one trust policy made by
        trust_policy_create (inline JWKS of the platform's ES256 keys, subject pattern
        system:serviceaccount:bench:worker-*, one required claim), and N service-account
        tokens for workers 0 to N-1, each reused until it expires (an hour), as a
        workload reuses its projected token. The platform's private key is not kept.

The out file is {"agent_id": ..., "storage": ..., "credentials": [[client_id, secret], ...]};
for `assertions` and `platform` the pairs are [client_id, assertion] and [subject, token].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.urls import reverse  # noqa: E402
from joserfc import jwt  # noqa: E402
from joserfc.jwk import ECKey  # noqa: E402

from credentials import secretformat  # noqa: E402
from credentials.models import Credential  # noqa: E402
from credentials.services import (  # noqa: E402
    agent_create,
    credential_create,
    generate_client_id,
    generate_client_secret,
    trust_policy_create,
)
from vaultstore.backends import get_backend, get_default_backend  # noqa: E402

#: Rows per INSERT when filling a cold pool.
BATCH_SIZE = 1000
#: The signature algorithm of the key credentials and of the platform (ES256: the quickest to verify of those accepted).
ALGORITHM = "ES256"
#: The Kubernetes-like platform: its issuer, its tokens' audience, its subjects, and the claim the policy requires.
PLATFORM_ISSUER = "https://kubernetes.default.svc.cluster.local"
PLATFORM_AUDIENCE = "agentidp"
PLATFORM_NAMESPACE = "bench"
PLATFORM_SUBJECT_PATTERN = f"system:serviceaccount:{PLATFORM_NAMESPACE}:worker-*"
PLATFORM_TOKEN_SECONDS = 3600


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
    rows = [
        Credential(
            agent=agent,
            client_id=generate_client_id(),
            secret_ref=secretformat.new_secret_ref(),
            description=f"bench cold {storage}",
        )
        for _ in range(count)
    ]
    secrets = [generate_client_secret(row.secret_ref) for row in rows]
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


def new_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": uuid.uuid4().hex[:16], "alg": ALGORITHM, "use": "sig"})


def public_jwks(*keys: ECKey) -> dict:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def seed_keys(*, name: str, count: int) -> dict:
    agent = agent_create(acting=None, name=name, description="bench: key credentials (private_key_jwt)")
    credentials = []
    for _ in range(count):
        key = new_key()
        issued = credential_create(acting=None, agent=agent, description="bench key", kind="key", jwks=public_jwks(key))
        credentials.append([issued.credential.client_id, key.as_dict(private=True)])
    return {"agent_id": str(agent.id), "storage": "", "credentials": credentials}


def seed_assertions(*, keys: Path, count: int) -> dict:
    signers = [(client_id, ECKey.import_key(jwk)) for client_id, jwk in json.loads(keys.read_text())["credentials"]]
    audience = settings.AGENTIDP_ISSUER + reverse("oauth:token")
    lifetime = settings.AGENTIDP_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS
    credentials = []
    for index in range(count):
        client_id, key = signers[index % len(signers)]
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + lifetime}
        claims["jti"] = uuid.uuid4().hex
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}
        credentials.append([client_id, jwt.encode(header, claims, key, algorithms=[ALGORITHM])])
    return {"agent_id": None, "storage": "", "credentials": credentials}


def seed_platform(*, name: str, count: int) -> dict:
    agent = agent_create(acting=None, name=name, description="bench: platform identities (jwt-bearer)")
    signing, previous = new_key(), new_key()  # an issuer's set usually holds its previous key too
    trust_policy_create(
        acting=None,
        agent=agent,
        issuer=PLATFORM_ISSUER,
        audience=PLATFORM_AUDIENCE,
        subject_pattern=PLATFORM_SUBJECT_PATTERN,
        claims={"namespace": PLATFORM_NAMESPACE},
        jwks=public_jwks(signing, previous),
        max_token_age_seconds=PLATFORM_TOKEN_SECONDS,
        description="bench: the workers of one namespace",
    )
    now = int(time.time())
    credentials = []
    for index in range(count):
        account = f"worker-{index}"
        subject = f"system:serviceaccount:{PLATFORM_NAMESPACE}:{account}"
        claims = {
            "iss": PLATFORM_ISSUER,
            "sub": subject,
            "aud": [PLATFORM_AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + PLATFORM_TOKEN_SECONDS,
            "jti": str(uuid.uuid4()),
            # Kubernetes nests what it knows of the workload; a policy matches top-level claims, hence `namespace`.
            "kubernetes.io": {
                "namespace": PLATFORM_NAMESPACE,
                "pod": {"name": f"{account}-7d9f8b6c5-x2k4q", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
            },
            "namespace": PLATFORM_NAMESPACE,
        }
        token = jwt.encode(
            {"alg": ALGORITHM, "kid": signing.kid, "typ": "JWT"}, claims, signing, algorithms=[ALGORITHM]
        )
        credentials.append([subject, token])
    return {"agent_id": str(agent.id), "storage": "", "credentials": credentials}


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
    keys = sub.add_parser("keys")
    assertions = sub.add_parser("assertions")
    platform = sub.add_parser("platform")
    cold.add_argument("--storage", choices=["bcrypt", "vault"], required=True)
    cold.add_argument("--vault-out", type=Path)
    assertions.add_argument("--keys", type=Path, required=True)
    for command in (warm, cold, keys, platform):
        command.add_argument("--name", required=True)
    for command in (warm, cold, keys, assertions, platform):
        command.add_argument("--count", type=int, required=True)
        command.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.kind == "warm":
        result = seed_warm(name=args.name, count=args.count)
    elif args.kind == "keys":
        result = seed_keys(name=args.name, count=args.count)
    elif args.kind == "assertions":
        result = seed_assertions(keys=args.keys, count=args.count)
    elif args.kind == "platform":
        result = seed_platform(name=args.name, count=args.count)
    else:
        if args.storage == "vault" and args.vault_out is None:
            parser.error("--storage vault needs --vault-out")
        result = seed_cold(storage=args.storage, name=args.name, count=args.count, vault_out=args.vault_out)
    write_private(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
