"""
Move credentials from bcrypt to Vault: the command's options, progress and summary.

bcrypt hashes cannot be turned back into secrets, so a credential moves either when it
next authenticates (upgrade on use, AGENTIDP_UPGRADE_ON_USE) or when this command rotates
it: the new secret goes to Vault and to the --output file, which the operator hands to
the agents. The file is written before each rotation commits, so every secret that
works is on record, and a rerun after an interruption (kill -9 included) finishes the
job with the same file. The work is credentials.migration's; this command checks the
configuration, reports and exits.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from credentials import selectors, services
from credentials.audit import Actor
from credentials.errors import AgentNotFound
from credentials.migration import TARGET, Migration, Outcome, Result, SecretsFile, SecretsFileError
from credentials.models import AuditEvent, Credential
from vaultstore.backends import get_default_backend

ACTOR = Actor(type=AuditEvent.ActorType.SYSTEM, label="manage.py migrate_to_vault")


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

        credentials = Credential.objects.all()  # Migration takes only those with a secret
        if agent is not None:
            try:
                credentials = credentials.filter(agent=selectors.agent_get(agent_id=agent))
            except AgentNotFound:
                raise CommandError(f"No agent has the id {agent!r}.") from None
        migration = Migration(credentials, acting=ACTOR)

        if not rotate:
            self._report(migration)
            return

        problems = get_default_backend().check()
        if problems:
            raise CommandError(f"Vault is not ready: {'; '.join(problems)}. Nothing was changed.")
        secrets_file = SecretsFile(output)
        try:
            if dry_run:
                self._dry_run(migration, secrets_file, grace_period=grace_period)
                return
            resumed = secrets_file.open()
        except SecretsFileError as exc:
            raise CommandError(str(exc)) from None
        try:
            self._rotate(migration, secrets_file, grace_period=grace_period, batch_size=batch_size, resumed=resumed)
        finally:
            secrets_file.close()

    def _failed(self, result: Result) -> None:
        """Say which credential failed and why, on a line of its own (below the progress bar, if any)."""
        prefix = "\n" if self.progress else ""
        self.stderr.write(f"{prefix}  {result.client_id}: {result.why}")

    def _progress(self, done: int, total: int, width: int = 30) -> None:
        """Redraw the progress bar on the terminal's current line."""
        filled = width * done // total
        bar = "#" * filled + "." * (width - filled)
        self.stderr.write(f"\rMoving to Vault [{bar}] {done}/{total}", ending="", style_func=str)

    def _say(self, message: str, level: int = 1) -> None:
        if self.verbosity >= level:
            self.stdout.write(message)

    def _report(self, migration: Migration) -> None:
        counts = migration.storage_counts()
        on_vault = counts.pop(TARGET, 0)
        others = ", ".join(f"{n} on {storage}" for storage, n in sorted(counts.items())) or "0 on bcrypt"
        self.stdout.write(
            f"{on_vault} credentials on {TARGET}, {others} ({migration.expired.count()} of them expired)."
        )
        if counts:
            self._say(
                "They move to Vault when they next authenticate (upgrade on use), or now with "
                "--rotate --output FILE, which gives them new secrets."
            )

    def _dry_run(self, migration: Migration, secrets_file: SecretsFile, *, grace_period: int) -> None:
        exists = secrets_file.inspect()
        total = migration.todo.count()
        finishing = migration.handed_out_count(secrets_file)
        if self.verbosity >= 2:
            for credential in migration.todo.iterator():
                self.stdout.write(f"  would rotate {credential.client_id} (agent {credential.agent_id})")
        file_note = f"appending to {secrets_file.path}" if exists else f"creating {secrets_file.path}"
        self.stdout.write(
            f"Dry run: would move {total} credentials to Vault ({finishing} with the secret already in the file), "
            f"{file_note}, grace period {grace_period}s; {migration.expired.count()} expired stay on bcrypt. "
            "Nothing was changed."
        )

    def _rotate(
        self, migration: Migration, secrets_file: SecretsFile, *, grace_period: int, batch_size: int, resumed: bool
    ) -> None:
        expired_count = migration.expired.count()
        total = migration.todo.count()
        progress = self.progress = self.verbosity >= 1 and self.stderr.isatty() and total > 0
        if resumed:
            self._say(f"Taking up {secrets_file.path} again ({len(secrets_file.lines)} secrets in it).")
            if secrets_file.cut_off:
                self._say("Its last line was cut off by an interruption and was removed; it held no working secret.")
        counts: Counter[Outcome] = Counter()
        stale: list[str] = []
        done = 0
        for result in migration.run(
            secrets_file=secrets_file, grace_period_seconds=grace_period, batch_size=batch_size
        ):
            counts[result.outcome] += 1
            if result.outcome in (Outcome.FAILED, Outcome.STOPPED):
                self._failed(result)
            elif result.outcome is Outcome.NOT_IN_FORCE:
                stale.append(result.client_id)
            if result.to_move:
                done += 1
                if progress and result.outcome is not Outcome.STOPPED:
                    self._progress(done, total)
        if progress:
            self.stderr.write("", style_func=str)
        finished = counts[Outcome.FINISHED]
        failed = counts[Outcome.FAILED] + counts[Outcome.STOPPED]
        summary = (
            f"Moved {counts[Outcome.ROTATED] + finished} credentials to Vault ({finished} finished from an earlier "
            f"run), {counts[Outcome.SKIPPED]} skipped (moved or deleted meanwhile), {failed} failed; {expired_count} "
            f"expired stay on bcrypt. New secrets: {secrets_file.path}."
        )
        if counts[Outcome.STOPPED]:
            raise CommandError(f"{summary} Stopped: Vault stopped answering. Run the same command again to finish.")
        if failed:
            raise CommandError(f"{summary} Run the same command again to retry the failed ones.")
        if stale:
            raise CommandError(
                f"{summary} {len(stale)} lines in the file hold secrets that are not in force, because their "
                f"credentials were rotated after the interrupted run: {', '.join(stale)}. Do not hand those lines out; "
                "those agents keep the secrets they were given by that rotation."
            )
        self.stdout.write(summary)
