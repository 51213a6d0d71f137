"""An URLconf that does not mount the OAuth endpoints (tests/test_middleware.py)."""

urlpatterns: list = []
