"""
The address a request counts against for the rate limits and shows in the logs: the
sender's, or what the trusted proxies in front say (AGENTIDP_TRUSTED_PROXIES).
"""

from __future__ import annotations

import functools
import ipaddress
import logging

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest

logger = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """
    Return the address to count a request against.

    REMOTE_ADDR, unless AGENTIDP_TRUSTED_PROXIES says how many proxies in front append to
    X-Forwarded-For: then the entry that many places from the right, which the outermost
    trusted proxy wrote (what a client puts further left is never believed). A value that
    is not an IP address falls back to REMOTE_ADDR. IPv6 addresses count by their /64,
    which one host can change at will. Worked out once per request (the ceiling, the failure
    limits and the log line all ask).
    """
    try:
        return request._agentidp_client_address  # type: ignore[attr-defined]
    except AttributeError:
        request._agentidp_client_address = _client_address(request)  # type: ignore[attr-defined]
        return request._agentidp_client_address  # type: ignore[attr-defined]


def _client_address(request: HttpRequest) -> str:
    address = request.META.get("REMOTE_ADDR", "")
    trusted = settings.AGENTIDP_TRUSTED_PROXIES
    if trusted <= 0 and "HTTP_X_FORWARDED_FOR" in request.META:
        _warn_untrusted_forwarding()
    if trusted > 0:
        hops = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        if len(hops) >= trusted and hops[-trusted].strip():
            address = hops[-trusted].strip()
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        try:
            parsed = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


@functools.cache
def _warn_untrusted_forwarding() -> None:
    """Say once per process that X-Forwarded-For arrives but is not believed (a proxy nobody declared?)."""
    logger.warning(
        "requests carry X-Forwarded-For but AGENTIDP_TRUSTED_PROXIES is 0: every limit counts the sending "
        "address (REMOTE_ADDR). Behind a proxy that is the proxy's, for all clients at once; set "
        "AGENTIDP_TRUSTED_PROXIES to the number of proxies in front of AgentIdP."
    )


@receiver(setting_changed)
def _forget_warning(*, setting: str, **kwargs: object) -> None:
    """A new AGENTIDP_TRUSTED_PROXIES (in tests) may be worth the warning again."""
    if setting == "AGENTIDP_TRUSTED_PROXIES":
        _warn_untrusted_forwarding.cache_clear()
