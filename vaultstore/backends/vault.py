"""
Client secrets in HashiCorp Vault's KV v2 secrets engine, through hvac.

Each credential's secret lives at `{mount}/data/agentidp/agents/{agentId}/credentials/{credentialId}`
under the key `clientSecret`; the database records only that path and the KV version it
trusts. A rotation writes a new version at the same path with check-and-set, so the
version the database trusts is never overwritten; a deletion destroys every version and
the metadata. The token needs nothing beyond the contract's policy: create, read, update
and delete on `{mount}/data/agentidp/*` and delete on `{mount}/metadata/agentidp/*` (no
metadata reads), plus the `default` policy's token self-service for renewal.

Every operation asks Vault through the circuit breaker (vault_breaker), with the token
that TokenKeeper (vault_token) reads and renews, and inside vault_errors.translated, so
that no hvac or requests exception leaves the backend. No message, log line or exception
raised here carries a secret or the Vault token.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import hvac
import hvac.exceptions
import requests
from django.views.decorators.debug import sensitive_variables

from ..exceptions import SecretMissing, SecretReadError, SecretStoreError, SecretWriteError
from ..metrics import VAULT_BREAKER_OPEN, VAULT_ERRORS, VAULT_REQUEST_SECONDS
from .base import BaseSecretBackend, SecretOwner, StoredSecret
from .vault_answers import (
    SECRET_KEY,
    MalformedEntry,
    client_secret_of,
    data_of,
    entry_of,
    kv_version,
    mismatched_cas,
    upgrading,
)
from .vault_breaker import CircuitBreaker
from .vault_errors import CHECKING, DESTROYING, READING, STORING, Sealed, is_outage, is_refusal, translated
from .vault_options import DEFAULT_OPTIONS, validate_options
from .vault_token import TokenKeeper

logger = logging.getLogger(__name__)

#: Every AgentIdP key lives under this prefix of the mount (the policy grants nothing else).
KEY_PREFIX = "agentidp"
#: The only keys AgentIdP ever asks Vault about (a recorded path is refused unless it has this form).
KEY_PATTERN = re.compile(
    rf"{KEY_PREFIX}/agents/[0-9a-f]{{8}}(?:-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}"
    rf"/credentials/[0-9a-f]{{8}}(?:-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}"
)
#: A key no credential ever has: verify_dummy and the readiness check read it.
DUMMY_KEY = f"{KEY_PREFIX}/agents/{uuid.UUID(int=0)}/credentials/{uuid.UUID(int=0)}"


def policy(mount: str) -> str:
    """Return the Vault policy (HCL) that AgentIdP's token needs on `mount`, and nothing more."""
    return (
        f'path "{mount}/data/{KEY_PREFIX}/*" {{\n'
        '  capabilities = ["create", "read", "update", "delete"]\n'
        "}\n"
        f'path "{mount}/metadata/{KEY_PREFIX}/*" {{\n'
        '  capabilities = ["delete"]\n'
        "}\n"
    )


def key_for(owner: SecretOwner) -> str:
    """Return the KV key (without mount) of the owner's secret."""
    return f"{KEY_PREFIX}/agents/{owner.agent_id}/credentials/{owner.id}"


@sensitive_variables("kept", "secret")
def _matches(kept: str, secret: str) -> bool:
    """Compare a kept secret with a presented one in time independent of where they differ."""
    return hmac.compare_digest(kept.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass"))


class VaultSecretBackend(BaseSecretBackend):
    """Keep each secret as a KV v2 entry; verify by reading the trusted version and comparing in constant time."""

    name = "vault"
    default_options = DEFAULT_OPTIONS

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._local = threading.local()
        self.token_keeper = TokenKeeper(
            token=self.options["token"],
            token_file=self.options["token_file"],
            thread_client=self._client_without_renewal,
        )
        self.breaker = CircuitBreaker(
            failures=self.options["breaker_failures"], seconds=self.options["breaker_seconds"]
        )

    def validate_options(self) -> None:
        validate_options(self.options)

    @property
    def mount(self) -> str:
        return self.options["mount"]

    # --- the client ---------------------------------------------------------------------------

    def _client(self) -> hvac.Client:
        """Return this thread's client, built on first use, after renewing the token if that is due."""
        client = self._client_without_renewal()
        self.token_keeper.renew_if_due(client)
        return client

    def _client_without_renewal(self) -> hvac.Client:
        token = self.token_keeper.current()
        client = getattr(self._local, "client", None)
        if client is not None and client.token != token:
            client.token = token  # the token file changed
        if client is None:
            client = hvac.Client(
                url=self.options["url"],
                token=token,
                namespace=self.options["namespace"] or None,
                verify=self.options["verify"],
                timeout=(self.options["connect_timeout"], self.options["read_timeout"]),
            )
            self._local.client = client
        return client

    def close(self) -> None:
        """Stop renewing the token in the background (the backend is being replaced)."""
        self.token_keeper.close()

    @contextlib.contextmanager
    def _asking(self, operation: str, *, counted: bool = True) -> Iterator[None]:
        """
        Ask Vault through the breaker: raise BreakerOpen at once while it is open, and record how the asking ended
        (in the breaker and in the metrics, as `operation`).

        With `counted` False (a health check) the breaker is only looked at: the asking is
        neither its probe nor recorded, so that anonymous readiness probes cannot open it.
        """
        if counted:
            self.breaker.allow()
        else:
            self.breaker.refuse_while_open()
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            VAULT_REQUEST_SECONDS.labels(operation).observe(time.monotonic() - started)
            VAULT_ERRORS.labels(operation, type(exc).__name__).inc()
            if counted and is_outage(exc):
                self.breaker.failed()
            elif counted:
                self.breaker.succeeded()
            VAULT_BREAKER_OPEN.set(1 if self.breaker.is_open else 0)
            if is_refusal(exc):
                self.token_keeper.refused()
            raise
        VAULT_REQUEST_SECONDS.labels(operation).observe(time.monotonic() - started)
        if counted:
            self.breaker.succeeded()
            VAULT_BREAKER_OPEN.set(0)

    def _call(self, operation: Callable[..., Any], **kwargs: Any) -> Any:
        """Run one hvac operation, once more if Vault asks for a retry while a KV mount upgrades."""
        try:
            return operation(mount_point=self.mount, **kwargs)
        except hvac.exceptions.InvalidRequest as exc:
            if not upgrading(exc):
                raise
        return operation(mount_point=self.mount, **kwargs)

    # --- paths --------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self.mount}/data/{key}"

    def _key(self, stored: StoredSecret, error: type[SecretStoreError]) -> str:
        """
        Return the KV key of a recorded path, refusing anything but a credential's key under this mount.

        The exact form (two UUIDs) also keeps `..` and other segments that an HTTP client
        would resolve from ever reaching Vault as some other path.
        """
        prefix = f"{self.mount}/data/"
        path = stored.vault_path
        key = path.removeprefix(prefix)
        if stored.storage != self.name or not path.startswith(prefix) or not KEY_PATTERN.fullmatch(key):
            raise error(f"The Vault path {path!r} is not a credential's key under {prefix}{KEY_PREFIX}/.")
        return key

    def location(self, *, owner: SecretOwner) -> StoredSecret:
        return StoredSecret(storage=self.name, vault_path=self._path(key_for(owner)))

    # --- the backend interface ----------------------------------------------------------------

    @sensitive_variables("secret")
    def store(self, *, owner: SecretOwner, secret: str, replacing: StoredSecret | None = None) -> StoredSecret:
        """
        Write the secret as a new KV version at the owner's path, with check-and-set.

        A new entry is written with cas=0 (create only). A rotation of a Vault secret at the
        same path passes the version the database trusts, so a concurrent or lost write can
        never be mistaken for it. If the key holds versions the database never recorded (a
        write whose answer was lost, or an earlier attempt whose transaction rolled back),
        the current version is read and the write retried once after it: those versions
        were never trusted by anyone. If the key is not there at all although the database
        trusts a version of it, Vault lost it (restarted empty, restored from an older
        backup): the secret is written anew, create-only, so that a rotation recovers the
        credential. A key that is there but behind the trusted version is refused.
        Raises SecretWriteError; `maybe_written` says whether Vault may have applied it.
        """
        key = key_for(owner)
        path = self._path(key)
        expected = 0
        if replacing is not None and replacing.storage == self.name and replacing.vault_path == path:
            expected = replacing.vault_version or 0
        with translated(STORING, path=path), self._asking("store"):
            client = self._client()
            try:
                version = self._write(client, key, secret, cas=expected)
            except hvac.exceptions.InvalidRequest as exc:
                if not mismatched_cas(exc):
                    raise
                current = self._current_version(client, key)
                if current == 0:
                    # No entry at all where the database trusts a version: Vault lost it (restarted
                    # empty, restored from an older backup). A create-only write overwrites nothing.
                    logger.warning(
                        "Vault has no entry where the database trusts a version; writing it anew path=%s trusted=%s",
                        path,
                        expected,
                    )
                elif current <= expected:
                    raise
                else:
                    logger.warning(
                        "Vault holds versions the database never recorded; writing after them "
                        "path=%s trusted=%s current=%s",
                        path,
                        expected,
                        current,
                    )
                version = self._write(client, key, secret, cas=current)
        return StoredSecret(storage=self.name, vault_path=path, vault_version=version)

    @sensitive_variables("secret")
    def _write(self, client: hvac.Client, key: str, secret: str, *, cas: int) -> int:
        response = self._call(
            client.secrets.kv.v2.create_or_update_secret, path=key, secret={SECRET_KEY: secret}, cas=cas
        )
        return kv_version(data_of(response).get("version"))

    def _current_version(self, client: hvac.Client, key: str) -> int:
        """Return the newest version of the key from a data read (the policy grants no metadata reads)."""
        try:
            # With raise_on_deleted_version=False a soft-deleted newest version still reports its number.
            response = self._call(client.secrets.kv.v2.read_secret_version, path=key, raise_on_deleted_version=False)
        except hvac.exceptions.InvalidPath as exc:
            # A destroyed newest version is a 404 that still carries the envelope; a missing key has none.
            response = exc.json
            if not isinstance(response, dict) or not isinstance(response.get("data"), dict):
                return 0
        data = response.get("data") if isinstance(response, dict) else None
        metadata = data.get("metadata") if isinstance(data, dict) else None
        return kv_version(metadata.get("version") if isinstance(metadata, dict) else None)

    @sensitive_variables("secret")
    def verify(self, *, stored: StoredSecret, secret: str, missing_raises: bool = False) -> bool:
        """
        Read the version the database trusts and compare it with `secret` in constant time.

        A version that Vault no longer has (destroyed, soft-deleted, or pruned past
        max_versions) matches nothing, or with `missing_raises` (verify_trusted) raises
        SecretMissing: one read either way, so that a lost secret costs what a wrong one
        does, and a 404 is Vault's answer about one key, never counted towards the breaker.
        Vault being unreachable, sealed, slow or refusing, or answering in no KV v2 shape,
        raises SecretReadError, so that the caller answers "try again" rather than "wrong
        secret"; these count towards the breaker. An entry that Vault returns but that
        holds no client secret string (written by hand, say) raises SecretReadError too,
        since the secret could not be read; it is about that key alone, is logged with its
        path, and does not count towards the breaker.
        """
        try:
            kept = self._kept(stored)
        except SecretMissing:
            if missing_raises:
                raise
            return False
        return kept is not None and _matches(kept, secret)

    @sensitive_variables("secret")
    def verify_trusted(self, *, stored: StoredSecret, secret: str) -> bool:
        """Verify as `verify` does, raising SecretMissing for a version Vault does not have."""
        return self.verify(stored=stored, secret=secret, missing_raises=True)

    def holds(self, *, stored: StoredSecret) -> bool:
        """Return whether Vault holds the trusted version with a client secret in it (one read, nothing compared)."""
        try:
            return self._kept(stored, quiet=True) is not None
        except SecretMissing:
            return False

    @sensitive_variables("kept", "response", "entry")
    def _kept(self, stored: StoredSecret, *, quiet: bool = False) -> str | None:
        """
        Return the secret Vault keeps at the trusted version, None for a secret that is not Vault's to keep.

        Raises SecretMissing when Vault answers 404 (no such key, or the version is
        deleted, destroyed or was never written) and SecretReadError when it cannot answer.
        """
        if stored.storage != self.name or not stored.vault_version:
            return None
        key = self._key(stored, SecretReadError)
        with translated(READING, path=stored.vault_path):
            try:
                with self._asking("read"):
                    response = self._call(
                        self._client().secrets.kv.v2.read_secret_version,
                        path=key,
                        version=stored.vault_version,
                        raise_on_deleted_version=True,
                    )
                    entry = entry_of(response)
            except hvac.exceptions.InvalidPath:
                if not quiet:
                    logger.warning(
                        "Vault has no secret at the trusted version path=%s version=%s",
                        stored.vault_path,
                        stored.vault_version,
                    )
                raise SecretMissing(
                    "Vault does not hold the version of this secret that the database trusts."
                ) from None
        try:
            return client_secret_of(entry)
        except MalformedEntry:
            logger.warning(
                "Vault entry holds no client secret string path=%s version=%s", stored.vault_path, stored.vault_version
            )
            raise SecretReadError("The Vault entry at this credential's path holds no client secret.") from None

    def _read_dummy(self, client: hvac.Client) -> dict[str, Any]:
        """Read the key no credential has (InvalidPath until verify_dummy has planted its entry there)."""
        response = self._call(
            client.secrets.kv.v2.read_secret_version, path=DUMMY_KEY, version=1, raise_on_deleted_version=True
        )
        return entry_of(response)  # a 200 must at least be a KV v2 read (else ValueError, as for a garbled read)

    def verify_dummy(self, *, secret: str) -> None:
        """
        Pay one Vault read of a key no credential has, as a known client's verification does.

        It fails as that verification would (SecretReadError while Vault cannot answer), so
        an unknown client cannot be told from a Vault credential's by the answer either.
        """
        with translated(READING), self._asking("read"):
            client = self._client()
            try:
                entry = self._read_dummy(client)
            except hvac.exceptions.InvalidPath:
                self._plant_dummy(client)
                return
        with contextlib.suppress(MalformedEntry):
            kept = client_secret_of(entry)
            hmac.compare_digest(kept.encode("utf-8"), secret.encode("utf-8", "surrogatepass"))

    def _plant_dummy(self, client: hvac.Client) -> None:
        """
        Write a random secret at the dummy key, once, so that dummy reads find an entry as real ones do.

        A read that finds nothing costs Vault less than one that returns an entry, which
        would tell an unknown clientId from a Vault credential's by time. Another process
        planting it first (a check-and-set mismatch) is as good.
        """
        try:
            self._call(
                client.secrets.kv.v2.create_or_update_secret,
                path=DUMMY_KEY,
                secret={SECRET_KEY: secrets.token_urlsafe(32)},
                cas=0,
            )
        except hvac.exceptions.InvalidRequest:
            pass
        else:
            logger.info(
                "planted the dummy entry that unknown clients' verifications read path=%s", self._path(DUMMY_KEY)
            )

    def delete(self, *, stored: Iterable[StoredSecret]) -> None:
        """Destroy every version and the metadata of each path (idempotent: a missing key is fine)."""
        paths = sorted({item.vault_path for item in stored if item.storage == self.name and item.vault_path})
        for path in paths:
            key = self._key(StoredSecret(storage=self.name, vault_path=path), SecretWriteError)
            with translated(DESTROYING, path=path), self._asking("delete"):
                response = self._call(self._client().secrets.kv.v2.delete_metadata_and_all_versions, path=key)
                # Vault answers 204; hvac returns anything that is not JSON as the raw response.
                if isinstance(response, requests.Response) and response.status_code != 204:
                    raise ValueError("not Vault's answer to a delete")
            logger.info("Vault secret destroyed path=%s", path)

    def check(self) -> list[str]:
        """
        Ask Vault whether it is unsealed and active, then whether the token may read AgentIdP's keys.

        An open breaker is reported without asking Vault. Otherwise the check asks Vault but
        never counts towards the breaker, failing or not: anyone may call /readyz, and a
        Vault rate-limiting those probes must not make token requests fail fast.
        """
        try:
            with translated(CHECKING), self._asking("check", counted=False):
                client = self._client()
                health = client.sys.read_health_status(method="GET")
                status = health.status_code if isinstance(health, requests.Response) else 200
                if status == 503:
                    raise Sealed()
                if status == 501:
                    raise hvac.exceptions.VaultNotInitialized()
                # The token may read under agentidp/, and nothing is there (InvalidPath): as expected.
                with contextlib.suppress(hvac.exceptions.InvalidPath):
                    self._read_dummy(client)
        except SecretStoreError as exc:
            return [str(exc)]
        return []
