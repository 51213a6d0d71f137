"""bcrypt hashes in the database: the default store, and the only one without Vault."""

from __future__ import annotations

import functools
import secrets

import bcrypt
from django.core.exceptions import ImproperlyConfigured

from .base import BaseSecretBackend, SecretOwner, StoredSecret

# bcrypt reads at most 72 bytes; anything longer is refused rather than silently truncated.
MAX_SECRET_BYTES = 72


class BcryptSecretBackend(BaseSecretBackend):
    name = "bcrypt"
    default_options = {"rounds": 12}

    def validate_options(self) -> None:
        rounds = self.options["rounds"]
        if not isinstance(rounds, int) or isinstance(rounds, bool) or not 4 <= rounds <= 31:
            raise ImproperlyConfigured("VAULTSTORE backend 'bcrypt': 'rounds' must be an integer from 4 to 31.")

    def store(self, *, owner: SecretOwner, secret: str, replacing: StoredSecret | None = None) -> StoredSecret:
        encoded = secret.encode()
        if len(encoded) > MAX_SECRET_BYTES:
            raise ValueError("bcrypt keeps secrets of at most 72 bytes")
        hashed = bcrypt.hashpw(encoded, bcrypt.gensalt(self.options["rounds"]))
        return StoredSecret(storage=self.name, secret_hash=hashed.decode("ascii"))

    def verify(self, *, stored: StoredSecret, secret: str) -> bool:
        if stored.storage != self.name or not stored.secret_hash:
            return False
        try:
            encoded = secret.encode()
        except UnicodeEncodeError:  # a lone surrogate (JSON allows them) is not a secret anyone was given
            return False
        if len(encoded) > MAX_SECRET_BYTES:
            return False
        try:
            return bcrypt.checkpw(encoded, stored.secret_hash.encode("ascii"))
        except ValueError:  # not a bcrypt hash: nothing can match it
            return False

    def verify_dummy(self, *, secret: str) -> None:
        self.verify(stored=self._dummy, secret=secret)

    @functools.cached_property
    def _dummy(self) -> StoredSecret:
        # A hash at the configured cost of a secret nobody knows.
        return self.store(owner=None, secret=secrets.token_urlsafe(32))  # type: ignore[arg-type]
