import django.utils.timezone
from django.db import migrations, models

# On PostgreSQL the database itself refuses to change or remove an audit row, whatever
# code (or operator with a SQL prompt and the app's role) tries.
APPEND_ONLY_SQL = """
CREATE FUNCTION credentials_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'credentials_auditevent is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER credentials_auditevent_append_only
    BEFORE UPDATE OR DELETE ON credentials_auditevent
    FOR EACH ROW EXECUTE FUNCTION credentials_auditevent_append_only();
"""

DROP_APPEND_ONLY_SQL = """
DROP TRIGGER IF EXISTS credentials_auditevent_append_only ON credentials_auditevent;
DROP FUNCTION IF EXISTS credentials_auditevent_append_only();
"""


def make_append_only(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND_ONLY_SQL)


def drop_append_only(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_APPEND_ONLY_SQL)


class Migration(migrations.Migration):
    dependencies = [("credentials", "0003_gracesecret")]

    operations = [
        migrations.CreateModel(
            name="AuditEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "occurred_at",
                    models.DateTimeField(db_index=True, default=django.utils.timezone.now, editable=False),
                ),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("agent.created", "Agent Created"),
                            ("agent.updated", "Agent Updated"),
                            ("agent.deleted", "Agent Deleted"),
                            ("credential.created", "Credential Created"),
                            ("credential.rotated", "Credential Rotated"),
                            ("credential.deleted", "Credential Deleted"),
                            ("token.revoked", "Token Revoked"),
                        ],
                        editable=False,
                        max_length=32,
                    ),
                ),
                (
                    "actor_type",
                    models.CharField(
                        choices=[("user", "Staff user"), ("agent", "Agent"), ("system", "System")],
                        editable=False,
                        max_length=16,
                    ),
                ),
                ("actor_id", models.CharField(blank=True, default="", editable=False, max_length=64)),
                ("actor_label", models.CharField(blank=True, default="", editable=False, max_length=256)),
                ("agent_id", models.UUIDField(blank=True, db_index=True, editable=False, null=True)),
                ("credential_id", models.UUIDField(blank=True, db_index=True, editable=False, null=True)),
                ("details", models.JSONField(blank=True, default=dict, editable=False)),
            ],
            options={"ordering": ["-occurred_at", "-id"]},
        ),
        migrations.RunPython(make_append_only, drop_append_only),
    ]
