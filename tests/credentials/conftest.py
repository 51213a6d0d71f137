import pytest

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
