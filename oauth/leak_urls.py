"""
The leak report routes: under /api/ but not OAuth endpoints, so their errors have the
management API's shape (included without the "oauth" namespace).
"""

from django.urls import path

from . import leak_reports

urlpatterns = [
    path("api/v1/leaks", leak_reports.self_report, name="leaks"),
    path("api/v1/secret-scanning/github", leak_reports.github_partner_report, name="github-secret-scanning"),
    path("api/v1/secret-scanning/github/alerts", leak_reports.github_alert_webhook, name="github-alerts"),
    path(
        "api/v1/secret-scanning/gitlab/revocable_token_types",
        leak_reports.gitlab_token_types,
        name="gitlab-token-types",
    ),
    path("api/v1/secret-scanning/gitlab/revoke_tokens", leak_reports.gitlab_revoke_tokens, name="gitlab-revoke"),
]
