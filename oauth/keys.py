"""
The key that signs access tokens, and the JWKS document that publishes it.

The private key comes from AGENTIDP_SIGNING_KEY (a PEM) or AGENTIDP_SIGNING_KEY_FILE;
`python manage.py create_signing_key` makes the file. RSA keys sign RS256, P-256 keys
ES256. The key id is the key's RFC 7638 thumbprint, so it never needs configuring.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from joserfc.jwk import ECKey, RSAKey

MIN_RSA_BITS = 2048


@dataclasses.dataclass(frozen=True)
class SigningKey:
    key: RSAKey | ECKey = dataclasses.field(repr=False)
    algorithm: str
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "use": "sig", "alg": self.algorithm}


def load_signing_key(pem: bytes) -> SigningKey:
    """Build a SigningKey from a PEM private key; raise ImproperlyConfigured for anything unusable."""
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured("The signing key is not an unencrypted PEM private key.") from exc
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise ImproperlyConfigured(f"An RSA signing key needs at least {MIN_RSA_BITS} bits.")
        key, algorithm = RSAKey.import_key(pem), "RS256"
    elif isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
        key, algorithm = ECKey.import_key(pem), "ES256"
    else:
        raise ImproperlyConfigured("The signing key must be RSA (RS256) or EC P-256 (ES256).")
    return SigningKey(key=key, algorithm=algorithm, kid=key.thumbprint())


def generate_signing_key_pem(algorithm: str = "RS256") -> bytes:
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@functools.cache
def get_signing_key() -> SigningKey:
    """Return the configured signing key, loaded once per process."""
    if settings.AGENTIDP_SIGNING_KEY:
        return load_signing_key(settings.AGENTIDP_SIGNING_KEY.encode())
    path = settings.AGENTIDP_SIGNING_KEY_FILE
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"No signing key: {path} cannot be read ({exc.strerror}). "
            "Create one with `python manage.py create_signing_key` or set AGENTIDP_SIGNING_KEY."
        ) from exc
    return load_signing_key(pem)


def jwks() -> dict[str, Any]:
    """Return the RFC 7517 JWK Set of the public keys that verify AgentIdP's tokens."""
    return {"keys": [get_signing_key().public_jwk()]}
