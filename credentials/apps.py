from django.apps import AppConfig


class CredentialsConfig(AppConfig):
    name = "credentials"
    verbose_name = "Agents and credentials"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
