from django.core.signals import setting_changed
from django.dispatch import receiver

from .keys import get_retired_keys, get_signing_key


@receiver(setting_changed)
def reset_signing_key_on_setting_change(*, setting: str, **kwargs: object) -> None:
    if setting in {"AGENTIDP_SIGNING_KEY", "AGENTIDP_SIGNING_KEY_FILE"}:
        get_signing_key.cache_clear()
    if setting == "AGENTIDP_RETIRED_SIGNING_KEY_FILES":
        get_retired_keys.cache_clear()
