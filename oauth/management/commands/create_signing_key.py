import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from oauth.keys import generate_signing_key_pem, load_signing_key


class Command(BaseCommand):
    help = (
        "Create the private key that signs access tokens, at AGENTIDP_SIGNING_KEY_FILE (mode 0600, never overwritten)."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--algorithm",
            choices=["ES256", "RS256"],
            default="ES256",
            help="ES256 (default: P-256, the fastest to sign) or RS256 (RSA 3072, for resource servers that need it).",
        )
        parser.add_argument("--path", help="Where to write the key (default: AGENTIDP_SIGNING_KEY_FILE).")
        parser.add_argument(
            "--exist-ok", action="store_true", help="Succeed without writing anything if the file exists already."
        )

    def handle(self, *args, algorithm: str, path: str | None, exist_ok: bool, **options):
        target = Path(path or settings.AGENTIDP_SIGNING_KEY_FILE)
        if target.exists():
            if exist_ok:
                if options["verbosity"] > 1:
                    self.stdout.write(f"Signing key exists: {target}")
                return
            raise CommandError(f"{target} exists already; AgentIdP never overwrites a signing key.")
        pem = generate_signing_key_pem(algorithm)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CommandError(f"{target} exists already; AgentIdP never overwrites a signing key.") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        key = load_signing_key(pem)
        self.stdout.write(f"Created a {key.algorithm} signing key at {target} (kid {key.kid}).")
