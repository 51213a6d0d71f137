"""
Check every credential's trusted secrets against the store that keeps them.

A Vault that restarted empty, was restored from an old backup, or is asked on the wrong
mount or namespace answers "no such secret" for secrets the database trusts. This lists
each one (ids, store, path and version: never a secret) so that an operator can restore
Vault or rotate the credentials. It asks the store for the trusted version only, and
compares nothing.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Prefetch
from django.utils import timezone

from credentials import selectors, services
from credentials.audit import Actor
from credentials.errors import AgentNotFound
from credentials.models import AuditEvent, Credential, GraceSecret
from vaultstore.backends import get_backends

ACTOR = Actor(type=AuditEvent.ActorType.SYSTEM, label="manage.py check_secrets")


class Command(BaseCommand):
    # Needs the database and the secret stores, not the signing key.
    requires_system_checks = []
    help = (
        "List every credential whose current secret, or previous secret in its grace period, is not held by "
        "its store (a Vault that lost its data). Changes nothing in the database unless --record is given; "
        "exits non-zero when a secret is missing or a store could not answer."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--agent", metavar="AGENT_ID", help="Only this agent's credentials.")
        parser.add_argument(
            "--batch-size", type=int, default=100, help="Credentials read per query (default %(default)s)."
        )
        parser.add_argument(
            "--record",
            action="store_true",
            help="Also write a credential.secret_missing audit event for each missing secret (once per secret, "
            "as authentications do), log it at ERROR and report it at /readyz. Nothing is repaired.",
        )

    def handle(self, *args, agent: str | None, batch_size: int, record: bool, **options) -> None:
        verbosity = options["verbosity"]
        try:
            configured = set(get_backends())
        except ImproperlyConfigured as exc:
            raise CommandError(f"The secret stores are misconfigured: {exc}") from None
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        credentials = Credential.objects.with_secret()  # key credentials have nothing in a store
        if agent is not None:
            try:
                credentials = credentials.filter(agent=selectors.agent_get(agent_id=agent))
            except AgentNotFound:
                raise CommandError(f"No agent has the id {agent!r}.") from None
        now = timezone.now()
        live_grace = GraceSecret.objects.filter(valid_until__gt=now)
        used = set(credentials.values_list("storage", flat=True))
        used |= set(live_grace.filter(credential__in=credentials).values_list("storage", flat=True))
        unconfigured = sorted(used - configured)
        if unconfigured:
            raise CommandError(
                f"Some secrets are in a store that is not configured ({', '.join(unconfigured)}): "
                "set VAULT_ADDR and VAULT_TOKEN as the server has them, then run this again."
            )

        total = credentials.count()
        progress = verbosity >= 1 and self.stderr.isatty() and total > 0
        checked = secrets = missing = failed = 0
        # Per store: the credentials found whole, found missing a secret, and whether it failed to answer.
        whole: dict[str, set] = {name: set() for name in configured}
        lost: dict[str, set] = {name: set() for name in configured}
        unanswered: set[str] = set()
        queryset = credentials.order_by("pk").prefetch_related(
            Prefetch("grace_secrets", queryset=live_grace.order_by("created_at", "pk"), to_attr="live_grace_secrets")
        )
        for credential in queryset.iterator(chunk_size=batch_size):
            checked += 1
            results = services.credential_secrets_check(credential=credential, record=record, acting=ACTOR)
            for result in results:
                secrets += 1
                stored = result.trusted.stored
                line = (
                    f"agentId={credential.agent_id} credentialId={credential.id} clientId={credential.client_id} "
                    f"secret={result.which} storage={stored.storage} path={stored.vault_path or '-'} "
                    f"version={stored.vault_version or '-'}"
                )
                if result.held is None:
                    failed += 1
                    unanswered.add(stored.storage)
                    self._line(self.stderr, f"could not check {line}: {result.error}", progress)
                elif not result.held:
                    missing += 1
                    lost[stored.storage].add(credential.id)
                    if verbosity >= 1:
                        self._line(self.stdout, f"missing {line}", progress)
                elif verbosity >= 2:
                    self._line(self.stdout, f"held {line}", progress)
            for name in {result.trusted.stored.storage for result in results}:
                if all(r.held for r in results if r.trusted.stored.storage == name):
                    whole[name].add(credential.id)
            if progress:
                self.stderr.write(f"\rChecking secrets {checked}/{total}", ending="", style_func=str)
        if progress:
            self.stderr.write("", style_func=str)

        # /readyz's report: the credentials found whole leave it; after a full run of a store that
        # answered every question, only the ones found missing may stay in it.
        for name in sorted(configured):
            if agent is None and name not in unanswered:
                services.secrets_missing_forget(storage=name, keeping=lost[name])
            else:
                services.secrets_missing_forget(storage=name, credential_ids=whole[name] - lost[name])

        credentials_missing = len(set().union(*lost.values()))
        summary = (
            f"Checked {secrets} secrets of {checked} credentials: {missing} missing from their store "
            f"({credentials_missing} credentials), {failed} could not be checked."
        )
        if missing:
            hint = " Restore the store from a backup that has them, or rotate those credentials."
            if record:
                hint += " Recorded in the audit trail."
            raise CommandError(summary + hint)
        if failed:
            raise CommandError(summary + " Check that Vault is reachable and unsealed, then run this again.")
        self.stdout.write(summary)

    def _line(self, stream, message: str, progress: bool) -> None:
        """Write one line of the listing, below the progress counter if one is drawn."""
        stream.write(("\n" if progress else "") + message)
