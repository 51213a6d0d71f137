import io

from django.core.management import call_command


def test_openapi_schema_is_valid_and_warning_free():
    out = io.StringIO()
    # --fail-on-warn raises on any warning or error of drf-spectacular; --validate checks OpenAPI 3.
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = out.getvalue()
    for path in (
        "/api/v1/agents:",
        "/api/v1/agents/{agent_id}:",
        "/api/v1/agents/{agent_id}/credentials:",
        "/api/v1/agents/{agent_id}/credentials/{credential_id}:",
        "/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate:",
        "/api/v1/agents/{agent_id}/trust-policies:",
        "/api/v1/agents/{agent_id}/trust-policies/{trust_policy_id}:",
    ):
        assert f"\n  {path}\n" in schema
    assert "bearerAuth" in schema
    for name in ("TrustPolicyCreateInputRequest:", "TrustPolicyOutput:", "CredentialRotateInputRequest:"):
        assert f"\n    {name}\n" in schema
    for field in ("jwksUri:", "subjectPattern:", "maxTokenAgeSeconds:", "gracePeriodSeconds:"):
        assert field in schema
