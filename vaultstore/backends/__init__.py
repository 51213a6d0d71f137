"""
Load the configured secret backends (settings.VAULTSTORE).

The backends are built once per process and rebuilt when a test overrides VAULTSTORE,
like Django's password hashers and storages.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ..exceptions import SecretStoreUnavailable
from .base import BaseSecretBackend, StoredSecret

__all__ = [
    "BaseSecretBackend",
    "StoredSecret",
    "get_backend",
    "get_backend_for",
    "get_backends",
    "get_default_backend",
    "reset_backends",
]


@functools.cache
def get_backends() -> dict[str, BaseSecretBackend]:
    """Return every configured backend by name, building them on first use."""
    config = getattr(settings, "VAULTSTORE", None)
    if not isinstance(config, dict) or not isinstance(config.get("BACKENDS"), dict) or not config["BACKENDS"]:
        raise ImproperlyConfigured("VAULTSTORE must be a dict with a non-empty 'BACKENDS' dict.")
    backends: dict[str, BaseSecretBackend] = {}
    for name, entry in config["BACKENDS"].items():
        try:
            backend_class = import_string(entry["BACKEND"])
        except (KeyError, TypeError, ImportError) as exc:
            raise ImproperlyConfigured(f"VAULTSTORE backend {name!r} needs an importable 'BACKEND'.") from exc
        if backend_class.name != name:
            raise ImproperlyConfigured(
                f"VAULTSTORE backend {name!r} must be configured under its own name {backend_class.name!r}."
            )
        backends[name] = backend_class(**entry.get("OPTIONS", {}))
    if config.get("DEFAULT") not in backends:
        raise ImproperlyConfigured("VAULTSTORE['DEFAULT'] must name one of VAULTSTORE['BACKENDS'].")
    return backends


def get_default_backend() -> BaseSecretBackend:
    """Return the backend that keeps new secrets."""
    return get_backends()[settings.VAULTSTORE["DEFAULT"]]


def get_backend(name: str) -> BaseSecretBackend:
    """Return the backend called `name`, or raise SecretStoreUnavailable if it is not configured."""
    try:
        return get_backends()[name]
    except KeyError:
        raise SecretStoreUnavailable(f"The secret store {name!r} is not configured.") from None


def get_backend_for(stored: StoredSecret) -> BaseSecretBackend:
    """Return the backend that keeps `stored`, as identify_hasher finds a hash's hasher."""
    return get_backend(stored.storage)


def reset_backends() -> None:
    """Close the backends built so far and forget them; the next use builds them from settings again."""
    if get_backends.cache_info().currsize:
        for backend in get_backends().values():
            backend.close()
    get_backends.cache_clear()
