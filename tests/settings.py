"""Settings for the test suite: the project's, with a throwaway signing key and fast bcrypt."""

import os

os.environ.setdefault("SECRET_KEY", "agentidp-tests-only")

from agentidp.settings import *  # noqa: F403
from oauth.keys import generate_signing_key_pem

DEBUG = False
# bcrypt's lowest cost: tests check behaviour, bench/ measures cost.
AGENTIDP_BCRYPT_ROUNDS = 4
# bcrypt only, even when VAULT_ADDR is set: that names a real Vault for the Vault tests
# (tests/vault_fixtures.py), which switch Vault on for themselves.
VAULTSTORE = {
    "DEFAULT": "bcrypt",
    "BACKENDS": {
        "bcrypt": {
            "BACKEND": "vaultstore.backends.bcrypt.BcryptSecretBackend",
            "OPTIONS": {"rounds": AGENTIDP_BCRYPT_ROUNDS},
        },
    },
}
AGENTIDP_SIGNING_KEY = generate_signing_key_pem("RS256").decode()
AGENTIDP_ISSUER = "http://testserver"
AGENTIDP_AUDIENCE = AGENTIDP_ISSUER
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Static files are not what these tests are about (and STATIC_ROOT is empty before collectstatic).
MIDDLEWARE = [m for m in MIDDLEWARE if m != "whitenoise.middleware.WhiteNoiseMiddleware"]  # noqa: F405
