from django.urls import re_path

from .views import AgentViewSet, CredentialViewSet, TrustPolicyViewSet

# Each route answers with or without a trailing slash.
AGENT = r"(?P<agent_id>[^/]+)"
CREDENTIAL = r"(?P<credential_id>[^/]+)"
TRUST_POLICY = r"(?P<trust_policy_id>[^/]+)"

urlpatterns = [
    re_path(r"^agents/?$", AgentViewSet.as_view({"get": "list", "post": "create"}), name="agent-list"),
    re_path(
        rf"^agents/{AGENT}/?$",
        AgentViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="agent-detail",
    ),
    re_path(
        rf"^agents/{AGENT}/credentials/?$",
        CredentialViewSet.as_view({"get": "list", "post": "create"}),
        name="credential-list",
    ),
    re_path(
        rf"^agents/{AGENT}/credentials/{CREDENTIAL}/?$",
        CredentialViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="credential-detail",
    ),
    re_path(
        rf"^agents/{AGENT}/credentials/{CREDENTIAL}/rotate/?$",
        CredentialViewSet.as_view({"post": "rotate"}),
        name="credential-rotate",
    ),
    re_path(
        rf"^agents/{AGENT}/trust-policies/?$",
        TrustPolicyViewSet.as_view({"get": "list", "post": "create"}),
        name="trust-policy-list",
    ),
    re_path(
        rf"^agents/{AGENT}/trust-policies/{TRUST_POLICY}/?$",
        TrustPolicyViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="trust-policy-detail",
    ),
]
