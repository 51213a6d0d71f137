"""
Fetch the JSON documents a resource server needs from its authorization server: the JWK Set,
the server metadata (RFC 8414) and, for introspection (RFC 7662), the answer to a POST.

The URLs come from the resource server's own configuration, never from a token, so this is
no open SSRF surface; it is still bounded: https only (plain http when the configuration
allows it, for development), no redirects, no proxies from the environment, a timeout and a
size cap. A body is never logged nor put in an exception.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "agentidp-resource-server"


class FetchFailed(Exception):
    """A document could not be fetched or read; `reason` is a short word safe for logs."""

    def __init__(self, reason: str, url: str) -> None:
        super().__init__(f"{reason}: {url}")
        self.reason = reason


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx surfaces as an HTTPError: refused


def check_url(url: str, *, allow_http: bool) -> str:
    """Return `url` if it may be fetched: https, or http when allowed; raise ValueError otherwise."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.fragment:
        raise ValueError(f"{url!r} is not an https URL without credentials or fragment" + (" (or http)" * allow_http))
    return url


def fetch_json(
    url: str,
    *,
    allow_http: bool,
    timeout: float,
    max_bytes: int,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """
    GET `url` (or POST `form` to it, url-encoded) and return its JSON object body. An https
    server's certificate is verified against the system's CAs, or `ca_file`'s.

    Raises FetchFailed for a refused URL, a network failure or timeout, a status other than
    200, a body over `max_bytes`, or one that is not a JSON object.
    """
    try:
        check_url(url, allow_http=allow_http)
    except ValueError:
        raise FetchFailed("refused_url", url) from None
    body = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
        url, data=body, headers={"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    )
    # Certificates verified against the system's CAs, or the one given; no proxy from the environment.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}), _NoRedirect()]
    if url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
    opener = urllib.request.build_opener(*handlers)
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise FetchFailed("http_status", url)
            data = _read_until(response, deadline, max_bytes + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchFailed("http_status", url) from None
    except TimeoutError:
        raise FetchFailed("timeout", url) from None
    except (urllib.error.URLError, OSError, ValueError):
        raise FetchFailed("unreachable", url) from None
    if len(data) > max_bytes:
        raise FetchFailed("too_large", url)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise FetchFailed("not_json", url) from None
    if not isinstance(document, dict):
        raise FetchFailed("not_json", url)
    return document


def _read_until(response: Any, deadline: float, limit: int) -> bytes:
    """Read at most `limit` bytes, giving up at `deadline`: a server that trickles its body is cut off."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = response.read1(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
