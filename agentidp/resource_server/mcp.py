"""
The kit in an MCP server built with the official MCP Python SDK (`pip install mcp`): a token
verifier for its `token_verifier=` argument.

    settings = Settings(issuer="https://idp.example.com", resource="https://tools.example.com/mcp")
    server = MCPServer(
        "tools",
        token_verifier=MCPTokenVerifier(TokenVerifier(settings)),
        auth=AuthSettings(
            issuer_url="https://idp.example.com",
            resource_server_url="https://tools.example.com/mcp",
            required_scopes=["tools:call"],
            validate_token_resource=True,
        ),
    )

The SDK itself serves the protected-resource metadata and the 401 challenge; this checks
the token (signature, issuer, audience, times) and tells the SDK its client, scopes and resource.
"""

from __future__ import annotations

import logging

import anyio.to_thread
from mcp.server.auth.provider import AccessToken

from .verify import IntrospectionVerifier, TokenRejected, TokenVerifier, VerifierUnavailable

logger = logging.getLogger(__name__)


class MCPTokenVerifier:
    """The MCP SDK's TokenVerifier protocol, answered by the kit's local or introspection verifier."""

    def __init__(self, verifier: TokenVerifier | IntrospectionVerifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        # Verification may fetch keys or call AgentIdP: off the event loop.
        try:
            verified = await anyio.to_thread.run_sync(self.verifier.verify, token)
        except TokenRejected:
            return None
        except VerifierUnavailable as exc:
            logger.warning("access token not verified: %s", exc.reason)
            return None
        return AccessToken(
            token=token,
            client_id=verified.client_id,
            scopes=sorted(verified.scopes),
            expires_at=verified.expires_at,
            # The audience checked is this server's own identifier: what the SDK compares.
            resource=self.verifier.settings.resource,
            subject=verified.subject,
            claims={"iss": verified.claims.get("iss"), "jti": verified.jti},
        )
