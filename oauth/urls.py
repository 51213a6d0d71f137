from django.urls import path

from . import views

app_name = "oauth"

urlpatterns = [
    path("api/v1/authorize", views.AuthorizationView.as_view(), name="authorize"),
    path("api/v1/token", views.TokenView.as_view(), name="token"),
    path("api/v1/token/introspect", views.IntrospectionView.as_view(), name="introspect"),
    path("api/v1/token/revoke", views.RevocationView.as_view(), name="revoke"),
    path(".well-known/oauth-authorization-server", views.authorization_server_metadata, name="metadata"),
    path(".well-known/jwks.json", views.jwks_document, name="jwks"),
]
