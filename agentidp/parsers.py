"""Request parsers of the management API."""

from __future__ import annotations

import codecs
import json
from typing import Any

from django.conf import settings
from rest_framework import exceptions, parsers
from rest_framework.utils.json import strict_constant


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    Build a JSON object, refusing a key sent twice (which value counts would be a guess;
    the OAuth endpoints refuse it too).
    """
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise exceptions.ValidationError({key[:64]: ["Sent more than once."]})
        result[key] = value
    return result


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, strict about duplicate keys and NaN, answering a body nested too deep as malformed."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            return json.loads(text, parse_constant=strict_constant, object_pairs_hook=_without_duplicates)
        except RecursionError:
            raise exceptions.ParseError("JSON nested too deeply.") from None
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
