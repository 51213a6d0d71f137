"""
Secrets a store no longer holds although the database trusts them (Vault restarted empty,
restored from an old backup, asked in the wrong namespace): reported once each, counted for
/readyz, and checked for by `manage.py check_secrets`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from django.core.cache import cache
from django.db import transaction

from vaultstore.backends import get_backend_for
from vaultstore.exceptions import SecretStoreError

from ..audit import audit_record
from ..models import AuditEvent, Credential
from ..trust import Trusted, candidate_secrets, role

logger = logging.getLogger(__name__)

#: /readyz reports a credential whose trusted secret a store lost until this long after it was last seen lost.
SECRET_MISSING_REPORT_SECONDS = 600
#: A lost secret seen again within this long is not reported again (no ERROR line, no look at the trail).
SECRET_MISSING_REPEAT_SECONDS = 60
#: In the Django cache: one key per lost secret, set while it was reported lately...
SECRET_MISSING_SEEN_PREFIX = "agentidp:secret-missing:"  # noqa: S105 (a cache key prefix)
#: ...and one per store: {credentialId: when a secret of it was last seen lost (epoch seconds)}, for /readyz.
SECRETS_MISSING_PREFIX = "agentidp:secrets-missing:"


def credential_secret_missing(*, acting: Any, credential: Credential, trusted: Trusted, detected_by: str) -> bool:
    """
    Record that a store does not hold a secret the credential trusts: an ERROR line, an audit event, /readyz's report.

    The audit event (`credential.secret_missing`) is written once per trusted secret: its
    path, its version and the moment the credential came to trust it (Vault numbers
    versions from 1 again once a key is gone, so a later secret at the same path and
    version is another one), however often and by whom the loss is seen. The ERROR line
    and the refresh of /readyz's report come at most once per SECRET_MISSING_REPEAT_SECONDS
    for each lost secret (per Django cache), so a client retrying cannot flood the log.
    The row is locked and read again before the event is written: a secret the credential
    no longer trusts (rotated or deleted meanwhile) is not reported. Returns whether an
    event was written.

    A key credential has no secret to lose: nothing is recorded for it.

    Failure order: never raises. The caller's answer (a 503, or the command's listing)
    matters more than the report: a cache or database failure is logged and the report
    is tried again the next time the loss is seen.
    """
    if credential.is_key:
        return False
    stored = trusted.stored
    seen_key = SECRET_MISSING_SEEN_PREFIX + hashlib.sha256(trusted.name.encode()).hexdigest()
    try:
        if cache.get(seen_key):
            return False
    except Exception as exc:
        logger.warning("cache unavailable for a lost secret's report error=%s", type(exc).__name__)
    written = False
    try:
        with transaction.atomic():
            locked = Credential.objects.select_for_update().filter(pk=credential.pk).first()
            if locked is None or trusted not in set(candidate_secrets(locked)):
                return False
            which = role(locked, trusted)
            logger.error(
                "the secret store %s does not hold a secret the database trusts credential_id=%s agent_id=%s "
                "secret=%s path=%s version=%s detected_by=%s; restore it or rotate the credential, "
                "and run manage.py check_secrets",
                stored.storage,
                locked.id,
                locked.agent_id,
                which,
                stored.vault_path or "-",
                stored.vault_version or "-",
                detected_by,
            )
            details = {
                "storage": stored.storage,
                "vaultPath": stored.vault_path,
                "vaultVersion": stored.vault_version,
                "trustedSince": trusted.since.isoformat(),
            }
            reported = AuditEvent.objects.filter(
                action=AuditEvent.Action.CREDENTIAL_SECRET_MISSING,
                credential_id=locked.id,
                **{f"details__{name}": value for name, value in details.items()},
            )
            if not reported.exists():
                audit_record(
                    acting=acting,
                    action=AuditEvent.Action.CREDENTIAL_SECRET_MISSING,
                    agent_id=locked.agent_id,
                    credential_id=locked.id,
                    details={"clientId": locked.client_id, "secret": which, **details, "detectedBy": detected_by},
                )
                written = True
    except Exception:
        logger.exception("could not record a lost secret in the audit trail credential_id=%s", credential.id)
        return False
    try:
        _secrets_missing_note(storage=stored.storage, credential_id=credential.id)
        cache.set(seen_key, True, SECRET_MISSING_REPEAT_SECONDS)
    except Exception as exc:
        logger.warning("cache unavailable for a lost secret's report error=%s", type(exc).__name__)
    return written


def _secrets_missing_lately(storage: str) -> dict[str, float]:
    """Return {credentialId: when last seen lost} for the store, without the entries older than the report lasts."""
    kept = cache.get(SECRETS_MISSING_PREFIX + storage)
    if not isinstance(kept, dict):
        return {}
    since = time.time() - SECRET_MISSING_REPORT_SECONDS
    return {key: seen for key, seen in kept.items() if isinstance(seen, int | float) and seen > since}


def _secrets_missing_note(*, storage: str, credential_id: uuid.UUID) -> None:
    # Read, change, write: two processes writing at once may drop one credential until it is seen again.
    lately = _secrets_missing_lately(storage)
    lately[str(credential_id)] = time.time()
    cache.set(SECRETS_MISSING_PREFIX + storage, lately, SECRET_MISSING_REPORT_SECONDS)


def secrets_missing_count(*, storage: str) -> int:
    """
    Return how many credentials had a secret that this store lost seen lately (within SECRET_MISSING_REPORT_SECONDS).

    One cache read, for /readyz. An approximate count: what authentications and
    `check_secrets --record` saw, never a scan; `check_secrets` gives the exact list.
    """
    return len(_secrets_missing_lately(storage))


def secrets_missing_forget(
    *, storage: str, credential_ids: Iterable[uuid.UUID] | None = None, keeping: Iterable[uuid.UUID] = ()
) -> None:
    """Drop credentials from /readyz's report of lost secrets: these, or (None) every one but `keeping`."""
    lately = _secrets_missing_lately(storage)
    if credential_ids is None:
        kept = {str(credential_id) for credential_id in keeping}
        lately = {key: seen for key, seen in lately.items() if key in kept}
    else:
        for credential_id in credential_ids:
            lately.pop(str(credential_id), None)
    if lately:
        cache.set(SECRETS_MISSING_PREFIX + storage, lately, SECRET_MISSING_REPORT_SECONDS)
    else:
        cache.delete(SECRETS_MISSING_PREFIX + storage)


@dataclasses.dataclass(frozen=True)
class SecretCheck:
    """Whether a store holds one secret a credential trusts: True, False (lost), or None (the store did not answer)."""

    trusted: Trusted
    which: str  # "current" or "grace"
    held: bool | None
    error: str = ""


def credential_secrets_check(*, credential: Credential, record: bool = False, acting: Any = None) -> list[SecretCheck]:
    """
    Ask each store whether it still holds the credential's current secret and each previous one in its grace period.

    No secret is read out of the store or compared: `holds` asks for the trusted version
    only. With `record`, each secret found lost is reported as an authentication that
    meets it reports it (credential_secret_missing: ERROR line, one audit event per
    secret, /readyz's report). Uses the credential's prefetched `live_grace_secrets` when
    the caller set it, else queries them. A key credential has no secret: no checks.
    """
    if credential.is_key:
        return []
    candidates = candidate_secrets(credential, getattr(credential, "live_grace_secrets", None))
    checks = []
    for index, trusted in enumerate(candidates):
        which = "current" if index == 0 else "grace"
        try:
            held = get_backend_for(trusted.stored).holds(stored=trusted.stored)
        except SecretStoreError as exc:
            checks.append(SecretCheck(trusted, which, None, str(exc)))
            continue
        checks.append(SecretCheck(trusted, which, held))
        if not held and record:
            credential_secret_missing(
                acting=acting, credential=credential, trusted=trusted, detected_by="check_secrets"
            )
    return checks
