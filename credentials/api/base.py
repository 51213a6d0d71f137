"""
What every management endpoint shares besides its error body: pagination, and serializer
fields that take JSON types as they are.
"""

from __future__ import annotations

from typing import Any

from rest_framework import pagination, serializers


class Pagination(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "pageSize"
    max_page_size = 200


# --- strict JSON fields ---------------------------------------------------------------------
# DRF turns 12 into "12" for a CharField and "12" into 12 for an IntegerField. The contract
# answers a wrong JSON type with VALIDATION_ERROR instead, so these accept only their own type.


def has_control_characters(text: str) -> bool:
    """Return whether text holds a control (or other unprintable) character besides newlines and tabs."""
    return not text.isprintable() and any(ch not in "\n\r\t" and not ch.isprintable() for ch in text)


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if has_control_characters(data):
            raise serializers.ValidationError("Must not contain control characters.")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "Must be an integer."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictSerializer(serializers.Serializer):
    """A request body serializer that refuses keys it does not know, naming them."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
