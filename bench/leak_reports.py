"""
What a large leaked-secret report costs: one GitHub partner call of many tokens, in time and
in memory, answered by AgentIdP in this process.

    .venv/bin/python bench/leak_reports.py [--tokens 5000] [--live 10] [--rounds 3]

Makes a fresh SQLite database in a temporary directory, `--live` bcrypt credentials (cost
AGENTIDP_BCRYPT_ROUNDS, 12 by default) and a signed partner call of `--tokens` tokens: the live
secrets among strangers in AgentIdP's format (a right checksum, no credential), near misses (a
wrong checksum) and other text, in equal parts. Each round quarantines the live credentials,
so they are rotated back between rounds. Prints the call's wall time and Python's peak
allocation (tracemalloc) during it, per round.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens",
        type=int,
        default=5000,
        help="tokens in the call (default 5000: what fits the 1 MiB body limit)",
    )
    parser.add_argument("--live", type=int, default=10, help="live secrets among them (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="agentidp-leak-bench-")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "agentidp.settings",
            "DEBUG": "true",
            "ALLOWED_HOSTS": "testserver",
            "DATABASE_URL": f"sqlite:///{directory}/bench.sqlite3",
            "VAULT_ADDR": "",
            "LOG_LEVEL": "ERROR",
        }
    )
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    github_key = ec.generate_private_key(ec.SECP256R1())
    os.environ["AGENTIDP_GITHUB_SECRET_SCANNING_KEYS"] = json.dumps(
        {
            "public_keys": [
                {
                    "key_identifier": "bench",
                    "key": github_key.public_key()
                    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                    .decode(),
                    "is_current": True,
                }
            ]
        }
    )
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    from credentials import secretformat
    from credentials.models import Credential
    from credentials.services import agent_create, credential_create, credential_rotate

    call_command("migrate", verbosity=0)
    agent = agent_create(acting=None, name="leak-bench")
    issued = [credential_create(acting=None, agent=agent) for _ in range(options.live)]
    strangers = options.tokens - options.live
    rng = random.Random(1)

    def near_miss() -> str:
        secret = secretformat.new_secret(secretformat.new_secret_ref())
        return secret[:-1] + ("A" if secret[-1] != "A" else "B")

    kinds = [
        lambda: secretformat.new_secret(secretformat.new_secret_ref()),
        near_miss,
        lambda: "".join(rng.choice("abcdef0123456789") for _ in range(40)),
    ]
    client = Client()
    print(
        f"{options.tokens} tokens ({options.live} live), bcrypt cost {settings.AGENTIDP_BCRYPT_ROUNDS}, SQLite, "
        f"one process"
    )
    print(f"{'round':>5} {'body KB':>8} {'wall ms':>9} {'peak MB':>8} {'true_positive':>14}")
    walls = []
    for round_number in range(1, options.rounds + 1):
        tokens = [kinds[index % 3]() for index in range(strangers)] + [item.client_secret for item in issued]
        rng.shuffle(tokens)
        body = json.dumps(
            [
                {"token": t, "type": "agentidp_client_secret", "url": "https://github.com/o/r", "source": "commit"}
                for t in tokens
            ]
        ).encode()
        signature = base64.b64encode(github_key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
        tracemalloc.start()
        started = time.perf_counter()
        response = client.post(
            "/api/v1/secret-scanning/github",
            body,
            content_type="application/json",
            HTTP_GITHUB_PUBLIC_KEY_IDENTIFIER="bench",
            HTTP_GITHUB_PUBLIC_KEY_SIGNATURE=signature,
        )
        wall = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert response.status_code == 200, (len(body), response.content[:200])
        live = sum(entry["label"] == "true_positive" for entry in response.json())
        assert live == options.live, live
        walls.append(wall)
        print(f"{round_number:>5} {len(body) / 1024:>8.0f} {wall * 1000:>9.1f} {peak / 2**20:>8.1f} {live:>14}")
        issued = [
            credential_rotate(acting=None, credential=Credential.objects.get(pk=item.credential.pk)) for item in issued
        ]
    print(f"median wall {statistics.median(walls) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
