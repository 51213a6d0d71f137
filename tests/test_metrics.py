"""GET /metrics: every family after real traffic, no label a client chose, and who may read it."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from credentials.audit import Actor
from credentials.leaks import Reported, leaks_check
from credentials.models import AuditEvent
from tests.conftest import basic_auth, form_post
from tests.factories import make_credential, wrong_secret
from tests.oauth.conftest import INTROSPECT_URL, TOKEN_URL
from tests.oauth.jwtclients import JWT_BEARER, trust_policy

FAMILIES = {
    "agentidp_token_requests",
    "agentidp_http_request_duration_seconds",
    "agentidp_secret_verifications",
    "agentidp_verified_secret_cache",
    "agentidp_kept_credential_rows",
    "agentidp_key_cache",
    "agentidp_vault_request_seconds",
    "agentidp_vault_errors",
    "agentidp_vault_breaker_open",
    "agentidp_purge_queue_depth",
    "agentidp_purge_queue_oldest_age_seconds",
    "agentidp_notification_outbox_depth",
    "agentidp_notification_outbox_oldest_age_seconds",
    "agentidp_rate_limit_refusals",
    "agentidp_agents",
    "agentidp_credentials",
}
#: Values a client chose in the traffic below: none may appear in a label.
CHOSEN = ("attacker-chosen-client", "evil-grant", "203.0.113.77", "Mozilla/evil", "nowhere-evil")


def scrape(client, **extra) -> dict:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def labels_of(families: dict) -> set[tuple[str, str]]:
    return {
        (name, value)
        for family in families.values()
        for sample in family.samples
        for name, value in sample.labels.items()
    }


def test_metrics_show_every_family_after_traffic_and_no_label_a_client_chose(
    client, db, settings, vault_enabled, oidc_issuer
):
    settings.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 2
    issued = make_credential()  # in Vault: its reads are timed
    grant = {"grant_type": "client_credentials"}
    hostile = {"REMOTE_ADDR": "203.0.113.77", "HTTP_USER_AGENT": "Mozilla/evil"}
    auth = {"HTTP_AUTHORIZATION": basic_auth(issued.credential.client_id, issued.client_secret)}
    assert form_post(client, TOKEN_URL, grant, **auth).status_code == 200
    assert form_post(client, TOKEN_URL, grant, **auth).status_code == 200  # the verified-secret cache's hit
    assert form_post(client, TOKEN_URL, {"grant_type": "evil-grant"}, **auth).status_code == 400
    for _ in range(3):  # the third is over the address's failure limit
        form_post(
            client,
            TOKEN_URL,
            grant,
            HTTP_AUTHORIZATION=basic_auth("attacker-chosen-client", wrong_secret()),
            **hostile,
        )
    token = form_post(client, TOKEN_URL, grant, **auth).json()["access_token"]
    form_post(client, INTROSPECT_URL, {"token": token}, **auth)
    client.get("/api/v1/nowhere-evil", **hostile)  # the /api/ catch-all's route
    client.get("/nowhere-evil", **hostile)  # no route at all
    policy_agent = issued.credential.agent
    trust_policy(policy_agent, issuer=oidc_issuer.issuer, audience="agentidp", subject="workload")
    now = int(time.time())
    assertion = oidc_issuer.mint({"aud": "agentidp", "sub": "workload", "iat": now, "exp": now + 300})
    for _ in range(2):  # fetched, then a hit
        assert form_post(client, TOKEN_URL, {"grant_type": JWT_BEARER, "assertion": assertion}).status_code == 200
    leaks_check(
        reported=[Reported(issued.client_secret)], acting=Actor(type=AuditEvent.ActorType.REPORTER, label="test")
    )

    families = scrape(client)

    assert set(families) >= FAMILIES
    token_requests = {
        (s.labels["grant"], s.labels["method"], s.labels["outcome"])
        for s in families["agentidp_token_requests"].samples
        if s.name.endswith("_total")
    }
    assert ("client_credentials", "client_secret_basic", "issued") in token_requests
    assert ("unsupported", "none", "unsupported_grant_type") in token_requests  # refused before authentication
    assert ("client_credentials", "client_secret_basic", "invalid_client") in token_requests
    assert ("client_credentials", "client_secret_basic", "rate_limited") in token_requests
    assert ("jwt-bearer", "none", "issued") in token_requests
    results = {s.labels["result"] for s in families["agentidp_key_cache"].samples if s.value}
    assert {"fetched", "hit"} <= results
    credentials = {(s.labels["kind"], s.labels["status"]): s.value for s in families["agentidp_credentials"].samples}
    assert credentials[("secret", "compromised")] == 1
    endpoints = {s.labels["endpoint"] for s in families["agentidp_http_request_duration_seconds"].samples}
    assert {"oauth:token", "oauth:introspect", "api-not-found", "unmatched"} <= endpoints
    labels = labels_of(families)
    for chosen in CHOSEN:
        assert not any(chosen in value for _, value in labels), chosen
    assert not any(issued.credential.client_id in value for _, value in labels)


def test_metrics_are_refused_outside_the_allowed_networks(client, db, settings):
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 403
    settings.AGENTIDP_METRICS_ALLOWED_NETWORKS = ["203.0.113.0/24"]
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 200
    assert client.get("/metrics").status_code == 403


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Bearer metrics-token-for-tests "])
def test_with_a_token_set_metrics_need_it(client, db, settings, header):
    settings.AGENTIDP_METRICS_TOKEN = "metrics-token-for-tests"
    extra = {"HTTP_AUTHORIZATION": header} if header else {}

    assert client.get("/metrics", **extra).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-for-tests").status_code == 200


def test_with_neither_networks_nor_a_token_metrics_are_off(client, db, settings):
    settings.AGENTIDP_METRICS_ALLOWED_NETWORKS = []

    assert client.get("/metrics").status_code == 403


def test_the_grafana_dashboard_asks_only_for_families_agentidp_serves():
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[1] / "docs" / "devops" / "grafana-dashboard.json").read_text()
    )
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {
        re.sub(r"_(total|bucket)$", "", name) for expr in expressions for name in re.findall(r"agentidp_\w+", expr)
    }

    assert named == FAMILIES
