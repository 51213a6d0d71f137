from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured


@register()
def check_signing_key(app_configs=None, **kwargs):
    from .keys import get_signing_key

    get_signing_key.cache_clear()
    try:
        get_signing_key()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="oauth.E001")]
    return []


@register(deploy=True)
def check_issuer(app_configs=None, **kwargs):
    from django.conf import settings

    if not settings.AGENTIDP_ISSUER.startswith("https://"):
        return [
            Warning(
                "AGENTIDP_ISSUER is not an https:// URL.",
                hint="Set AGENTIDP_ISSUER to the public https URL that clients reach AgentIdP at.",
                id="oauth.W001",
            )
        ]
    return []
