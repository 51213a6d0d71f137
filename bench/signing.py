"""
How long AgentIdP's access-token signing and verification take, per JWS algorithm.

    .venv/bin/python bench/signing.py [--seconds 2]

Signs and verifies the same RFC 9068 claims with joserfc, as oauth/tokens.py does, for an
EC P-256 key (ES256) and RSA keys of 2048 and 3072 bits (RS256), and prints operations per
second for one core. The numbers chose ES256 as the default for new keys (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt

from oauth.keys import generate_signing_key_pem, load_signing_key


def rsa_pem(bits: int) -> bytes:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def rate(operation, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        operation()
        done += 1
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    seconds = parser.parse_args().seconds
    now = int(time.time())
    claims = {
        "iss": "https://idp.example.com",
        "sub": str(uuid.uuid4()),
        "aud": "https://idp.example.com",
        "exp": now + 3600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "client_id": os.urandom(16).hex(),
        "scope": "reports:read reports:write",
    }
    keys = {
        "ES256 (P-256)": generate_signing_key_pem("ES256"),
        "RS256 (2048-bit)": rsa_pem(2048),
        "RS256 (3072-bit)": rsa_pem(3072),
    }
    print(f"{'key':<18} {'sign/s':>10} {'verify/s':>10}")
    for label, pem in keys.items():
        key = load_signing_key(pem)
        header = {"alg": key.algorithm, "typ": "at+jwt", "kid": key.kid}
        algorithms = [key.algorithm]
        token = jwt.encode(header, claims, key.key, algorithms=algorithms)

        def sign(header=header, key=key.key, algorithms=algorithms):
            jwt.encode(header, claims, key, algorithms=algorithms)

        def verify(token=token, key=key.key, algorithms=algorithms):
            jwt.decode(token, key, algorithms=algorithms)

        print(f"{label:<18} {rate(sign, seconds):>10.0f} {rate(verify, seconds):>10.0f}")


if __name__ == "__main__":
    main()
