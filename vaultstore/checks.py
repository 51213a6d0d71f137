"""System checks that catch a broken secret-store configuration before traffic does."""

from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured


@register()
def check_vaultstore_configuration(app_configs=None, **kwargs):
    from .backends import get_backends, reset_backends

    reset_backends()
    try:
        get_backends()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="See docs/devops/environment-variables.md.", id="vaultstore.E010")]
    return []
