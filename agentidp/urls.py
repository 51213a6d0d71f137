from django.contrib import admin
from django.contrib.contenttypes import views as contenttype_views
from django.core.exceptions import ValidationError
from django.http import Http404
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt

from . import health
from .apidocs import SchemaView, SwaggerView
from .console_login import ConsoleAuthenticationForm
from .metrics import metrics_view
from .middleware import page_not_found


def view_on_site(request, content_type_id, object_id):
    """The admin's "view on site" redirect, answering 404 for an id its model cannot even parse (Django: a 500)."""
    try:
        return contenttype_views.shortcut(request, content_type_id, object_id)
    except (ValidationError, ValueError):
        raise Http404("No such object.") from None


# The console's sign-in says when it refuses for too many failures (agentidp/console_login.py).
admin.site.login_form = ConsoleAuthenticationForm

urlpatterns = [
    path("", include("oauth.urls")),
    path("", include("oauth.leak_urls")),
    path("api/v1/", include("credentials.api.urls")),
    re_path(r"^api/v1/schema/?$", SchemaView.as_view(), name="api-schema"),
    re_path(r"^api/v1/docs/?$", SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Anything else under /api/ is the contract's 404, in JSON, whatever DEBUG says.
    re_path(r"^api/", csrf_exempt(page_not_found), name="api-not-found"),
    path("admin/r/<path:content_type_id>/<path:object_id>/", admin.site.admin_view(view_on_site)),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("healthz", health.liveness, name="healthz"),
    path("readyz", health.readiness, name="readyz"),
]

handler400 = "agentidp.middleware.bad_request"
handler403 = "agentidp.middleware.permission_denied"
handler404 = "agentidp.middleware.page_not_found"
handler500 = "agentidp.middleware.server_error"
