from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView

from . import health
from .apidocs import SwaggerView
from .middleware import page_not_found

urlpatterns = [
    path("", include("oauth.urls")),
    path("api/v1/", include("credentials.api.urls")),
    re_path(r"^api/v1/schema/?$", SpectacularAPIView.as_view(), name="api-schema"),
    re_path(r"^api/v1/docs/?$", SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Anything else under /api/ is the contract's 404, in JSON, whatever DEBUG says.
    re_path(r"^api/", csrf_exempt(page_not_found)),
    path("admin/", admin.site.urls),
    path("healthz", health.liveness, name="healthz"),
    path("readyz", health.readiness, name="readyz"),
]

handler400 = "agentidp.middleware.bad_request"
handler403 = "agentidp.middleware.permission_denied"
handler404 = "agentidp.middleware.page_not_found"
handler500 = "agentidp.middleware.server_error"
