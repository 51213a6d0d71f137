"""How the console shows public keys: each key's kid, kty and alg, or the URL of the keys; never key material."""

from __future__ import annotations

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from .. import selectors
from ..models import Credential


def keys_display(*, jwks: dict | None, jwks_uri: str | None) -> str:
    """One line per key, "kid (kty alg)", or the key URL; "-" when there are none."""
    if jwks_uri:
        return format_html("<code>{}</code>", jwks_uri)
    keys = [key for key in (jwks or {}).get("keys", []) if isinstance(key, dict)]
    if not keys:
        return "-"
    return format_html_join(
        mark_safe("<br>"),
        "<code>{}</code> ({})",
        (
            (key.get("kid") or "(no kid)", " ".join(str(key[name]) for name in ("kty", "alg") if key.get(name)))
            for key in keys
        ),
    )


def credential_keys_display(credential: Credential) -> str:
    """A key credential's keys, then its previous keys still in their grace period and until when; "-" for secrets."""
    if not credential.is_key:
        return "-"
    current = keys_display(jwks=credential.jwks, jwks_uri=credential.jwks_uri)
    graces = selectors.grace_keys_live(credential_id=credential.pk)
    if not graces:
        return current
    previous = format_html_join(
        "",
        "<br>previous, until {}: {}",
        (
            (
                timezone.localtime(grace.valid_until).strftime("%Y-%m-%d %H:%M:%S %Z"),
                keys_display(jwks=grace.jwks, jwks_uri=grace.jwks_uri),
            )
            for grace in graces
        ),
    )
    return format_html("{}{}", current, previous)
