from django.db import models
from django.utils import timezone


class RevokedToken(models.Model):
    """An access token revoked before its expiry (RFC 7009), kept until it would have expired."""

    jti = models.CharField(max_length=64, primary_key=True)
    client_id = models.CharField(max_length=64)
    revoked_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.jti
