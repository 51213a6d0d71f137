"""
The public keys a key credential or a trust policy names, checked before they are kept:
a JWK Set of public keys only, or an https URL the key fetcher may fetch. Never a private key.
"""

from __future__ import annotations

from typing import Any

from ..errors import ValidationFailed
from ..jwtauth.fetch import check_key_url
from ..jwtauth.keysets import public_jwks_check


def clean_jwks(jwks: Any, *, field: str = "jwks") -> dict:
    """Return the JWK Set normalised, or raise ValidationFailed naming `field` (a private member, a bad key...)."""
    try:
        return public_jwks_check(jwks)
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}", details={field: [str(exc)]}) from None


def clean_key_url(url: Any, *, field: str = "jwksUri") -> str:
    """Return the URL as the key fetcher will use it, or raise ValidationFailed naming `field`."""
    if not isinstance(url, str):
        raise ValidationFailed(f"{field} must be a string.", details={field: ["Must be a string."]})
    try:
        return check_key_url(url)
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}", details={field: [str(exc)]}) from None


def clean_key_location(*, jwks: Any, jwks_uri: Any, required: bool) -> tuple[dict | None, str | None]:
    """
    Return (jwks, jwks_uri) checked: at most one of them, exactly one when `required`.

    Raises ValidationFailed with the contract's field names in its details.
    """
    if jwks is not None and jwks_uri is not None:
        message = "Give jwks or jwksUri, not both."
        raise ValidationFailed(message, details={"jwks": [message], "jwksUri": [message]})
    if required and jwks is None and jwks_uri is None:
        message = "A key credential needs jwks (a JWK Set of public keys) or jwksUri (an https URL of one)."
        raise ValidationFailed(message, details={"jwks": [message]})
    if jwks is not None:
        return clean_jwks(jwks), None
    if jwks_uri is not None:
        return None, clean_key_url(jwks_uri)
    return None, None


def key_summary(*, jwks: dict | None, jwks_uri: str | None) -> dict[str, Any]:
    """Describe a key location for the audit trail and the console: the kids, or the URL; never key material."""
    if jwks_uri:
        return {"jwksUri": jwks_uri}
    keys = (jwks or {}).get("keys") or []
    return {"kids": [key.get("kid") for key in keys if isinstance(key, dict)]}
