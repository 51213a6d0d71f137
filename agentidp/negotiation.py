"""
How the API picks a representation and answers OPTIONS.

A module of its own, imported by DRF's settings: it must not import rest_framework.views,
whose classes read these settings as they are defined.
"""

from __future__ import annotations

from django.http import Http404
from rest_framework import exceptions, metadata, negotiation


class ContentNegotiation(negotiation.DefaultContentNegotiation):
    """
    Choose the renderer the client asks for, or else the view's first one.

    The management API speaks JSON only. An `Accept` header or a `?format=` that asks for
    anything else (a browser's text/html, DRF's `api`) is answered in JSON rather than 406
    or 404, as RFC 9110 section 12.5.1 allows: a call that creates or rotates a secret must
    never be refused, or lost, over how its answer is shown.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except (exceptions.NotAcceptable, Http404):
            return renderers[0], renderers[0].media_type


class Metadata(metadata.SimpleMetadata):
    """OPTIONS: the view's name, description, and what it renders and parses (no form descriptions)."""

    def determine_metadata(self, request, view):
        return {
            "name": view.get_view_name(),
            "description": view.get_view_description(),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
        }
