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
