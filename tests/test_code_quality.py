"""
The code's structure and style, checked with the suite so that CI keeps them:

- the layer contract in pyproject.toml (import-linter): agentidp, then oauth, then
  credentials, then vaultstore, and oauth never importing vaultstore itself;
- ruff's lint rules (pyproject.toml, imports sorted included) and `ruff format --check`.

Each runs the tool as a developer would from the project's root, and fails with its output.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the linters read: the product, its tests, the benchmark and the two scripts.
SOURCES = ["agentidp", "credentials", "oauth", "vaultstore", "tests", "bench", "dev.py", "manage.py"]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_layers_run_one_way():
    result = run(
        "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_layer_contract_catches_an_upward_import(tmp_path):
    """
    The contracts are not vacuous: a credentials module importing oauth breaks one, and so
    does the resource-server kit importing AgentIdP's settings.
    """
    for package in ("agentidp", "agentidp/resource_server", "oauth", "credentials", "vaultstore"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "oauth" / "tokens.py").write_text("")
    (tmp_path / "credentials" / "upward.py").write_text("from oauth import tokens\n")
    (tmp_path / "oauth" / "stores.py").write_text("import vaultstore\n")
    (tmp_path / "agentidp" / "settings.py").write_text("")
    (tmp_path / "agentidp" / "resource_server" / "kit.py").write_text("from agentidp import settings\n")
    contracts = (ROOT / "pyproject.toml").read_text().partition("[tool.importlinter]")[2]
    (tmp_path / "pyproject.toml").write_text("[tool.importlinter]" + contracts)
    result = run(
        "-c",
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, ".")
            from importlinter.cli import lint_imports_command
            sys.exit(lint_imports_command())
            """
        ),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "0 kept, 3 broken" in result.stdout
    assert "credentials.upward -> oauth.tokens" in result.stdout
    assert "oauth.stores -> vaultstore" in result.stdout
    assert "agentidp.resource_server.kit -> agentidp.settings" in result.stdout


@pytest.mark.parametrize(
    "command",
    [["check", "--no-cache"], ["format", "--check", "--no-cache"]],
    ids=["lint", "format"],
)
def test_ruff_finds_nothing(command):
    result = run("-m", "ruff", *command, *SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr
