import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from django.db import connection

from tests.conftest import basic_auth, form_post


@pytest.fixture
def token_response(client):
    """Return a function that asks the token endpoint for a token with HTTP Basic, and returns the response."""

    def request(client_id: str, client_secret: str, **params):
        return form_post(
            client,
            "/api/v1/token",
            {"grant_type": "client_credentials", **params},
            HTTP_AUTHORIZATION=basic_auth(client_id, client_secret),
        )

    return request


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(username="operator", password="unused", is_staff=True)


@pytest.fixture
def installation_database(tmp_path, django_db_setup) -> Iterator[str]:
    """
    A database of its own for an installation run as separate processes, as a DATABASE_URL.

    On the database the suite runs on: a throwaway database on the same PostgreSQL server
    (dropped afterwards), or a SQLite file.
    """
    if connection.vendor != "postgresql":
        yield f"sqlite:///{tmp_path / 'db.sqlite3'}"
        return
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    name = f"agentidp_installation_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    settings_dict = connection.settings_dict
    credentials = quote(settings_dict["USER"] or "", safe="")
    if settings_dict["PASSWORD"]:
        credentials += ":" + quote(settings_dict["PASSWORD"], safe="")
    host = settings_dict["HOST"] or "localhost"
    port = settings_dict["PORT"] or "5432"
    try:
        yield f"postgres://{credentials}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(**params, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
