"""python manage.py create_signing_key."""

import stat
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from oauth.keys import load_signing_key


def run(*args: str) -> str:
    out = StringIO()
    call_command("create_signing_key", *args, stdout=out)
    return out.getvalue()


def test_writes_an_es256_pem_by_default_with_mode_0600_at_the_given_path(tmp_path):
    path = tmp_path / "signing-key.pem"

    output = run("--path", str(path))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_signing_key(path.read_bytes())
    assert key.algorithm == "ES256"
    assert key.kid in output
    assert "PRIVATE KEY" not in output


def test_rs256_makes_an_rsa_key_that_load_signing_key_accepts(tmp_path):
    path = tmp_path / "rsa.pem"

    run("--path", str(path), "--algorithm", "RS256")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(path.read_bytes()).algorithm == "RS256"


def test_writes_to_the_configured_key_file_and_creates_its_directory(tmp_path):
    path = tmp_path / "var" / "keys" / "signing-key.pem"

    with override_settings(AGENTIDP_SIGNING_KEY_FILE=path):
        run("--algorithm", "ES256")

    assert load_signing_key(path.read_bytes()).algorithm == "ES256"


def test_refuses_to_overwrite_an_existing_key(tmp_path):
    path = tmp_path / "signing-key.pem"
    path.write_bytes(b"the existing key")

    with pytest.raises(CommandError, match="exists"):
        run("--path", str(path), "--algorithm", "ES256")

    assert path.read_bytes() == b"the existing key"


def test_exist_ok_succeeds_quietly_without_touching_the_existing_key(tmp_path):
    path = tmp_path / "signing-key.pem"
    path.write_bytes(b"the existing key")

    output = run("--path", str(path), "--algorithm", "ES256", "--exist-ok")

    assert output == ""
    assert path.read_bytes() == b"the existing key"


def test_unknown_algorithm_is_refused(tmp_path):
    path = tmp_path / "signing-key.pem"

    with pytest.raises(CommandError):
        run("--path", str(path), "--algorithm", "HS256")

    assert not path.exists()
