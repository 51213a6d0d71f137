"""AgentIdP's URLs plus the benchmark's ceiling, /bench/ceiling."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from credentials.models import Agent


class CeilingView(APIView):
    """
    The least a request into AgentIdP can cost: one primary-key SELECT and a tiny JSON body.

    Served by the same gunicorn, middleware and database connection as the token endpoint,
    so the token endpoint's requests per second divided by this view's says how close it
    comes to doing nothing but one database read. The agent's id comes in the query
    string (`?agent=<uuid>`); the load generator POSTs the token endpoint's own form body
    and Basic header here, unread.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer]

    def get(self, request: Request) -> Response:
        agent = Agent.objects.filter(pk=request.query_params.get("agent")).first()
        return Response({"found": agent is not None})

    post = get


urlpatterns = [
    path("bench/ceiling", CeilingView.as_view(), name="bench-ceiling"),
    path("", include("agentidp.urls")),
]

handler400 = "agentidp.middleware.bad_request"
handler403 = "agentidp.middleware.permission_denied"
handler404 = "agentidp.middleware.page_not_found"
handler500 = "agentidp.middleware.server_error"
