"""WSGI entry point: `gunicorn agentidp.wsgi` (and what `manage.py runserver` serves)."""

import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")

application = get_wsgi_application()


def _require_signing_keys() -> None:
    """Refuse to serve without a usable signing key: the server fails at start, not at its first token."""
    from oauth.checks import check_signing_key

    problems = check_signing_key()
    if problems:
        raise ImproperlyConfigured("; ".join(f"{problem.id}: {problem.msg}" for problem in problems))


_require_signing_keys()
