"""Who may call the management API: an admin token, or a staff session with the console's permissions."""

from __future__ import annotations

from django.conf import settings
from rest_framework.permissions import BasePermission

from .tokens import ActiveToken


class IsAgentIdPAdmin(BasePermission):
    """
    Allow a bearer token holding the admin scope, or a staff session holding every model
    permission the call needs.

    A session reaches the API only with the permissions the console would ask for the same
    change (the view's `required_permissions(request)`), so a staff flag alone grants
    nothing, and a view-only operator cannot create an admin agent or take over another
    agent's credential through the API.
    """

    token_message = "The access token lacks the scope agentidp:admin."  # noqa: S105 (a message)
    session_message = "Your account lacks the console permission this call needs."

    def has_permission(self, request, view) -> bool:
        if request.method == "OPTIONS":
            return True  # a description of the route (agentidp.negotiation.Metadata): names and media types only
        if isinstance(request.auth, ActiveToken):
            self.message = self.token_message
            return settings.AGENTIDP_ADMIN_SCOPE in request.auth.scopes
        self.message = self.session_message
        user = request.user
        if not (user is not None and user.is_authenticated and user.is_active and user.is_staff):
            return False
        return user.has_perms(sorted(view.required_permissions(request)))
