"""
`manage.py migrate_to_vault`: the report, the checks before anything changes, and
`--rotate --output FILE`, which moves the remaining bcrypt credentials into Vault with new
secrets written to FILE, and finishes an interrupted run (kill -9 included) when rerun
with the same FILE.

The bcrypt credentials are made with the suite's bcrypt-only settings before Vault is
switched on, as on an installation that predates VAULT_ADDR. Moves on use are off in this
module (checking that an old secret still works would otherwise move its credential),
except where the two meet. The kill -9 tests run the command in separate processes
against their own SQLite database and the same Vault, through tests/credentials/killpoint.py.
"""

import contextlib
import datetime
import json
import os
import signal
import stat
import subprocess
import sys
import types
import uuid
from io import StringIO
from pathlib import Path
from unittest import mock

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone

from credentials import services
from credentials.clientauth.secret import UPGRADE_PAUSED_CACHE_KEY
from credentials.migration import SecretsFile
from credentials.models import AuditEvent, Credential, GraceSecret, SecretPurge
from credentials.services import grace_secrets_expire
from oauth.keys import generate_signing_key_pem
from tests.conftest import assert_logs_keep
from tests.credentials.helpers import authenticates, end_grace_periods, events, expire, reason
from tests.factories import AgentFactory, make_credential, wrong_secret

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KILLPOINT = Path(__file__).with_name("killpoint.py")
LINE_KEYS = {"agentId", "credentialId", "clientId", "clientSecret"}
ACTOR_LABEL = "manage.py migrate_to_vault"


@pytest.fixture(autouse=True)
def _no_moves_on_use(settings):
    settings.AGENTIDP_UPGRADE_ON_USE = False
    cache.delete(UPGRADE_PAUSED_CACHE_KEY)
    yield
    cache.delete(UPGRADE_PAUSED_CACHE_KEY)


# --- helpers --------------------------------------------------------------------------------


def migrate(*args) -> tuple[str, str]:
    """Run the command; return its stdout and stderr."""
    out, err = StringIO(), StringIO()
    call_command("migrate_to_vault", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def migrate_fails(*args) -> types.SimpleNamespace:
    """Run the command, which must fail (a CommandError: exit status 1 from manage.py)."""
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("migrate_to_vault", *args, stdout=out, stderr=err)
    return types.SimpleNamespace(message=str(excinfo.value), out=out.getvalue(), err=err.getvalue())


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def row(issued) -> Credential:
    return Credential.objects.get(pk=issued.credential.pk)


def path_for(vault, credential) -> str:
    return f"{vault.mount}/data/agentidp/agents/{credential.agent_id}/credentials/{credential.id}"


@pytest.fixture
def estate(db, vault, settings):
    """
    Two agents whose credentials predate Vault: three bcrypt ones, one of them expired
    besides; then Vault is switched on and one credential is issued there.
    """
    first, second = AgentFactory(), AgentFactory()
    bcrypt = [make_credential(first), make_credential(first), make_credential(second)]
    expired = make_credential(second)
    expire(expired.credential)
    settings.VAULTSTORE = vault.vaultstore_setting()
    in_vault = make_credential(second)
    assert in_vault.credential.storage == "vault"
    by_pk = sorted(bcrypt, key=lambda issued: issued.credential.pk)  # the order the command takes them in
    return types.SimpleNamespace(
        vault=vault, first=first, second=second, bcrypt=by_pk, expired=expired, in_vault=in_vault
    )


@pytest.fixture
def output(tmp_path) -> Path:
    return tmp_path / "new-secrets.jsonl"


def secret_in(lines: list[dict], issued) -> str:
    [secret] = [line["clientSecret"] for line in lines if line["credentialId"] == str(issued.credential.id)]
    return secret


# --- checks before anything changes -----------------------------------------------------------


def test_without_vault_the_command_refuses_and_names_vault_addr(db, issued, output):
    for args in ((), ("--rotate", "--output", str(output))):
        failed = migrate_fails(*args)

        assert "VAULT_ADDR" in failed.message
        assert "Nothing was changed" in failed.message
    assert not output.exists()
    assert row(issued).storage == "bcrypt"


def test_without_vault_addr_manage_py_exits_non_zero_and_says_why(tmp_path):
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "agentidp.settings",
        "SECRET_KEY": "migrate-to-vault-tests",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "AGENTIDP_SIGNING_KEY": generate_signing_key_pem("RS256").decode(),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate_to_vault", "--rotate", "--output", str(tmp_path / "out.jsonl")],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "VAULT_ADDR" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_report_counts_the_credentials_on_each_store(estate):
    out, _ = migrate()

    assert "1 credentials on vault, 4 on bcrypt (1 of them expired)." in out
    assert "--rotate --output FILE" in out
    assert all(row(issued).storage == "bcrypt" for issued in estate.bcrypt)


def test_report_for_one_agent_counts_only_its_credentials(estate):
    out, _ = migrate("--agent", str(estate.first.id))
    assert "0 credentials on vault, 2 on bcrypt (0 of them expired)." in out

    out, _ = migrate("--agent", str(estate.second.id))
    assert "1 credentials on vault, 2 on bcrypt (1 of them expired)." in out


def test_report_once_everything_is_on_vault_says_so(db, vault_enabled):
    make_credential(AgentFactory())

    out, _ = migrate()

    assert out.strip() == "1 credentials on vault, 0 on bcrypt (0 of them expired)."


@pytest.mark.parametrize("agent_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_agent_id_is_refused(estate, output, agent_id):
    failed = migrate_fails("--rotate", "--output", str(output), "--agent", agent_id)

    assert agent_id in failed.message
    assert not output.exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--rotate"], "--rotate needs --output"),
        (["--rotate", "--output", "{output}", "--grace-period", "-1"], "--grace-period"),
        (["--rotate", "--output", "{output}", "--grace-period", "86401"], "--grace-period"),
        (["--output", "{output}"], "go with --rotate"),
        (["--grace-period", "60"], "go with --rotate"),
        (["--rotate", "--output", "{output}", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options_are_refused_before_anything_changes(estate, output, args, says):
    failed = migrate_fails(*[arg.format(output=output) for arg in args])

    assert says in failed.message
    assert not output.exists()
    assert all(row(issued).storage == "bcrypt" for issued in estate.bcrypt)
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)


@pytest.mark.parametrize("outage", ["down", "sealed"])
def test_rotate_refuses_to_start_while_vault_is_not_ready(estate, output, outage):
    estate.vault.require_server().fail(outage)

    failed = migrate_fails("--rotate", "--output", str(output))

    assert "Vault is not ready" in failed.message
    assert not output.exists()
    assert all(row(issued).storage == "bcrypt" for issued in estate.bcrypt)


def test_dry_run_changes_nothing_and_creates_no_file(estate, output):
    before = list(Credential.objects.order_by("pk").values_list("pk", *Credential.LOCATION_FIELDS, "rotated_at"))

    out, _ = migrate("--rotate", "--output", str(output), "--dry-run", "--grace-period", "60", "-v", "2")

    assert "Dry run: would move 3 credentials to Vault (0 with the secret already in the file)" in out
    assert f"creating {output}" in out
    assert "1 expired stay on bcrypt" in out
    for issued in estate.bcrypt:
        assert f"would rotate {issued.credential.client_id}" in out
    assert not output.exists()
    assert (
        list(Credential.objects.order_by("pk").values_list("pk", *Credential.LOCATION_FIELDS, "rotated_at")) == before
    )
    assert not events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert estate.vault.keys_of_agent(estate.first.id) == []


# --- a complete run ---------------------------------------------------------------------------


def test_rotate_moves_every_bcrypt_credential_into_vault_and_writes_its_new_secret(
    estate, output, token_response, caplog
):
    vault = estate.vault
    old_umask = os.umask(0)  # the file is 0600 whatever the umask allows
    try:
        out, err = migrate("--rotate", "--output", str(output))
    finally:
        os.umask(old_umask)

    assert mode_of(output) == 0o600
    assert stat.S_ISREG(output.lstat().st_mode)
    lines = lines_of(output)
    assert all(set(line) == LINE_KEYS for line in lines)
    assert [line["credentialId"] for line in lines] == [str(issued.credential.id) for issued in estate.bcrypt]
    for issued in estate.bcrypt:
        credential = row(issued)
        secret = secret_in(lines, issued)
        line = next(line for line in lines if line["credentialId"] == str(credential.id))
        assert (line["agentId"], line["clientId"]) == (str(credential.agent_id), credential.client_id)
        assert (credential.storage, credential.secret_hash, credential.vault_version) == ("vault", "", 1)
        assert credential.vault_path == path_for(vault, credential)
        assert vault.read(credential.vault_path, 1) == {"clientSecret": secret}
        assert secret != issued.client_secret
        assert token_response(credential.client_id, secret).status_code == 200
        assert token_response(credential.client_id, issued.client_secret).status_code == 401
    assert not GraceSecret.objects.exists()
    # The expired credential stays where it is, and the one already on Vault is not touched.
    assert row(estate.expired).storage == "bcrypt"
    assert row(estate.expired).secret_hash.startswith("$2")
    untouched = row(estate.in_vault)
    assert (untouched.vault_version, untouched.rotated_at) == (1, None)
    assert vault.metadata(untouched.vault_path)["current_version"] == 1
    assert authenticates(untouched.client_id, estate.in_vault.client_secret)
    # One audit event per rotation, by the command.
    rotated = events(AuditEvent.Action.CREDENTIAL_ROTATED)
    assert sorted(event.credential_id for event in rotated) == sorted(i.credential.id for i in estate.bcrypt)
    for event in rotated:
        assert (event.actor_type, event.actor_label) == (AuditEvent.ActorType.SYSTEM, ACTOR_LABEL)
        assert event.details == {"kind": "secret", "gracePeriodSeconds": 0, "from": "bcrypt", "to": "vault"}
    assert out.strip().splitlines()[-1] == (
        "Moved 3 credentials to Vault (0 finished from an earlier run), 0 skipped (moved or deleted meanwhile), "
        f"0 failed; 1 expired stay on bcrypt. New secrets: {output}."
    )
    # The secrets are in the file and nowhere else.
    assert_logs_keep(caplog, *(line["clientSecret"] for line in lines))
    assert not any(line["clientSecret"] in out + err for line in lines)


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_is_drawn_on_a_terminal_only(estate, output, terminal):
    out, err = StringIO(), Terminal() if terminal else StringIO()

    call_command("migrate_to_vault", "--rotate", "--output", str(output), stdout=out, stderr=err)

    moved = len(lines_of(output))
    assert moved >= 2
    if terminal:
        assert f"\rMoving to Vault [{'#' * 30}] {moved}/{moved}" in err.getvalue()
    else:
        assert "Moving to Vault" not in err.getvalue()
    assert out.getvalue().startswith(f"Moved {moved} credentials to Vault")


def test_a_second_run_moves_nothing_and_appends_nothing(estate, output):
    migrate("--rotate", "--output", str(output))
    content = output.read_bytes()
    versions = [row(issued).vault_version for issued in estate.bcrypt]

    out, _ = migrate("--rotate", "--output", str(output))

    assert "Moved 0 credentials to Vault (0 finished from an earlier run)" in out
    assert output.read_bytes() == content
    assert mode_of(output) == 0o600
    assert [row(issued).vault_version for issued in estate.bcrypt] == versions
    assert len(events(AuditEvent.Action.CREDENTIAL_ROTATED)) == 3
    lines = lines_of(output)
    assert all(authenticates(issued.credential.client_id, secret_in(lines, issued)) for issued in estate.bcrypt)


def test_with_a_grace_period_the_old_secrets_work_until_it_ends_and_then_their_hashes_go(estate, output):
    migrate("--rotate", "--output", str(output), "--grace-period", "600")

    lines = lines_of(output)
    for issued in estate.bcrypt:
        assert row(issued).storage == "vault"
        assert authenticates(issued.credential.client_id, issued.client_secret)
        assert authenticates(issued.credential.client_id, secret_in(lines, issued))
        grace = GraceSecret.objects.get(credential_id=issued.credential.id)
        assert (grace.storage, grace.vault_path) == ("bcrypt", None)
        assert grace.secret_hash.startswith("$2")
    assert {event.details["gracePeriodSeconds"] for event in events(AuditEvent.Action.CREDENTIAL_ROTATED)} == {600}

    for issued in estate.bcrypt:
        end_grace_periods(issued.credential)
    assert grace_secrets_expire() == 3

    assert not GraceSecret.objects.exists()
    for issued in estate.bcrypt:
        assert reason(issued.credential.client_id, issued.client_secret) == "wrong_secret"
        assert authenticates(issued.credential.client_id, secret_in(lines, issued))
    # The only bcrypt hash left in the database is the expired credential's.
    assert list(Credential.objects.exclude(secret_hash="").values_list("pk", flat=True)) == [
        estate.expired.credential.pk
    ]


def test_rotate_for_one_agent_moves_only_its_credentials(estate, output):
    out, _ = migrate("--rotate", "--output", str(output), "--agent", str(estate.first.id))

    assert "Moved 2 credentials to Vault" in out
    assert {line["agentId"] for line in lines_of(output)} == {str(estate.first.id)}
    assert len(lines_of(output)) == 2
    for issued in estate.bcrypt:
        assert row(issued).storage == ("vault" if issued.credential.agent_id == estate.first.id else "bcrypt")


def test_batch_size_one_moves_them_all(estate, output):
    out, _ = migrate("--rotate", "--output", str(output), "--batch-size", "1")

    assert "Moved 3 credentials to Vault" in out
    lines = lines_of(output)
    assert len(lines) == 3
    assert all(row(issued).storage == "vault" for issued in estate.bcrypt)
    assert all(authenticates(issued.credential.client_id, secret_in(lines, issued)) for issued in estate.bcrypt)


def test_a_credential_the_service_refuses_is_counted_failed_and_the_others_move(estate, output):
    # Nine previous secrets in their grace period: a rotation with a grace period is refused (409).
    crowded = estate.bcrypt[0]
    for _ in range(services.MAX_GRACE_SECRETS):
        GraceSecret.objects.create(
            credential=crowded.credential,
            storage="bcrypt",
            secret_hash=row(crowded).secret_hash,
            valid_until=timezone.now() + datetime.timedelta(hours=1),
        )

    failed = migrate_fails("--rotate", "--output", str(output), "--grace-period", "60")

    assert "Moved 2 credentials to Vault" in failed.message
    assert "1 failed" in failed.message
    assert "Run the same command again to retry the failed ones." in failed.message
    assert crowded.credential.client_id in failed.err
    assert row(crowded).storage == "bcrypt"
    assert authenticates(crowded.credential.client_id, crowded.client_secret)
    assert str(crowded.credential.id) not in output.read_text()
    assert [row(issued).storage for issued in estate.bcrypt[1:]] == ["vault", "vault"]


# --- the --output file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, mode",
    [
        (b"", 0o644),
        (b"agent-a,client-a,secret-a\n", 0o600),
        (b'{"clientId": "x", "clientSecret": "y"}\n', 0o600),
        (None, 0o640),  # a line of ours, but the file is readable by others
    ],
)
def test_an_existing_file_not_written_by_the_command_is_refused_and_left_untouched(estate, output, content, mode):
    if content is None:
        line = {"agentId": str(uuid.uuid4()), "credentialId": str(uuid.uuid4()), "clientId": "c", "clientSecret": "s"}
        content = (json.dumps(line) + "\n").encode()
    output.write_bytes(content)
    output.chmod(mode)

    failed = migrate_fails("--rotate", "--output", str(output))

    assert str(output) in failed.message
    assert "nothing was changed" in failed.message
    assert output.read_bytes() == content
    assert mode_of(output) == mode
    assert all(row(issued).storage == "bcrypt" for issued in estate.bcrypt)
    assert estate.vault.keys_of_agent(estate.first.id) == []


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_at_the_output_path_is_refused(estate, output, tmp_path, target_exists):
    target = tmp_path / "elsewhere.jsonl"
    if target_exists:
        target.write_bytes(b"")
        target.chmod(0o600)
    output.symlink_to(target)

    failed = migrate_fails("--rotate", "--output", str(output))

    assert str(output) in failed.message
    assert output.is_symlink()
    if target_exists:
        assert target.read_bytes() == b""
    else:
        assert not target.exists()
    assert all(row(issued).storage == "bcrypt" for issued in estate.bcrypt)


def test_a_directory_at_the_output_path_is_refused(estate, output):
    output.mkdir()

    failed = migrate_fails("--rotate", "--output", str(output))

    assert str(output) in failed.message
    assert all(row(issued).storage == "bcrypt" for issued in estate.bcrypt)


# --- Vault failing during a run -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["503", "500", "down"])
def test_vault_failing_mid_run_stops_it_and_a_rerun_with_the_same_file_finishes(
    estate, output, fault, django_capture_on_commit_callbacks
):
    server = estate.vault.require_server()
    first, second, third = estate.bcrypt
    if fault == "down":
        real_record = SecretsFile.record

        def record_then_lose_vault(self, issued):
            real_record(self, issued)
            server.go_down()

        patch = mock.patch.object(SecretsFile, "record", record_then_lose_vault)
    else:
        server.inject("status", status=int(fault), path=f"/credentials/{second.credential.id}", method="POST")
        patch = contextlib.nullcontext()

    with patch:
        failed = migrate_fails("--rotate", "--output", str(output))

    assert "Moved 1 credentials to Vault" in failed.message
    assert "1 failed" in failed.message
    assert "Stopped: Vault stopped answering. Run the same command again to finish." in failed.message
    assert second.credential.client_id in failed.err
    assert [line["credentialId"] for line in lines_of(output)] == [str(first.credential.id)]
    assert [row(issued).storage for issued in estate.bcrypt] == ["vault", "bcrypt", "bcrypt"]
    server.recover()
    for issued in (second, third):
        assert authenticates(issued.credential.client_id, issued.client_secret)
    assert estate.vault.metadata(path_for(estate.vault, second.credential)) is None
    # A write Vault may still apply (a 500) is queued for destruction once more.
    assert SecretPurge.objects.filter(reason="rotate_failed").count() == (1 if fault == "500" else 0)

    out, _ = migrate("--rotate", "--output", str(output))

    assert "Moved 2 credentials to Vault (0 finished from an earlier run)" in out
    lines = lines_of(output)
    assert [line["credentialId"] for line in lines] == [str(issued.credential.id) for issued in estate.bcrypt]
    for issued in estate.bcrypt:
        assert row(issued).storage == "vault"
        assert authenticates(issued.credential.client_id, secret_in(lines, issued))
        assert reason(issued.credential.client_id, issued.client_secret) == "wrong_secret"
    # The queued destruction spares the location that the credential trusts now.
    with django_capture_on_commit_callbacks(execute=True):
        call_command("purge_secrets", stdout=StringIO(), stderr=StringIO())
    assert not SecretPurge.objects.exists()
    assert all(authenticates(issued.credential.client_id, secret_in(lines, issued)) for issued in estate.bcrypt)


# --- interruptions in the process -------------------------------------------------------------------


def interrupt_after_recording(target):
    """Patch SecretsFile.record to write the target's line, then stop the run as Ctrl-C would."""
    real_record = SecretsFile.record

    def record(self, issued):
        real_record(self, issued)
        if issued.credential.id == target.credential.id:
            raise KeyboardInterrupt

    return mock.patch.object(SecretsFile, "record", record)


def test_a_run_interrupted_after_writing_a_line_is_finished_with_the_same_secret(estate, output, token_response):
    vault = estate.vault
    first, second, _third = estate.bcrypt

    with interrupt_after_recording(second), pytest.raises(KeyboardInterrupt):
        migrate("--rotate", "--output", str(output))

    # The second line is on record, but its rotation never committed: the old secret still works.
    lines = lines_of(output)
    assert [line["credentialId"] for line in lines] == [str(first.credential.id), str(second.credential.id)]
    handed_out = secret_in(lines, second)
    assert row(second).storage == "bcrypt"
    assert authenticates(second.credential.client_id, second.client_secret)
    assert reason(second.credential.client_id, handed_out) == "wrong_secret"
    assert vault.metadata(path_for(vault, second.credential)) is None
    out, _ = migrate("--rotate", "--output", str(output), "--dry-run")
    assert "would move 2 credentials to Vault (1 with the secret already in the file)" in out
    assert f"appending to {output}" in out

    out, _ = migrate("--rotate", "--output", str(output))

    assert f"Taking up {output} again (2 secrets in it)." in out
    assert "Moved 2 credentials to Vault (1 finished from an earlier run)" in out
    lines = lines_of(output)
    assert [line["credentialId"] for line in lines] == [str(issued.credential.id) for issued in estate.bcrypt]
    assert secret_in(lines, second) == handed_out
    assert vault.read(row(second).vault_path, row(second).vault_version) == {"clientSecret": handed_out}
    for issued in estate.bcrypt:
        assert row(issued).storage == "vault"
        assert token_response(issued.credential.client_id, secret_in(lines, issued)).status_code == 200
        assert token_response(issued.credential.client_id, issued.client_secret).status_code == 401
    assert mode_of(output) == 0o600


def test_a_cut_off_last_line_is_removed_and_the_run_completes(estate, output):
    migrate("--rotate", "--output", str(output), "--agent", str(estate.first.id))
    complete = output.read_bytes()
    with output.open("ab") as file:
        file.write(b'{"agentId": "' + str(estate.second.id).encode() + b'", "credentialId": "')

    out, _ = migrate("--rotate", "--output", str(output))

    assert "Its last line was cut off by an interruption and was removed" in out
    assert "Moved 1 credentials to Vault (0 finished from an earlier run)" in out
    content = output.read_bytes()
    assert content.startswith(complete)
    assert content.endswith(b"\n")
    lines = lines_of(output)
    assert len(lines) == 3
    assert all(set(line) == LINE_KEYS for line in lines)
    assert all(authenticates(issued.credential.client_id, secret_in(lines, issued)) for issued in estate.bcrypt)
    assert mode_of(output) == 0o600


def test_a_line_for_another_installations_credential_id_with_another_client_id_is_not_reused(estate, output):
    target = estate.bcrypt[0]
    foreign_secret = wrong_secret()
    stranger = {
        "agentId": str(target.credential.agent_id),
        "credentialId": str(target.credential.id),
        "clientId": "someone-elses-client",
        "clientSecret": foreign_secret,
    }
    output.write_text(json.dumps(stranger) + "\n")
    output.chmod(0o600)

    migrate("--rotate", "--output", str(output))

    lines = lines_of(output)
    assert len(lines) == 4
    assert reason(target.credential.client_id, foreign_secret) == "wrong_secret"
    [own] = [line for line in lines if line["clientId"] == target.credential.client_id]
    assert authenticates(target.credential.client_id, own["clientSecret"])


def test_a_rerun_rotates_to_the_file_secret_a_credential_that_moved_on_use_after_the_interruption(
    estate, output, settings, token_response
):
    second = estate.bcrypt[1]
    with interrupt_after_recording(second), pytest.raises(KeyboardInterrupt):
        migrate("--rotate", "--output", str(output))
    settings.AGENTIDP_UPGRADE_ON_USE = True
    # The agent keeps using the secret it has, which moves its credential into Vault.
    assert token_response(second.credential.client_id, second.client_secret).status_code == 200
    assert row(second).storage == "vault"
    settings.AGENTIDP_UPGRADE_ON_USE = False

    out, _ = migrate("--rotate", "--output", str(output))

    assert "(1 finished from an earlier run)" in out
    lines = lines_of(output)
    assert [line["clientId"] for line in lines].count(second.credential.client_id) == 1
    last = {line["clientId"]: line["clientSecret"] for line in lines}
    assert all(authenticates(client_id, secret) for client_id, secret in last.items())
    assert not authenticates(second.credential.client_id, second.client_secret)


def test_a_rerun_that_cannot_read_vault_while_checking_the_file_stops_and_says_so(
    estate, output, settings, token_response
):
    server = estate.vault.require_server()
    second = estate.bcrypt[1]
    with interrupt_after_recording(second), pytest.raises(KeyboardInterrupt):
        migrate("--rotate", "--output", str(output))
    settings.AGENTIDP_UPGRADE_ON_USE = True
    assert token_response(second.credential.client_id, second.client_secret).status_code == 200
    settings.AGENTIDP_UPGRADE_ON_USE = False
    server.inject("status", status=500, path=f"/credentials/{second.credential.id}", method="GET")

    failure = migrate_fails("--rotate", "--output", str(output))

    assert "Stopped: Vault stopped answering" in failure.message
    assert second.credential.client_id in failure.err
    server.clear_faults()
    assert authenticates(second.credential.client_id, second.client_secret)


def test_a_rerun_reports_a_line_whose_credential_was_rotated_after_the_interruption_and_keeps_that_rotation(
    estate, output, settings, token_response
):
    second = estate.bcrypt[1]
    with interrupt_after_recording(second), pytest.raises(KeyboardInterrupt):
        migrate("--rotate", "--output", str(output))
    rotated = services.credential_rotate(acting=None, credential=row(second))  # an operator, meanwhile

    failure = migrate_fails("--rotate", "--output", str(output))

    assert "not in force" in failure.message
    assert second.credential.client_id in failure.message
    assert rotated.client_secret not in failure.message + failure.out + failure.err
    assert authenticates(second.credential.client_id, rotated.client_secret)
    [line] = [line for line in lines_of(output) if line["clientId"] == second.credential.client_id]
    assert not authenticates(second.credential.client_id, line["clientSecret"])
    # Every other credential finished, each with exactly one working line.
    others = {line["clientId"]: line["clientSecret"] for line in lines_of(output)}
    others.pop(second.credential.client_id)
    assert others and all(authenticates(client_id, secret) for client_id, secret in others.items())


# --- kill -9, in separate processes ---------------------------------------------------------------------


class Installation:
    """An AgentIdP installation of its own (its own database), run as separate processes."""

    def __init__(self, database_url: str, vault) -> None:
        self.base = {
            "PATH": os.environ.get("PATH", ""),
            "DJANGO_SETTINGS_MODULE": "agentidp.settings",
            "SECRET_KEY": "migrate-to-vault-kill-tests",
            "DEBUG": "false",
            "AGENTIDP_SIGNING_KEY": generate_signing_key_pem("RS256").decode(),
            "AGENTIDP_BCRYPT_ROUNDS": "4",
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",  # what the operator saw before the kill
        }
        self.with_vault = {
            **self.base,
            "VAULT_ADDR": vault.url,
            "VAULT_TOKEN": vault.app_token,
            "VAULT_MOUNT": vault.mount,
            **({"VAULT_NAMESPACE": vault.namespace} if vault.namespace else {}),
        }

    def run(self, *args: str, vault: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run killpoint.py with these arguments."""
        return self.python(str(KILLPOINT), *args, vault=vault, stdin=stdin)

    def python(self, *args: str, vault: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            cwd=PROJECT_ROOT,
            env=self.with_vault if vault else self.base,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def seed(self, count: int) -> list[dict]:
        result = self.run("seed", str(count), vault=False)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def migrate_killed_at(self, point: str, nth: int, output: Path) -> subprocess.CompletedProcess:
        return self.run("kill", point, str(nth), "migrate_to_vault", "--rotate", "--output", str(output))

    def check(self, candidates: dict[str, list[str]]) -> dict[str, dict]:
        result = self.run("check", stdin=json.dumps(candidates))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def test_kill_9_at_any_point_leaves_every_credential_a_working_secret_and_reruns_finish(
    vault, tmp_path, installation_database
):
    installation = Installation(installation_database, vault)
    seeded = sorted(installation.seed(6), key=lambda line: uuid.UUID(line["credentialId"]))  # the command's order
    original = {line["clientId"]: line["clientSecret"] for line in seeded}
    ids = [line["clientId"] for line in seeded]
    output = tmp_path / "new-secrets.jsonl"

    def state() -> tuple[dict[str, str], dict[str, dict]]:
        """The last line for each credential, and which of (original, last line) work now."""
        last = {line["clientId"]: line["clientSecret"] for line in lines_of(output)} if output.exists() else {}
        checked = installation.check({cid: [original[cid], *([last[cid]] if cid in last else [])] for cid in ids})
        # Whatever happened, each credential has a working secret that the operator knows.
        assert all(any(checked[cid]["works"]) for cid in ids), checked
        return last, checked

    def expect(checked: dict, *, moved: list[int], pending_line: list[int] = ()) -> None:
        """moved: on Vault with its line's secret only; pending_line: still bcrypt, its line not (yet) working."""
        for index, cid in enumerate(ids):
            if index in moved:
                assert checked[cid] == {"storage": "vault", "works": [False, True]}, (index, checked[cid])
            elif index in pending_line:
                assert checked[cid] == {"storage": "bcrypt", "works": [True, False]}, (index, checked[cid])
            else:
                assert checked[cid] == {"storage": "bcrypt", "works": [True]}, (index, checked[cid])

    # (a) Killed right after Vault took the second credential's new secret: no line, no commit.
    killed = installation.migrate_killed_at("store", 2, output)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last, checked = state()
    assert list(last) == ids[:1]
    expect(checked, moved=[0])
    orphan_path = f"{vault.mount}/data/agentidp/agents/{seeded[1]['agentId']}/credentials/{seeded[1]['credentialId']}"
    assert vault.read(orphan_path) is not None  # Vault holds a secret that nobody was given

    # (b) Killed right after the third credential's line reached the disk, before its commit.
    killed = installation.migrate_killed_at("record", 2, output)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "Taking up" in killed.stdout
    last, checked = state()
    assert list(last) == ids[:3]
    expect(checked, moved=[0, 1], pending_line=[2])

    # (c) Killed right after a rotation committed: the third one finished with its line's secret, the fourth moved.
    killed = installation.migrate_killed_at("rotate", 2, output)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last, checked = state()
    assert list(last) == ids[:4]
    expect(checked, moved=[0, 1, 2, 3])

    # The last rerun finishes the job.
    finished = installation.python("manage.py", "migrate_to_vault", "--rotate", "--output", str(output))
    assert finished.returncode == 0, finished.stderr
    assert "Moved 2 credentials to Vault (0 finished from an earlier run), 0 skipped" in finished.stdout
    last, checked = state()
    expect(checked, moved=list(range(6)))
    lines = lines_of(output)
    assert [line["clientId"] for line in lines] == ids  # exactly one line per credential
    assert all(set(line) == LINE_KEYS for line in lines)
    assert mode_of(output) == 0o600
    for line in lines:
        path = f"{vault.mount}/data/agentidp/agents/{line['agentId']}/credentials/{line['credentialId']}"
        assert vault.read(path) == {"clientSecret": line["clientSecret"]}
    for text in (finished.stdout, finished.stderr, killed.stdout, killed.stderr):
        assert not any(line["clientSecret"] in text for line in lines)
