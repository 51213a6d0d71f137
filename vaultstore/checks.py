"""System checks that catch a broken secret-store configuration before traffic does."""

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

VAULT_BACKEND = "vaultstore.backends.vault.VaultSecretBackend"
HINT = "See docs/devops/environment-variables.md and docs/devops/vault-setup.md."


def _vault_options() -> dict | None:
    config = getattr(settings, "VAULTSTORE", None)
    backends = config.get("BACKENDS") if isinstance(config, dict) else None
    for entry in (backends or {}).values():
        if isinstance(entry, dict) and entry.get("BACKEND") == VAULT_BACKEND:
            return entry.get("OPTIONS") or {}
    return None


@register()
def check_vaultstore_configuration(app_configs=None, **kwargs):
    from .backends import get_backends, reset_backends

    options = _vault_options()
    if options is not None and not options.get("token") and not options.get("token_file"):
        return [
            Error("VAULT_ADDR is set but neither VAULT_TOKEN nor VAULT_TOKEN_FILE is.", hint=HINT, id="vaultstore.E001")
        ]
    reset_backends()
    try:
        get_backends()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint=HINT, id="vaultstore.E010")]
    return []


@register(deploy=True)
def check_vault_transport(app_configs=None, **kwargs):
    options = _vault_options()
    if options is None:
        return []
    warnings = []
    if str(options.get("url", "")).startswith("http://"):
        warnings.append(
            Warning(
                "VAULT_ADDR is a plain http:// URL: client secrets and the Vault token would cross the network "
                "in clear.",
                hint="Use Vault's https:// address.",
                id="vaultstore.W001",
            )
        )
    if options.get("verify") is False:
        warnings.append(
            Warning(
                "VAULT_SKIP_VERIFY is on: Vault's TLS certificate is not checked.",
                hint="Set VAULT_CACERT to the CA bundle that signed Vault's certificate instead.",
                id="vaultstore.W002",
            )
        )
    return warnings
