"""The ceiling's one view."""

from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.ceiling.models import Row


class CeilingView(APIView):
    """
    Read one row by primary key and answer a tiny JSON body.

    The load generator POSTs the token endpoint's own form body and Basic header here,
    unread, so that both receive the same bytes.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer]

    def get(self, request: Request, pk: int) -> Response:
        row = Row.objects.filter(pk=pk).first()
        return Response({"found": row is not None})

    post = get
