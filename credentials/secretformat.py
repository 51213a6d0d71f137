"""
The format of the client secrets AgentIdP issues: recognisable by anyone who finds one.

    aidp_ <12 characters: the credential's secret reference> <43: random> <6: checksum>

Every character after the prefix is base62 (0-9, A-Z, a-z), so a secret is one 66-character
word that a regex finds in a file, a log or a paste. The 43 random characters carry 256 bits
(62^43 > 2^256). The checksum is the CRC32 of everything before it, in base62, as GitHub
does for its tokens: a scanner tells a real secret from a random string of the same shape
without asking anyone. The reference names the credential, so that a reported secret is
checked against that one credential's secrets by its own store; it is random, appears only
inside secrets, and says nothing about any other secret (docs/security.md).

Secrets issued before this format (43 URL-safe characters, 256 bits) keep working.
Standard library only: docs/scanners/ carries a copy of the checksum for scanners.
"""

from __future__ import annotations

import re
import secrets
import zlib

PREFIX = "aidp_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
REF_LENGTH = 12
RANDOM_LENGTH = 43
CHECKSUM_LENGTH = 6
SECRET_LENGTH = len(PREFIX) + REF_LENGTH + RANDOM_LENGTH + CHECKSUM_LENGTH
#: What scanners look for (docs/security.md): the word, not a part of a longer one.
PATTERN = r"\baidp_[0-9A-Za-z]{61}\b"
_SECRET_RE = re.compile(r"aidp_[0-9A-Za-z]{61}")
#: A secret of the earlier format: secrets.token_urlsafe(32).
_LEGACY_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def _random_text(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def checksum(text: str) -> str:
    """The base62 CRC32 of `text`, 6 characters (62^6 > 2^32)."""
    return _base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def new_secret_ref() -> str:
    """A credential's secret reference: 12 random base62 characters (71 bits)."""
    return _random_text(REF_LENGTH)


def new_secret(secret_ref: str) -> str:
    """A new secret of the credential whose secret reference is `secret_ref`."""
    body = PREFIX + secret_ref + _random_text(RANDOM_LENGTH)
    return body + checksum(body)


def secret_ref(secret: str) -> str | None:
    """The secret reference in `secret`, if it is a well-formed secret of this format with a right checksum."""
    if not isinstance(secret, str) or len(secret) != SECRET_LENGTH or not _SECRET_RE.fullmatch(secret):
        return None
    body, check = secret[:-CHECKSUM_LENGTH], secret[-CHECKSUM_LENGTH:]
    if checksum(body) != check:
        return None
    return secret[len(PREFIX) : len(PREFIX) + REF_LENGTH]


def could_be_issued(secret: str) -> bool:
    """
    Whether AgentIdP could have issued `secret`: this format with a right checksum, or the
    earlier one. Anything else is refused without asking a store; the check reads only the
    presented text, so it costs the same whichever client it is presented for.
    """
    return secret_ref(secret) is not None or (len(secret) == 43 and _LEGACY_RE.fullmatch(secret) is not None)
