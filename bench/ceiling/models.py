"""The one table the ceiling reads."""

from django.db import models


class Row(models.Model):
    name = models.CharField(max_length=40)

    def __str__(self) -> str:
        return self.name
