"""factory_boy factories. Credentials are made through the service, so their secrets are real."""

import factory

from credentials import secretformat, services
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


def public_jwk(kid: str = "key-1", curve: str = "P-256") -> dict:
    """A fresh EC public key as a JWK (its private half is thrown away)."""
    from joserfc.jwk import ECKey

    return {**ECKey.generate_key(curve).as_dict(private=False), "kid": kid}


def public_jwks(*kids: str) -> dict:
    """A JWK Set of fresh EC public keys, one per kid (one key "key-1" by default)."""
    return {"keys": [public_jwk(kid) for kid in kids or ("key-1",)]}


def make_key_credential(agent=None, *, jwks: dict | None = None, jwks_uri: str | None = None, **kwargs):
    """Create a key credential through credential_create (fresh public keys unless jwks or jwks_uri is given)."""
    if jwks is None and jwks_uri is None:
        jwks = public_jwks()
    return services.credential_create(
        acting=None, agent=agent or AgentFactory(), kind="key", jwks=jwks, jwks_uri=jwks_uri, **kwargs
    ).credential


def make_trust_policy(agent=None, **kwargs):
    """Create a trust policy through trust_policy_create: a GitHub Actions job of one repository by default."""
    fields = {
        "issuer": "https://token.actions.githubusercontent.com",
        "audience": "https://agentidp.example",
        "subject": "repo:example/reports:ref:refs/heads/main",
        **kwargs,
    }
    return services.trust_policy_create(acting=None, agent=agent or AgentFactory(), **fields)


def wrong_secret() -> str:
    """A secret in AgentIdP's format, checksum right, that no credential has: it reaches a store and fails there."""
    return secretformat.new_secret(secretformat.new_secret_ref())


def near_miss(secret: str) -> str:
    """`secret` with one random character changed and its checksum made right again: well-formed, and wrong."""
    body = secret[: -secretformat.CHECKSUM_LENGTH]
    index = len(body) - 1
    body = body[:index] + ("B" if body[index] == "A" else "A")
    return body + secretformat.checksum(body)
