"""
Settings for AgentIdP.

This is the only module that reads the environment (through django-environ). Every
variable is documented in docs/devops/environment-variables.md; application code reads
django.conf.settings only.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)

# Production must set its own key; the fallback exists so that a development checkout runs
# without configuration, and carries the prefix that `check --deploy` flags.
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set SECRET_KEY (or DEBUG=true for local development).")
    SECRET_KEY = "django-insecure-agentidp-development-only"  # noqa: S105 (DEBUG only, refused above otherwise)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "vaultstore",
    "credentials",
    "oauth",
]

# The browser's middleware from agentidp.middleware are Django's own, skipped by the OAuth
# protocol endpoints (token, introspection, revocation, metadata, JWKS), which serve no browser.
MIDDLEWARE = [
    "agentidp.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "agentidp.middleware.ApiRequestMiddleware",
    "agentidp.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "agentidp.middleware.CsrfViewMiddleware",
    "agentidp.middleware.AuthenticationMiddleware",
    "agentidp.middleware.MessageMiddleware",
    "agentidp.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "agentidp.urls"
WSGI_APPLICATION = "agentidp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite file by default (the demo); PostgreSQL through psycopg 3 in production,
# e.g. DATABASE_URL=postgres://agentidp@db.internal:5432/agentidp
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'agentidp.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The same backend, with a health check that asks the server only when its socket has something to say.
    DATABASES["default"]["ENGINE"] = "agentidp.postgresql"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")

# --- HTTP and TLS -------------------------------------------------------------------------
# AgentIdP speaks plain HTTP; TLS ends in front of it. It redirects to HTTPS only when asked.
SECURE_SSL_REDIRECT = env.bool("AGENTIDP_SECURE_SSL_REDIRECT", default=False)
if env.bool("AGENTIDP_TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.int("AGENTIDP_HSTS_SECONDS", default=0)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("AGENTIDP_SECURE_COOKIES", default=SECURE_SSL_REDIRECT)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Request bodies: one limit for the whole service (the API answers 413 above it).
AGENTIDP_MAX_BODY_SIZE = env.int("AGENTIDP_MAX_BODY_SIZE", default=1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = AGENTIDP_MAX_BODY_SIZE
DATA_UPLOAD_MAX_NUMBER_FIELDS = env.int("AGENTIDP_MAX_FORM_FIELDS", default=1000)

# --- Abuse limits ---------------------------------------------------------------------------
# How many proxies in front of AgentIdP append to X-Forwarded-For: 0 (the default) believes
# REMOTE_ADDR only; N takes the client's address from the N-th entry from the right.
AGENTIDP_TRUSTED_PROXIES = env.int("AGENTIDP_TRUSTED_PROXIES", default=0)
# Fixed windows of this many seconds, counted in the Django cache (shared with CACHE_URL=redis://).
AGENTIDP_RATE_LIMIT_WINDOW_SECONDS = env.int("AGENTIDP_RATE_LIMIT_WINDOW_SECONDS", default=60)
# Per window; 0 turns a limit off. Requests to the token endpoint from one address...
AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = env.int("AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS", default=600)
# ...failed client authentications from one address, and for one clientId (from addresses
# that have not authenticated it lately; those keep being heard).
AGENTIDP_AUTH_FAILURES_PER_ADDRESS = env.int("AGENTIDP_AUTH_FAILURES_PER_ADDRESS", default=30)
AGENTIDP_AUTH_FAILURES_PER_CLIENT = env.int("AGENTIDP_AUTH_FAILURES_PER_CLIENT", default=10)
# ...and for one clientId from an address that authenticated it lately (heard past the others
# until then: whoever shares the address with its agent is held to this many guesses).
AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR = env.int("AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR", default=3)
# ...and failed client authentications in all, however spread over addresses and clientIds.
AGENTIDP_AUTH_FAILURES_TOTAL = env.int("AGENTIDP_AUTH_FAILURES_TOTAL", default=120)
# How long an address that authenticated a clientId stays known to it.
AGENTIDP_KNOWN_ADDRESS_SECONDS = env.int("AGENTIDP_KNOWN_ADDRESS_SECONDS", default=7 * 86400)

# --- Console sign-in --------------------------------------------------------------------------
# Django's ModelBackend behind failure limits (agentidp/console_login.py), in the windows above.
AUTHENTICATION_BACKENDS = ["agentidp.console_login.ConsoleLoginBackend"]
# Per window; 0 turns a limit off. Failed sign-ins for one username (whether or not an account
# holds it), and from one address. An address that signed in as the account within
# AGENTIDP_KNOWN_ADDRESS_SECONDS is always heard.
AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ACCOUNT = env.int("AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ACCOUNT", default=5)
AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS = env.int("AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS", default=20)

# --- Tokens ---------------------------------------------------------------------------------
AGENTIDP_ISSUER = env.str("AGENTIDP_ISSUER", default="http://localhost:8000").rstrip("/")
AGENTIDP_AUDIENCE = env.str("AGENTIDP_AUDIENCE", default="") or AGENTIDP_ISSUER
AGENTIDP_ACCESS_TOKEN_TTL = env.int("AGENTIDP_ACCESS_TOKEN_TTL", default=3600)
# The private key that signs access tokens: a PEM in AGENTIDP_SIGNING_KEY, or a PEM file.
# `python manage.py create_signing_key` makes the file.
AGENTIDP_SIGNING_KEY = env.str("AGENTIDP_SIGNING_KEY", default="")
AGENTIDP_SIGNING_KEY_FILE = env.path("AGENTIDP_SIGNING_KEY_FILE", default=BASE_DIR / "var" / "signing-key.pem")
# PEM files of keys that signed earlier tokens: still published and verifying, never signing.
AGENTIDP_RETIRED_SIGNING_KEY_FILES = env.list("AGENTIDP_RETIRED_SIGNING_KEY_FILES", default=[])

# --- Agents and credentials ---------------------------------------------------------------
AGENTIDP_MAX_ACTIVE_CREDENTIALS = env.int("AGENTIDP_MAX_ACTIVE_CREDENTIALS", default=10)
AGENTIDP_ADMIN_SCOPE = "agentidp:admin"

# --- Secret stores ------------------------------------------------------------------------
# Shaped like Django's STORAGES: each backend by the name the API reports as `storage`, and
# DEFAULT names the one that keeps new secrets. The others keep verifying what they hold.
AGENTIDP_BCRYPT_ROUNDS = env.int("AGENTIDP_BCRYPT_ROUNDS", default=12)
VAULTSTORE = {
    "DEFAULT": "bcrypt",
    "BACKENDS": {
        "bcrypt": {
            "BACKEND": "vaultstore.backends.bcrypt.BcryptSecretBackend",
            "OPTIONS": {"rounds": AGENTIDP_BCRYPT_ROUNDS},
        },
    },
}
# HashiCorp Vault KV v2, on when VAULT_ADDR is set: new secrets go there, bcrypt ones keep working.
# The variable names are Vault's own (VAULT_CACERT, VAULT_SKIP_VERIFY, VAULT_NAMESPACE).
VAULT_ADDR = env.str("VAULT_ADDR", default="")
if VAULT_ADDR:
    VAULTSTORE["DEFAULT"] = "vault"
    VAULTSTORE["BACKENDS"]["vault"] = {
        "BACKEND": "vaultstore.backends.vault.VaultSecretBackend",
        "OPTIONS": {
            "url": VAULT_ADDR,
            "token": env.str("VAULT_TOKEN", default=""),
            # Or a file holding it, kept fresh by Vault Agent's auto-auth; read again whenever Vault refuses the token.
            "token_file": env.str("VAULT_TOKEN_FILE", default=""),
            "mount": env.str("VAULT_MOUNT", default="secret").strip("/"),
            "namespace": env.str("VAULT_NAMESPACE", default=""),
            # A CA bundle to trust, else the system's; VAULT_SKIP_VERIFY=true turns checking off (never in production).
            "verify": env.str("VAULT_CACERT", default="") or not env.bool("VAULT_SKIP_VERIFY", default=False),
            "connect_timeout": env.float("VAULT_CONNECT_TIMEOUT", default=1.0),
            "read_timeout": env.float("VAULT_READ_TIMEOUT", default=3.0),
            # After this many failures in a row, fail fast for breaker_seconds instead of waiting on Vault.
            "breaker_failures": env.int("VAULT_BREAKER_FAILURES", default=3),
            "breaker_seconds": env.float("VAULT_BREAKER_SECONDS", default=5.0),
        },
    }
# Upgrade on use: a credential whose secret is kept by another store than the default (bcrypt,
# once Vault is on) moves there the first time it authenticates, as Django's hashers upgrade
# a password hash at login. After a failed move, moves pause for this many seconds.
AGENTIDP_UPGRADE_ON_USE = env.bool("AGENTIDP_UPGRADE_ON_USE", default=True)
AGENTIDP_UPGRADE_RETRY_SECONDS = env.int("AGENTIDP_UPGRADE_RETRY_SECONDS", default=60)
# How clients authenticate at the token, introspection and revocation endpoints: the
# credentials.clientauth methods, tried in this order (like AUTHENTICATION_BACKENDS).
AGENTIDP_CLIENT_AUTH_METHODS = [
    "credentials.clientauth.methods.ClientSecretBasic",
    "credentials.clientauth.methods.ClientSecretPost",
    "credentials.clientauth.assertion.PrivateKeyJWT",
]

# --- Signed JWTs: key credentials (private_key_jwt) and trust policies (jwt-bearer grant) ----
# The signature algorithms accepted in client assertions and platform tokens: a subset of
# ES256, ES384, RS256, PS256 and EdDSA (never "none", never an HMAC).
AGENTIDP_ASSERTION_ALGORITHMS = env.list(
    "AGENTIDP_ASSERTION_ALGORITHMS", default=["ES256", "ES384", "RS256", "PS256", "EdDSA"]
)
# A client assertion may live at most this long (exp - iat; authlib's clients ask for an hour).
AGENTIDP_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS = env.int("AGENTIDP_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS", default=3600)
# Clock skew allowed between AgentIdP and whoever signed an assertion (exp, nbf, iat).
AGENTIDP_ASSERTION_LEEWAY_SECONDS = env.int("AGENTIDP_ASSERTION_LEEWAY_SECONDS", default=30)
# Longer assertions are refused unread (platform tokens are 1 to 2 KiB).
AGENTIDP_ASSERTION_MAX_BYTES = env.int("AGENTIDP_ASSERTION_MAX_BYTES", default=16384)
# Fetching public keys (jwksUri, an issuer's discovery document): https only, small, quick.
AGENTIDP_KEY_FETCH_TIMEOUT_SECONDS = env.float("AGENTIDP_KEY_FETCH_TIMEOUT_SECONDS", default=3.0)
AGENTIDP_KEY_FETCH_MAX_BYTES = env.int("AGENTIDP_KEY_FETCH_MAX_BYTES", default=131072)
# A CA bundle for key URLs (a cluster's own CA, say), else the system's.
AGENTIDP_KEY_FETCH_CA_BUNDLE = env.str("AGENTIDP_KEY_FETCH_CA_BUNDLE", default="")
# Networks (CIDR) key URLs may reach although private, link-local or loopback; none by default.
AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = env.list("AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS", default=[])
# Development only: plain http to a loopback address (also needs the loopback network allowed above).
AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK = env.bool("AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK", default=False)
# Fetched keys are used this long before they are fetched again.
AGENTIDP_KEY_CACHE_SECONDS = env.int("AGENTIDP_KEY_CACHE_SECONDS", default=300)
# An unknown kid fetches an issuer's keys again at most this often (per process).
AGENTIDP_KEY_REFRESH_MIN_SECONDS = env.int("AGENTIDP_KEY_REFRESH_MIN_SECONDS", default=5)
# While an issuer cannot be reached, its last good keys keep verifying this long after they were fetched.
AGENTIDP_KEY_STALE_SECONDS = env.int("AGENTIDP_KEY_STALE_SECONDS", default=86400)

# --- Metrics ------------------------------------------------------------------------------------
# GET /metrics answers clients from these networks (their address as the rate limits count it)...
AGENTIDP_METRICS_ALLOWED_NETWORKS = env.list("AGENTIDP_METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
# ...presenting this bearer token, if it is set.
AGENTIDP_METRICS_TOKEN = env.str("AGENTIDP_METRICS_TOKEN", default="")

# --- Leaked secrets -------------------------------------------------------------------------
# GitHub's secret-scanning partner call: GitHub's public keys, as its
# https://api.github.com/meta/public_keys/secret_scanning document (JSON), inline or in a file.
AGENTIDP_GITHUB_SECRET_SCANNING_KEYS = env.str("AGENTIDP_GITHUB_SECRET_SCANNING_KEYS", default="")
AGENTIDP_GITHUB_SECRET_SCANNING_KEYS_FILE = env.str("AGENTIDP_GITHUB_SECRET_SCANNING_KEYS_FILE", default="")
# A GitHub organisation's or repository's webhook for secret-scanning alerts: its secret (HMAC),
# and a token that may read the alerts' secrets (GET .../secret-scanning/alerts/{number}).
AGENTIDP_GITHUB_WEBHOOK_SECRET = env.str("AGENTIDP_GITHUB_WEBHOOK_SECRET", default="")
AGENTIDP_GITHUB_API_TOKEN = env.str("AGENTIDP_GITHUB_API_TOKEN", default="")
AGENTIDP_GITHUB_API_URL = env.str("AGENTIDP_GITHUB_API_URL", default="https://api.github.com").rstrip("/")
# GitLab's token revocation API: the pre-shared token GitLab sends in Authorization.
AGENTIDP_GITLAB_REVOCATION_TOKEN = env.str("AGENTIDP_GITLAB_REVOCATION_TOKEN", default="")
# How long a processed signed report is remembered (by the digest of its body): the same one again is refused.
AGENTIDP_LEAK_REPLAY_SECONDS = env.int("AGENTIDP_LEAK_REPLAY_SECONDS", default=7 * 86400)
# Self-reports (POST /api/v1/leaks) per address per window (AGENTIDP_RATE_LIMIT_WINDOW_SECONDS).
AGENTIDP_LEAK_REPORTS_PER_ADDRESS = env.int("AGENTIDP_LEAK_REPORTS_PER_ADDRESS", default=10)
# The agents' owners hear of a quarantined credential here: a signed JSON POST, retried until it answers 2xx.
AGENTIDP_NOTIFY_WEBHOOK_URL = env.str("AGENTIDP_NOTIFY_WEBHOOK_URL", default="")
AGENTIDP_NOTIFY_WEBHOOK_SECRET = env.str("AGENTIDP_NOTIFY_WEBHOOK_SECRET", default="")
AGENTIDP_NOTIFY_WEBHOOK_TIMEOUT_SECONDS = env.float("AGENTIDP_NOTIFY_WEBHOOK_TIMEOUT_SECONDS", default=5.0)

# --- Cache ------------------------------------------------------------------------------------
# Local memory by default (one per process); Redis for several processes: CACHE_URL=redis://host:6379/0.
# It holds the verified-secret digests and the upgrade-on-use pause.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://agentidp")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # The same backend, with one Redis client per connection pool rather than one per call (agentidp/cache.py).
    CACHES["default"]["BACKEND"] = "agentidp.cache.RedisCache"
# How long a secret a store verified is taken as verified without asking the store again
# (credentials/verified.py). Rotation, deletion, expiry and suspension still act at once. 0: off.
AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = env.int("AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS", default=300)
# How many credentials (with their agents) each process keeps, as read by clientId, for as long
# as PostgreSQL's change token says nothing changed (credentials/rows.py). 0: every lookup reads.
AGENTIDP_KEPT_CREDENTIAL_ROWS = env.int("AGENTIDP_KEPT_CREDENTIAL_ROWS", default=4096)

# --- REST framework and OpenAPI -------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "oauth.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["oauth.permissions.IsAgentIdPAdmin"],
    "DEFAULT_PARSER_CLASSES": ["agentidp.parsers.JSONParser"],
    # JSON only: responses that carry a secret must not depend on a renderer that can fail.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "agentidp.negotiation.ContentNegotiation",
    "DEFAULT_METADATA_CLASS": "agentidp.negotiation.Metadata",
    "DEFAULT_PAGINATION_CLASS": "credentials.api.base.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "agentidp.api.exception_handler",
    "NON_FIELD_ERRORS_KEY": "nonFieldErrors",
    "DATETIME_FORMAT": "%Y-%m-%dT%H:%M:%SZ",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "AgentIdP management API",
    "DESCRIPTION": (
        "Register AI agents and manage their OAuth 2.0 client credentials. "
        "Authenticate with a bearer access token holding the `agentidp:admin` scope, "
        "obtained from `POST /api/v1/token` (client credentials grant)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "PREPROCESSING_HOOKS": ["agentidp.schema.strip_optional_trailing_slash"],
    "ENUM_NAME_OVERRIDES": {
        "AgentStatusEnum": ["active", "suspended"],
        "CredentialStatusEnum": ["active", "expired"],
    },
}

# --- Logging --------------------------------------------------------------------------------
# Log lines carry ids and paths only; secrets, hashes and tokens never reach a logger.
# LOG_FORMAT=json writes one JSON object per record, with the structured fields of each
# client authentication under "auth"; plain text escapes control characters.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT is 'plain' or 'json'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "agentidp.logformat.EscapingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
        },
    },
    # Secrets sent in a URL (refused, but a request line would repeat them) are redacted first.
    "filters": {"secret_parameters": {"()": "agentidp.logformat.SecretParameterFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["secret_parameters"]}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # The development server's request lines, in the same format and through the same filter.
    "loggers": {"django.server": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
