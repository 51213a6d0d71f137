"""Key credentials and trust policies made directly, and assertions minted with joserfc, for the OAuth tests."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from credentials import services
from credentials.models import Agent, Credential, TrustPolicy

TOKEN_URL = "/api/v1/token"
ISSUER = "http://testserver"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def new_key(alg: str = "ES256", kid: str | None = None):
    """A private key for `alg`, with a kid."""
    parameters = {"kid": kid or uuid.uuid4().hex[:12], "alg": alg, "use": "sig"}
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters)
    if alg == "ES384":
        return ECKey.generate_key("P-384", parameters=parameters)
    if alg in ("RS256", "PS256"):
        return RSAKey.generate_key(2048, parameters=parameters)
    return OKPKey.generate_key("Ed25519", parameters=parameters)


def public_jwks(*keys) -> dict:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def key_credential(agent: Agent, *, jwks: dict | None = None, jwks_uri: str | None = None) -> Credential:
    """A key credential made straight in the database (the management API's own tests make them through it)."""
    return Credential.objects.create(
        agent=agent,
        kind=Credential.Kind.KEY,
        client_id=services.generate_client_id(),
        storage="",
        jwks=jwks,
        jwks_uri=jwks_uri,
    )


def trust_policy(agent: Agent, **fields: Any) -> TrustPolicy:
    return TrustPolicy.objects.create(agent=agent, **fields)


def client_claims(client_id: str, **overrides: Any) -> dict:
    """The claims of a client assertion AgentIdP accepts, with `overrides` (None drops a claim)."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": ISSUER + TOKEN_URL,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def sign(key, claims: dict, *, alg: str | None = None, header: dict | None = None) -> str:
    alg = alg or key.alg
    return jwt.encode({"alg": alg, "kid": key.kid, **(header or {})}, claims, key, algorithms=[alg])


def raw_sign(key, header: dict, claims: dict) -> str:
    """Sign without the JOSE library's own checks of the header: for headers a careful minter would not write."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = JWSRegistry.algorithms[header["alg"]].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def assertion_params(assertion: str, **extra: str) -> dict:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }
