"""
`agentidp-server`: serve AgentIdP under gunicorn, configured as docs/devops/deployment.md says
(agentidp/gunicorn_conf.py). Extra arguments go to gunicorn (`agentidp-server --bind 0.0.0.0:8000`).
Needs the `server` extra: `pip install 'agentidp[server]'`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    try:
        from gunicorn.app.wsgiapp import run
    except ImportError:
        sys.exit("agentidp-server needs gunicorn: pip install 'agentidp[server]'")
    sys.argv = [
        "agentidp-server",
        "--config",
        "python:agentidp.gunicorn_conf",
        *(sys.argv[1:] if argv is None else argv),
        "agentidp.wsgi:application",
    ]
    run()


if __name__ == "__main__":
    main()
