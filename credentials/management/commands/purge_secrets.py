from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from credentials import services
from credentials.models import GraceSecret, SecretPurge
from vaultstore.backends import get_backends


class Command(BaseCommand):
    help = (
        "Destroy the queued secrets of deleted credentials in Vault (every version and the metadata), "
        "whatever their retry schedule, and clear grace secrets whose period has ended. "
        "Safe to run at any time, e.g. from cron; exits non-zero while anything stays queued."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Report what is queued and change nothing.")
        parser.add_argument("--limit", type=int, default=None, help="Attempt at most this many queued purges.")

    def handle(self, *args, dry_run: bool, limit: int | None, **options):
        verbosity = options["verbosity"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1.")
        queued = SecretPurge.objects.order_by("next_attempt_at", "id")
        expired = GraceSecret.objects.filter(valid_until__lte=timezone.now())

        configured = set(get_backends())
        missing = sorted(set(queued.values_list("storage", flat=True)) - configured)
        if dry_run:
            self.stdout.write(
                f"{queued.count()} secrets queued for destruction; {expired.count()} expired grace secrets."
            )
            if verbosity >= 2:
                for purge in queued.iterator():
                    self.stdout.write(
                        f"  {purge.storage}:{purge.vault_path} attempts={purge.attempts} {purge.last_error}"
                    )
            return
        if missing:
            raise CommandError(
                f"{queued.filter(storage__in=missing).count()} queued secrets are in a store that is not configured "
                f"({', '.join(missing)}): set VAULT_ADDR and VAULT_TOKEN, then run this again."
            )

        cleared = services.grace_secrets_expire()
        services.grace_keys_expire()  # rows only, nothing in a store: no count in the summary
        ids = list(queued.values_list("id", flat=True)[:limit])
        purged = failed = 0
        for index, purge_id in enumerate(ids, start=1):
            if services.secret_purge_attempt(purge_id=purge_id):
                purged += 1
            else:
                failed += 1
                if verbosity >= 2:
                    self.stderr.write(f"  still queued: purge {purge_id}")
            if verbosity >= 1 and self.stdout.isatty():
                self.stdout.write(f"\r{index}/{len(ids)}", ending="")
        if verbosity >= 1 and self.stdout.isatty() and ids:
            self.stdout.write("")
        summary = (
            f"Destroyed {purged} queued secrets, {failed} failed and stay queued; "
            f"cleared {cleared} expired grace secrets."
        )
        if failed:
            raise CommandError(summary + " Check that Vault is reachable and unsealed, then run this again.")
        self.stdout.write(summary)
