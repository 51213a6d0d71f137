import uuid

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("credentials", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Credential",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("client_id", models.CharField(editable=False, max_length=64, unique=True)),
                ("description", models.TextField(blank=True, default="")),
                ("storage", models.CharField(editable=False, max_length=16)),
                ("secret_hash", models.CharField(blank=True, default="", editable=False, max_length=128)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("rotated_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("expires_at", models.DateTimeField(blank=True, null=True)),
                (
                    "agent",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="credentials",
                        to="credentials.agent",
                    ),
                ),
            ],
            options={"ordering": ["created_at", "id"]},
        ),
    ]
