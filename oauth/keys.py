"""
The key that signs access tokens, and the JWKS document that publishes it.

The private key comes from AGENTIDP_SIGNING_KEY (a PEM) or AGENTIDP_SIGNING_KEY_FILE;
`python manage.py create_signing_key` makes the file (ES256 by default: it signs 6 to 14
times faster than RS256 with 2048- to 3072-bit keys, see bench/signing.py). RSA keys sign RS256, P-256 keys
ES256. The key id is the key's RFC 7638 thumbprint, so it never needs configuring. Keys
that signed earlier tokens stay published and verifying while those tokens live
(AGENTIDP_RETIRED_SIGNING_KEY_FILES).

A key signs with joserfc's algorithm for it, under the protected header every token it
signs shares, both worked out once per key rather than once per token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import json_b64encode, urlsafe_b64encode

MIN_RSA_BITS = 2048
TOKEN_TYPE = "at+jwt"  # noqa: S105 (RFC 9068's JWT type)


@dataclasses.dataclass(frozen=True)
class SigningKey:
    key: RSAKey | ECKey = dataclasses.field(repr=False)
    algorithm: str
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "use": "sig", "alg": self.algorithm}

    @functools.cached_property
    def jws_algorithm(self) -> JWSAlgModel:
        """Return joserfc's algorithm for this key, checked against it once rather than on every signature."""
        alg = JWSRegistry(algorithms=[self.algorithm]).get_alg(self.algorithm)
        alg.check_key(self.key)
        return alg

    @functools.cached_property
    def header_segment(self) -> bytes:
        """
        Return the base64url-encoded protected header of the access tokens this key signs.

        It is the same for every token: typ, alg and kid, in the order joserfc's jwt.encode
        writes them, validated by joserfc's header registry once.
        """
        header = {"typ": TOKEN_TYPE, "alg": self.algorithm, "kid": self.kid}
        JWSRegistry(algorithms=[self.algorithm]).check_header(header)
        return json_b64encode(header)

    def sign(self, payload: bytes) -> str:
        """Return the JWS Compact Serialization (RFC 7515 section 7.1) of `payload` under this key's header."""
        signing_input = self.header_segment + b"." + urlsafe_b64encode(payload)
        signature = self.jws_algorithm.sign(signing_input, self.key)
        return (signing_input + b"." + urlsafe_b64encode(signature)).decode("ascii")


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


def _read_pem(path: Any, what: str, hint: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ImproperlyConfigured(f"{what}: {path} cannot be read ({exc.strerror}). {hint}") from exc


@functools.cache
def get_signing_key() -> SigningKey:
    """Return the configured signing key, loaded once per process."""
    if settings.AGENTIDP_SIGNING_KEY:
        return load_signing_key(settings.AGENTIDP_SIGNING_KEY.encode())
    pem = _read_pem(
        settings.AGENTIDP_SIGNING_KEY_FILE,
        "No signing key",
        "Create one with `python manage.py create_signing_key` or set AGENTIDP_SIGNING_KEY.",
    )
    return load_signing_key(pem)


@functools.cache
def get_retired_keys() -> tuple[SigningKey, ...]:
    """
    Return the keys that signed tokens before the current one: they sign nothing, but verify.

    While the tokens a retired key signed may still be alive (AGENTIDP_ACCESS_TOKEN_TTL
    after the switch), AgentIdP keeps accepting them and publishes the key in its JWKS,
    so resource servers can switch algorithms or keys without a gap.
    """
    hint = "Remove it from AGENTIDP_RETIRED_SIGNING_KEY_FILES or restore the file."
    return tuple(
        load_signing_key(_read_pem(path, "A retired signing key", hint))
        for path in settings.AGENTIDP_RETIRED_SIGNING_KEY_FILES
    )


def verification_keys() -> dict[str, SigningKey]:
    """Return every key that verifies AgentIdP's tokens, by key id: the current one and the retired ones."""
    return {key.kid: key for key in (*get_retired_keys(), get_signing_key())}


def jwks() -> dict[str, Any]:
    """Return the RFC 7517 JWK Set of the public keys that verify AgentIdP's tokens (current key first)."""
    current = get_signing_key()
    return {"keys": [current.public_jwk(), *(key.public_jwk() for key in get_retired_keys() if key.kid != current.kid)]}
