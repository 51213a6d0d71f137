"""WSGI entry point: `gunicorn agentidp.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")

application = get_wsgi_application()
