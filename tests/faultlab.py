"""What the Vault fault tests share: AgentIdP with Vault in front of bcrypt, and the calls they make through HTTP."""

from __future__ import annotations

from tests.conftest import basic_auth, form_post
from tests.factories import AgentFactory, make_credential
from tests.oauth.conftest import TOKEN_URL

GRANT = {"grant_type": "client_credentials"}


def assert_read_error(response) -> None:
    """The token endpoint's answer when Vault cannot verify: 503 temporarily_unavailable, VAULT_READ_ERROR."""
    assert response.status_code == 503, response.content
    body = response.json()
    assert (body["error"], body["code"]) == ("temporarily_unavailable", "VAULT_READ_ERROR"), body
    assert int(response["Retry-After"]) > 0


def assert_write_error(response) -> None:
    """The management API's answer when Vault cannot take a write: 503 VAULT_WRITE_ERROR."""
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "VAULT_WRITE_ERROR", response.json()
    assert int(response["Retry-After"]) > 0


class LabBase:
    """
    The test's clients (answers, never exceptions) and a bcrypt credential made before Vault is
    switched on; subclasses say which Vault (`vault`, a tests.vault_fixtures.VaultTarget) and
    how AgentIdP is configured for it (`configure`).
    """

    vault = None

    def __init__(self, *, settings, client, api, capture) -> None:
        self.settings = settings
        self.client = client
        self.api = api
        self.capture = capture
        self.client.raise_request_exception = False
        self.api.raise_request_exception = False
        # Made before Vault is switched on, so that its secret is a bcrypt hash.
        self.bcrypt = make_credential(AgentFactory(name="bcrypt-bot"))
        self.configure()

    def configure(self, **options) -> None:
        """Switch AgentIdP to Vault: new secrets go there (bcrypt ones keep verifying)."""
        self.settings.VAULTSTORE = self.vault.vaultstore_setting(**options)

    def path(self, credential) -> str:
        return f"{self.vault.mount}/data/agentidp/agents/{credential.agent_id}/credentials/{credential.id}"

    # The calls, with on_commit callbacks run as after a real commit.

    def token(self, client_id: str, client_secret: str):
        with self.capture(execute=True):
            return form_post(self.client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, client_secret))

    def token_for(self, issued):
        return self.token(issued.credential.client_id, issued.client_secret)

    def create(self, agent):
        with self.capture(execute=True):
            return self.api.post(f"/api/v1/agents/{agent.id}/credentials", {"description": "faults"}, format="json")

    def rotate(self, credential):
        with self.capture(execute=True):
            return self.api.post(
                f"/api/v1/agents/{credential.agent_id}/credentials/{credential.id}/rotate", {}, format="json"
            )

    def delete(self, credential):
        with self.capture(execute=True):
            return self.api.delete(f"/api/v1/agents/{credential.agent_id}/credentials/{credential.id}")
