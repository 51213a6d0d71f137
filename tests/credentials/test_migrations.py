"""Data migrations, run forwards on rows written as an older schema held them."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("credentials", "0008_agent_grant_scopes_permission")]
AFTER = [("credentials", "0009_agent_name_key")]


@pytest.fixture
def migrator(transactional_db):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    yield executor
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_names_that_collide_under_the_new_rule_keep_their_agents_and_the_oldest_keeps_the_name(migrator):
    old_apps = migrator.loader.project_state(BEFORE).apps
    Agent = old_apps.get_model("credentials", "Agent")
    first = Agent.objects.create(name="Straße")
    second = Agent.objects.create(name="STRASSE")  # distinct under Lower(), one name under case folding
    other = Agent.objects.create(name="ｂｏｔ")

    migrator.loader.build_graph()
    migrator.migrate(AFTER)

    Agent = migrator.loader.project_state(AFTER).apps.get_model("credentials", "Agent")
    keys = dict(Agent.objects.values_list("id", "name_key"))
    assert keys[first.id] == "strasse"
    assert keys[second.id] == f"strasse\x1f{second.id}"
    assert keys[other.id] == "bot"
    assert set(Agent.objects.values_list("name", flat=True)) == {"Straße", "STRASSE", "ｂｏｔ"}


def test_every_secret_credential_gets_its_own_secret_reference_and_key_credentials_none(transactional_db):
    before, after = [("credentials", "0012_agent_allowed_resources")], [("credentials", "0013_credential_secret_ref")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old_apps = executor.loader.project_state(before).apps
        Agent, Credential = (old_apps.get_model("credentials", name) for name in ("Agent", "Credential"))
        agent = Agent.objects.create(name="legacy", name_key="legacy")
        secret_ids = [
            Credential.objects.create(agent=agent, client_id=f"c{n}", storage="bcrypt", secret_hash="x").id
            for n in range(3)
        ]
        key_id = Credential.objects.create(
            agent=agent, client_id="k", kind="key", storage="", jwks={"keys": [{"kty": "EC"}]}
        ).id

        executor.loader.build_graph()
        executor.migrate(after)

        Credential = executor.loader.project_state(after).apps.get_model("credentials", "Credential")
        refs = dict(Credential.objects.values_list("id", "secret_ref"))
        assert refs[key_id] is None
        assert len({refs[pk] for pk in secret_ids}) == 3
        assert all(len(refs[pk]) == 12 and refs[pk].isalnum() for pk in secret_ids)
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
