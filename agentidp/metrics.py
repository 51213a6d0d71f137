"""
GET /metrics: Prometheus metrics, in multi-process mode under gunicorn (PROMETHEUS_MULTIPROC_DIR,
set by agentidp/gunicorn_conf.py), and each request's latency by endpoint.

The families come from each package's own metrics module (oauth, credentials, vaultstore) and,
counted from the database when the page is read, credentials.metrics.DatabaseCollector. No
label carries a clientId, an address or anything else a client chose: endpoints are route
names, statuses are classes (2xx, 4xx), everything else is AgentIdP's own vocabulary.

Access: AGENTIDP_METRICS_ALLOWED_NETWORKS (the client's address, as the rate limits count
it, must be in one; loopback by default) and, if set, AGENTIDP_METRICS_TOKEN as a bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest, multiprocess

from credentials.metrics import DatabaseCollector
from oauth.addresses import client_address

REQUEST_SECONDS = Histogram(
    "agentidp_http_request_duration_seconds",
    "Time to answer a request, by endpoint (the route's name) and status class.",
    ["endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class RequestMetricsMiddleware:
    """Time every request and count it under its route's name (never its path, which a client writes)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        endpoint = match.view_name if match is not None and match.view_name else "unmatched"
        REQUEST_SECONDS.labels(endpoint, f"{response.status_code // 100}xx").observe(time.perf_counter() - started)
        return response


def _allowed(request: HttpRequest) -> bool:
    networks = settings.AGENTIDP_METRICS_ALLOWED_NETWORKS
    if networks:
        try:
            address = ipaddress.ip_address(client_address(request))
        except ValueError:
            return False
        if not any(address in ipaddress.ip_network(cidr, strict=False) for cidr in networks):
            return False
    token = settings.AGENTIDP_METRICS_TOKEN
    if token:
        presented = request.META.get("HTTP_AUTHORIZATION", "")
        return hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())
    return bool(networks)


@csrf_exempt
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of every process's metrics and the database's counts."""
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse("Use GET.\n", status=405, content_type="text/plain")
        response["Allow"] = "GET, HEAD"
        return response
    if not _allowed(request):
        return HttpResponse("Not allowed.\n", status=403, content_type="text/plain")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    database = CollectorRegistry()
    database.register(DatabaseCollector())
    response = HttpResponse(generate_latest(processes) + generate_latest(database), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
