"""
Checking a presented client secret: against the credential's current secret and the
previous ones in their grace period, each by the store that keeps it, or by the
verified-secret cache; then the row read again after a slow verification, last-used noted,
and the secret moved to the default store on use.
"""

from __future__ import annotations

import datetime
import logging
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from vaultstore.backends import StoredSecret, get_backend_for, get_default_backend
from vaultstore.exceptions import SecretMissing, SecretStoreError

from .. import secretformat, selectors
from ..metrics import SECRET_VERIFICATIONS
from ..models import Credential
from ..services import credential_move_to_default, credential_secret_missing
from ..trust import Trusted, candidate_secrets, current_secret
from ..verified import remember_verified, verified_recently
from .base import InvalidClient, StoreAllowed, VerificationWithheld, store_always_allowed

logger = logging.getLogger(__name__)


def credential_authenticate(
    *, client_id: str, client_secret: str, store_allowed: StoreAllowed = store_always_allowed
) -> Credential:
    """
    Return the credential that this client id and secret authenticate, or raise InvalidClient.

    A secret AgentIdP could not have issued (neither its format with a right checksum, nor
    the earlier one) is refused first, before the credential is looked up.

    An unknown client id pays what a known one with a wrong secret pays: one dummy
    verification in the default store (a bcrypt check, or a Vault read) and the query for
    previous secrets. A known one is verified before its expiry or its agent's status is
    looked at, so the time taken does not tell a wrong secret from an expired or suspended
    credential. (A right secret verified lately is matched from the verified-secret cache,
    so refusing it for expiry or suspension is quicker; that tells only a holder of the
    right secret something.) The current secret is tried first, then previous secrets
    still inside their grace period; each is verified by the store that holds it, so
    bcrypt credentials keep working while Vault is down.

    A secret that a store verified (not the cache) is checked once more against the row
    as it is now: a rotation or deletion that committed during a slow verification
    refuses the request instead of letting the old secret through.

    `store_allowed()` is asked once a store would be (the answer may cost a read of the rate
    limits' counters, which a secret the verified-secret cache vouches for never needs). When
    it says no (the client is throttled) no store is asked: a secret the cache vouches for
    still authenticates, anything else raises VerificationWithheld, an unknown client id included.
    Raises SecretStoreError (SecretReadError) when the store that holds this credential's
    secret cannot answer: the token endpoint's 503 temporarily_unavailable, not invalid_client.
    Raises SecretMissing (a SecretReadError) when the store answers that it does not hold the
    current secret the row still trusts (Vault restarted empty, restored from an old backup,
    asked in the wrong namespace): the store lost it, so the client is not refused for it. That
    is reported once per secret (credential_secret_missing). A store that lost only a
    previous secret in its grace period is reported too, but the request is answered as if
    that secret did not match: it can no longer be checked, and the current one did not match.
    """
    if not secretformat.could_be_issued(client_secret):
        # Not a secret AgentIdP issues (a wrong checksum, say): refused before any lookup or
        # store, whichever client id it came with, so it tells unknown from known no more than
        # the text itself does.
        if not store_allowed():
            raise VerificationWithheld()
        raise InvalidClient("malformed_secret")
    credential = selectors.credential_find_by_client_id(client_id=client_id)
    if credential is None or credential.is_key:
        # A key credential has no secret: a secret presented for it is refused like an unknown id's.
        # What a known clientId with a wrong secret pays, throttled or not: a look in the
        # cache, the store (unless withheld), the grace query.
        backend = get_default_backend()
        verified_recently(
            trusted=Trusted(NO_CREDENTIAL_ID, StoredSecret(storage=backend.name), since=EPOCH), secret=client_secret
        )
        allowed = store_allowed()
        if allowed:
            SECRET_VERIFICATIONS.labels(backend.name, "dummy").inc()
            backend.verify_dummy(secret=client_secret)
        selectors.grace_secrets_live(credential_id=NO_CREDENTIAL_ID)
        if not allowed:
            raise VerificationWithheld()
        if credential is not None:
            raise InvalidClient("key_credential", credential=credential)
        raise InvalidClient("unknown_client")
    matched, by_store = secret_matching(credential, client_secret, store_allowed=store_allowed)
    if matched is None:
        raise InvalidClient("wrong_secret", credential=credential)
    current = matched.stored == credential.stored_secret
    if by_store:
        credential = _still_trusting(credential, matched, was_current=current)
    if credential.is_compromised:
        raise InvalidClient("credential_compromised", credential=credential)
    if credential.is_expired():
        raise InvalidClient("credential_expired", credential=credential)
    if not credential.agent.is_active:
        raise InvalidClient("agent_suspended", credential=credential)
    note_use(credential)
    if matched.stored == credential.stored_secret:
        _upgrade_on_use(credential, client_secret)
    return credential


#: The id no credential has, and a moment none was trusted since, for the unknown client's share of the work.
NO_CREDENTIAL_ID = uuid.UUID(int=0)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def secret_matching(
    credential: Credential, secret: str, *, store_allowed: StoreAllowed = store_always_allowed
) -> tuple[Trusted | None, bool]:
    """
    Return which of the credential's secrets `secret` is (the current one or a previous one in its grace
    period), and whether a store said so (False: the verified-secret cache did).

    A secret the store verified within AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS matches
    without asking it again (credentials.verified). A store that cannot answer does not
    stop the others from being asked (a bcrypt secret in its grace period still works
    while Vault is down); its error is raised only when nothing else matched, since the
    secret might be the one it holds. `store_allowed()` is asked before the first store; when
    it says no, only the cache is asked, and VerificationWithheld is raised when it does not
    vouch for the secret.

    A secret the store says it does not hold (SecretMissing) is checked against the row as
    it is now (_secrets_lost): a deletion or rotation that committed meanwhile destroys the
    old entry, and is the usual invalid_client. One the row still trusts is reported; if
    it is the current secret and nothing matched, SecretMissing is raised.
    """
    unavailable: SecretStoreError | None = None
    missing: list[Trusted] = []
    for trusted in candidate_secrets(credential):
        stored = trusted.stored
        if verified_recently(trusted=trusted, secret=secret):
            _secrets_lost(credential, missing)
            return trusted, False
        if not store_allowed():
            continue
        try:
            matched = get_backend_for(stored).verify_trusted(stored=stored, secret=secret)
        except SecretMissing:
            SECRET_VERIFICATIONS.labels(stored.storage, "missing").inc()
            missing.append(trusted)
            continue
        except SecretStoreError as exc:
            SECRET_VERIFICATIONS.labels(stored.storage, "unavailable").inc()
            unavailable = unavailable or exc
            continue
        SECRET_VERIFICATIONS.labels(stored.storage, "match" if matched else "mismatch").inc()
        if matched:
            remember_verified(trusted=trusted, secret=secret)
            _secrets_lost(credential, missing)
            return trusted, True
    if not store_allowed():
        raise VerificationWithheld()
    lost = _secrets_lost(credential, missing)
    if unavailable is not None:
        raise unavailable
    current = current_secret(credential)
    if current in lost:
        raise SecretMissing("The secret store does not hold this credential's current secret.")
    if current in missing:
        raise InvalidClient("rotated_during_verification", credential=credential)
    return None, False


def _secrets_lost(credential: Credential, missing: list[Trusted]) -> list[Trusted]:
    """
    Return which of the secrets a store said it does not hold the credential still trusts, and report those.

    The row is read again first: a deletion or a rotation that committed while the store
    was asked destroys (or stops trusting) the entry it asked for, which is no loss.
    Raises InvalidClient("deleted_during_verification") when the credential is gone.
    """
    if not missing:
        return []
    now = selectors.credential_find_by_client_id(client_id=credential.client_id)
    if now is None or now.pk != credential.pk:
        raise InvalidClient("deleted_during_verification")
    trusted_now = set(candidate_secrets(now))
    lost = [trusted for trusted in missing if trusted in trusted_now]
    for trusted in lost:
        credential_secret_missing(acting=None, credential=now, trusted=trusted, detected_by="authentication")
    return lost


def _still_trusting(credential: Credential, matched: Trusted, *, was_current: bool) -> Credential:
    """
    Return the credential's row as it is now if it still trusts `matched`; else raise InvalidClient.

    It does if the secret is where it was verified (the current secret, or a previous one
    still in its grace period), or if it was the current secret and has only moved to
    another store meanwhile (upgrade on use, by a concurrent request): a move keeps the
    moment the credential came to trust its secret, a rotation never does. Without that,
    every request racing a move would be refused with the right secret.
    """
    now = selectors.credential_find_by_client_id(client_id=credential.client_id)
    if now is None or now.pk != credential.pk:
        raise InvalidClient("deleted_during_verification")
    if now.stored_secret == matched.stored:
        return now
    if was_current and current_secret(now).since == matched.since:
        return now
    if matched.stored not in [grace.stored_secret for grace in selectors.grace_secrets_live(credential_id=now.pk)]:
        raise InvalidClient("rotated_during_verification", credential=now)
    return now


def note_use(credential: Credential) -> None:
    """Record the authentication in last_used_at, at most once per LAST_USED_RESOLUTION per credential."""
    now = timezone.now()
    since = now - Credential.LAST_USED_RESOLUTION
    if credential.last_used_at is not None and credential.last_used_at > since:
        return
    # Conditional, so that processes racing here write once between them.
    Credential.objects.filter(pk=credential.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=since)
    ).update(last_used_at=now)
    credential.last_used_at = now
    # The row this process keeps has the old moment: raised, or every request would write again.
    selectors.kept_credentials.note_last_used(credential, now)


#: Set (in the Django cache) while moves on use are paused after one failed.
UPGRADE_PAUSED_CACHE_KEY = "agentidp:upgrade-on-use:paused"


def _upgrade_on_use(credential: Credential, secret: str) -> None:
    """
    Move a just-verified current secret to the default store, if it is kept elsewhere.

    Never fails the authentication: a failure is logged and pauses moves for
    AGENTIDP_UPGRADE_RETRY_SECONDS, so that an unavailable store does not slow every
    request while it is down.
    """
    if not settings.AGENTIDP_UPGRADE_ON_USE or credential.storage == get_default_backend().name:
        return
    if cache.get(UPGRADE_PAUSED_CACHE_KEY):
        return
    try:
        credential_move_to_default(acting=None, credential=credential, secret=secret)
    except Exception as exc:
        cache.set(UPGRADE_PAUSED_CACHE_KEY, True, settings.AGENTIDP_UPGRADE_RETRY_SECONDS)
        logger.warning(
            "moving a secret on use failed; moves pause for %ss credential_id=%s error=%s",
            settings.AGENTIDP_UPGRADE_RETRY_SECONDS,
            credential.id,
            type(exc).__name__,
        )
