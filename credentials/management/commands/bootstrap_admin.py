import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from credentials import services
from credentials.audit import Actor
from credentials.errors import ApiError
from credentials.models import Agent, AuditEvent, Credential, agent_name_key
from vaultstore.exceptions import SecretStoreError

ACTOR = Actor(type=AuditEvent.ActorType.SYSTEM, label="manage.py bootstrap_admin")


class Command(BaseCommand):
    help = (
        "Create (or reuse) the admin agent, holding the agentidp:admin scope, give it a new credential "
        "and print its clientId and clientSecret once."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--name", default="agentidp-admin", help="The admin agent's name (default: %(default)s).")
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print one JSON object: agentId, clientId, clientSecret.",
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Delete the admin agent's other credentials first, so only the new one works.",
        )

    def handle(self, *args, name: str, as_json: bool, replace: bool, **options):
        scope = settings.AGENTIDP_ADMIN_SCOPE
        try:
            with transaction.atomic():
                agent = Agent.objects.filter(name_key=agent_name_key(name)).first()
                if agent is None:
                    agent = services.agent_create(
                        acting=ACTOR,
                        name=name,
                        description="Administrator agent created by bootstrap_admin.",
                        scopes=[scope],
                    )
                else:
                    # Reuse it, restoring what makes it the admin: active, with the admin scope.
                    scopes = agent.scopes if scope in agent.scopes else [*agent.scopes, scope]
                    agent = services.agent_update(acting=ACTOR, agent=agent, scopes=scopes, status=Agent.Status.ACTIVE)
                if replace:
                    for credential in Credential.objects.filter(agent=agent):
                        services.credential_delete(acting=ACTOR, credential=credential)
                issued = services.credential_create(
                    acting=ACTOR, agent=agent, description="Created by bootstrap_admin."
                )
        except ApiError as exc:
            raise CommandError(exc.message) from None
        except SecretStoreError as exc:
            raise CommandError(f"{exc} Nothing was changed; try again when the secret store answers.") from None

        credential = issued.credential
        if as_json:
            self.stdout.write(
                json.dumps(
                    {"agentId": str(agent.id), "clientId": credential.client_id, "clientSecret": issued.client_secret}
                )
            )
            return
        self.stdout.write(f"Admin agent:   {agent.name} ({agent.id})")
        self.stdout.write(f"clientId:      {credential.client_id}")
        self.stdout.write(f"clientSecret:  {issued.client_secret}")
        self.stdout.write(self.style.WARNING("The secret is shown this once: keep it somewhere safe now."))
