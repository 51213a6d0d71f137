"""AgentIdP's own settings, with the counting middleware outermost (bench/counting/middleware.py)."""

from agentidp.settings import *  # noqa: F403

MIDDLEWARE = ["bench.counting.middleware.CountingMiddleware", *MIDDLEWARE]  # noqa: F405
