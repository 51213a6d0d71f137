"""
What every client-authentication method is and what it may answer: the credentials a
request presents, and the typed failures the OAuth endpoints turn into their errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from django.http import HttpRequest

    from ..models import Credential


#: Whether a store (bcrypt, Vault) may be asked to verify this request's proof: asked only once
#: a store would be, since the answer may cost a read of the rate limits' counters. It gives
#: the same answer each time it is asked for one request (the rate limits read once).
StoreAllowed = Callable[[], bool]


def store_always_allowed() -> bool:
    """The StoreAllowed of a request no limit applies to."""
    return True


@dataclasses.dataclass(frozen=True)
class Presented:
    """What a request presents to authenticate its client: the method, the clientId it names, and its proof."""

    method: ClientAuthMethod
    client_id: str
    proof: str = dataclasses.field(repr=False)  # the client secret (or, for signed methods, the assertion)
    #: The URL the request was sent to (issuer + path): an audience a signed assertion may name.
    endpoint: str = ""
    #: What the method already read from the proof (a signed assertion taken apart), so it is read once.
    parsed: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def method_name(self) -> str:
        return self.method.name


class ClientAuthMethod:
    """
    One way for a client to authenticate at the token, introspection and revocation
    endpoints (RFC 6749 section 2.3; RFC 7591's names), in the spirit of Django's
    authentication backends: listed by dotted path in AGENTIDP_CLIENT_AUTH_METHODS.

    `claims` says whether a request uses this method at all (cheaply, from its header or
    parameters); `read` turns a request it claims into what it presents, or raises
    MalformedClientAuth; `authenticate` turns that into the authenticated client's
    credential, or raises a ClientAuthError.
    """

    #: The method's name in RFC 8414 metadata (token_endpoint_auth_methods_supported).
    name: ClassVar[str]
    #: The Authorization scheme the method reads (lower case), if it reads that header.
    authorization_scheme: ClassVar[str | None] = None
    #: The body parameters that carry its proof besides client_id.
    parameters: ClassVar[tuple[str, ...]] = ()
    #: The WWW-Authenticate challenge its failures answer with, if any.
    challenge: ClassVar[str | None] = None

    def claims(self, request: HttpRequest, params: dict[str, str]) -> bool:
        raise NotImplementedError

    def read(self, request: HttpRequest, params: dict[str, str]) -> Presented:
        raise NotImplementedError

    def authenticate(self, presented: Presented, *, store_allowed: StoreAllowed = store_always_allowed) -> Credential:
        raise NotImplementedError


class ClientAuthError(Exception):
    """Client authentication did not succeed."""


class MalformedClientAuth(ClientAuthError):
    """
    The request does not present client credentials that can be checked: none, half of
    them, two methods at once, or a header that cannot be read. `error` is the OAuth error
    code to answer with (invalid_client, or invalid_request for two methods at once);
    `challenge` the WWW-Authenticate header for it, if any.
    """

    def __init__(self, description: str, *, error: str = "invalid_client", challenge: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.error = error
        self.challenge = challenge


class InvalidClient(ClientAuthError):
    """
    Client authentication failed. `reason` and `credential` (the one the clientId names, if
    any) are for logs and audit only; clients see invalid_client.
    """

    def __init__(self, reason: str, *, credential: Credential | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.credential = credential


class VerificationWithheld(ClientAuthError):
    """The caller forbade asking a store (its client is throttled), and no recent verification vouched for it."""


class StoreUnavailable(ClientAuthError):
    """
    The store that holds the client's secret could not answer (Vault down, sealed, failing
    fast), or answered that it lost a secret the database trusts: the client is not refused
    for it. `reason` names the store's error for logs; `retry_after` is in seconds.
    """

    #: The contract's code for a secret that could not be read.
    code = "VAULT_READ_ERROR"
    description = "The secret store is unavailable; try again shortly."

    def __init__(self, reason: str, *, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class KeysUnavailable(StoreUnavailable):
    """
    The client's public keys are at a URL that cannot be fetched, and no good keys of it are
    kept (credentials.jwtauth.keysets): like a store outage, not the client's failure.
    """

    code = "KEYS_UNAVAILABLE"
    description = "The client's public keys cannot be fetched; try again shortly."


class ReplayCheckUnavailable(StoreUnavailable):
    """The shared cache that remembers used assertion ids cannot answer: no assertion is accepted meanwhile."""

    code = "TEMPORARILY_UNAVAILABLE"
    description = "Signed assertions cannot be checked for replay just now; try again shortly."
