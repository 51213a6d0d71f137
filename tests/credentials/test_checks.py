"""The system checks of the signed-JWT, notification and secret-scanning settings."""

import pytest

from credentials.checks import check_key_fetch_for_production, check_signed_jwt_settings


def test_the_default_settings_pass(settings):
    assert check_signed_jwt_settings() == []


def test_an_algorithm_without_a_key_type_here_is_an_error(settings):
    settings.AGENTIDP_ASSERTION_ALGORITHMS = ["ES256", "HS256", "none"]

    errors = check_signed_jwt_settings()

    assert [error.id for error in errors] == ["credentials.E001"]
    assert "HS256, none" in errors[0].hint


def test_no_algorithm_at_all_is_an_error(settings):
    settings.AGENTIDP_ASSERTION_ALGORITHMS = []

    assert [error.id for error in check_signed_jwt_settings()] == ["credentials.E001"]


def test_a_network_that_does_not_parse_and_a_missing_ca_bundle_are_errors(settings, tmp_path):
    settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = ["10.0.0.0/8", "not-a-network"]
    settings.AGENTIDP_KEY_FETCH_CA_BUNDLE = str(tmp_path / "missing.pem")

    assert [error.id for error in check_signed_jwt_settings()] == ["credentials.E002", "credentials.E003"]


def test_plain_http_on_loopback_is_a_deployment_warning(settings):
    assert check_key_fetch_for_production() == []
    settings.AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK = True

    assert [warning.id for warning in check_key_fetch_for_production()] == ["credentials.W001"]


def test_a_notification_webhook_without_its_secret_is_an_error(settings):
    from django.core.checks import run_checks

    settings.AGENTIDP_NOTIFY_WEBHOOK_URL = "https://hooks.example/agentidp"
    settings.AGENTIDP_NOTIFY_WEBHOOK_SECRET = ""

    assert "credentials.E004" in [message.id for message in run_checks()]


@pytest.mark.parametrize("document", ["not json", '{"public_keys": [{"key_identifier": "k", "key": "nope"}]}'])
def test_an_unreadable_github_key_document_is_an_error(settings, document):
    from django.core.checks import run_checks

    settings.AGENTIDP_GITHUB_SECRET_SCANNING_KEYS = document

    assert "oauth.E003" in [message.id for message in run_checks()]
