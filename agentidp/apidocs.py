"""The management API's documentation: the OpenAPI document and Swagger UI, answering errors and OPTIONS in JSON."""

from __future__ import annotations

from drf_spectacular.views import SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response


class SwaggerView(SpectacularSwaggerView):
    """Swagger UI for the management API."""

    # Its one renderer is an HTML template, which cannot show an OPTIONS description or an
    # error: those are answered in JSON, the shape of every other error under /api/.

    def options(self, request, *args, **kwargs) -> Response:
        self._answer_in_json(request)
        return super().options(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        self._answer_in_json(self.request)
        return super().handle_exception(exc)

    @staticmethod
    def _answer_in_json(request) -> None:
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
