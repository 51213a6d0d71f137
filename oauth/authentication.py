"""Bearer access tokens (RFC 6750) for the management API."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from .tokens import AgentPrincipal, access_token_validate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """
    Authenticate a request by an active AgentIdP access token in `Authorization: Bearer`,
    issued for AgentIdP itself (its audience alone).
    """

    keyword = "bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != self.keyword:
            return None
        token = token.strip()
        if not token or " " in token:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <access token>'.")
        active = access_token_validate(token)
        if active is None:
            raise exceptions.AuthenticationFailed("The access token is invalid, expired or revoked.")
        # A token minted for a resource (RFC 8707) is good there and nowhere else: not here.
        if not active.is_for_agentidp:
            raise exceptions.AuthenticationFailed("The access token was issued for another resource, not AgentIdP.")
        return AgentPrincipal(token=active), active

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="agentidp"'
