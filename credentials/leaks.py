"""
Reported secrets: which are live secrets of a credential, each checked by the store that keeps
it, and the quarantine of those at once (credentials.services.quarantine).

A reported secret of AgentIdP's format names its credential by its secret reference
(credentials.secretformat); anything else (another format, a wrong checksum, text that only
looks like a secret) is no secret of ours and costs nothing: no query, no store.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from vaultstore.exceptions import SecretStoreError

from . import secretformat
from .clientauth.base import InvalidClient
from .clientauth.secret import secret_matching
from .models import Credential
from .services.quarantine import credential_quarantine
from .trust import role

logger = logging.getLogger(__name__)

#: The most secrets one report may carry (GitHub batches its matches; a 1 MiB body holds fewer).
MAX_REPORTED_SECRETS = 10_000


@dataclasses.dataclass(frozen=True)
class Reported:
    """One reported secret: the text, where it was found (a URL or a location), and what kind of place that is."""

    secret: str = dataclasses.field(repr=False)
    found_at: str = ""
    source: str = ""


class ReportUnavailable(Exception):
    """A store could not say whether a reported secret is one it keeps (Vault down): ask again later."""


def leaks_check(*, reported: Sequence[Reported], acting: Any) -> list[bool]:
    """
    Return, for each reported secret, whether it is a live secret of a credential (its
    current one, or a previous one in its grace period, of a credential that has not
    expired); quarantine each such credential now, naming `acting` as the reporter.

    The credentials are found in one query by the references in the secrets; each found
    credential's secrets are asked of their own store (or matched by the verified-secret
    cache) once per distinct secret. Raises ReportUnavailable, after quarantining what could
    be checked, when a store could not answer for a secret: that one may be live.
    """
    refs = {ref for item in reported if (ref := secretformat.secret_ref(item.secret)) is not None}
    by_ref = {
        credential.secret_ref: credential
        for credential in Credential.objects.select_related("agent").filter(
            kind=Credential.Kind.SECRET, secret_ref__in=refs
        )
    }
    verdicts: dict[str, bool] = {}
    unavailable = False
    for item in reported:
        if item.secret in verdicts:
            continue
        credential = by_ref.get(secretformat.secret_ref(item.secret) or "")
        matched = None
        if credential is not None and not credential.is_expired():
            try:
                matched = _live_secret(credential, item.secret)
            except SecretStoreError as exc:
                logger.warning(
                    "a reported secret could not be checked credential_id=%s error=%s",
                    credential.id,
                    type(exc).__name__,
                )
                unavailable = True
                continue
        verdicts[item.secret] = matched is not None
        if matched is not None:
            credential_quarantine(
                acting=acting, credential=credential, secret_role=matched, found_at=item.found_at, source=item.source
            )
    if unavailable:
        raise ReportUnavailable()
    return [verdicts[item.secret] for item in reported]


def _live_secret(credential: Credential, secret: str) -> str | None:
    """
    Return "current" or "grace" if `secret` is one the credential trusts now, else None: the
    match client authentication makes (the verified-secret cache, then each secret's own store).
    """
    try:
        matched, _ = secret_matching(credential, secret)
    except InvalidClient:  # rotated or deleted while its store was asked
        return None
    return role(credential, matched) if matched is not None else None
