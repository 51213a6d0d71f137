from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from credentials.models import Notification
from credentials.services.notifications import notifications_deliver


class Command(BaseCommand):
    help = (
        "Send the queued notifications to the agents' owners (AGENTIDP_NOTIFY_WEBHOOK_URL), whatever their "
        "retry schedule. Safe to run at any time, e.g. from cron; exits non-zero while anything stays queued."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Report what is queued and send nothing.")
        parser.add_argument("--limit", type=int, default=None, help="Send at most this many.")

    def handle(self, *args, dry_run: bool, limit: int | None, **options):
        verbosity = options["verbosity"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1.")
        queued = Notification.objects.order_by("next_attempt_at", "id")
        if dry_run:
            self.stdout.write(f"{queued.count()} notifications queued.")
            if verbosity >= 2:
                for notification in queued.iterator():
                    self.stdout.write(
                        f"  #{notification.id} {notification.event} attempts={notification.attempts} "
                        f"{notification.last_error}"
                    )
            return
        if queued.exists() and not settings.AGENTIDP_NOTIFY_WEBHOOK_URL:
            raise CommandError(
                f"{queued.count()} notifications are queued but AGENTIDP_NOTIFY_WEBHOOK_URL is not set: set it, "
                "then run this again."
            )
        delivered, failed = notifications_deliver(notification_ids=list(queued.values_list("id", flat=True)[:limit]))
        remaining = Notification.objects.count()
        self.stdout.write(f"Delivered {delivered} notifications; {failed} failed; {remaining} still queued.")
        if failed or remaining:
            raise CommandError(f"{remaining} notifications are still queued; they are retried automatically.")
