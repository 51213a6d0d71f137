from django.apps import AppConfig


class VaultstoreConfig(AppConfig):
    name = "vaultstore"
    verbose_name = "Secret stores"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (register system checks and cache resets)
