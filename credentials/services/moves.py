"""
Moving a credential's secret to the default store without changing it: on use (a bcrypt
secret moves into Vault when its agent authenticates), or by migrate_to_vault, which gives
the credential a new secret there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from vaultstore.backends import get_default_backend

from .. import selectors
from ..audit import audit_record
from ..models import AuditEvent, Credential
from .lifecycle import IssuedCredential, replace_secret
from .purges import queue_released, unrecorded_write

logger = logging.getLogger(__name__)


def credential_move_to_default(*, acting: Any, credential: Credential, secret: str) -> bool:
    """
    Keep the credential's current secret, `secret` (just verified), in the default store instead.

    The secret itself does not change, so nothing changes for the agent: this is the
    upgrade on use that moves bcrypt credentials into Vault one authentication at a
    time. Previous secrets in their grace period stay where they are. Returns False when
    there was nothing to do (already moved, rotated meanwhile, another request is moving
    it now, or a key credential, which has no secret).

    Failure order (the secret keeps working throughout):
    1. The row is locked (skipped if another transaction holds it) and must still trust
       the secret that was verified.
    2. The secret is stored in the default store. If that fails, nothing changed; a write
       Vault may still apply is queued for destruction.
    3. The row, the release of the old location and the audit event are written in one
       transaction. If the database fails, the row still trusts the old location, and
       the new entry is queued for destruction.
    """
    if credential.is_key:
        return False
    backend = get_default_backend()
    with unrecorded_write(credential=credential, reason="move_failed") as write, transaction.atomic():
        locked = Credential.objects.select_for_update(skip_locked=True).filter(pk=credential.pk).first()
        if locked is None or locked.stored_secret != credential.stored_secret or locked.storage == backend.name:
            return False
        old = locked.stored_secret
        new = write.store(backend, owner=locked, secret=secret, replacing=old)
        locked.set_stored_secret(new)
        locked.save(update_fields=list(Credential.LOCATION_FIELDS))
        live = [grace.stored_secret for grace in selectors.grace_secrets_live(credential_id=locked.pk)]
        queue_released(locked, dropped=[old], still_used=[new, *live])
        audit_record(
            acting=acting,
            action=AuditEvent.Action.CREDENTIAL_MOVED,
            agent_id=locked.agent_id,
            credential_id=locked.id,
            details={"from": old.storage, "to": new.storage, "trigger": "authentication"},
        )
    credential.set_stored_secret(new)
    logger.info("credential moved on use credential_id=%s from=%s to=%s", credential.id, old.storage, new.storage)
    return True


def credential_migrate(
    *,
    acting: Any,
    credential: Credential,
    from_storage: str,
    client_secret: str | None = None,
    grace_period_seconds: int = 0,
    before_commit: Callable[[IssuedCredential], None] | None = None,
) -> IssuedCredential:
    """
    Give a credential kept by `from_storage` a secret in the default store: a rotation
    (credential_rotate, the same failure order and audit event) for migrate_to_vault.

    Only a credential whose secret is still kept by `from_storage` is changed; one that
    moved meanwhile (on use, or by another run) raises StorageChanged, and nothing changes.
    `client_secret` is a secret an interrupted run already handed out (recorded in its
    output file, maybe already deployed): it is stored instead of a new one, so that what
    was handed out works. `before_commit(issued)` runs before the commit: the command
    records the secret in its file there, before the old one can stop working.
    """
    return replace_secret(
        acting=acting,
        credential=credential,
        grace_period_seconds=grace_period_seconds,
        from_storage=from_storage,
        client_secret=client_secret,
        before_commit=before_commit,
    )
