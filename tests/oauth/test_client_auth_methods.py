"""
Client authentication as a registry of methods (credentials.clientauth): the methods listed
in AGENTIDP_CLIENT_AUTH_METHODS are the ones the endpoints accept and the metadata names, a
method added there is heard at every endpoint, and a request may use one method only.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from credentials import clientauth
from credentials.clientauth.base import (
    ClientAuthMethod,
    InvalidClient,
    Presented,
    StoreAllowed,
    store_always_allowed,
)
from credentials.models import Credential
from tests.conftest import basic_auth, form_post
from tests.oauth.conftest import INTROSPECT_URL, REVOKE_URL, TOKEN_URL, assert_oauth_error

GRANT = {"grant_type": "client_credentials"}
BASIC = "credentials.clientauth.methods.ClientSecretBasic"
POST = "credentials.clientauth.methods.ClientSecretPost"
METADATA_URL = "/.well-known/oauth-authorization-server"


class HeaderTestMethod(ClientAuthMethod):
    """A method of the tests' own: the clientId in X-Test-Client, vouched for by the test itself."""

    name = "test_header"
    parameters = ()
    vouched: set[str] = set()

    def claims(self, request: HttpRequest, params: dict[str, str]) -> bool:
        return "HTTP_X_TEST_CLIENT" in request.META

    def read(self, request: HttpRequest, params: dict[str, str]) -> Presented:
        return Presented(self, request.META["HTTP_X_TEST_CLIENT"], "")

    def authenticate(self, presented: Presented, *, store_allowed: StoreAllowed = store_always_allowed) -> Credential:
        credential = Credential.objects.select_related("agent").filter(client_id=presented.client_id).first()
        if credential is None or presented.client_id not in self.vouched:
            raise InvalidClient("not_vouched", credential=credential)
        return credential


@pytest.fixture
def vouched():
    HeaderTestMethod.vouched = set()
    yield HeaderTestMethod.vouched
    HeaderTestMethod.vouched = set()


def test_the_metadata_names_the_methods_in_use(client, settings):
    assert client.get(METADATA_URL).json()["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]

    settings.AGENTIDP_CLIENT_AUTH_METHODS = [BASIC]

    document = client.get(METADATA_URL).json()
    for endpoint in ("token", "introspection", "revocation"):
        assert document[f"{endpoint}_endpoint_auth_methods_supported"] == ["client_secret_basic"]


def test_a_method_left_out_is_not_accepted(client, settings, issued):
    settings.AGENTIDP_CLIENT_AUTH_METHODS = [BASIC]
    body = {**GRANT, "client_id": issued.credential.client_id, "client_secret": issued.client_secret}

    response = form_post(client, TOKEN_URL, body)

    assert_oauth_error(response, 401, "invalid_client")
    assert "client_secret_basic" in response.json()["error_description"]
    basic = {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)}
    assert form_post(client, TOKEN_URL, GRANT, **basic).status_code == 200


@pytest.mark.parametrize("url", [TOKEN_URL, INTROSPECT_URL, REVOKE_URL])
def test_a_method_added_to_the_setting_is_heard_at_every_endpoint(client, settings, issued, vouched, url):
    settings.AGENTIDP_CLIENT_AUTH_METHODS = [BASIC, POST, f"{__name__}.HeaderTestMethod"]
    client_id = issued.credential.client_id
    params = GRANT if url == TOKEN_URL else {"token": "not-a-token"}

    assert_oauth_error(form_post(client, url, params, HTTP_X_TEST_CLIENT=client_id), 401, "invalid_client")

    vouched.add(client_id)
    assert form_post(client, url, params, HTTP_X_TEST_CLIENT=client_id).status_code == 200
    assert "test_header" in client.get(METADATA_URL).json()["token_endpoint_auth_methods_supported"]


def test_two_methods_in_one_request_are_invalid_request(client, settings, issued, vouched):
    settings.AGENTIDP_CLIENT_AUTH_METHODS = [BASIC, POST, f"{__name__}.HeaderTestMethod"]
    vouched.add(issued.credential.client_id)
    basic = {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)}

    response = form_post(client, TOKEN_URL, GRANT, HTTP_X_TEST_CLIENT=issued.credential.client_id, **basic)

    assert_oauth_error(response, 400, "invalid_request")


def test_a_store_outage_reaches_the_caller_as_client_authentications_own_error(settings, rf, issued):
    """What oauth catches is StoreUnavailable; the store's exception stays behind the interface."""
    from vaultstore.exceptions import SecretStoreUnavailable

    class DownMethod(HeaderTestMethod):
        def authenticate(
            self, presented: Presented, *, store_allowed: StoreAllowed = store_always_allowed
        ) -> Credential:
            raise SecretStoreUnavailable("Vault is sealed.", retry_after=7)

    request = rf.post(TOKEN_URL, HTTP_X_TEST_CLIENT=issued.credential.client_id)
    presented = DownMethod().read(request, {})

    with pytest.raises(clientauth.StoreUnavailable) as excinfo:
        clientauth.authenticate(presented)

    assert (excinfo.value.reason, excinfo.value.retry_after, excinfo.value.code) == (
        "SecretStoreUnavailable",
        7,
        "VAULT_READ_ERROR",
    )


@pytest.mark.parametrize(
    ("methods", "message"),
    [([], "names no method"), (["credentials.clientauth.methods.NoSuchMethod"], "cannot import")],
)
def test_a_setting_without_a_usable_method_is_improperly_configured(settings, methods, message):
    settings.AGENTIDP_CLIENT_AUTH_METHODS = methods

    with pytest.raises(ImproperlyConfigured, match=message):
        clientauth.methods_in_use()
