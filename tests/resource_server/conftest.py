"""Fixtures for the resource-server kit: an issuer that signs AgentIdP-shaped access tokens, and the kit's settings."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning

from agentidp.resource_server import Settings
from tests.oidc_issuer import OidcIssuer

RESOURCE = "https://reports.example/api"


def access_claims(issuer: OidcIssuer, **overrides: Any) -> dict[str, Any]:
    """The claims of an AgentIdP access token (RFC 9068) for RESOURCE; an override of None drops the claim."""
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "sub": str(uuid.uuid4()),
        "aud": RESOURCE,
        "exp": now + 600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "client_id": "client-1",
        "scope": "reports:read reports:write",
        **overrides,
    }
    return {name: value for name, value in claims.items() if value is not None}


def access_token(issuer: OidcIssuer, *, alg: str = "ES256", headers: dict | None = None, **claims: Any) -> str:
    """An access token signed by the issuer's current key for `alg`."""
    key = issuer.key_for(alg)
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid, **(headers or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc on EdDSA (RFC 9864 names Ed25519)
        return jwt.encode(header, access_claims(issuer, **claims), key, algorithms=[alg])


@pytest.fixture
def token_issuer() -> Iterator[OidcIssuer]:
    """An issuer over http on 127.0.0.1 whose keys sign AgentIdP-shaped access tokens."""
    with OidcIssuer() as issuer:
        yield issuer


def kit_settings(issuer: OidcIssuer, **options: Any) -> Settings:
    return Settings(
        **{
            "issuer": issuer.issuer,
            "resource": RESOURCE,
            "jwks_uri": issuer.jwks_uri,
            "allow_http": True,
            "timeout_seconds": 0.5,
            **options,
        }
    )
