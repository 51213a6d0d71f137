"""
Where one signer's public keys are: a JWK Set AgentIdP holds, a JWKS URL, or (for a trust
policy with neither) its issuer's OpenID discovery document.
"""

from __future__ import annotations

from joserfc.jwk import KeySet

from .keysets import RemoteKeys, keyset_from_jwks, remote_keyset


def keys_from(*, jwks: dict | None, jwks_uri: str | None, issuer: str | None = None, kid: str | None) -> KeySet:
    """
    The keys of one source: held ones as they are; fetched ones from the per-process cache,
    fetched again for a kid it does not know (at most once per AGENTIDP_KEY_REFRESH_MIN_SECONDS).

    Raises keysets.KeysUnavailable when remote keys cannot be fetched and none are kept.
    """
    if jwks is not None:
        return keyset_from_jwks(jwks)
    if jwks_uri:
        return remote_keyset(RemoteKeys(jwks_uri=jwks_uri), kid=kid)
    if issuer:
        return remote_keyset(RemoteKeys(issuer=issuer), kid=kid)
    return KeySet([])
