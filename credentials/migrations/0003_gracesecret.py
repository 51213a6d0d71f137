import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    """Keep a rotated-out secret valid until the end of the grace period asked for."""

    dependencies = [("credentials", "0002_credential")]

    operations = [
        migrations.CreateModel(
            name="GraceSecret",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("storage", models.CharField(editable=False, max_length=16)),
                ("secret_hash", models.CharField(blank=True, default="", editable=False, max_length=128)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("valid_until", models.DateTimeField(db_index=True)),
                (
                    "credential",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="grace_secrets",
                        to="credentials.credential",
                    ),
                ),
            ],
            options={"ordering": ["-valid_until", "-id"]},
        ),
    ]
