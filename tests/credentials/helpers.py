"""Small helpers shared by the credentials tests."""

import datetime

from django.utils import timezone

from credentials.models import Credential, GraceSecret


def end_grace_periods(credential: Credential) -> int:
    """Move every grace period of the credential into the past, as if it had run out."""
    past = timezone.now() - datetime.timedelta(seconds=1)
    return GraceSecret.objects.filter(credential=credential).update(valid_until=past)


def expire(credential: Credential) -> None:
    """Make the credential expired (creation refuses a past expiresAt, so change the row)."""
    past = timezone.now() - datetime.timedelta(seconds=1)
    Credential.objects.filter(pk=credential.pk).update(expires_at=past)
    credential.refresh_from_db()
