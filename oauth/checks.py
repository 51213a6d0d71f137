from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured


@register()
def check_signing_key(app_configs=None, **kwargs):
    from .keys import get_retired_keys, get_signing_key

    get_signing_key.cache_clear()
    get_retired_keys.cache_clear()
    errors = []
    try:
        get_signing_key()
    except ImproperlyConfigured as exc:
        errors.append(Error(str(exc), id="oauth.E001"))
    try:
        get_retired_keys()
    except ImproperlyConfigured as exc:
        errors.append(Error(str(exc), id="oauth.E002"))
    return errors


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
