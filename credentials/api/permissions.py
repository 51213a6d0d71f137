from django.conf import settings
from rest_framework.permissions import BasePermission

from oauth.tokens import ActiveToken


class IsAgentIdPAdmin(BasePermission):
    """Allow a bearer token holding the admin scope, or a staff user signed in to the admin console."""

    message = "The access token lacks the scope agentidp:admin."

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ActiveToken):
            return settings.AGENTIDP_ADMIN_SCOPE in request.auth.scopes
        user = request.user
        return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)
