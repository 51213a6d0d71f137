"""
AgentIdP's own settings plus what the benchmark needs to measure them.

- ROOT_URLCONF adds the ceiling view (bench/urls.py) beside every AgentIdP URL.
- QueryCountMiddleware (bench/middleware.py), outermost, reports each request's SQL
  queries, its bcrypt verifications and the worker that served it in response headers.

Everything else (database, Vault, bcrypt rounds, logging) comes from the environment,
exactly as in production; bench/harness.py sets it.
"""

from agentidp.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
MIDDLEWARE = ["bench.middleware.QueryCountMiddleware", *MIDDLEWARE]  # noqa: F405
