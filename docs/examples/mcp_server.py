"""
An MCP server whose tools only AgentIdP's agents may call: the official MCP Python SDK, with
AgentIdP's resource-server kit as its token verifier.

    pip install agentidp mcp
    python mcp_server.py --issuer https://idp.example.com --url https://tools.example.com/mcp --port 8001

`--url` is this server's public URL, and so its resource identifier: the agent asks AgentIdP
for a token for it (RFC 8707), and AgentIdP must list it in the agent's `allowedResources`.
With `--introspect CLIENT_ID` (its secret in AGENTIDP_CLIENT_SECRET), every token is checked
with AgentIdP instead of locally, so a revoked one is refused at once. `--allow-http` lets the
issuer and the server be plain http: for a laptop, never for production.
"""

from __future__ import annotations

import argparse
import os

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from agentidp.resource_server import IntrospectionVerifier, Settings, TokenVerifier
from agentidp.resource_server.mcp import MCPTokenVerifier

#: What a token must allow to call these tools; advertised in the protected-resource metadata.
REQUIRED_SCOPES = ["tools:call"]


def build(
    *,
    issuer: str,
    url: str,
    introspect_client_id: str | None = None,
    introspect_client_secret: str | None = None,
    allow_http: bool = False,
) -> MCPServer:
    """The MCP server: its tools, and the kit checking every token before a tool runs."""
    settings = Settings(issuer=issuer, resource=url, scopes_supported=REQUIRED_SCOPES, allow_http=allow_http)
    if introspect_client_id:
        verifier = IntrospectionVerifier(
            settings, client_id=introspect_client_id, client_secret=introspect_client_secret or ""
        )
    else:
        verifier = TokenVerifier(settings)
    server = MCPServer(
        "agent-tools",
        log_level="WARNING",
        token_verifier=MCPTokenVerifier(verifier),
        auth=AuthSettings(
            issuer_url=issuer,
            resource_server_url=url,
            required_scopes=REQUIRED_SCOPES,
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def whoami() -> dict:
        """Tell the calling agent who AgentIdP says it is."""
        token = get_access_token()
        return {"agent": token.subject, "client_id": token.client_id, "scopes": token.scopes}

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--issuer", required=True, help="AgentIdP's issuer URL")
    parser.add_argument("--url", required=True, help="this server's public MCP URL, e.g. https://tools.example.com/mcp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--introspect", metavar="CLIENT_ID", help="check tokens with AgentIdP (secret: $AGENTIDP_CLIENT_SECRET)"
    )
    parser.add_argument("--allow-http", action="store_true", help="development only: plain http URLs")
    args = parser.parse_args(argv)
    server = build(
        issuer=args.issuer,
        url=args.url,
        introspect_client_id=args.introspect,
        introspect_client_secret=os.environ.get("AGENTIDP_CLIENT_SECRET"),
        allow_http=args.allow_http,
    )
    import uvicorn

    uvicorn.run(server.streamable_http_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
