import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="RevokedToken",
            fields=[
                ("jti", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("client_id", models.CharField(max_length=64)),
                ("revoked_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("expires_at", models.DateTimeField(db_index=True)),
            ],
        ),
    ]
