"""
The client-secret methods (RFC 6749 section 2.3.1): client_secret_basic, the id and secret
in HTTP Basic, and client_secret_post, both in the request body.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

from django.http import HttpRequest

from ..models import Credential
from .base import ClientAuthMethod, MalformedClientAuth, Presented, StoreAllowed, store_always_allowed
from .secret import credential_authenticate

BASIC_CHALLENGE = 'Basic realm="agentidp", charset="UTF-8"'


class ClientSecretMethod(ClientAuthMethod):
    """A method whose proof is the client secret, checked against the credential's stores."""

    def authenticate(self, presented: Presented, *, store_allowed: StoreAllowed = store_always_allowed) -> Credential:
        return credential_authenticate(
            client_id=presented.client_id, client_secret=presented.proof, store_allowed=store_allowed
        )


class ClientSecretBasic(ClientSecretMethod):
    """
    The id and secret in `Authorization: Basic`, each form-urlencoded before base64 (RFC 6749
    section 2.3.1). A header that does not decode to both is malformed.
    """

    name = "client_secret_basic"
    authorization_scheme = "basic"
    challenge = BASIC_CHALLENGE

    def claims(self, request: HttpRequest, params: dict[str, str]) -> bool:
        scheme, _, _ = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        return scheme.lower() == self.authorization_scheme

    def read(self, request: HttpRequest, params: dict[str, str]) -> Presented:
        if "client_id" in params:
            raise MalformedClientAuth(
                "Authenticate the client one way only: HTTP Basic or the request body.", error="invalid_request"
            )
        _, _, encoded = request.META["HTTP_AUTHORIZATION"].partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise MalformedClientAuth(
                "The Basic authorization header is malformed.", challenge=self.challenge
            ) from None
        user, colon, password = decoded.partition(":")
        if not colon or not user or not password:
            raise MalformedClientAuth("The Basic authorization header is malformed.", challenge=self.challenge)
        return Presented(self, unquote_plus(user), unquote_plus(password))


class ClientSecretPost(ClientSecretMethod):
    """`client_id` and `client_secret` as body parameters."""

    name = "client_secret_post"
    parameters = ("client_secret",)

    def claims(self, request: HttpRequest, params: dict[str, str]) -> bool:
        return "client_secret" in params

    def read(self, request: HttpRequest, params: dict[str, str]) -> Presented:
        if "client_id" not in params:
            # An id without a secret is a client that failed to authenticate (AgentIdP has no public clients).
            raise MalformedClientAuth("Send both client_id and client_secret.")
        return Presented(self, params["client_id"], params["client_secret"])
