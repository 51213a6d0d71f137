import base64
from urllib.parse import urlencode

import pytest
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from rest_framework.test import APIClient

from credentials.selectors import kept_credentials
from credentials.services import IssuedCredential
from credentials.verified import forget_all
from oauth import throttling
from tests.factories import AgentFactory, make_credential
from tests.oidc_fixtures import loopback_key_urls, oidc_issuer, oidc_issuer_tls  # noqa: F401  (shared fixtures)
from tests.vault_fixtures import _real_vault, owner, vault, vault_enabled  # noqa: F401  (shared fixtures)


@pytest.fixture(autouse=True)
def _empty_cache():
    """
    Start every test with an empty Django cache (it holds, say, the pause after a failed move on use),
    and with no verified secrets and no credential rows kept in this process. In a test,
    `cache.clear()` empties all three, as if every process had started afresh.
    """

    def clear() -> None:
        forget_all()
        kept_credentials.forget_all()
        throttling.reserved.forget_all()
        caches[DEFAULT_CACHE_ALIAS].clear()

    clear()
    object.__setattr__(cache, "clear", clear)  # on the proxy itself, whichever cache a test configures
    yield
    object.__delattr__(cache, "clear")
    clear()


@pytest.fixture
def agent(db):
    return AgentFactory()


@pytest.fixture
def issued(agent) -> IssuedCredential:
    """A credential of `agent` with its plaintext secret."""
    return make_credential(agent)


@pytest.fixture
def admin_issued(db) -> IssuedCredential:
    """A credential of an agent holding the admin scope."""
    return make_credential(AgentFactory(name="admin", scopes=["agentidp:admin"]))


def assert_logs_keep(caplog, *values: str) -> None:
    """Assert that no captured log record, in its message or its arguments, carries any of these values."""
    logged = caplog.text + "\n".join(repr(record.args) for record in caplog.records)
    for value in values:
        assert value and value not in logged


def basic_auth(client_id: str, client_secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()


def form_post(client, path: str, params: dict, **extra):
    """POST `params` as application/x-www-form-urlencoded, as OAuth clients do."""
    return client.post(path, urlencode(params), content_type="application/x-www-form-urlencoded", **extra)


def token_for(client, issued: IssuedCredential, **params) -> str:
    """Get an access token for `issued` from the token endpoint."""
    response = form_post(
        client,
        "/api/v1/token",
        {"grant_type": "client_credentials", **params},
        HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, issued.client_secret),
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


@pytest.fixture
def api(admin_issued, client) -> APIClient:
    """An API client authenticated with an admin agent's bearer token."""
    api_client = APIClient()
    api_client.credentials(HTTP_AUTHORIZATION="Bearer " + token_for(client, admin_issued))
    return api_client
