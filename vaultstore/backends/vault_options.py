"""
Check the Vault backend's options: their defaults, and the first bad one named.

agentidp/settings.py builds them from VAULT_ADDR, VAULT_TOKEN and the other VAULT_*
variables; a bad value is ImproperlyConfigured at start-up (system check vaultstore.E010),
and no message here repeats the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

DEFAULT_OPTIONS = {
    "url": "",
    "token": "",
    # A file holding the token instead (a Vault Agent sink): read again when Vault refuses the token.
    "token_file": "",
    "mount": "secret",
    "namespace": "",
    # True, False, or the path of a CA bundle (requests' `verify`).
    "verify": True,
    "connect_timeout": 1.0,
    "read_timeout": 3.0,
    # Outages in a row before failing fast (0: never), and for how long (CircuitBreaker).
    "breaker_failures": 3,
    "breaker_seconds": 5.0,
}


def validate_options(options: Mapping[str, Any]) -> None:
    """Raise ImproperlyConfigured naming the first bad option."""
    url = options["url"]
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise ImproperlyConfigured("VAULTSTORE backend 'vault': 'url' must be an http:// or https:// URL.")
    if not isinstance(options["token"], str) or not isinstance(options["token_file"], str):
        raise ImproperlyConfigured("VAULTSTORE backend 'vault': 'token' and 'token_file' must be strings.")
    if bool(options["token"]) == bool(options["token_file"]):
        raise ImproperlyConfigured("VAULTSTORE backend 'vault': set exactly one of 'token' and 'token_file'.")
    mount = options["mount"]
    if not isinstance(mount, str) or not mount.strip("/") or mount != mount.strip("/"):
        raise ImproperlyConfigured(
            "VAULTSTORE backend 'vault': 'mount' must be a path without leading or trailing '/'."
        )
    if not isinstance(options["namespace"], str):
        raise ImproperlyConfigured("VAULTSTORE backend 'vault': 'namespace' must be a string.")
    if not isinstance(options["verify"], bool | str) or options["verify"] == "":
        raise ImproperlyConfigured("VAULTSTORE backend 'vault': 'verify' must be true, false or a CA bundle path.")
    for option in ("connect_timeout", "read_timeout"):
        value = options[option]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 60:
            raise ImproperlyConfigured(
                f"VAULTSTORE backend 'vault': {option!r} must be a number of seconds from 0 to 60."
            )
    failures = options["breaker_failures"]
    if isinstance(failures, bool) or not isinstance(failures, int) or not 0 <= failures <= 1000:
        raise ImproperlyConfigured("VAULTSTORE backend 'vault': 'breaker_failures' must be an integer from 0 to 1000.")
    seconds = options["breaker_seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
        raise ImproperlyConfigured(
            "VAULTSTORE backend 'vault': 'breaker_seconds' must be a number of seconds from 0 to 3600."
        )
