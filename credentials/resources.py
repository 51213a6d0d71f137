"""Resource indicators as RFC 8707 defines them: the APIs and MCP servers a token may be spent at."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: A resource is an absolute URI (RFC 3986 section 4.3): a scheme, then no whitespace or control character.
_ABSOLUTE_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[\x21-\x7E]+")
#: Long enough for any API's URL; short enough that a token naming the most resources stays small.
MAX_RESOURCE_LENGTH = 512
#: The resources an agent may be allowed.
MAX_ALLOWED_RESOURCES = 50
#: The resources one token may name (its `aud`).
MAX_TOKEN_RESOURCES = 10

RESOURCE_RULE = (
    f"A resource is an absolute URI of at most {MAX_RESOURCE_LENGTH} printable ASCII characters, "
    "without a fragment (RFC 8707 section 2)."
)


def is_resource(value: object) -> bool:
    """Return whether `value` is a well-formed resource indicator: an absolute URI without a fragment."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_RESOURCE_LENGTH
        and "#" not in value
        and _ABSOLUTE_URI_RE.fullmatch(value) is not None
    )


def normalize_resources(resources: Iterable[str], *, limit: int = MAX_ALLOWED_RESOURCES) -> list[str]:
    """
    Return the resources without duplicates, in their first order; raise ValueError for a
    malformed one or more than `limit`.

    Resources are compared as the exact strings they are (RFC 8707 defines no
    normalisation): `https://api.example/` and `https://api.example` are two resources.
    """
    seen: dict[str, None] = {}
    for resource in resources:
        if not is_resource(resource):
            raise ValueError(RESOURCE_RULE)
        seen.setdefault(resource, None)
        if len(seen) > limit:
            raise ValueError(f"At most {limit} resources.")
    return list(seen)
