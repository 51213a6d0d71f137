"""The management API: thin views that validate input and call the services and selectors."""

from __future__ import annotations

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from credentials import selectors, services
from credentials.models import Agent, Credential, TrustPolicy

from .serializers import (
    AgentCreateInput,
    AgentListQuery,
    AgentOutput,
    AgentUpdateInput,
    CredentialCreateInput,
    CredentialOutput,
    CredentialRotateInput,
    ErrorOutput,
    IssuedCredentialOutput,
    TrustPolicyCreateInput,
    TrustPolicyOutput,
)


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    descriptions = {
        400: "VALIDATION_ERROR",
        401: "UNAUTHORIZED",
        403: "FORBIDDEN",
        404: "AGENT_NOT_FOUND, CREDENTIAL_NOT_FOUND or TRUST_POLICY_NOT_FOUND",
        409: "CONFLICT",
        415: "UNSUPPORTED_MEDIA_TYPE",
        503: "VAULT_WRITE_ERROR or VAULT_UNAVAILABLE, with Retry-After",
    }
    return {code: OpenApiResponse(ErrorOutput, description=descriptions[code]) for code in (401, 403, *statuses)}


AGENT_ID = OpenApiParameter("agent_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="agentId")
CREDENTIAL_ID = OpenApiParameter("credential_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="credentialId")
TRUST_POLICY_ID = OpenApiParameter(
    "trust_policy_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="trustPolicyId"
)


class _SecretResponse:
    """
    The answer that carries a new secret, rendered as JSON before the change commits.

    Passed to the service as `before_commit`: if the response cannot be made, the change
    rolls back (and the store's new entry is destroyed), so no secret is ever committed
    that nobody received. What is left after the commit cannot fail: bytes, and headers.
    """

    def __init__(self, *, status: int) -> None:
        self.status = status
        self.response: HttpResponse | None = None

    def render(self, issued) -> None:
        body = JSONRenderer().render(IssuedCredentialOutput(issued).data)
        self.response = HttpResponse(body, status=self.status, content_type="application/json")


def _body(request: Request) -> dict:
    """The request's JSON object, or {} for anything else (validation answers that later)."""
    return request.data if isinstance(request.data, dict) else {}


def _validated(serializer_class, data):
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


@extend_schema_view(
    list=extend_schema(
        summary="List agents",
        parameters=[
            OpenApiParameter("status", str, enum=Agent.Status.values),
            OpenApiParameter("search", str, description="Part of the name, description or owner."),
        ],
        responses={
            200: AgentOutput(many=True),
            **_errors(400),
            404: OpenApiResponse(ErrorOutput, description="NOT_FOUND: no such page"),
        },
    ),
    create=extend_schema(
        summary="Register an agent", request=AgentCreateInput, responses={201: AgentOutput, **_errors(400, 409, 415)}
    ),
    retrieve=extend_schema(summary="Get an agent", parameters=[AGENT_ID], responses={200: AgentOutput, **_errors(404)}),
    partial_update=extend_schema(
        summary="Change an agent",
        parameters=[AGENT_ID],
        request=AgentUpdateInput,
        responses={200: AgentOutput, **_errors(400, 404, 415)},
    ),
    destroy=extend_schema(
        summary="Delete an agent, its credentials and its trust policies",
        parameters=[AGENT_ID],
        responses={204: None, **_errors(404)},
    ),
)
class AgentViewSet(viewsets.GenericViewSet):
    #: The console's permission for each field a PATCH may change.
    FIELD_PERMISSIONS = {
        "description": "credentials.change_agent",
        "owner": "credentials.change_agent",
        "scopes": "credentials.grant_scopes",
        "allowedResources": "credentials.grant_resources",
        "status": "credentials.suspend_agent",
    }

    def required_permissions(self, request: Request) -> set[str]:
        """The model permissions a staff session needs for this call (a token needs the admin scope instead)."""
        if self.action == "create":
            body = _body(request)
            return {"credentials.add_agent"} | {
                self.FIELD_PERMISSIONS[name] for name in ("scopes", "allowedResources") if body.get(name)
            }
        if self.action == "partial_update":
            body = _body(request)
            return {self.FIELD_PERMISSIONS.get(name, "credentials.change_agent") for name in body} or {
                "credentials.change_agent"
            }
        if self.action == "destroy":  # its credentials and trust policies go with it
            return {"credentials.delete_agent", "credentials.delete_credential", "credentials.delete_trustpolicy"}
        return {"credentials.view_agent"}

    def list(self, request: Request) -> Response:
        query = _validated(AgentListQuery, request.query_params.dict())
        agents = selectors.agent_list(status=query.get("status"), search=query.get("search"))
        page = self.paginate_queryset(agents)
        return self.get_paginated_response(AgentOutput(page, many=True).data)

    def create(self, request: Request) -> Response:
        data = _validated(AgentCreateInput, request.data)
        agent = services.agent_create(acting=request.user, **data)
        return Response(
            AgentOutput(agent).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": reverse("agent-detail", kwargs={"agent_id": agent.id})},
        )

    def retrieve(self, request: Request, agent_id: str) -> Response:
        return Response(AgentOutput(selectors.agent_get(agent_id=agent_id)).data)

    def partial_update(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(agent_id=agent_id)
        changes = _validated(AgentUpdateInput, request.data)
        agent = services.agent_update(acting=request.user, agent=agent, **changes)
        return Response(AgentOutput(agent).data)

    def destroy(self, request: Request, agent_id: str) -> Response:
        services.agent_delete(acting=request.user, agent=selectors.agent_get(agent_id=agent_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(
        summary="List an agent's credentials (never their secrets)",
        parameters=[AGENT_ID],
        responses={200: CredentialOutput(many=True), **_errors(404)},
    ),
    create=extend_schema(
        summary="Give an agent a new credential: a secret (the response holds it, once) or public keys",
        parameters=[AGENT_ID],
        request=CredentialCreateInput,
        responses={201: IssuedCredentialOutput, **_errors(400, 404, 409, 415, 503)},
    ),
    retrieve=extend_schema(
        summary="Get a credential (never its secret)",
        parameters=[AGENT_ID, CREDENTIAL_ID],
        responses={200: CredentialOutput, **_errors(404)},
    ),
    destroy=extend_schema(
        summary="Delete a credential: its secret and tokens stop working at once",
        parameters=[AGENT_ID, CREDENTIAL_ID],
        responses={204: None, **_errors(404)},
    ),
)
class CredentialViewSet(viewsets.GenericViewSet):
    ACTION_PERMISSIONS = {
        "create": "credentials.add_credential",
        "rotate": "credentials.rotate_credential",
        "destroy": "credentials.delete_credential",
    }

    def required_permissions(self, request: Request) -> set[str]:
        """The model permissions a staff session needs for this call (a token needs the admin scope instead)."""
        return {self.ACTION_PERMISSIONS.get(self.action, "credentials.view_credential")}

    def _agent(self) -> Agent:
        return selectors.agent_get(agent_id=self.kwargs["agent_id"])

    def _credential(self) -> Credential:
        return selectors.credential_get(agent=self._agent(), credential_id=self.kwargs["credential_id"])

    def list(self, request: Request, agent_id: str) -> Response:
        page = self.paginate_queryset(selectors.credential_list(agent=self._agent()))
        return self.get_paginated_response(CredentialOutput(page, many=True).data)

    def create(self, request: Request, agent_id: str) -> HttpResponse:
        agent = self._agent()
        data = _validated(CredentialCreateInput, request.data)
        rendered = _SecretResponse(status=status.HTTP_201_CREATED)
        issued = services.credential_create(
            acting=request.user,
            agent=agent,
            description=data["description"],
            expires_at=data["expiresAt"],
            kind=data["kind"],
            jwks=data["jwks"],
            jwks_uri=data["jwksUri"],
            before_commit=rendered.render,
        )
        rendered.response["Location"] = reverse(
            "credential-detail", kwargs={"agent_id": agent.id, "credential_id": issued.credential.id}
        )
        return rendered.response

    def retrieve(self, request: Request, agent_id: str, credential_id: str) -> Response:
        return Response(CredentialOutput(self._credential()).data)

    @extend_schema(
        summary="Give a credential a new secret (the response holds it, once) or a key credential new keys",
        parameters=[AGENT_ID, CREDENTIAL_ID],
        request=CredentialRotateInput,
        responses={200: IssuedCredentialOutput, **_errors(400, 404, 409, 415, 503)},
    )
    def rotate(self, request: Request, agent_id: str, credential_id: str) -> HttpResponse:
        credential = self._credential()
        data = _validated(CredentialRotateInput, request.data)
        rendered = _SecretResponse(status=status.HTTP_200_OK)
        services.credential_rotate(
            acting=request.user,
            credential=credential,
            grace_period_seconds=data["gracePeriodSeconds"],
            jwks=data["jwks"],
            jwks_uri=data["jwksUri"],
            before_commit=rendered.render,
        )
        return rendered.response

    def destroy(self, request: Request, agent_id: str, credential_id: str) -> Response:
        services.credential_delete(acting=request.user, credential=self._credential())
        return Response(status=status.HTTP_204_NO_CONTENT)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # Create and rotate answer with a secret; nothing on the way may keep a copy.
        response["Cache-Control"] = "no-store"
        return response


@extend_schema_view(
    list=extend_schema(
        summary="List an agent's trust policies",
        parameters=[AGENT_ID],
        responses={200: TrustPolicyOutput(many=True), **_errors(404)},
    ),
    create=extend_schema(
        summary="Accept platform-issued JWTs (Kubernetes, CI, SPIFFE) as this agent's identity",
        parameters=[AGENT_ID],
        request=TrustPolicyCreateInput,
        responses={201: TrustPolicyOutput, **_errors(400, 404, 409, 415)},
    ),
    retrieve=extend_schema(
        summary="Get a trust policy",
        parameters=[AGENT_ID, TRUST_POLICY_ID],
        responses={200: TrustPolicyOutput, **_errors(404)},
    ),
    destroy=extend_schema(
        summary="Delete a trust policy: its platform tokens are refused from now on",
        parameters=[AGENT_ID, TRUST_POLICY_ID],
        responses={204: None, **_errors(404)},
    ),
)
class TrustPolicyViewSet(viewsets.GenericViewSet):
    ACTION_PERMISSIONS = {
        "create": "credentials.add_trustpolicy",
        "destroy": "credentials.delete_trustpolicy",
    }

    def required_permissions(self, request: Request) -> set[str]:
        """The model permissions a staff session needs for this call (a token needs the admin scope instead)."""
        return {self.ACTION_PERMISSIONS.get(self.action, "credentials.view_trustpolicy")}

    def _agent(self) -> Agent:
        return selectors.agent_get(agent_id=self.kwargs["agent_id"])

    def _policy(self) -> TrustPolicy:
        return selectors.trust_policy_get(agent=self._agent(), trust_policy_id=self.kwargs["trust_policy_id"])

    def list(self, request: Request, agent_id: str) -> Response:
        page = self.paginate_queryset(selectors.trust_policy_list(agent=self._agent()))
        return self.get_paginated_response(TrustPolicyOutput(page, many=True).data)

    def create(self, request: Request, agent_id: str) -> Response:
        agent = self._agent()
        data = _validated(TrustPolicyCreateInput, request.data)
        policy = services.trust_policy_create(
            acting=request.user,
            agent=agent,
            issuer=data["issuer"],
            audience=data["audience"],
            subject=data["subject"] or "",
            subject_pattern=data["subjectPattern"] or "",
            claims=data["claims"],
            jwks=data["jwks"],
            jwks_uri=data["jwksUri"],
            max_token_age_seconds=data["maxTokenAgeSeconds"],
            description=data["description"],
        )
        return Response(
            TrustPolicyOutput(policy).data,
            status=status.HTTP_201_CREATED,
            headers={
                "Location": reverse("trust-policy-detail", kwargs={"agent_id": agent.id, "trust_policy_id": policy.id})
            },
        )

    def retrieve(self, request: Request, agent_id: str, trust_policy_id: str) -> Response:
        return Response(TrustPolicyOutput(self._policy()).data)

    def destroy(self, request: Request, agent_id: str, trust_policy_id: str) -> Response:
        services.trust_policy_delete(acting=request.user, policy=self._policy())
        return Response(status=status.HTTP_204_NO_CONTENT)
