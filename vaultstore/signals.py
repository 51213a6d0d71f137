from django.core.signals import setting_changed
from django.dispatch import receiver

from .backends import reset_backends


@receiver(setting_changed)
def reset_backends_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting == "VAULTSTORE":
        reset_backends()
