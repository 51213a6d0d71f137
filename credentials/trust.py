"""
The secrets a credential trusts, each named exactly: its current secret, and the previous
ones still in their grace period.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import uuid
from collections.abc import Iterable, Iterator

from vaultstore.backends import StoredSecret

from . import selectors
from .models import Credential, GraceSecret


@dataclasses.dataclass(frozen=True)
class Trusted:
    """One secret a credential trusts, named exactly: where it is kept, and since when it is trusted."""

    credential_id: uuid.UUID
    stored: StoredSecret
    # Vault numbers versions from 1 again once a key is destroyed, so a path and version can
    # come back with another secret; the moment the credential came to trust it cannot.
    since: datetime.datetime

    @functools.cached_property
    def name(self) -> str:
        stored = self.stored
        return "\x1f".join(
            [
                str(self.credential_id),
                self.since.isoformat(),
                stored.storage,
                stored.secret_hash,
                stored.vault_path,
                str(stored.vault_version or ""),
            ]
        )


def current_secret(credential: Credential) -> Trusted:
    return Trusted(credential.id, credential.stored_secret, since=credential.rotated_at or credential.created_at)


def candidate_secrets(credential: Credential, graces: Iterable[GraceSecret] | None = None) -> Iterator[Trusted]:
    """
    Yield the current secret, then the previous ones still in their grace period: `graces`
    if the caller has them, else queried (only once asked for).
    """
    yield current_secret(credential)
    if graces is None:
        graces = selectors.grace_secrets_live(credential_id=credential.pk)
    for grace in graces:
        yield Trusted(credential.id, grace.stored_secret, since=grace.created_at)


def role(credential: Credential, trusted: Trusted) -> str:
    """Name a trusted secret for logs and the audit trail: "current" or "grace"."""
    return "current" if trusted == current_secret(credential) else "grace"
