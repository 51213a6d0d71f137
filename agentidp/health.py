"""
Liveness and readiness probes for load balancers and orchestrators.

`/healthz` answers as long as the process serves requests. `/readyz` also asks the
database and every configured secret store (bcrypt's hashes live in the database; Vault
is asked whether it is unsealed and whether the token may read AgentIdP's keys). The database is
required: without it nothing works, so the answer is 503. A Vault problem is reported
but, by default, leaves the instance ready ("degraded"): bcrypt credentials keep getting
tokens while Vault is down, and taking every instance out of the load balancer would stop
them too. `/readyz?strict=true` makes every check required, for monitoring.

The probes are anonymous (load balancers call them so), and a Vault check costs Vault two
requests, so each secret store's answer is kept for READINESS_CACHE_SECONDS (a module
constant, 1 s), per process: a flood of probes costs Vault at most one check per second per
process. While one request checks a store, the others take its previous answer, or wait
for the first one. A store's check never counts towards the Vault backend's circuit breaker:
a Vault that rate-limits the probes must not make token requests fail fast. An open breaker
is still reported, up to a second late. The database is asked on every call.

A store that answers but lost secrets the database trusts (a Vault restarted empty, restored
from an old backup, or asked in the wrong namespace) is reported too: the store is "degraded",
with the number of credentials whose secret it was seen to lack within the last
SECRET_MISSING_REPORT_SECONDS (10 minutes) and the command that lists them. That count
comes from the Django cache (one read per call, shared by every process when the cache is),
written by the authentications that met the loss and by `manage.py check_secrets --record`;
a run of `check_secrets` that finds the credentials whole clears it. No probe scans credentials.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from time import monotonic

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from credentials.services import secrets_missing_count
from vaultstore.backends import BaseSecretBackend, get_backends

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
#: How long a secret store's readiness answer is reused, in this process.
READINESS_CACHE_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class _Checked:
    """One store's answer: which backend object gave it (a new configuration builds new ones), when, and what."""

    backend: BaseSecretBackend
    at: float
    problems: tuple[str, ...]


_checked: dict[str, _Checked] = {}
# Held while a store is checked, so that concurrent probes never ask the same store twice.
_checking = threading.Lock()


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


def _last_answer(name: str, backend: BaseSecretBackend, *, fresh: bool) -> list[str] | None:
    checked = _checked.get(name)
    if checked is None or checked.backend is not backend:
        return None
    if fresh and monotonic() - checked.at >= READINESS_CACHE_SECONDS:
        return None
    return list(checked.problems)


def _store_problems(name: str, backend: BaseSecretBackend) -> list[str]:
    """Return the store's problems, asking it at most once per READINESS_CACHE_SECONDS in this process."""
    problems = _last_answer(name, backend, fresh=True)
    if problems is not None:
        return problems
    if not _checking.acquire(blocking=False):
        problems = _last_answer(name, backend, fresh=False)
        if problems is not None:
            return problems  # another request is asking the store: its last answer will do meanwhile
        _checking.acquire()
    try:
        problems = _last_answer(name, backend, fresh=True)
        if problems is None:
            problems = backend.check()
            if problems:
                logger.warning("readiness: secret store %s unavailable", name)
            _checked[name] = _Checked(backend=backend, at=monotonic(), problems=tuple(problems))
        return problems
    finally:
        _checking.release()


def _result(problems: list[str]) -> dict:
    return {"status": "unavailable", "problems": problems} if problems else {"status": "ok"}


def _lost_secrets(name: str) -> list[str]:
    """Report the credentials whose secrets this store was seen to lack lately (one cache read)."""
    try:
        count = secrets_missing_count(storage=name)
    except Exception as exc:  # a cache that cannot answer knows of no loss; the store's own check still runs
        logger.warning("readiness: cache unavailable error=%s", type(exc).__name__)
        return []
    if not count:
        return []
    noun = "credential" if count == 1 else "credentials"
    return [
        f"{name.capitalize()} does not hold the secrets of {count} {noun} the database trusts; "
        "run manage.py check_secrets."
    ]


def _store_result(name: str, backend: BaseSecretBackend) -> dict:
    problems = _store_problems(name, backend)
    lost = _lost_secrets(name)
    if problems:
        return _result(problems + lost)
    if lost:
        return {"status": "degraded", "problems": lost}
    return _result([])


@csrf_exempt
@never_cache
@require_safe
def readiness(request: HttpRequest) -> JsonResponse:
    strict = request.GET.get("strict", "").lower() in ("1", "true", "yes")
    database_problems = _database_problems()
    checks = {"database": _result(database_problems)}
    degraded = False
    for name, backend in get_backends().items():
        checks[name] = _store_result(name, backend)
        if checks[name]["status"] != "ok":
            degraded = True

    if database_problems or (strict and degraded):
        response = JsonResponse({"status": "unavailable", "checks": checks}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return JsonResponse({"status": "degraded" if degraded else "ready", "checks": checks})
