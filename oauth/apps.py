from django.apps import AppConfig


class OauthConfig(AppConfig):
    name = "oauth"
    verbose_name = "OAuth 2.0"

    def ready(self) -> None:
        from . import checks, schema, signals  # noqa: F401  (register checks, the OpenAPI extension, cache resets)
