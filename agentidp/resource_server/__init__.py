"""
The resource-server kit: for the people who run the APIs and MCP servers that agents call,
verify AgentIdP's access tokens and tell clients where to get them.

Framework-free core (verify, metadata); adapters for Django (.django), Django REST
framework (.drf) and the MCP Python SDK (.mcp). It imports nothing else of AgentIdP's, so
it runs in any project. See docs/resource-servers.md.
"""

from .metadata import challenge, metadata_path, metadata_url, protected_resource_metadata
from .verify import (
    InsufficientScope,
    IntrospectionVerifier,
    InvalidToken,
    Settings,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
    VerifierUnavailable,
)

__all__ = [
    "InsufficientScope",
    "IntrospectionVerifier",
    "InvalidToken",
    "Settings",
    "TokenRejected",
    "TokenVerifier",
    "VerifiedToken",
    "VerifierUnavailable",
    "challenge",
    "metadata_path",
    "metadata_url",
    "protected_resource_metadata",
]
