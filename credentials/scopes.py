"""Scopes as RFC 6749 section 3.3 defines them."""

from __future__ import annotations

import re
from collections.abc import Iterable

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E ): printable ASCII but space, '"' and '\'.
SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]{1,128}")
MAX_SCOPES = 100


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """Return the scopes without duplicates, in their first order; raise ValueError for a bad one."""
    seen: dict[str, None] = {}
    for scope in scopes:
        if not isinstance(scope, str) or not SCOPE_TOKEN_RE.fullmatch(scope):
            raise ValueError("A scope is 1 to 128 printable ASCII characters without spaces, quotes or backslashes.")
        seen.setdefault(scope, None)
    if len(seen) > MAX_SCOPES:
        raise ValueError(f"An agent has at most {MAX_SCOPES} scopes.")
    return list(seen)


def parse_scope_parameter(value: str) -> list[str]:
    """Split an OAuth `scope` parameter (space-delimited) into its scopes; raise ValueError if malformed."""
    if value == "":
        return []
    parts = value.split(" ")
    if any(part == "" for part in parts):
        raise ValueError("The scope parameter separates scopes with single spaces.")
    return normalize_scopes(parts)
