"""
Client authentication: how a request at the token, introspection or revocation endpoint
proves which client it is.

The OAuth endpoints make two calls: `presented_by(request, params)` (which credentials the
request presents, by which method) and `authenticate(presented, store_allowed=...)` (the
credential they authenticate; `store_allowed` is asked only once a store would be). Each
method (client_secret_basic, client_secret_post) is a ClientAuthMethod listed in
settings.AGENTIDP_CLIENT_AUTH_METHODS; the verified-secret cache, the re-check after a slow
verification, last-used and upgrade on use sit behind them.
Failures are typed (base.py), and a store outage is StoreUnavailable, never a store's own
exception.
"""

from .base import (
    ClientAuthError,
    ClientAuthMethod,
    InvalidClient,
    MalformedClientAuth,
    Presented,
    StoreAllowed,
    StoreUnavailable,
    VerificationWithheld,
    store_always_allowed,
)
from .registry import authenticate, method_names, methods_in_use, presented_by

__all__ = [
    "ClientAuthError",
    "ClientAuthMethod",
    "InvalidClient",
    "MalformedClientAuth",
    "Presented",
    "StoreAllowed",
    "StoreUnavailable",
    "VerificationWithheld",
    "authenticate",
    "method_names",
    "methods_in_use",
    "presented_by",
    "store_always_allowed",
]
