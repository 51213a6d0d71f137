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

from collections.abc import Callable
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.utils import timezone

from credentials.errors import AgentNotFound, ApiError, CredentialNotFound
from credentials import selectors, services
from credentials.audit import Actor
from credentials.migration import SecretsFile, SecretsFileError
from credentials.models import AuditEvent, Credential
from vaultstore.backends import get_backend_for, get_default_backend
from vaultstore.exceptions import SecretStoreError

ACTOR = Actor(type=AuditEvent.ActorType.SYSTEM, label="manage.py migrate_to_vault")
TARGET = "vault"


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
        try:
            if dry_run:
                self._dry_run(secrets_file, todo, expired_count=expired.count(), grace_period=grace_period)
                return
            resumed = secrets_file.open()
        except SecretsFileError as exc:
            raise CommandError(str(exc)) from None
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
