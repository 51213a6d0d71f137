"""
Prometheus metrics of credentials: secret verifications by store and result, the
verified-secret cache, the credential rows each process keeps, the key cache of signed JWTs;
and, counted from the database when /metrics is read, agents and credentials by status and
kind, and the outboxes' depth and age.

No label carries a value a client chose: stores, results and statuses are AgentIdP's own words.
"""

from __future__ import annotations

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

SECRET_VERIFICATIONS = Counter(
    "agentidp_secret_verifications_total",
    "Client secrets verified by a store, by store (bcrypt, vault) and result "
    "(match, mismatch, missing, unavailable; dummy: an unknown client's equal share of work).",
    ["store", "result"],
)
VERIFIED_CACHE = Counter(
    "agentidp_verified_secret_cache_total",
    "Lookups in the verified-secret cache, by result (hit, miss).",
    ["result"],
)
KEPT_ROWS = Counter(
    "agentidp_kept_credential_rows_total",
    "Lookups of a credential by clientId, by result: hit (the rows this process kept, unchanged since), "
    "miss (read from the database).",
    ["result"],
)
KEY_CACHE = Counter(
    "agentidp_key_cache_total",
    "Public keys of signed JWTs asked for from a URL, by result: hit (cached), fetched, failed (fetching failed).",
    ["result"],
)


class DatabaseCollector:
    """What the database holds, counted when /metrics is read (a few aggregate queries)."""

    def collect(self):
        from .models import Agent, Credential, Notification, SecretPurge

        agents = GaugeMetricFamily("agentidp_agents", "Agents, by status.", labels=["status"])
        for row in Agent.objects.values("status").annotate(n=Count("id")).order_by("status"):
            agents.add_metric([row["status"]], row["n"])
        yield agents

        credentials = GaugeMetricFamily(
            "agentidp_credentials", "Credentials, by kind (secret, key) and status.", labels=["kind", "status"]
        )
        # Statuses as Credential.status names them, each from CredentialQuerySet's one definition.
        for status, queryset in (
            ("active", Credential.objects.active().compromised(False)),
            ("expired", Credential.objects.expired().compromised(False)),
            ("compromised", Credential.objects.compromised()),
        ):
            counts = dict(queryset.values_list("kind").annotate(n=Count("id")).order_by("kind"))
            for kind in Credential.Kind.values:
                credentials.add_metric([kind, status], counts.get(kind, 0))
        yield credentials

        now = timezone.now()
        for model, name, what in (
            (SecretPurge, "agentidp_purge_queue", "Vault entries queued for destruction"),
            (Notification, "agentidp_notification_outbox", "Notifications to the agents' owners not yet delivered"),
        ):
            summary = model.objects.aggregate(n=Count("id"), oldest=Min("created_at"))
            yield GaugeMetricFamily(f"{name}_depth", f"{what}.", value=summary["n"])
            age = (now - summary["oldest"]).total_seconds() if summary["oldest"] else 0.0
            yield GaugeMetricFamily(
                f"{name}_oldest_age_seconds", f"The age of the oldest of the {what.lower()}.", value=age
            )
