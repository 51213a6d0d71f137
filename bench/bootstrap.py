"""
Run a benchmark's entry script from the project's environment: ./.venv, up to date as dev.py
judges it, with the `bench` extra (gunicorn, psutil). Standard library and dev.py only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

#: Set when an entry script re-runs itself from the project's environment, so that it never loops.
REEXEC_MARK = "AGENTIDP_BENCH_REEXEC"


def in_project_environment() -> bool:
    """Whether this is the project's virtual environment, up to date (as dev.py judges) and with the bench extra."""
    import dev

    if Path(sys.prefix).resolve() != dev.VENV.resolve():
        return False
    if not dev.STAMP.exists() or dev.STAMP.read_text().strip() != sha256(dev.ROOT / "pyproject.toml"):
        return False
    try:
        import gunicorn  # noqa: F401
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def enter_project_environment(script: str) -> None:
    """Create or update ./.venv as dev.py does, add the bench extra, and run `script` again from it."""
    import dev

    if os.environ.get(REEXEC_MARK):
        sys.exit(f"bench: {sys.executable} is still not a usable project environment; try: rm -rf {dev.VENV}")
    dev.ensure_environment()
    check = subprocess.run([str(dev.PYTHON), "-c", "import gunicorn, psutil"], capture_output=True)
    if check.returncode != 0:
        dev.say("Installing the bench extra (gunicorn, psutil)")
        dev.run(dev.PYTHON, "-m", "pip", "install", "--quiet", "--editable", ".[test,bench]")
    os.environ[REEXEC_MARK] = "1"
    # The same script with the same arguments, from the project's interpreter; no shell is involved.
    os.execv(dev.PYTHON, [str(dev.PYTHON), str(Path(script).resolve()), *sys.argv[1:]])  # noqa: S606
