"""
Django's PostgreSQL backend (psycopg 3), with a health check that costs no round trip.

With CONN_HEALTH_CHECKS, Django asks a persistent connection `SELECT 1` before the first
query of every request, so that a connection the server closed meanwhile (a restart, a
failover, pg_terminate_backend, idle_session_timeout) is replaced instead of failing the
request. On the token endpoint that is a second round trip to PostgreSQL for every token,
beside the one query the request needs.

A server that ends a session says so on its socket: it sends its error and closes the
connection, or the operating system resets it. So an idle connection whose socket has
nothing to read is open as far as anyone can know without waiting, and is used as it is;
one with anything to read (a goodbye, an end of file, or a notice the server sent while
it was idle) is asked `SELECT 1` as Django asks it, and replaced if that fails. A
connection that is not idle, or that psycopg already knows is closed or broken, is not
trusted either way. What neither check can see is a peer that vanished without a word (a
cable pulled): `SELECT 1` would wait on it as long as the request's own query does.
"""

from __future__ import annotations

import select

import psycopg
from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        try:
            pgconn = connection.pgconn
            idle = (
                pgconn.status == pq.ConnStatus.OK
                and pgconn.transaction_status == pq.TransactionStatus.IDLE
                and not select.select([pgconn.socket], [], [], 0)[0]
            )
        except (OSError, ValueError, psycopg.Error):
            return False
        return idle or super().is_usable()
