#!/usr/bin/env python3
"""
Set up AgentIdP on this machine and run it, or its tests. Needs only Python 3.11+.

    python3 dev.py serve [ADDRPORT]   # demo server on SQLite, prints the admin agent's credentials
    python3 dev.py test [PYTEST ARGS] # the whole test suite (SQLite, or DATABASE_URL if set)

Both create ./.venv and install the project into it when pyproject.toml has changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("AGENTIDP_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".agentidp-installed"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(*args: object, env: dict[str, str] | None = None) -> None:
    result = subprocess.run([str(arg) for arg in args], cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit("AgentIdP needs Python 3.11 or newer.")
    if not PYTHON.exists():
        say(f"Creating a virtual environment in {VENV}")
        try:
            venv.create(VENV, with_pip=True)
        except Exception as exc:  # ensurepip missing, typically (Debian: apt install python3-venv)
            sys.exit(f"Could not create {VENV}: {exc}. On Debian or Ubuntu: apt install python3-venv")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        say("Installing AgentIdP and its dependencies")
        run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(PYTHON, "-m", "pip", "install", "--quiet", "--editable", ".[test]")
        STAMP.write_text(wanted)


def serve(args: list[str]) -> None:
    env = dict(os.environ)
    env.setdefault("DEBUG", "true")
    env.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")
    addrport = args[0] if args else "127.0.0.1:8000"
    (ROOT / "var").mkdir(exist_ok=True)  # the SQLite database and the signing key live here
    say("Preparing the signing key and the database")
    run(PYTHON, "manage.py", "create_signing_key", "--exist-ok", env=env)
    run(PYTHON, "manage.py", "migrate", "--noinput", "--verbosity", "0", env=env)
    say("Demo admin agent (scope agentidp:admin); its earlier demo credentials are replaced")
    run(PYTHON, "manage.py", "bootstrap_admin", "--replace", env=env)
    say(f"AgentIdP on http://{addrport}/  (API docs: /api/v1/docs/, Ctrl-C stops it)")
    run(PYTHON, "manage.py", "runserver", addrport, env=env)


def test(args: list[str]) -> None:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # pyproject.toml names tests.settings
    target = env.get("DATABASE_URL", "SQLite")
    say(f"Running the test suite on {target.split('@')[-1]}")
    run(PYTHON, "-m", "pytest", *args, env=env)


def main() -> None:
    commands = {"serve": serve, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    ensure_environment()
    commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
