"""
A detect-secrets plugin (https://github.com/Yelp/detect-secrets) that finds AgentIdP client
secrets, and only real ones: the regex finds the shape, the checksum tells a secret from a
string that merely looks like one.

    aidp_ <61 base62 characters: 55, then 6 of checksum>

The checksum is the CRC32 (zlib.crc32) of everything before it, "aidp_" included, in base62
(0-9, A-Z, a-z), most significant digit first, padded to 6 characters.

Scan with this plugin alone (every built-in one disabled):

    detect-secrets scan --all-files --plugin detect_secrets_agentidp.py \\
        $(detect-secrets scan --list-all-plugins | sed 's/^/--disable-plugin /') .

Standard library and detect-secrets only: copy this file where your scans run.
"""

import re
import zlib
from collections.abc import Generator

from detect_secrets.plugins.base import RegexBasedDetector

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(number: int, width: int = 6) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def has_valid_checksum(secret: str) -> bool:
    """Whether the last 6 characters are the base62 CRC32 of the rest."""
    return _base62(zlib.crc32(secret[:-6].encode("ascii"))) == secret[-6:]


class AgentIdPClientSecretDetector(RegexBasedDetector):
    """AgentIdP client secrets (aidp_...) with a right checksum."""

    secret_type = "AgentIdP Client Secret"  # noqa: S105 (a type's name)
    # No capturing group: findall() must return the whole match.
    denylist = (re.compile(r"\baidp_[0-9A-Za-z]{61}\b"),)

    def analyze_string(self, string: str) -> Generator[str, None, None]:
        for match in super().analyze_string(string):
            if has_valid_checksum(match):
                yield match
