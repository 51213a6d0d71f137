"""
Agents, their credentials and the audit trail.

Models hold state only: every write goes through credentials.services, every read that
callers share through credentials.selectors.
"""

from __future__ import annotations

import datetime
import unicodedata
import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from vaultstore.backends import StoredSecret


def agent_name_key(name: str) -> str:
    """
    The form of an agent's name that uniqueness is judged on: compatibility-normalised
    (NFKC) and case-folded, so that names a person reads as one ("Ｂｏｔ", "bot", "BOT";
    "Straße", "STRASSE") are one name on every database.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


class Agent(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=128)
    # agent_name_key(name), kept with the name by save(): what the unique index compares.
    name_key = models.CharField(max_length=512, unique=True, editable=False)
    description = models.TextField(blank=True, default="")
    owner = models.CharField(max_length=256, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    scopes = models.JSONField(default=list, blank=True)
    # The resources (RFC 8707) the agent may get tokens for, besides AgentIdP itself.
    allowed_resources = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        permissions = [
            ("suspend_agent", "Can suspend and reactivate agents"),
            # Any scope, agentidp:admin included: whoever holds this can make an admin agent.
            ("grant_scopes", "Can set the scopes agents may ask for (agentidp:admin included)"),
            # Whoever holds this decides which APIs an agent's tokens are good for.
            ("grant_resources", "Can set the resources agents may get tokens for"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # The key is derived state, never set on its own: it cannot drift from the name.
        self.name_key = agent_name_key(self.name)
        if kwargs.get("update_fields") is not None and "name" in kwargs["update_fields"]:
            kwargs["update_fields"] = {*kwargs["update_fields"], "name_key"}
        super().save(*args, **kwargs)

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class SecretLocation(models.Model):
    """The columns that say where one secret is kept: the store's name and what it needs to find it."""

    storage = models.CharField(max_length=16, editable=False)
    # bcrypt only; never shown in the admin, an API response or a log line.
    secret_hash = models.CharField(max_length=128, blank=True, default="", editable=False)
    # Vault only: the KV v2 path of the secret, and the version of it that is trusted.
    # NULL, not "", for "no path": the check constraint below tests for it.
    vault_path = models.CharField(max_length=512, null=True, blank=True, editable=False)  # noqa: DJ001
    vault_version = models.PositiveIntegerField(null=True, blank=True, editable=False)

    #: The fields set_stored_secret() writes, for save(update_fields=...).
    LOCATION_FIELDS = ("storage", "secret_hash", "vault_path", "vault_version")

    class Meta:
        abstract = True

    @property
    def stored_secret(self) -> StoredSecret:
        return StoredSecret(
            storage=self.storage,
            secret_hash=self.secret_hash,
            vault_path=self.vault_path or "",
            vault_version=self.vault_version,
        )

    def set_stored_secret(self, stored: StoredSecret) -> None:
        self.storage = stored.storage
        self.secret_hash = stored.secret_hash
        self.vault_path = stored.vault_path or None
        self.vault_version = stored.vault_version


def _vault_location_complete(prefix: str) -> models.CheckConstraint:
    # A Vault secret is trusted at one written version; the database never points at "some version".
    return models.CheckConstraint(
        condition=~models.Q(storage="vault") | models.Q(vault_path__isnull=False, vault_version__isnull=False),
        name=f"{prefix}_vault_location_complete",
    )


class CredentialQuerySet(models.QuerySet):
    """The one definition of an active, an expired and a secret-holding credential in queries."""

    def active(self, now: datetime.datetime | None = None) -> CredentialQuerySet:
        """Credentials without an expiry, or whose expiry lies ahead of `now` (default: this moment)."""
        return self.filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now or timezone.now()))

    def with_secret(self) -> CredentialQuerySet:
        """Credentials that hold a secret (in a store); key credentials hold public keys instead."""
        return self.filter(kind=Credential.Kind.SECRET)

    def expired(self, now: datetime.datetime | None = None) -> CredentialQuerySet:
        """Credentials whose expiry has come by `now` (default: this moment)."""
        return self.filter(expires_at__lte=now or timezone.now())

    def compromised(self, value: bool = True) -> CredentialQuerySet:
        """Credentials quarantined for a leaked secret (with False: the others)."""
        return self.filter(compromised_at__isnull=not value)


class KeyLocation(models.Model):
    """
    Where a signer's public keys are: a JWK Set AgentIdP holds (`jwks`), or the https URL of
    one (`jwks_uri`); never a private key. A key credential has exactly one of them; a trust
    policy at most one (without either, its issuer's discovery document names the URL).
    """

    jwks = models.JSONField(null=True, blank=True, editable=False)
    jwks_uri = models.CharField(max_length=2048, null=True, blank=True, editable=False)  # noqa: DJ001

    #: The fields set_key_location() writes, for save(update_fields=...).
    KEY_FIELDS = ("jwks", "jwks_uri")

    class Meta:
        abstract = True

    def set_key_location(self, *, jwks: dict | None, jwks_uri: str | None) -> None:
        self.jwks = jwks
        self.jwks_uri = jwks_uri or None


class Credential(SecretLocation, KeyLocation):
    """
    One OAuth client of an agent. A secret credential's secret lives in the store named by
    `storage`; a key credential (private_key_jwt) has public keys instead, and no storage.
    """

    class Kind(models.TextChoices):
        SECRET = "secret", "Secret"
        KEY = "key", "Key"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.SECRET, editable=False)
    # PROTECT: an agent is deleted through agent_delete, which deletes its credentials first.
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="credentials")
    client_id = models.CharField(max_length=64, unique=True, editable=False)
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    # The last successful client authentication, to within LAST_USED_RESOLUTION.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The reference every secret of a secret credential carries (credentials.secretformat):
    # how a reported secret finds its credential. Random; None for a key credential.
    secret_ref = models.CharField(max_length=12, unique=True, null=True, blank=True, editable=False)
    # When a live secret of it was reported leaked: every secret is refused until it is rotated.
    compromised_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Access tokens issued before this moment are inactive (set when the credential is quarantined).
    tokens_not_before = models.DateTimeField(null=True, blank=True, editable=False)

    objects = CredentialQuerySet.as_manager()

    #: last_used_at is written at most this often per credential, so the token endpoint rarely writes.
    LAST_USED_RESOLUTION = datetime.timedelta(minutes=1)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            _vault_location_complete("credentials_credential"),
            # A secret credential has a store and no keys; a key credential has its keys in one place and no store.
            models.CheckConstraint(
                condition=(models.Q(kind="secret", jwks__isnull=True, jwks_uri__isnull=True) & ~models.Q(storage=""))
                | (
                    models.Q(kind="key", storage="", secret_hash="", vault_path__isnull=True)
                    & (
                        models.Q(jwks__isnull=False, jwks_uri__isnull=True)
                        | models.Q(jwks__isnull=True, jwks_uri__isnull=False)
                    )
                ),
                name="credentials_credential_kind_complete",
            ),
        ]
        # delete_credential is Django's default; rotation gets its own, since it hands out a new secret.
        permissions = [("rotate_credential", "Can rotate credentials (and see the new secret once)")]

    def __str__(self) -> str:
        return self.client_id

    def __repr__(self) -> str:
        return f"<Credential {self.client_id}>"

    @property
    def status(self) -> str:
        if self.compromised_at is not None:
            return "compromised"
        return "expired" if self.is_expired() else "active"

    @property
    def is_compromised(self) -> bool:
        return self.compromised_at is not None

    @property
    def is_key(self) -> bool:
        return self.kind == self.Kind.KEY

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class GraceSecret(SecretLocation):
    """A credential's previous secret, still accepted until `valid_until` after a rotation."""

    credential = models.ForeignKey(Credential, on_delete=models.CASCADE, related_name="grace_secrets")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    valid_until = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-valid_until", "-id"]
        constraints = [_vault_location_complete("credentials_gracesecret")]

    def __str__(self) -> str:
        return f"previous secret of {self.credential_id} until {self.valid_until:%Y-%m-%d %H:%M:%S}"

    def __repr__(self) -> str:
        return f"<GraceSecret of {self.credential_id} until {self.valid_until:%Y-%m-%dT%H:%M:%SZ}>"


class GraceKeys(KeyLocation):
    """A key credential's previous public keys, still accepted until `valid_until` after a rotation."""

    credential = models.ForeignKey(Credential, on_delete=models.CASCADE, related_name="grace_keys")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    valid_until = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-valid_until", "-id"]
        verbose_name_plural = "grace keys"

    def __str__(self) -> str:
        return f"previous keys of {self.credential_id} until {self.valid_until:%Y-%m-%d %H:%M:%S}"


class TrustPolicy(KeyLocation):
    """
    Which platform-issued JWTs (a Kubernetes service account's, a CI job's, a SPIFFE
    workload's) an agent accepts as its identity in the jwt-bearer grant (RFC 7523 section
    2.1): the issuer, the audience AgentIdP expects, a subject or subject pattern, required
    claims and the tokens' greatest age. Keys come from `jwks`, `jwks_uri`, or else the
    issuer's OpenID discovery document.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="trust_policies")
    issuer = models.CharField(max_length=512, db_index=True, editable=False)
    audience = models.CharField(max_length=512, editable=False)
    # One of the two, or neither: "" is "not set".
    subject = models.CharField(max_length=512, blank=True, default="", editable=False)
    subject_pattern = models.CharField(max_length=512, blank=True, default="", editable=False)
    # Claim name -> the required value, or a list of allowed values.
    claims = models.JSONField(default=dict, blank=True, editable=False)
    # Its keys (KeyLocation): `jwks`, `jwks_uri`, or neither (the issuer's discovery document).
    max_token_age_seconds = models.PositiveIntegerField(null=True, blank=True, editable=False)
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "trust policies"
        constraints = [
            models.CheckConstraint(
                condition=~(models.Q(jwks__isnull=False) & models.Q(jwks_uri__isnull=False)),
                name="credentials_trustpolicy_one_key_source",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.issuer} {self.subject or self.subject_pattern or '(any subject)'}"


class ChangeToken(models.Model):
    """
    One row, whose token the database changes whenever an agent or a credential changes.

    PostgreSQL's triggers write it, in the transaction that makes the change, whoever makes it
    (credentials.rows explains what counts and why); AgentIdP only reads it.
    """

    id = models.PositiveSmallIntegerField(primary_key=True)
    token = models.BigIntegerField()

    def __str__(self) -> str:
        return "change token"


class OutboxEntry(models.Model):
    """A job done after the transaction that queued it, retried with a growing delay until it succeeds."""

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    attempts = models.PositiveIntegerField(default=0, editable=False)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    # The kind of the last failure (an exception class name, an HTTP status), never its text.
    last_error = models.CharField(max_length=64, blank=True, default="", editable=False)

    class Meta:
        abstract = True
        ordering = ["next_attempt_at", "id"]


class Notification(OutboxEntry):
    """
    A message for the agents' owners (today: a credential quarantined because its secret
    leaked), to be POSTed, signed, to AGENTIDP_NOTIFY_WEBHOOK_URL.

    An outbox like SecretPurge: written in the transaction that made the change, sent after
    the commit, retried with a growing delay (automatically and by `manage.py
    deliver_notifications`) until the receiver answers 2xx, then deleted. The payload holds
    ids and names, never a secret.
    """

    id = models.BigAutoField(primary_key=True)
    event = models.CharField(max_length=64, editable=False)
    payload = models.JSONField(editable=False)

    def __str__(self) -> str:
        return f"{self.event} #{self.id}"


class SecretPurge(OutboxEntry):
    """
    A secret kept outside the database that must be destroyed, every version of it.

    Written in the same transaction that stops the database from referring to the secret
    (a credential's deletion, say), so the job cannot be lost between the commit and the
    store's answer; deleted once the store confirms. Until then it is retried with a
    growing delay, automatically and by `manage.py purge_secrets`.
    """

    id = models.BigAutoField(primary_key=True)
    storage = models.CharField(max_length=16, editable=False)
    vault_path = models.CharField(max_length=512, editable=False)
    # Plain values, not foreign keys: the credential is usually gone already.
    agent_id = models.UUIDField(null=True, blank=True, editable=False)
    credential_id = models.UUIDField(null=True, blank=True, editable=False)
    reason = models.CharField(max_length=32, editable=False)

    class Meta(OutboxEntry.Meta):
        constraints = [
            models.UniqueConstraint(fields=["storage", "vault_path"], name="credentials_secretpurge_unique_location"),
        ]

    def __str__(self) -> str:
        return f"{self.storage}:{self.vault_path}"

    @property
    def stored_secret(self) -> StoredSecret:
        return StoredSecret(storage=self.storage, vault_path=self.vault_path)


class AuditEvent(models.Model):
    """
    One lifecycle change: who did what, when, to which agent and credential.

    Append-only: rows are never updated or deleted (the model refuses, and on PostgreSQL a
    trigger refuses too). Ids are plain values, not foreign keys, so the trail outlives
    the agents and credentials it describes.
    """

    class Action(models.TextChoices):
        AGENT_CREATED = "agent.created"
        AGENT_UPDATED = "agent.updated"
        AGENT_DELETED = "agent.deleted"
        CREDENTIAL_CREATED = "credential.created"
        CREDENTIAL_ROTATED = "credential.rotated"
        CREDENTIAL_DELETED = "credential.deleted"
        CREDENTIAL_MOVED = "credential.moved"
        # A live secret of it was reported leaked: quarantined (who reported it, and where it was found).
        CREDENTIAL_COMPROMISED = "credential.compromised", "Credential Compromised"
        # A store does not hold a secret the credential trusts (written once per such secret).
        CREDENTIAL_SECRET_MISSING = "credential.secret_missing", "Credential Secret Missing"
        TRUST_POLICY_CREATED = "trust_policy.created", "Trust Policy Created"
        TRUST_POLICY_DELETED = "trust_policy.deleted", "Trust Policy Deleted"
        TOKEN_REVOKED = "token.revoked"  # noqa: S105 (an audit action's name)
        RATE_LIMITED = "client.rate_limited", "Client Rate Limited"

    class ActorType(models.TextChoices):
        USER = "user", "Staff user"
        AGENT = "agent", "Agent"
        SYSTEM = "system", "System"
        # Who reported a leaked secret: GitHub's or GitLab's secret scanning, or anyone who found one.
        REPORTER = "reporter", "Leak reporter"

    id = models.BigAutoField(primary_key=True)
    occurred_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    action = models.CharField(max_length=32, choices=Action.choices, editable=False)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices, editable=False)
    actor_id = models.CharField(max_length=64, blank=True, default="", editable=False)
    actor_label = models.CharField(max_length=256, blank=True, default="", editable=False)
    agent_id = models.UUIDField(null=True, blank=True, db_index=True, editable=False)
    credential_id = models.UUIDField(null=True, blank=True, db_index=True, editable=False)
    details = models.JSONField(default=dict, blank=True, editable=False)

    class Meta:
        ordering = ["-occurred_at", "-id"]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%dT%H:%M:%SZ} {self.action} by {self.actor_label or self.actor_type}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValidationError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError("Audit events are append-only.")
