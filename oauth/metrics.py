"""Prometheus metrics of the OAuth endpoints: token requests by grant, method and outcome; refusals by rate limit."""

from __future__ import annotations

from prometheus_client import Counter

TOKEN_REQUESTS = Counter(
    "agentidp_token_requests_total",
    "Token requests, by grant (client_credentials, jwt-bearer, unsupported, missing), client-authentication "
    "method (client_secret_basic, client_secret_post, private_key_jwt, none) and outcome (issued, or the RFC "
    "6749 error: invalid_client, invalid_grant, ..., rate_limited).",
    ["grant", "method", "outcome"],
)
RATE_LIMIT_REFUSALS = Counter(
    "agentidp_rate_limit_refusals_total",
    "Requests refused by a rate limit, by limit.",
    ["limit"],
)
