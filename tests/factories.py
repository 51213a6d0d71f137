"""factory_boy factories. Credentials are made through the service, so their secrets are real."""

import factory

from credentials import services
from credentials.models import Agent


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    name = factory.Sequence(lambda n: f"agent-{n}")
    description = "An agent made by the tests."
    owner = "platform-team"
    scopes = factory.LazyFunction(lambda: ["reports:read", "reports:write"])


def make_credential(agent=None, **kwargs) -> services.IssuedCredential:
    """Create a credential through credential_create and return it with its one-time secret."""
    return services.credential_create(acting=None, agent=agent or AgentFactory(), **kwargs)
