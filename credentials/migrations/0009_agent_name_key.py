"""
Agent names are unique by their NFKC, case-folded form (credentials.models.agent_name_key),
on every database: Lower() folded only ASCII on SQLite, and lookalikes such as fullwidth
letters were different names everywhere.

Existing agents whose names already collide under the new rule keep their names: each
after the first (oldest) gets a key made unique by its id, and stays reachable as before.
"""

import unicodedata

from django.db import migrations, models


def _key(name: str) -> str:
    # A copy of credentials.models.agent_name_key as it stands now: migrations never import app code.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def fill_name_keys(apps, schema_editor):
    Agent = apps.get_model("credentials", "Agent")
    seen: set[str] = set()
    for agent in Agent.objects.order_by("created_at", "id").iterator():
        key = _key(agent.name)
        if key in seen:
            key = f"{key}\x1f{agent.id}"  # a control character no valid name can hold
        seen.add(key)
        Agent.objects.filter(pk=agent.pk).update(name_key=key)


class Migration(migrations.Migration):
    dependencies = [
        ("credentials", "0008_agent_grant_scopes_permission"),
    ]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="name_key",
            field=models.CharField(editable=False, max_length=512, null=True),
        ),
        migrations.RunPython(fill_name_keys, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name="agent", name="credentials_agent_name_ci_unique"),
        migrations.AlterField(
            model_name="agent",
            name="name_key",
            field=models.CharField(editable=False, max_length=512, unique=True),
        ),
    ]
