"""
The kit in Django REST framework: an authentication class and a scope permission.

    REST_FRAMEWORK = {"DEFAULT_AUTHENTICATION_CLASSES": ["agentidp.resource_server.drf.AccessTokenAuthentication"]}

    class ReportView(APIView):
        permission_classes = [HasScopes]
        required_scopes = ["reports:read"]

`request.user` is an AgentUser (the agent the token speaks for) and `request.auth` the VerifiedToken.
"""

from __future__ import annotations

import dataclasses

from rest_framework import authentication, exceptions, permissions, status

from .django import bearer_token, get_verifier
from .metadata import challenge
from .verify import InsufficientScope, TokenRejected, VerifiedToken, VerifierUnavailable


@dataclasses.dataclass(frozen=True)
class AgentUser:
    """The agent behind an access token, as request.user: never a Django user, never staff."""

    token: VerifiedToken
    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    is_active = True

    @property
    def pk(self) -> str:
        return self.token.subject

    def get_username(self) -> str:
        return self.token.subject

    def __str__(self) -> str:
        return self.token.subject


class Unavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Access tokens cannot be verified right now."
    default_code = "temporarily_unavailable"

    def __init__(self) -> None:
        super().__init__()
        self.wait = 5  # DRF's exception handler sends it as Retry-After


class AccessTokenAuthentication(authentication.BaseAuthentication):
    """Authenticate a request by an AgentIdP access token for this resource in `Authorization: Bearer`."""

    def authenticate(self, request):
        try:
            token = bearer_token(request._request)
            if token is None:
                return None
            verified = get_verifier().verify(token)
        except TokenRejected as exc:
            request._agentidp_rejected = exc  # for the challenge's error code, below
            raise exceptions.AuthenticationFailed(exc.description) from None
        except VerifierUnavailable:
            raise Unavailable() from None
        return AgentUser(verified), verified

    def authenticate_header(self, request) -> str:
        # Sent with every 401: where a client learns which authorization server to ask (RFC 9728 section 5.1).
        return challenge(get_verifier().settings, getattr(request, "_agentidp_rejected", None))


class _ScopeDenied(exceptions.PermissionDenied):
    def __init__(self, rejected: InsufficientScope) -> None:
        super().__init__(rejected.description)
        self.auth_header = challenge(get_verifier().settings, rejected)  # DRF's handler sends it as WWW-Authenticate


class HasScopes(permissions.BasePermission):
    """
    Allow a request whose access token holds every scope in the view's `required_scopes`;
    a token without one is 403 insufficient_scope (RFC 6750 section 3.1).
    """

    def has_permission(self, request, view) -> bool:
        if not isinstance(request.auth, VerifiedToken):
            return False  # no token: DRF answers 401 with the challenge
        required = tuple(getattr(view, "required_scopes", ()))
        if not request.auth.has_scopes(required):
            raise _ScopeDenied(InsufficientScope(required))
        return True
