"""
gunicorn's configuration for AgentIdP in production: `agentidp-server` (agentidp/server.py)
runs gunicorn with it, and docs/devops/deployment.md describes it.

Read from the environment (every one optional):

    AGENTIDP_BIND              127.0.0.1:8000   where to listen (host:port, or unix:/path)
    AGENTIDP_WORKERS           the CPU count    sync worker processes
    AGENTIDP_WORKER_TIMEOUT    30               seconds a request may take before its worker is replaced
    AGENTIDP_FORWARDED_ALLOW_IPS 127.0.0.1      proxies whose X-Forwarded-Proto gunicorn believes
    AGENTIDP_ACCESS_LOG        -                where the JSON access log goes ("-": standard output), "" for none

The access log is one JSON object per request with the method, the path without its query
string, the status, the size, the duration and the client's address: never the query string
(a client may put a secret there, which AgentIdP refuses, but the log must not keep it), and
no request header but the User-Agent (an Authorization header is never logged).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import tempfile

from gunicorn.glogging import Logger

bind = [os.environ.get("AGENTIDP_BIND", "127.0.0.1:8000")]
# The token endpoint's work is CPU (bcrypt, signatures) with short waits on the database and
# Redis: one sync worker per core keeps latency predictable; more only queue behind each other.
workers = int(os.environ.get("AGENTIDP_WORKERS") or max(2, multiprocessing.cpu_count()))
worker_class = "sync"
timeout = int(os.environ.get("AGENTIDP_WORKER_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
# Load the application (and its signing key) once, before forking: a missing key stops the start.
preload_app = True
# Workers are replaced now and then, so that no slow leak can grow for ever.
max_requests = 20_000
max_requests_jitter = 2_000
# An access token may be up to 32 KiB (oauth/tokens.py MAX_TOKEN_LENGTH): gunicorn's default
# header limit (8190 bytes) would refuse the Authorization header that carries a large one.
limit_request_field_size = 40_960
forwarded_allow_ips = os.environ.get("AGENTIDP_FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = os.environ.get("AGENTIDP_ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = "agentidp"


# Prometheus metrics in multi-process mode: every worker writes its own files in one directory,
# which /metrics reads (agentidp/metrics.py). Made empty here, before the workers fork.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="agentidp-metrics-")
else:
    for name in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]):
        if name.endswith(".db"):
            os.remove(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], name))


def child_exit(server, worker):
    """A worker that ended leaves its gauges' files behind: mark them dead (prometheus_client's rule)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class JsonAccessLogger(Logger):
    """gunicorn's logger, with one JSON object per request as its access log (and nothing of the query or headers)."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        record = {
            "time": datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": "http_request",
            "method": environ.get("REQUEST_METHOD", ""),
            "path": environ.get("PATH_INFO", ""),
            "status": int(status) if str(status).isdigit() else str(status),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "address": environ.get("REMOTE_ADDR", ""),
            "user_agent": environ.get("HTTP_USER_AGENT", "")[:256],
        }
        try:
            self.access_log.info(json.dumps(record, ensure_ascii=True))
        except Exception:
            self.exception("access log failed")


logger_class = JsonAccessLogger
