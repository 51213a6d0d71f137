"""System checks of the settings for signed JWTs: caught at start-up, not at a client's first request."""

from __future__ import annotations

import ipaddress
import os

from django.conf import settings
from django.core.checks import Error, Warning, register

from .jwtauth.verify import KEY_TYPES


@register()
def check_signed_jwt_settings(app_configs=None, **kwargs):
    errors = []
    unknown = [alg for alg in settings.AGENTIDP_ASSERTION_ALGORITHMS if alg not in KEY_TYPES]
    if unknown or not settings.AGENTIDP_ASSERTION_ALGORITHMS:
        errors.append(
            Error(
                f"AGENTIDP_ASSERTION_ALGORITHMS may name only {', '.join(KEY_TYPES)} (and at least one of them).",
                hint=f"Not accepted: {', '.join(unknown)}." if unknown else None,
                id="credentials.E001",
            )
        )
    for cidr in settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            errors.append(
                Error(f"AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS: {cidr!r} is not a network.", id="credentials.E002")
            )
    bundle = settings.AGENTIDP_KEY_FETCH_CA_BUNDLE
    if bundle and not os.access(bundle, os.R_OK):
        errors.append(Error(f"AGENTIDP_KEY_FETCH_CA_BUNDLE: {bundle!r} cannot be read.", id="credentials.E003"))
    return errors


@register(deploy=True)
def check_key_fetch_for_production(app_configs=None, **kwargs):
    if settings.AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK:
        return [
            Warning(
                "AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK is on: keys may be fetched over plain http from loopback.",
                hint="It is for development; turn it off in production.",
                id="credentials.W001",
            )
        ]
    return []


@register()
def check_notification_webhook(app_configs=None, **kwargs):
    """A notification webhook needs its signing secret: receivers must be able to tell AgentIdP's calls from others'."""
    if settings.AGENTIDP_NOTIFY_WEBHOOK_URL and not settings.AGENTIDP_NOTIFY_WEBHOOK_SECRET:
        return [
            Error(
                "AGENTIDP_NOTIFY_WEBHOOK_URL is set without AGENTIDP_NOTIFY_WEBHOOK_SECRET.",
                hint="Set a long random secret; the receiver checks X-AgentIdP-Signature with it.",
                id="credentials.E004",
            )
        ]
    return []
