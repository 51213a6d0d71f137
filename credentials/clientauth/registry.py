"""
The client-authentication methods in use (settings.AGENTIDP_CLIENT_AUTH_METHODS), and the
two calls the OAuth endpoints make: which credentials a request presents, and whether they
authenticate a client.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils.module_loading import import_string

from vaultstore.exceptions import SecretStoreError

from ..models import Credential
from .base import ClientAuthMethod, MalformedClientAuth, Presented, StoreAllowed, StoreUnavailable, store_always_allowed


@functools.cache
def methods_in_use() -> tuple[ClientAuthMethod, ...]:
    """The configured methods, built once per process (and again when a test overrides the setting)."""
    loaded = []
    for path in settings.AGENTIDP_CLIENT_AUTH_METHODS:
        try:
            method_class = import_string(path)
        except ImportError as exc:
            raise ImproperlyConfigured(f"AGENTIDP_CLIENT_AUTH_METHODS: cannot import {path!r}.") from exc
        loaded.append(method_class())
    if not loaded:
        raise ImproperlyConfigured("AGENTIDP_CLIENT_AUTH_METHODS names no method.")
    return tuple(loaded)


@receiver(setting_changed)
def _forget_methods(*, setting: str, **kwargs: object) -> None:
    if setting == "AGENTIDP_CLIENT_AUTH_METHODS":
        methods_in_use.cache_clear()


def method_names() -> list[str]:
    """The names of the methods in use, for the authorization server's metadata."""
    return [method.name for method in methods_in_use()]


def presented_by(request: HttpRequest, params: dict[str, str]) -> Presented:
    """
    Return the client credentials the request presents, by the one method it uses.

    Raises MalformedClientAuth when it uses none (invalid_client), an Authorization scheme
    no method reads (invalid_client), or more than one method (invalid_request: RFC 6749
    section 2.3 allows one per request), or when its method cannot read what it sent.
    """
    in_use = methods_in_use()
    scheme = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")[0].lower()
    if scheme and not any(method.authorization_scheme == scheme for method in in_use):
        raise MalformedClientAuth(
            f"Authenticate the client with one of: {_names(in_use)}.", challenge=_challenge(in_use)
        )
    claiming = [method for method in in_use if method.claims(request, params)]
    if len(claiming) == 1:
        return claiming[0].read(request, params)
    if claiming:
        raise MalformedClientAuth(
            "Authenticate the client one way only: HTTP Basic or the request body.", error="invalid_request"
        )
    proofs = sorted({parameter for method in in_use for parameter in method.parameters})
    if "client_id" in params and proofs:
        # An id without its proof is a client that failed to authenticate (AgentIdP has no public clients).
        raise MalformedClientAuth(f"Send client_id together with {' or '.join(proofs)}.")
    raise MalformedClientAuth(
        f"Client authentication is required: use one of {_names(in_use)}.",
        challenge=None if "client_id" in params else _challenge(in_use),
    )


def _names(in_use: tuple[ClientAuthMethod, ...]) -> str:
    return ", ".join(method.name for method in in_use)


def _challenge(in_use: tuple[ClientAuthMethod, ...]) -> str | None:
    """The challenge for a refusal no single method answers: the first one a method has."""
    return next((method.challenge for method in in_use if method.challenge), None)


def authenticate(presented: Presented, *, store_allowed: StoreAllowed = store_always_allowed) -> Credential:
    """
    Return the credential that the presented credentials authenticate.

    Raises InvalidClient (refused, the same for every reason), VerificationWithheld (no store
    may be asked and nothing vouched for the proof without one) or StoreUnavailable (the
    store that would decide could not answer): never an exception of a store.
    """
    try:
        return presented.method.authenticate(presented, store_allowed=store_allowed)
    except SecretStoreError as exc:
        raise StoreUnavailable(type(exc).__name__, retry_after=exc.retry_after) from exc
