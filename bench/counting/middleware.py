"""Per-request counts, in response headers, that the load generator sums in the diagnostic pass."""

from __future__ import annotations

import bcrypt
from django.db import connection
from django.http import HttpRequest, HttpResponse

#: SQL statements executed while the request was handled (through Django's cursor).
QUERIES_HEADER = "X-Bench-Queries"
#: bcrypt verifications (bcrypt.checkpw calls) made while the request was handled.
BCRYPT_HEADER = "X-Bench-Bcrypt"

_bcrypt_checks = 0


def _counting(checkpw):
    def checkpw_counted(password: bytes, hashed_password: bytes) -> bool:
        global _bcrypt_checks
        _bcrypt_checks += 1
        return checkpw(password, hashed_password)

    checkpw_counted.__wrapped__ = checkpw
    return checkpw_counted


class CountingMiddleware:
    """
    Count the SQL statements and bcrypt verifications of each request.

    SQL: connection.execute_wrapper sees every statement run through a Django cursor (ORM
    queries, raw SQL, executemany as one). It does not see what Django sends on the raw
    driver connection: the CONN_HEALTH_CHECKS ping (SELECT 1) on a reused connection and
    transaction control (BEGIN/COMMIT around atomic blocks).
    bcrypt: the module's checkpw is wrapped once per process (vaultstore's bcrypt backend
    calls it as `bcrypt.checkpw`); gunicorn's sync workers serve one request at a time, so
    the difference of a process-wide count is the request's.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        if not hasattr(bcrypt.checkpw, "__wrapped__"):
            bcrypt.checkpw = _counting(bcrypt.checkpw)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        executed = 0

        def count(execute, sql, params, many, context):
            nonlocal executed
            executed += 1
            return execute(sql, params, many, context)

        checks_before = _bcrypt_checks
        with connection.execute_wrapper(count):
            response = self.get_response(request)
        response[QUERIES_HEADER] = str(executed)
        response[BCRYPT_HEADER] = str(_bcrypt_checks - checks_before)
        return response
