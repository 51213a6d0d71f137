"""Prometheus metrics of the Vault backend: its requests' latency, their errors by kind, the circuit breaker's state."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

VAULT_REQUEST_SECONDS = Histogram(
    "agentidp_vault_request_seconds",
    "Time Vault took to answer, by operation (store, read, delete, check), failures included.",
    ["operation"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
VAULT_ERRORS = Counter(
    "agentidp_vault_errors_total",
    "Vault requests that failed, by operation and kind (the hvac or requests exception's class).",
    ["operation", "kind"],
)
VAULT_BREAKER_OPEN = Gauge(
    "agentidp_vault_breaker_open",
    "1 while a process's Vault circuit breaker is open (Vault is not asked), else 0.",
    multiprocess_mode="max",
)
