"""A stock OAuth 2.0 client library gets a token from the live server and uses it."""

import pytest
from oauthlib.oauth2 import BackendApplicationClient
from oauthlib.oauth2.rfc6749.errors import InvalidClientError
from requests_oauthlib import OAuth2Session

from tests.factories import AgentFactory, make_credential


@pytest.fixture
def oauth_session(transactional_db, monkeypatch):
    # The live test server speaks plain HTTP; oauthlib refuses that unless told otherwise.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    issued = make_credential(AgentFactory(name="library-admin", scopes=["agentidp:admin"]))
    session = OAuth2Session(client=BackendApplicationClient(client_id=issued.credential.client_id))
    session.trust_env = False  # no proxy or .netrc from the environment between us and the live server
    return session, issued


def test_requests_oauthlib_gets_a_token_with_client_secret_basic_and_calls_the_api(live_server, oauth_session):
    session, issued = oauth_session

    token = session.fetch_token(
        token_url=live_server.url + "/api/v1/token",
        client_id=issued.credential.client_id,
        client_secret=issued.client_secret,
    )
    response = session.get(live_server.url + "/api/v1/agents")

    assert token["token_type"] == "Bearer"
    assert token["scope"] == ["agentidp:admin"]
    assert response.status_code == 200
    assert [agent["name"] for agent in response.json()["results"]] == ["library-admin"]


def test_requests_oauthlib_gets_a_token_with_client_secret_post_and_calls_the_api(live_server, oauth_session):
    session, issued = oauth_session

    token = session.fetch_token(
        token_url=live_server.url + "/api/v1/token",
        client_id=issued.credential.client_id,
        client_secret=issued.client_secret,
        include_client_id=True,
    )
    response = session.get(live_server.url + "/api/v1/agents/" + str(issued.credential.agent_id))

    assert token["token_type"] == "Bearer"
    assert response.status_code == 200
    assert response.json()["name"] == "library-admin"


def test_requests_oauthlib_reports_a_wrong_secret_as_invalid_client(live_server, oauth_session):
    session, issued = oauth_session

    with pytest.raises(InvalidClientError):
        session.fetch_token(
            token_url=live_server.url + "/api/v1/token",
            client_id=issued.credential.client_id,
            client_secret="not-the-secret",
        )
