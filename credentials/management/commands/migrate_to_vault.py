"""
Move credentials from bcrypt to Vault.

bcrypt hashes cannot be turned back into secrets, so a credential moves either when it
next authenticates (upgrade on use, AGENTIDP_UPGRADE_ON_USE) or when this command rotates
it: the new secret goes to Vault and to the --output file, which the operator hands to
the agents. The file is written before each rotation commits, so every secret that
works is on record, and a rerun after an interruption (kill -9 included) finishes the
job with the same file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
import os
import stat
import uuid
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.utils import timezone

from credentials.errors import AgentNotFound, ApiError, CredentialNotFound
from credentials import selectors, services
from credentials.audit import Actor
from credentials.models import AuditEvent, Credential
from vaultstore.backends import get_backend_for, get_default_backend
from vaultstore.exceptions import SecretStoreError

ACTOR = Actor(type=AuditEvent.ActorType.SYSTEM, label="manage.py migrate_to_vault")
TARGET = "vault"
LINE_KEYS = ("agentId", "credentialId", "clientId", "clientSecret")


class SecretsFile:
    """
    The --output file: one JSON line per new secret, mode 0600, only ever appended to.

    A file that exists already is taken up again only if it is one this command wrote (a
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
            raise CommandError(f"Cannot use {self.path} as --output: {exc.strerror}.") from None
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
            raise CommandError(f"Cannot create {self.path}: {exc.strerror}.") from None
        else:
            os.fchmod(self.fd, 0o600)  # whatever the umask allowed
            self._sync_directory()
            return False
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        except OSError as exc:
            raise CommandError(f"Cannot use {self.path} as --output: {exc.strerror}.") from None
        self._check_owned(self.fd)
        content = self._read_all(self.fd)
        complete = content[: content.rfind(b"\n") + 1]
        self._parse(content)
        if len(complete) != len(content):
            # A line cut off by an interruption: its rotation never committed, so it holds no working secret.
            os.ftruncate(self.fd, len(complete))
            os.fsync(self.fd)
        return True

    def _check_owned(self, fd: int) -> None:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise CommandError(
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
                raise CommandError(
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
        assert self.fd is not None
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


class Command(BaseCommand):
    # Needs the database and the secret stores, not the signing key: it checks the stores itself.
    requires_system_checks = []
    help = (
        "Report how many credentials each secret store keeps; with --rotate, move the remaining bcrypt "
        "credentials into Vault with new secrets, written to --output as JSON lines. Rerun with the same "
        "--output to finish an interrupted run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rotate", action="store_true", help="Rotate the remaining bcrypt credentials into Vault.")
        parser.add_argument(
            "--output",
            type=Path,
            help="With --rotate: where the new secrets go (JSON lines, mode 0600). Never overwritten; "
            "an existing file of an interrupted run is appended to.",
        )
        parser.add_argument(
            "--grace-period",
            type=int,
            default=0,
            metavar="SECONDS",
            help="Keep each old secret valid this long after its rotation (0 to 86400; default 0).",
        )
        parser.add_argument("--agent", metavar="AGENT_ID", help="Only this agent's credentials.")
        parser.add_argument(
            "--batch-size", type=int, default=100, help="Credentials read per query (default %(default)s)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Say what would happen and change nothing.")

    def handle(
        self,
        *args,
        rotate: bool,
        output: Path | None,
        grace_period: int,
        agent: str | None,
        batch_size: int,
        dry_run: bool,
        **options,
    ) -> None:
        self.verbosity = options["verbosity"]
        self.progress = False
        try:
            default = get_default_backend()
        except ImproperlyConfigured as exc:
            raise CommandError(f"The secret stores are misconfigured: {exc} Nothing was changed.") from None
        if default.name != TARGET:
            raise CommandError(
                "Vault is not configured: set VAULT_ADDR and VAULT_TOKEN (docs/devops/vault-setup.md). "
                "Nothing was changed."
            )
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if not 0 <= grace_period <= services.MAX_GRACE_PERIOD_SECONDS:
            raise CommandError(f"--grace-period is from 0 to {services.MAX_GRACE_PERIOD_SECONDS} seconds.")
        if not rotate and (output is not None or grace_period):
            raise CommandError("--output and --grace-period go with --rotate.")
        if rotate and output is None:
            raise CommandError("--rotate needs --output FILE for the new secrets.")

        credentials = Credential.objects.all()
        if agent is not None:
            try:
                credentials = credentials.filter(agent=selectors.agent_get(agent_id=agent))
            except AgentNotFound:
                raise CommandError(f"No agent has the id {agent!r}.") from None
        now = timezone.now()
        remaining = credentials.exclude(storage=TARGET)
        expired = remaining.expired(now)
        todo = remaining.active(now)

        if not rotate:
            self._report(credentials, expired_count=expired.count())
            return

        problems = get_default_backend().check()
        if problems:
            raise CommandError(f"Vault is not ready: {'; '.join(problems)}. Nothing was changed.")
        secrets_file = SecretsFile(output)
        if dry_run:
            self._dry_run(secrets_file, todo, expired_count=expired.count(), grace_period=grace_period)
            return
        resumed = secrets_file.open()
        try:
            self._rotate(
                secrets_file,
                todo,
                credentials,
                expired_count=expired.count(),
                grace_period=grace_period,
                batch_size=batch_size,
                resumed=resumed,
            )
        finally:
            secrets_file.close()

    def _failed(self, credential: Credential, why: str) -> None:
        """Say which credential failed and why, on a line of its own (below the progress bar, if any)."""
        prefix = "\n" if self.progress else ""
        self.stderr.write(f"{prefix}  {credential.client_id}: {why}")

    def _progress(self, done: int, total: int, width: int = 30) -> None:
        """Redraw the progress bar on the terminal's current line."""
        filled = width * done // total
        bar = "#" * filled + "." * (width - filled)
        self.stderr.write(f"\rMoving to Vault [{bar}] {done}/{total}", ending="", style_func=str)

    def _say(self, message: str, level: int = 1) -> None:
        if self.verbosity >= level:
            self.stdout.write(message)

    def _report(self, credentials, *, expired_count: int) -> None:
        counts = dict(credentials.values_list("storage").annotate(n=Count("id")).order_by())
        on_vault = counts.pop(TARGET, 0)
        others = ", ".join(f"{n} on {storage}" for storage, n in sorted(counts.items())) or "0 on bcrypt"
        self.stdout.write(f"{on_vault} credentials on {TARGET}, {others} ({expired_count} of them expired).")
        if counts:
            self._say(
                "They move to Vault when they next authenticate (upgrade on use), or now with "
                "--rotate --output FILE, which gives them new secrets."
            )

    def _dry_run(self, secrets_file: SecretsFile, todo, *, expired_count: int, grace_period: int) -> None:
        exists = secrets_file.inspect()
        total = todo.count()
        finishing = sum(1 for credential in todo.iterator() if secrets_file.handed_out(credential) is not None)
        if self.verbosity >= 2:
            for credential in todo.iterator():
                self.stdout.write(f"  would rotate {credential.client_id} (agent {credential.agent_id})")
        file_note = f"appending to {secrets_file.path}" if exists else f"creating {secrets_file.path}"
        self.stdout.write(
            f"Dry run: would move {total} credentials to Vault ({finishing} with the secret already in the file), "
            f"{file_note}, grace period {grace_period}s; {expired_count} expired stay on bcrypt. Nothing was changed."
        )

    def _rotate(
        self,
        secrets_file: SecretsFile,
        todo,
        credentials,
        *,
        expired_count: int,
        grace_period: int,
        batch_size: int,
        resumed: bool,
    ) -> None:
        total = todo.count()
        progress = self.progress = self.verbosity >= 1 and self.stderr.isatty() and total > 0
        if resumed:
            self._say(f"Taking up {secrets_file.path} again ({len(secrets_file.lines)} secrets in it).")
            if secrets_file.cut_off:
                self._say("Its last line was cut off by an interruption and was removed; it held no working secret.")
        moved = finished = skipped = failed = done = 0
        stopped = ""
        stale: list[str] = []
        if resumed:
            finished, stale, failed, stopped = self._finish_moved_on_use(secrets_file, credentials, grace_period)
        last_pk = None
        while not stopped:
            batch = todo.order_by("pk")
            if last_pk is not None:
                batch = batch.filter(pk__gt=last_pk)
            ids = list(batch.values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            for pk in ids:
                last_pk = pk
                done += 1
                credential = Credential.objects.filter(pk=pk).first()
                if credential is None:
                    skipped += 1
                    continue
                handed_out = secrets_file.handed_out(credential)
                outcome = self._rotate_one(
                    credential,
                    grace_period=grace_period,
                    client_secret=handed_out,
                    before_commit=None if handed_out else secrets_file.record,
                )
                if outcome == "rotated":
                    if handed_out:
                        finished += 1
                    else:
                        moved += 1
                elif outcome == "skipped":
                    skipped += 1  # moved or deleted meanwhile: nothing left to do for it
                else:
                    failed += 1
                    if outcome == "stopped":
                        stopped = "Vault stopped answering"
                        break
                if progress:
                    self._progress(done, total)
        if progress:
            self.stderr.write("", style_func=str)
        summary = (
            f"Moved {moved + finished} credentials to Vault ({finished} finished from an earlier run), "
            f"{skipped} skipped (moved or deleted meanwhile), {failed} failed; {expired_count} expired stay on bcrypt. "
            f"New secrets: {secrets_file.path}."
        )
        if stopped:
            raise CommandError(f"{summary} Stopped: {stopped}. Run the same command again to finish.")
        if failed:
            raise CommandError(f"{summary} Run the same command again to retry the failed ones.")
        if stale:
            raise CommandError(
                f"{summary} {len(stale)} lines in the file hold secrets that are not in force, because their "
                f"credentials were rotated after the interrupted run: {', '.join(stale)}. Do not hand those lines out; "
                "those agents keep the secrets they were given by that rotation."
            )
        self.stdout.write(summary)

    def _finish_moved_on_use(
        self, secrets_file: SecretsFile, credentials, grace_period: int
    ) -> tuple[int, list[str], int, str]:
        """
        Finish the lines of an interrupted run whose credentials have left bcrypt meanwhile.

        A line is written before its rotation commits; if the run was interrupted in
        between and the agent then authenticated with its old secret, the upgrade on use
        moved the credential into Vault with that old secret. Such a credential is rotated
        now to the secret in the file, as the interrupted run would have done. One that
        was rotated after the interruption (by the API or the console) keeps its secret:
        its line is reported as not in force. Returns (finished, stale clientIds,
        failed, why it stopped).
        """
        finished = failed = 0
        stale: list[str] = []
        ids = list(secrets_file.lines)
        for start in range(0, len(ids), 500):
            for credential in credentials.filter(pk__in=ids[start : start + 500], storage=TARGET).order_by("pk"):
                handed_out = secrets_file.handed_out(credential)
                if handed_out is None:
                    continue
                try:
                    if get_backend_for(credential.stored_secret).verify(
                        stored=credential.stored_secret, secret=handed_out
                    ):
                        continue
                except SecretStoreError as exc:
                    self._failed(credential, str(exc))
                    return finished, stale, failed + 1, "Vault stopped answering"
                last_change = (
                    AuditEvent.objects.filter(credential_id=credential.id)
                    .exclude(action=AuditEvent.Action.TOKEN_REVOKED)
                    .order_by("-occurred_at", "-id")
                    .values_list("action", flat=True)
                    .first()
                )
                if last_change != AuditEvent.Action.CREDENTIAL_MOVED:
                    stale.append(credential.client_id)
                    continue
                outcome = self._rotate_one(credential, grace_period=grace_period, client_secret=handed_out)
                if outcome == "rotated":
                    finished += 1
                elif outcome in ("failed", "stopped"):
                    failed += 1
                    if outcome == "stopped":
                        return finished, stale, failed, "Vault stopped answering"
        return finished, stale, failed, ""

    def _rotate_one(
        self,
        credential: Credential,
        *,
        grace_period: int,
        client_secret: str | None,
        before_commit: Callable[[services.IssuedCredential], None] | None = None,
    ) -> str:
        """
        Rotate one credential into Vault, from the store it is in now; say how it went.

        "rotated"; "skipped" (moved or deleted meanwhile); "failed" (refused, such as too
        many grace secrets: the run goes on); or "stopped" (Vault did not answer: the run
        ends). Failures are reported on standard error.
        """
        try:
            services.credential_migrate(
                acting=ACTOR,
                credential=credential,
                grace_period_seconds=grace_period,
                from_storage=credential.storage,
                client_secret=client_secret,
                before_commit=before_commit,
            )
        except (services.StorageChanged, CredentialNotFound):
            return "skipped"
        except ApiError as exc:
            self._failed(credential, exc.message)
            return "failed"
        except SecretStoreError as exc:
            self._failed(credential, str(exc))
            return "stopped"
        return "rotated"
