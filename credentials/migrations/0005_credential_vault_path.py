import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    """Let a secret live in Vault (its path and trusted version) and queue the destruction of Vault secrets."""

    dependencies = [
        ("credentials", "0004_auditevent"),
    ]

    operations = [
        migrations.CreateModel(
            name="SecretPurge",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("storage", models.CharField(editable=False, max_length=16)),
                ("vault_path", models.CharField(editable=False, max_length=512)),
                ("agent_id", models.UUIDField(blank=True, editable=False, null=True)),
                ("credential_id", models.UUIDField(blank=True, editable=False, null=True)),
                ("reason", models.CharField(editable=False, max_length=32)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("attempts", models.PositiveIntegerField(default=0, editable=False)),
                (
                    "next_attempt_at",
                    models.DateTimeField(db_index=True, default=django.utils.timezone.now, editable=False),
                ),
                ("last_error", models.CharField(blank=True, default="", editable=False, max_length=64)),
            ],
            options={
                "ordering": ["next_attempt_at", "id"],
            },
        ),
        migrations.AddField(
            model_name="credential",
            name="vault_path",
            field=models.CharField(blank=True, editable=False, max_length=512, null=True),
        ),
        migrations.AddField(
            model_name="credential",
            name="vault_version",
            field=models.PositiveIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="gracesecret",
            name="vault_path",
            field=models.CharField(blank=True, editable=False, max_length=512, null=True),
        ),
        migrations.AddField(
            model_name="gracesecret",
            name="vault_version",
            field=models.PositiveIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddConstraint(
            model_name="credential",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("storage", "vault"), _negated=True),
                    models.Q(("vault_path__isnull", False), ("vault_version__isnull", False)),
                    _connector="OR",
                ),
                name="credentials_credential_vault_location_complete",
            ),
        ),
        migrations.AddConstraint(
            model_name="gracesecret",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("storage", "vault"), _negated=True),
                    models.Q(("vault_path__isnull", False), ("vault_version__isnull", False)),
                    _connector="OR",
                ),
                name="credentials_gracesecret_vault_location_complete",
            ),
        ),
        migrations.AddConstraint(
            model_name="secretpurge",
            constraint=models.UniqueConstraint(
                fields=("storage", "vault_path"), name="credentials_secretpurge_unique_location"
            ),
        ),
    ]
