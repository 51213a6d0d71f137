from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured


@register(deploy=True)
def check_signing_key(app_configs=None, **kwargs):
    """
    Report a signing key (or a retired one) that is missing or unusable.

    A deploy check, not one every command runs: migrate, createsuperuser and
    bootstrap_admin neither sign nor verify tokens, and a fresh installation has no key
    yet. What serves requests checks the key when it loads (agentidp.wsgi), so a server
    without one fails at start, not at its first token.
    """
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


@register(deploy=True)
def check_shared_cache(app_configs=None, **kwargs):
    """Warn when the rate limits, the verified-secret cache and used assertion ids are kept per process."""
    from django.conf import settings

    backend = settings.CACHES.get("default", {}).get("BACKEND", "")
    if backend.endswith(("LocMemCache", "DummyCache")):
        return [
            Warning(
                "The cache is local to each process: with several server processes the rate limits count "
                "per process, an address known to one process is unknown to the others, each process "
                "verifies secrets for its own verified-secret cache, and a client assertion's jti is "
                "remembered by one process only (DummyCache remembers none), so a replay to another passes.",
                hint="Point CACHE_URL at one Redis for every process (CACHE_URL=redis://host:6379/0).",
                id="oauth.W002",
            )
        ]
    return []


@register()
def check_github_secret_scanning_keys(app_configs=None, **kwargs):
    """GitHub's key document must be readable: otherwise every partner call would be refused."""
    from .leak_reports import github_keys

    github_keys.cache_clear()
    try:
        github_keys()
    except (ImproperlyConfigured, OSError) as exc:
        return [Error(str(exc), id="oauth.E003")]
    return []
