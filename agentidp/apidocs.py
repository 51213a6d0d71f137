"""The management API's documentation: the OpenAPI document and Swagger UI, answering errors and OPTIONS in JSON."""

from __future__ import annotations

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response


class _ErrorsInJson:
    """
    Answer OPTIONS and errors in JSON, the shape of every other answer under /api/.

    These views render a document (YAML, an HTML page) that cannot show an OPTIONS
    description or an error.
    """

    def options(self, request, *args, **kwargs) -> Response:
        self._answer_in_json(request)
        return super().options(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        self._answer_in_json(self.request)
        return super().handle_exception(exc)

    @staticmethod
    def _answer_in_json(request) -> None:
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type


class SchemaView(_ErrorsInJson, SpectacularAPIView):
    """The OpenAPI 3 document of the management API (YAML, or JSON with ?format=json)."""


class SwaggerView(_ErrorsInJson, SpectacularSwaggerView):
    """Swagger UI for the management API."""
