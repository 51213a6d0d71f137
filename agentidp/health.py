"""
Liveness and readiness probes for load balancers and orchestrators.

`/healthz` answers as long as the process serves requests. `/readyz` also asks the
database and every configured secret store (bcrypt's hashes live in the database; Vault
is asked whether it is unsealed and whether the token may read AgentIdP's keys). The database is
required: without it nothing works, so the answer is 503. A Vault problem is reported
but, by default, leaves the instance ready ("degraded"): bcrypt credentials keep getting
tokens while Vault is down, and taking every instance out of the load balancer would stop
them too. `/readyz?strict=true` makes every check required, for monitoring.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from vaultstore.backends import get_backends

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


@csrf_exempt  # read-only: a POST gets 405, not a CSRF page
@never_cache
@require_safe
def liveness(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _database_problems() -> list[str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        logger.warning("readiness: database unavailable error=%s", type(exc).__name__)
        return ["The database is unavailable."]
    return []


def _result(problems: list[str]) -> dict:
    return {"status": "unavailable", "problems": problems} if problems else {"status": "ok"}


@csrf_exempt
@never_cache
@require_safe
def readiness(request: HttpRequest) -> JsonResponse:
    strict = request.GET.get("strict", "").lower() in ("1", "true", "yes")
    database_problems = _database_problems()
    checks = {"database": _result(database_problems)}
    degraded = False
    for name, backend in get_backends().items():
        problems = backend.check()
        if problems:
            logger.warning("readiness: secret store %s unavailable", name)
            degraded = True
        checks[name] = _result(problems)

    if database_problems or (strict and degraded):
        response = JsonResponse({"status": "unavailable", "checks": checks}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return JsonResponse({"status": "degraded" if degraded else "ready", "checks": checks})
