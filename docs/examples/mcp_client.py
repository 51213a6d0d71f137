"""
An agent calls a tool of an MCP server with a token from AgentIdP: the official MCP Python
SDK's client-credentials flow, with a client secret or a signed JWT (private_key_jwt).

    pip install mcp
    AGENTIDP_CLIENT_SECRET=... python mcp_client.py --server https://tools.example.com/mcp \\
        --issuer https://idp.example.com --client-id CLIENT_ID whoami
    python mcp_client.py ... --private-key agent-key.pem --algorithm ES256 whoami

The SDK finds everything else itself: the server's 401 points to its protected-resource
metadata (RFC 9728), which names AgentIdP; AgentIdP's metadata (RFC 8414) names its token
endpoint; the token is asked for the server's resource (RFC 8707) and the scopes the server
advertises, and is good at that server only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client


class MemoryTokenStorage:
    """Where the SDK keeps the token between calls: here, in memory, for this process."""

    def __init__(self) -> None:
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


def auth_provider(
    *,
    server: str,
    issuer: str,
    client_id: str,
    client_secret: str | None = None,
    private_key_pem: str | None = None,
    algorithm: str = "ES256",
    storage: MemoryTokenStorage | None = None,
) -> httpx2.Auth:
    """
    The SDK's client-credentials provider: with a secret (client_secret_basic), or signing an
    assertion with the agent's private key. `issuer` pins the authorization server, so the
    credentials go to AgentIdP and nowhere else.
    """
    storage = storage or MemoryTokenStorage()
    if private_key_pem is not None:
        assertion = SignedJWTParameters(
            issuer=client_id, subject=client_id, signing_key=private_key_pem, signing_algorithm=algorithm
        )
        return PrivateKeyJWTOAuthProvider(
            server_url=server,
            storage=storage,
            client_id=client_id,
            assertion_provider=assertion.create_assertion_provider(),
            issuer=issuer,
        )
    return ClientCredentialsOAuthProvider(
        server_url=server,
        storage=storage,
        client_id=client_id,
        client_secret=client_secret or "",
        issuer=issuer,
    )


async def call_tool(server: str, auth: httpx2.Auth, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """Call one tool and return its result: the JSON value of its text, or the text."""
    async with (
        httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(15)) as http,
        Client(streamable_http_client(server, http_client=http)) as client,
    ):
        result = await client.call_tool(tool, arguments or {})
    text = result.content[0].text if result.content else ""
    if result.is_error:
        raise RuntimeError(text or "the tool failed")
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--server", required=True, help="the MCP server's URL")
    parser.add_argument("--issuer", required=True, help="AgentIdP's issuer URL")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--private-key", metavar="PEM_FILE", help="sign with this key instead of a secret")
    parser.add_argument("--algorithm", default="ES256")
    parser.add_argument("tool")
    parser.add_argument("arguments", nargs="?", default="{}", help="the tool's arguments as JSON")
    args = parser.parse_args(argv)
    private_key = None
    if args.private_key:
        with open(args.private_key) as handle:
            private_key = handle.read()
    auth = auth_provider(
        server=args.server,
        issuer=args.issuer,
        client_id=args.client_id,
        client_secret=os.environ.get("AGENTIDP_CLIENT_SECRET"),
        private_key_pem=private_key,
        algorithm=args.algorithm,
    )
    print(json.dumps(asyncio.run(call_tool(args.server, auth, args.tool, json.loads(args.arguments)))))


if __name__ == "__main__":
    main()
