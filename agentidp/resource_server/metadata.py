"""
What a resource server tells clients about itself: RFC 9728 protected-resource metadata, and
the RFC 6750 `WWW-Authenticate: Bearer` challenge that points MCP clients to it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .verify import Settings, TokenRejected

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_url(resource: str) -> str:
    """
    Where the metadata of `resource` is served (RFC 9728 section 3.1): the well-known path
    inserted between the host and the resource's own path, so `https://api.example/mcp`
    is described at `https://api.example/.well-known/oauth-protected-resource/mcp`.
    """
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, parts.query, ""))


def metadata_path(resource: str) -> str:
    """The path part of metadata_url(resource), for a URL pattern."""
    return urlsplit(metadata_url(resource)).path


def protected_resource_metadata(settings: Settings, **extra: Any) -> dict[str, Any]:
    """
    The RFC 9728 document for this resource: its identifier, AgentIdP as its authorization
    server, the scopes it uses, and that tokens go in the Authorization header only.
    """
    document: dict[str, Any] = {
        "resource": settings.resource,
        "authorization_servers": [settings.issuer],
        "bearer_methods_supported": ["header"],
    }
    if settings.scopes_supported:
        document["scopes_supported"] = list(settings.scopes_supported)
    return {**document, **extra}


def challenge(settings: Settings, rejected: TokenRejected | None = None) -> str:
    """
    The `WWW-Authenticate` value for a refused request (RFC 6750 section 3): the error if
    a token was presented, and `resource_metadata` (RFC 9728 section 5.1).
    """
    params = []
    if rejected is not None:
        params.append(f'error="{rejected.error}"')
        params.append(f'error_description="{_quoted(rejected.description)}"')
        required = getattr(rejected, "required", ())
        if required:
            params.append(f'scope="{_quoted(" ".join(required))}"')
    params.append(f'resource_metadata="{metadata_url(settings.resource)}"')
    return "Bearer " + ", ".join(params)


def _quoted(text: str) -> str:
    """Text for a quoted-string: printable ASCII, no quote or backslash (RFC 6750's error_description rule)."""
    return "".join(char for char in text if " " <= char <= "~" and char not in '"\\')
