"""AgentIdP's PostgreSQL backend: a health check that asks the server only when its socket has something to say."""

from __future__ import annotations

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.db.backends.postgresql import base as django_base

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the backend and its sessions are PostgreSQL's (CI runs on it)"
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def asked(monkeypatch) -> list[bool]:
    """Each time Django's own health check (SELECT 1) runs."""
    calls: list[bool] = []
    original = django_base.DatabaseWrapper.is_usable

    def spy(self):
        calls.append(True)
        return original(self)

    monkeypatch.setattr(django_base.DatabaseWrapper, "is_usable", spy)
    return calls


def other_session():
    params = connection.get_connection_params()
    return psycopg.connect(
        **{k: v for k, v in params.items() if k not in ("cursor_factory", "context")}, autocommit=True
    )


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_the_settings_use_the_backend_for_postgresql():
    assert settings.DATABASES["default"]["ENGINE"] == "agentidp.postgresql"
    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True


def test_an_idle_open_connection_is_usable_without_a_round_trip(asked):
    backend_pid()

    assert connection.is_usable() is True
    assert asked == []


def test_a_session_the_server_ended_is_not_usable_and_is_replaced(asked):
    pid = backend_pid()
    with other_session() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        admin.execute("SELECT pg_sleep(0.2)")  # the goodbye reaches the socket

    assert connection.is_usable() is False

    connection.health_check_done = False  # as at the start of a request
    connection.close_if_health_check_failed()
    assert backend_pid() != pid


def test_a_socket_with_something_to_read_is_asked_as_django_asks(asked):
    backend_pid()
    with connection.cursor() as cursor:
        cursor.execute("LISTEN agentidp_health_check_test")
    with other_session() as admin:
        admin.execute("NOTIFY agentidp_health_check_test")
        admin.execute("SELECT pg_sleep(0.2)")  # the notification reaches the idle socket

    assert connection.is_usable() is True
    assert asked == [True]


def test_a_connection_inside_a_transaction_is_asked_as_django_asks(asked):
    backend_pid()
    connection.connection.execute("BEGIN")
    try:
        assert connection.is_usable() is True
        assert asked == [True]
    finally:
        connection.connection.execute("ROLLBACK")


def test_a_closed_connection_is_not_usable(asked):
    backend_pid()
    connection.connection.close()

    assert connection.is_usable() is False
    assert asked == []
    connection.close()
