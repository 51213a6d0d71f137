"""
The secret-store interface.

A backend keeps client secrets for credentials and checks presented secrets against what
it keeps. Which backend holds a given secret is recorded next to it (`storage`), so a
credential made under one configuration keeps verifying after the default changes, the
way Django's password hashers keep old hashes working.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol

from django.core.exceptions import ImproperlyConfigured


@dataclasses.dataclass(frozen=True)
class StoredSecret:
    """What the database records about one stored secret: which backend keeps it, and how to find it."""

    storage: str
    # A bcrypt hash; never shown in a repr, a log line or an error.
    secret_hash: str = dataclasses.field(default="", repr=False)
    #: Vault: the KV v2 API path, `{mount}/data/agentidp/agents/{agentId}/credentials/{credentialId}`.
    vault_path: str = ""
    #: Vault: the KV version the database trusts; None means "the location, any version".
    vault_version: int | None = None

    @property
    def kept_outside_database(self) -> bool:
        """Whether a store keeps something elsewhere that must be destroyed when this secret goes."""
        return bool(self.vault_path)


class SecretOwner(Protocol):
    """The credential a secret belongs to, as a backend sees it."""

    id: uuid.UUID
    agent_id: uuid.UUID


class BaseSecretBackend:
    """Keep and verify client secrets; subclasses set `name` and implement `store` and `verify`."""

    #: The contract's `storage` value for secrets this backend keeps.
    name: ClassVar[str] = ""
    #: Every option a backend accepts, with its default; anything else is a configuration error.
    default_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            raise ImproperlyConfigured(f"VAULTSTORE backend {self.name!r} does not accept the option {unknown[0]!r}.")
        self.options = {**self.default_options, **options}
        self.validate_options()

    def validate_options(self) -> None:
        """Raise ImproperlyConfigured naming the first bad option."""

    def store(self, *, owner: SecretOwner, secret: str, replacing: StoredSecret | None = None) -> StoredSecret:
        """
        Keep `secret` as the owner's newest secret and return what the database must record.

        `replacing` is what the database records now (a rotation), or None (a new
        credential). The secret it describes must keep working: a backend adds, it never
        overwrites what the database still trusts.
        """
        raise NotImplementedError

    def location(self, *, owner: SecretOwner) -> StoredSecret:
        """Return where this backend would keep the owner's secrets, any version (to clean up a failed store)."""
        return StoredSecret(storage=self.name)

    def verify(self, *, stored: StoredSecret, secret: str) -> bool:
        """Return whether `secret` is the one kept as `stored`, in time independent of where they differ."""
        raise NotImplementedError

    def verify_trusted(self, *, stored: StoredSecret, secret: str) -> bool:
        """
        Verify a secret that the database trusts now, as `verify` does, but never take its absence for "no".

        A store that keeps something outside the database raises SecretMissing when it
        does not hold what `stored` names: that is data the store lost, not a wrong secret.
        Client authentication calls this; `verify` answers False there instead, for callers
        that only ask whether a secret is the one kept. A store that keeps everything in
        the row (bcrypt) cannot lose it, hence this default.
        """
        return self.verify(stored=stored, secret=secret)

    def holds(self, *, stored: StoredSecret) -> bool:
        """
        Return whether the store still holds the secret `stored` names, without a presented secret to compare.

        For `manage.py check_secrets`. Raises SecretStoreError when the store cannot
        answer. A store that keeps everything in the row holds it while the row exists.
        """
        return True

    def verify_dummy(self, *, secret: str) -> None:
        """Spend the time of one failed verification, so an unknown client costs what a known one does."""
        raise NotImplementedError

    def delete(self, *, stored: Iterable[StoredSecret]) -> None:
        """
        Destroy whatever this backend keeps outside the database for these secrets, every version.

        Idempotent: destroying what is already gone succeeds. Raises SecretStoreError when
        the store does not confirm, so that the caller keeps the job and retries it.
        """

    def check(self) -> list[str]:
        """
        Return the problems that stop this backend from working now (empty when healthy).

        Anonymous readiness probes call it: it must leave unchanged how the backend serves
        secrets (a failed check must not make verifications fail fast, say).
        """
        return []

    def close(self) -> None:
        """Release what the backend holds (threads, connections) when the configuration is replaced."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"
