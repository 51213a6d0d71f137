"""
Move the credentials that bcrypt keeps into Vault with new secrets, on record in a file (migrate_to_vault).

bcrypt hashes cannot be turned back into secrets, so a credential moves either when it
next authenticates (upgrade on use) or when it is rotated here: the new secret goes to
Vault and to the secrets file, which the operator hands to the agents. A secret's line is
written and fsynced before its rotation commits, so every secret that works is on record,
and a run interrupted at any point (kill -9 included) is finished by a run with the same
file: `Migration.run` reuses the secrets the file already holds.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db.models import Count
from django.utils import timezone

from vaultstore.backends import get_backend_for
from vaultstore.exceptions import SecretStoreError

from . import services
from .errors import ApiError, CredentialNotFound
from .models import AuditEvent, Credential, CredentialQuerySet

TARGET = "vault"
LINE_KEYS = ("agentId", "credentialId", "clientId", "clientSecret")


class SecretsFileError(Exception):
    """The secrets file cannot be used; the message names it and says what to do (nothing was changed)."""


class SecretsFile:
    """
    The secrets file: one JSON line per new secret, mode 0600, only ever appended to.

    A file that exists already is taken up again only if it is one a migration wrote (a
    regular file of ours, readable by us alone, every line one of ours), so that a rerun
    can finish an interrupted run. Its lines are the secrets already handed out: a
    credential with a line there and still on bcrypt was interrupted between writing the
    line and committing, and is finished with the same secret.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        #: credentialId -> its line, for the secrets already in the file.
        self.lines: dict[uuid.UUID, dict[str, str]] = {}
        self.cut_off = 0

    def inspect(self) -> bool:
        """Read an existing file's lines without changing it; return whether it exists."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SecretsFileError(f"Cannot use {self.path} as --output: {exc.strerror}.") from None
        try:
            self._check_owned(fd)
            self._parse(self._read_all(fd))
        finally:
            os.close(fd)
        return True

    def open(self) -> bool:
        """Open for appending, creating it with mode 0600; return whether it existed (a resumed run)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW
        try:
            self.fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SecretsFileError(f"Cannot create {self.path}: {exc.strerror}.") from None
        else:
            os.fchmod(self.fd, 0o600)  # whatever the umask allowed
            self._sync_directory()
            return False
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        except OSError as exc:
            raise SecretsFileError(f"Cannot use {self.path} as --output: {exc.strerror}.") from None
        try:
            self._check_owned(self.fd)
            content = self._read_all(self.fd)
            self._parse(content)
        except SecretsFileError:
            self.close()
            raise
        complete = content[: content.rfind(b"\n") + 1]
        if len(complete) != len(content):
            # A line cut off by an interruption: its rotation never committed, so it holds no working secret.
            os.ftruncate(self.fd, len(complete))
            os.fsync(self.fd)
        return True

    def _check_owned(self, fd: int) -> None:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise SecretsFileError(
                f"{self.path} exists and is not a file this command wrote (a regular file of yours with mode 0600); "
                "nothing was changed. Choose another --output, or rerun with the file of the interrupted run."
            )

    @staticmethod
    def _read_all(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, content: bytes) -> None:
        complete, _, tail = content.rpartition(b"\n")
        self.cut_off = 1 if tail else 0
        for number, raw in enumerate(complete.split(b"\n") if complete else [], start=1):
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or sorted(line) != sorted(LINE_KEYS):
                    raise ValueError
                if not all(isinstance(line[key], str) for key in LINE_KEYS):
                    raise ValueError
                credential_id = uuid.UUID(line["credentialId"])
            except ValueError:
                raise SecretsFileError(
                    f"{self.path} line {number} is not a line this command wrote; nothing was changed. "
                    "Choose another --output."
                ) from None
            self.lines[credential_id] = line

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def handed_out(self, credential: Credential) -> str | None:
        """Return the secret this file already holds for the credential, if its line names it exactly."""
        line = self.lines.get(credential.id)
        if line is None or (line["clientId"], line["agentId"]) != (credential.client_id, str(credential.agent_id)):
            return None
        return line["clientSecret"]

    @staticmethod
    def line_for(issued: services.IssuedCredential) -> dict[str, str]:
        """Return the file's line for a credential and its new secret."""
        credential = issued.credential
        return {
            "agentId": str(credential.agent_id),
            "credentialId": str(credential.id),
            "clientId": credential.client_id,
            "clientSecret": issued.client_secret,
        }

    def record(self, issued: services.IssuedCredential) -> None:
        """Append the new secret's line and make it durable (called before the rotation commits)."""
        if self.fd is None:
            raise RuntimeError("The secrets file is not open.")
        line = self.line_for(issued)
        data = (json.dumps(line) + "\n").encode()
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
        os.fsync(self.fd)
        self.lines[issued.credential.id] = line

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Outcome(enum.StrEnum):
    """How one credential went."""

    #: Rotated into Vault with a new secret, now on record in the file.
    ROTATED = "rotated"
    #: Rotated into Vault with the secret an interrupted run had already put on record.
    FINISHED = "finished"
    #: Moved or deleted meanwhile: nothing left to do for it.
    SKIPPED = "skipped"
    #: Refused (such as too many grace secrets); the run goes on.
    FAILED = "failed"
    #: Vault did not answer; the run ends here.
    STOPPED = "stopped"
    #: Its line is not in force: the credential was rotated after the interrupted run and keeps that secret.
    NOT_IN_FORCE = "not_in_force"


@dataclass(frozen=True)
class Result:
    """One credential's outcome, named by clientId (empty for a row deleted meanwhile), and why it failed."""

    outcome: Outcome
    client_id: str
    why: str = ""
    #: One of the credentials still to move (`Migration.todo`), rather than a line of an interrupted run.
    to_move: bool = True


class Migration:
    """
    The move to Vault of some credentials (every one, or one agent's): what is left to do, and doing it.

    The credentials that Vault does not keep yet and that have not expired are to move;
    expired ones stay on bcrypt, as a new secret would be of no use to them.
    """

    def __init__(self, credentials: CredentialQuerySet, *, acting: Any, now: datetime.datetime | None = None) -> None:
        # Only secret credentials have a secret to move, whatever the caller passed.
        self.credentials = credentials = credentials.with_secret()
        self.acting = acting
        now = now or timezone.now()
        remaining = credentials.exclude(storage=TARGET)
        self.todo = remaining.active(now)
        self.expired = remaining.expired(now)

    def storage_counts(self) -> dict[str, int]:
        """Return how many of the credentials each store keeps."""
        return dict(self.credentials.values_list("storage").annotate(n=Count("id")).order_by())

    def handed_out_count(self, secrets_file: SecretsFile) -> int:
        """Return how many of the credentials to move would reuse a secret the file already holds."""
        return sum(1 for credential in self.todo.iterator() if secrets_file.handed_out(credential) is not None)

    def run(self, *, secrets_file: SecretsFile, grace_period_seconds: int, batch_size: int = 100) -> Iterator[Result]:
        """
        Move the credentials, recording each new secret in the open `secrets_file`; yield one Result each.

        First the lines of an interrupted run whose credentials have left bcrypt meanwhile
        (`to_move` False), then the credentials to move, in batches of `batch_size` read
        by primary key, each re-read just before its rotation. Each one is rotated in its
        own transaction (credential_migrate), its line written before the commit; a
        credential with a line already in the file gets that secret. The run ends after
        the first STOPPED.
        """
        for result in self._finish_moved_on_use(secrets_file, grace_period_seconds):
            yield result
            if result.outcome is Outcome.STOPPED:
                return
        last_pk = None
        while True:
            batch = self.todo.order_by("pk")
            if last_pk is not None:
                batch = batch.filter(pk__gt=last_pk)
            ids = list(batch.values_list("pk", flat=True)[:batch_size])
            if not ids:
                return
            for pk in ids:
                last_pk = pk
                credential = Credential.objects.filter(pk=pk).first()
                if credential is None:
                    yield Result(Outcome.SKIPPED, "")
                    continue
                handed_out = secrets_file.handed_out(credential)
                result = self._rotate(
                    credential,
                    grace_period_seconds=grace_period_seconds,
                    client_secret=handed_out,
                    before_commit=None if handed_out else secrets_file.record,
                )
                yield result
                if result.outcome is Outcome.STOPPED:
                    return

    def _finish_moved_on_use(self, secrets_file: SecretsFile, grace_period_seconds: int) -> Iterator[Result]:
        """
        Finish the lines of an interrupted run whose credentials have left bcrypt meanwhile.

        A line is written before its rotation commits; if the run was interrupted in
        between and the agent then authenticated with its old secret, the upgrade on use
        moved the credential into Vault with that old secret. Such a credential is rotated
        now to the secret in the file, as the interrupted run would have done. One that
        was rotated after the interruption (by the API or the console) keeps its secret:
        its line is NOT_IN_FORCE. Lines whose secret works already, and credentials that
        moved again meanwhile, yield nothing.
        """
        ids = list(secrets_file.lines)
        for start in range(0, len(ids), 500):
            chunk = self.credentials.filter(pk__in=ids[start : start + 500], storage=TARGET).order_by("pk")
            for credential in chunk:
                handed_out = secrets_file.handed_out(credential)
                if handed_out is None:
                    continue
                try:
                    stored = credential.stored_secret
                    if get_backend_for(stored).verify(stored=stored, secret=handed_out):
                        continue
                except SecretStoreError as exc:
                    yield Result(Outcome.STOPPED, credential.client_id, str(exc), to_move=False)
                    return
                last_change = (
                    AuditEvent.objects.filter(credential_id=credential.id)
                    .exclude(action=AuditEvent.Action.TOKEN_REVOKED)
                    .order_by("-occurred_at", "-id")
                    .values_list("action", flat=True)
                    .first()
                )
                if last_change != AuditEvent.Action.CREDENTIAL_MOVED:
                    yield Result(Outcome.NOT_IN_FORCE, credential.client_id, to_move=False)
                    continue
                result = self._rotate(credential, grace_period_seconds=grace_period_seconds, client_secret=handed_out)
                if result.outcome is Outcome.SKIPPED:
                    continue
                yield Result(result.outcome, result.client_id, result.why, to_move=False)
                if result.outcome is Outcome.STOPPED:
                    return

    def _rotate(
        self,
        credential: Credential,
        *,
        grace_period_seconds: int,
        client_secret: str | None,
        before_commit: Callable[[services.IssuedCredential], None] | None = None,
    ) -> Result:
        """Rotate one credential into Vault, from the store it is in now, to `client_secret` or a new secret."""
        try:
            services.credential_migrate(
                acting=self.acting,
                credential=credential,
                grace_period_seconds=grace_period_seconds,
                from_storage=credential.storage,
                client_secret=client_secret,
                before_commit=before_commit,
            )
        except (services.StorageChanged, CredentialNotFound):
            return Result(Outcome.SKIPPED, credential.client_id)
        except ApiError as exc:
            return Result(Outcome.FAILED, credential.client_id, exc.message)
        except SecretStoreError as exc:
            return Result(Outcome.STOPPED, credential.client_id, str(exc))
        return Result(Outcome.FINISHED if client_secret else Outcome.ROTATED, credential.client_id)
