"""
The Vault that Vault tests talk to: the in-process test server, and a real Vault when the
environment names one.

Every test that takes the `vault` fixture runs twice: against `tests.vaultserver` (hvac
over real HTTP), and against the Vault at VAULT_ADDR with VAULT_TOKEN (a root or admin
token, used to create a least-privilege policy and app token for the run). `dev.py test`
starts an OpenBao dev server for that when VAULT_ADDR is unset; without those variables
the second run is skipped, and reported as skipped. Tests that need a fault the real Vault
cannot be made to show on demand (down, sealed, slow, ...) call
`vault.require_server("<why>")` and are skipped there, with that reason.

The whole run shares the real Vault: each test looks only at the keys of agents that
appeared during it, and destroys them at its end.

The suite's own settings ignore VAULT_ADDR: only tests that take `vault_enabled` put Vault
in front of bcrypt.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import hvac
import hvac.exceptions
import pytest

from tests.vaultserver import SLOW_SECONDS, VaultTestServer  # noqa: F401  (SLOW_SECONDS: for the tests)
from vaultstore.backends import get_backends
from vaultstore.backends.vault import policy

REAL_ADDR = os.environ.get("VAULT_ADDR", "")
REAL_TOKEN = os.environ.get("VAULT_TOKEN", "")
REAL_MOUNT = os.environ.get("VAULT_MOUNT", "secret")
REAL_NAMESPACE = os.environ.get("VAULT_NAMESPACE", "")

#: Timeouts the app uses in tests: short, so that "slow" faults (SLOW_SECONDS) cost little.
TEST_TIMEOUTS = {"server": (0.5, 0.5), "real": (2.0, 5.0)}


class VaultTarget:
    """One Vault for one test: its address, an app token with the contract's policy, and a root view."""

    def __init__(
        self,
        *,
        kind: str,
        url: str,
        mount: str,
        app_token: str,
        root_token: str,
        namespace: str = "",
        server: VaultTestServer | None = None,
    ) -> None:
        self.kind = kind
        self.url = url
        self.mount = mount
        self.app_token = app_token
        self.namespace = namespace
        self.server = server
        self.root = hvac.Client(url=url, token=root_token, namespace=namespace or None, timeout=10)
        #: Agents Vault held keys for before this test: on a real Vault the run shares, not this test's.
        self.agents_before: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"<VaultTarget {self.kind} {self.url}>"

    @property
    def is_server(self) -> bool:
        return self.server is not None

    def require_server(self, why: str = "needs the in-process test server's fault injection") -> VaultTestServer:
        if self.server is None:
            pytest.skip(f"against a real Vault: {why}")
        return self.server

    def backend_options(self, **overrides: Any) -> dict[str, Any]:
        connect, read = TEST_TIMEOUTS[self.kind]
        return {
            "url": self.url,
            "token": self.app_token,
            "mount": self.mount,
            "namespace": self.namespace,
            "connect_timeout": connect,
            "read_timeout": read,
            **overrides,
        }

    def vaultstore_setting(self, *, default: str = "vault", rounds: int = 4, **overrides: Any) -> dict[str, Any]:
        return {
            "DEFAULT": default,
            "BACKENDS": {
                "bcrypt": {"BACKEND": "vaultstore.backends.bcrypt.BcryptSecretBackend", "OPTIONS": {"rounds": rounds}},
                "vault": {
                    "BACKEND": "vaultstore.backends.vault.VaultSecretBackend",
                    "OPTIONS": self.backend_options(**overrides),
                },
            },
        }

    # --- reading Vault as an operator would (root token), on either kind --------------------

    @staticmethod
    def key_of(path: str) -> str:
        """The KV key of a recorded vault_path (`{mount}/data/<key>`)."""
        return path.split("/data/", 1)[1]

    def read(self, path: str, version: int | None = None) -> dict | None:
        """Return the data at a recorded vault_path (and version), or None when Vault has none there."""
        try:
            response = self.root.secrets.kv.v2.read_secret_version(
                path=self.key_of(path), version=version, mount_point=self.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        return response["data"]["data"]

    def metadata(self, path: str) -> dict | None:
        """Return the KV metadata of a recorded vault_path, or None when the key is gone entirely."""
        try:
            return self.root.secrets.kv.v2.read_secret_metadata(path=self.key_of(path), mount_point=self.mount)["data"]
        except hvac.exceptions.InvalidPath:
            return None

    def write(self, path: str, data: dict) -> int:
        """Write a version as an operator would (outside AgentIdP); return its number."""
        response = self.root.secrets.kv.v2.create_or_update_secret(
            path=self.key_of(path), secret=data, mount_point=self.mount
        )
        return response["data"]["version"]

    def keys_of_agent(self, agent_id: Any) -> list[str]:
        """The credential keys Vault holds for an agent (root view), [] when there is none."""
        try:
            listed = self.root.secrets.kv.v2.list_secrets(
                path=f"agentidp/agents/{agent_id}/credentials", mount_point=self.mount
            )
        except hvac.exceptions.InvalidPath:
            return []
        return listed["data"]["keys"]

    def destroy(self, path: str) -> None:
        self.root.secrets.kv.v2.delete_metadata_and_all_versions(path=self.key_of(path), mount_point=self.mount)

    def agents(self) -> frozenset[str]:
        """The agent ids Vault holds keys for (root view)."""
        try:
            listed = self.root.secrets.kv.v2.list_secrets(path="agentidp/agents", mount_point=self.mount)
        except hvac.exceptions.InvalidPath:
            return frozenset()
        return frozenset(key.rstrip("/") for key in listed["data"]["keys"])

    def forget_new_agents(self) -> None:
        """Destroy the keys of agents newer than `agents_before` (not the dummy entry), as rollback does rows."""
        for agent_id in self.agents() - self.agents_before - {str(uuid.UUID(int=0))}:
            for key in self.keys_of_agent(agent_id):
                self.root.secrets.kv.v2.delete_metadata_and_all_versions(
                    path=f"agentidp/agents/{agent_id}/credentials/{key}", mount_point=self.mount
                )


@pytest.fixture(scope="session")
def _real_vault() -> Iterator[dict[str, str]]:
    """A least-privilege app token on the real Vault, made once per run and revoked after it."""
    root = hvac.Client(url=REAL_ADDR, token=REAL_TOKEN, namespace=REAL_NAMESPACE or None, timeout=10)
    name = f"agentidp-tests-{secrets.token_hex(4)}"
    root.sys.create_or_update_policy(name=name, policy=policy(REAL_MOUNT))
    created = root.auth.token.create(policies=[name], ttl="1h", renewable=True, meta={"purpose": "agentidp tests"})
    token = created["auth"]["client_token"]
    try:
        yield {"app_token": token}
    finally:
        root.auth.token.revoke(token)
        root.sys.delete_policy(name=name)


@pytest.fixture(params=["server", "real"])
def vault(request) -> Iterator[VaultTarget]:
    if request.param == "real":
        if not (REAL_ADDR and REAL_TOKEN):
            pytest.skip("no real Vault: set VAULT_ADDR and VAULT_TOKEN (root or admin) to run this against one")
        real = request.getfixturevalue("_real_vault")
        target = VaultTarget(
            kind="real",
            url=REAL_ADDR,
            mount=REAL_MOUNT,
            app_token=real["app_token"],
            root_token=REAL_TOKEN,
            namespace=REAL_NAMESPACE,
        )
        # The run shares this Vault: the test looks at its own agents' keys only, and leaves none behind.
        target.agents_before = target.agents()
        yield target
        target.forget_new_agents()
        return
    with VaultTestServer() as server:
        server.on_recover.append(let_breakers_probe)
        yield VaultTarget(
            kind="server",
            url=server.url,
            mount=server.mount,
            app_token=server.create_token(policies=("agentidp",)),
            root_token=server.ROOT_TOKEN,
            server=server,
        )


def let_breakers_probe() -> None:
    """Move each built Vault backend's open circuit breaker past its open period, as waiting that long would."""
    if not get_backends.cache_info().currsize:
        return
    for backend in get_backends().values():
        breaker = getattr(backend, "breaker", None)
        if breaker is not None and breaker.is_open:
            breaker.clock = lambda base=breaker.clock, ahead=breaker.seconds: base() + ahead


@pytest.fixture
def vault_enabled(vault, settings) -> VaultTarget:
    """Configure AgentIdP as with VAULT_ADDR set: new secrets go to Vault, bcrypt ones keep working."""
    settings.VAULTSTORE = vault.vaultstore_setting()
    return vault


@pytest.fixture
def owner() -> Any:
    """A credential-shaped owner with fresh ids, for backend tests that need no database."""

    class Owner:
        id = uuid.uuid4()
        agent_id = uuid.uuid4()

    return Owner()
