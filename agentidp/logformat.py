"""Log formats: one line per record, whatever a client managed to put into a logged value."""

from __future__ import annotations

import logging
import re

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """Write each control character as an escape (\\n, \\x1b, \\u2028), so no value can start a forged line."""
    if text.isprintable():  # none of them is printable: nothing to escape (the usual line, at a fraction of the cost)
        return text
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """
    The plain text format, with control characters in the message escaped (a traceback
    still follows on its own lines).
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


# A query parameter whose value is a secret, an assertion or a token, wherever a URL is logged.
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&](?:client_secret|client_assertion|assertion|token|access_token|refresh_token|secret|password)=)[^&\s\"]*"
)


def redact_secret_parameters(text: str) -> str:
    """Replace the value of every secret-bearing query parameter in `text` with [redacted]."""
    if "?" not in text and "&" not in text:  # every parameter the pattern matches follows one of them
        return text
    return _SECRET_PARAMETER.sub(r"\1[redacted]", text)


class SecretParameterFilter(logging.Filter):
    """
    Keep secrets sent in a URL out of every log line.

    AgentIdP refuses a client_secret in the query string, but the server's request line
    (runserver's `django.server` records, an access log) would still repeat it. The
    record's message is formatted once here, redacted, and frozen: the formatter then reads
    it as it is instead of formatting it again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            message = redact_secret_parameters(message)
        record.msg, record.args = message, None
        return True
