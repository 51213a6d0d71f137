"""Small helpers shared by the credentials tests."""

import datetime

import pytest
from django.utils import timezone

from credentials.clientauth import InvalidClient
from credentials.clientauth.secret import credential_authenticate
from credentials.models import AuditEvent, Credential, GraceSecret

#: The keys of a credential in API responses (the contract's Credential), without and with its secret.
CREDENTIAL_KEYS = {
    "credentialId",
    "agentId",
    "clientId",
    "kind",
    "description",
    "storage",
    "status",
    "createdAt",
    "rotatedAt",
    "expiresAt",
    "jwks",
    "jwksUri",
}
ISSUED_KEYS = CREDENTIAL_KEYS | {"clientSecret"}


def end_grace_periods(credential: Credential) -> int:
    """Move every grace period of the credential into the past, as if it had run out."""
    past = timezone.now() - datetime.timedelta(seconds=1)
    return GraceSecret.objects.filter(credential=credential).update(valid_until=past)


def expire(credential: Credential) -> None:
    """Make the credential expired (creation refuses a past expiresAt, so change the row)."""
    past = timezone.now() - datetime.timedelta(seconds=1)
    Credential.objects.filter(pk=credential.pk).update(expires_at=past)
    credential.refresh_from_db()


def authenticates(client_id: str, client_secret: str) -> bool:
    try:
        credential_authenticate(client_id=client_id, client_secret=client_secret)
    except InvalidClient:
        return False
    return True


def reason(client_id: str, client_secret: str) -> str:
    """Why authentication fails (it must fail): the InvalidClient reason logged and audited."""
    with pytest.raises(InvalidClient) as excinfo:
        credential_authenticate(client_id=client_id, client_secret=client_secret)
    return excinfo.value.reason


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))
