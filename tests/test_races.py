"""
Real concurrency on PostgreSQL: threads, each with its own database connection, race token
requests, rotations, creations and deletions of the same credentials through the HTTP API
and the services. The order that matters is forced, not hoped for: by PostgreSQL's own lock
queue (pg_stat_activity shows who waits), by a Vault request held on the test server, or by
the statement a session is known to have run. Each race whose order does not hang on a held
Vault request runs against the real Vault too.
"""

import random
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import Client
from rest_framework.test import APIClient

from credentials.clientauth import InvalidClient
from credentials.clientauth.secret import credential_authenticate
from credentials.errors import ApiError
from credentials.models import Credential, SecretPurge
from credentials.services import (
    credential_create,
    credential_delete,
    credential_rotate,
)
from tests.concurrency import (
    PATIENCE_SECONDS,
    InThread,
    assert_store_consistent,
    backend_pid,
    last_query_of,
    lock_waiters,
    run_together,
    wait_until,
)
from tests.conftest import basic_auth, form_post, token_for
from tests.credentials.helpers import authenticates, end_grace_periods
from tests.factories import make_credential
from tests.oauth.conftest import TOKEN_URL, assert_oauth_error

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="races need PostgreSQL's row locks and concurrent sessions"
    ),
    pytest.mark.django_db(transaction=True),
]

GRANT = {"grant_type": "client_credentials"}


@pytest.fixture(autouse=True)
def _no_rate_limits(settings):
    """Keep the OAuth rate limits (tested on their own) from answering these races' many requests."""
    settings.AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_ADDRESS = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 0
    settings.AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR = 0
    settings.AGENTIDP_AUTH_FAILURES_TOTAL = 0


@pytest.fixture
def bearer(admin_issued, client) -> str:
    """An admin access token (the admin's credential is bcrypt, made before any Vault is switched on)."""
    return token_for(client, admin_issued)


@pytest.fixture
def storage(request, vault, settings) -> str:
    """Where new secrets go: bcrypt only, or Vault in front of it (parametrized with STORES)."""
    if request.param == "vault":
        settings.VAULTSTORE = vault.vaultstore_setting()
    return request.param


#: bcrypt alone (beside the test server, which it does not use), and Vault: the test server and the real one.
STORES = pytest.mark.parametrize(
    ("storage", "vault"),
    [("bcrypt", "server"), ("vault", "server"), ("vault", "real")],
    ids=["bcrypt", "vault-server", "vault-real"],
    indirect=True,
)


def admin_api(bearer: str) -> APIClient:
    api = APIClient()
    api.raise_request_exception = False
    api.credentials(HTTP_AUTHORIZATION="Bearer " + bearer)
    return api


def credential_url(credential) -> str:
    return f"/api/v1/agents/{credential.agent_id}/credentials/{credential.id}"


def rotate_over_http(bearer: str, credential):
    return admin_api(bearer).post(credential_url(credential) + "/rotate", {}, format="json")


def delete_over_http(bearer: str, credential):
    return admin_api(bearer).delete(credential_url(credential))


def token_status(client: Client, client_id: str, secret: str) -> int:
    return form_post(client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(client_id, secret)).status_code


def vault_path(vault, credential) -> str:
    return f"{vault.mount}/data/agentidp/agents/{credential.agent_id}/credentials/{credential.id}"


def vault_request_arrived(server, method: str):
    return lambda: any(r.method == method and "/data/agentidp/" in r.path for r in list(server.requests))


# --- token requests while the secret is rotated -------------------------------------------------------


@STORES
def test_once_a_rotation_returns_the_old_secret_never_gets_a_token_and_the_new_one_always_does(storage, agent):
    credential = make_credential(agent)
    client_id = credential.credential.client_id
    secrets = {"old": credential.client_secret}
    rotation = {}
    records: list[tuple[float, float, str, int]] = []  # sent, answered, which secret, status
    lock = threading.Lock()
    over = threading.Event()  # the rotation failed: stop asking

    def request_tokens() -> None:
        client = Client(raise_request_exception=False)
        after = 0
        while after < 12 and not over.is_set():
            for which in ("old", "new"):
                secret = secrets.get(which)
                if secret is None:
                    continue
                sent = time.monotonic()
                status = token_status(client, client_id, secret)
                with lock:
                    records.append((sent, time.monotonic(), which, status))
                after += "returned" in rotation and sent > rotation["returned"]

    def rotate() -> None:
        try:
            wait_until(lambda: sum(r[2:] == ("old", 200) for r in list(records)) >= 6, "the old secret got tokens")
            rotation["started"] = time.monotonic()
            issued = credential_rotate(acting=None, credential=credential.credential)
            rotation["returned"] = time.monotonic()
            secrets["new"] = issued.client_secret
        except BaseException:
            over.set()
            raise

    for outcome in run_together(request_tokens, request_tokens, request_tokens, rotate):
        outcome.get()

    started, returned = rotation["started"], rotation["returned"]
    assert all(status < 500 for *_, status in records), records
    assert {status for sent, answered, which, status in records if answered < started} == {200}
    after = [(which, status) for sent, _, which, status in records if sent > returned]
    assert {status for which, status in after if which == "old"} == {401}
    assert {status for which, status in after if which == "new"} == {200}


# --- rotations racing rotations -----------------------------------------------------------------------


@STORES
def test_concurrent_rotations_of_one_credential_leave_exactly_the_last_committed_secret_working(
    bearer, storage, vault, agent
):
    issued = make_credential(agent)
    credential = issued.credential
    if storage == "vault" and vault.is_server:  # the first writer holds the row while the others queue behind it
        vault.server.inject("slow", delay=0.2, method="POST", path="/data/agentidp/", times=1)

    responses = [o.get() for o in run_together(*[lambda: rotate_over_http(bearer, credential)] * 3)]

    assert all(r.status_code in (200, 409) for r in responses), [r.content for r in responses]
    rotated = [r.json()["clientSecret"] for r in responses if r.status_code == 200]
    assert rotated
    working = [s for s in [issued.client_secret, *rotated] if authenticates(credential.client_id, s)]
    assert len(working) == 1 and working[0] in rotated
    row = Credential.objects.get(pk=credential.pk)
    if storage == "vault":
        path = vault_path(vault, credential)
        assert row.vault_version == 1 + len(rotated)  # every write its own version, none overwritten
        assert {vault.read(path, version=v)["clientSecret"] for v in range(2, row.vault_version + 1)} == set(rotated)
        assert vault.read(path, version=row.vault_version) == {"clientSecret": working[0]}
    assert_store_consistent(vault)


# --- a change that commits while a presented secret is being verified ----------------------------------


@STORES
@pytest.mark.parametrize("change", ["delete", "rotate"])
def test_a_delete_or_rotation_committed_during_a_slow_verification_refuses_the_request(
    storage, vault, settings, agent, change
):
    server = vault.require_server("holds Vault's answer to the read of the secret while the row changes")
    if storage == "bcrypt":
        settings.VAULTSTORE = vault.vaultstore_setting(default="bcrypt", rounds=12)  # about a quarter second
        issued = make_credential(agent)
        settings.VAULTSTORE = vault.vaultstore_setting(default="bcrypt")  # the rotation's own hash is quick
    else:
        issued = make_credential(agent)
        server.inject("slow", delay=0.3, method="GET", path="/data/agentidp/", times=1)  # within the read timeout
        server.inject("status", status=500, method="DELETE")  # Vault keeps the secret until after the read
    credential = issued.credential
    server.clear_requests()
    pid = {}
    ready = threading.Event()

    def request_token():
        pid["app"] = backend_pid()
        ready.set()
        client = Client(raise_request_exception=False)
        return form_post(
            client, TOKEN_URL, GRANT, HTTP_AUTHORIZATION=basic_auth(credential.client_id, issued.client_secret)
        )

    def verifying() -> bool:
        if storage == "vault":
            return vault_request_arrived(server, "GET")()
        query = last_query_of(pid["app"])  # the row was read; bcrypt runs next
        # pg_stat_activity keeps a statement's first KiB, and the clientId at the end of this one
        # may be cut off: the lookup of the credential with its agent is known by its shape.
        return query.startswith('SELECT "credentials_credential"') and '"credentials_agent"' in query

    def change_during_verification() -> None:
        ready.wait(PATIENCE_SECONDS)
        wait_until(verifying, "the request reads the row and verifies the secret")
        if change == "delete":
            credential_delete(acting=None, credential=credential)
        else:
            credential_rotate(acting=None, credential=credential)

    requester = InThread(request_token)
    changer = InThread(change_during_verification).result()
    answered = requester.result()

    changer.get()
    assert changer.ended < answered.ended, "the change did not commit while the request was being verified"
    assert_oauth_error(answered.get(), 401, "invalid_client")
    server.recover()
    assert_store_consistent(vault)


# --- a rotation racing a deletion ------------------------------------------------------------------------


def hold_purge_job(path: str, held: threading.Event, release: threading.Event) -> None:
    """Insert, and keep uncommitted, a purge job for `path`: a delete queueing the same one waits for it."""
    with transaction.atomic():
        SecretPurge.objects.create(storage="vault", vault_path=path, reason="held by a test")
        held.set()
        release.wait(PATIENCE_SECONDS)
        transaction.set_rollback(True)


@pytest.mark.parametrize("order", ["rotate_first", "delete_first"])
@pytest.mark.parametrize("moving", [False, True], ids=["vault", "bcrypt_into_vault"])
def test_rotation_racing_deletion_leaves_no_row_and_nothing_in_vault(bearer, vault, settings, agent, order, moving):
    if order == "rotate_first":
        server = vault.require_server("holds the rotation's Vault write while the delete queues for the row")
    if not moving:
        settings.VAULTSTORE = vault.vaultstore_setting()
    issued = make_credential(agent)
    settings.VAULTSTORE = vault.vaultstore_setting()
    credential = issued.credential
    path = vault_path(vault, credential)

    if order == "rotate_first":  # the rotation holds the row while Vault takes its write; the delete queues
        server.clear_requests()
        server.inject("slow", delay=0.3, method="POST", path="/data/agentidp/", times=1)
        rotation = InThread(lambda: rotate_over_http(bearer, credential))
        wait_until(vault_request_arrived(server, "POST"), "the rotation's Vault write arrived")
        deletion = InThread(lambda: delete_over_http(bearer, credential))
        wait_until(lambda: lock_waiters() >= 1, "the delete waits for the rotation's row lock")
    else:  # the delete holds the row (its purge job waits on another's); the rotation queues
        held, release = threading.Event(), threading.Event()
        holder = InThread(lambda: hold_purge_job(path, held, release))
        try:
            held.wait(PATIENCE_SECONDS)
            deletion = InThread(lambda: delete_over_http(bearer, credential))
            wait_until(lambda: lock_waiters() >= 1, "the delete holds the row and waits")
            rotation = InThread(lambda: rotate_over_http(bearer, credential))
            wait_until(lambda: lock_waiters() >= 2, "the rotation waits for the delete's row lock")
        finally:
            release.set()
        holder.result().get()
    rotated, deleted = rotation.result().get(), deletion.result().get()

    assert deleted.status_code == 204, deleted.content
    if order == "rotate_first":
        assert rotated.status_code == 200, rotated.content
        assert not authenticates(credential.client_id, rotated.json()["clientSecret"])
    else:
        assert rotated.status_code == 404, rotated.content
        assert rotated.json()["code"] == "CREDENTIAL_NOT_FOUND"
    assert not Credential.objects.filter(pk=credential.pk).exists()
    assert not authenticates(credential.client_id, issued.client_secret)
    assert not SecretPurge.objects.exists()  # Vault confirmed at once: nothing left to retry
    assert vault.metadata(path) is None
    assert_store_consistent(vault)


# --- many writers on one agent's credentials ------------------------------------------------------------


def test_concurrent_creates_rotations_deletes_and_authentications_keep_vault_and_database_consistent(
    vault, settings, agent
):
    issued = [make_credential(agent) for _ in range(2)]  # bcrypt: Vault is not on yet
    settings.VAULTSTORE = vault.vaultstore_setting()
    issued += [make_credential(agent) for _ in range(2)]
    lock = threading.Lock()
    # credential id -> [(when the credential came to trust it, secret)], in no particular order
    known = {i.credential.pk: [(i.credential.created_at, i.client_secret)] for i in issued}
    unexpected: list[str] = []
    done: list[str] = []

    def remember(new) -> None:
        with lock:
            known.setdefault(new.credential.pk, []).append(
                (new.credential.rotated_at or new.credential.created_at, new.client_secret)
            )

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(8):
            operation = rng.choice(["create", "rotate", "rotate", "rotate_with_grace", "delete", "auth", "auth"])
            with lock:
                pk = rng.choice(sorted(known))
                latest = max(known[pk])[1]
            credential = Credential.objects.select_related("agent").filter(pk=pk).first()
            try:
                if operation == "create":
                    remember(credential_create(acting=None, agent=agent))
                elif credential is None:
                    continue
                elif operation.startswith("rotate"):
                    grace = 3600 if operation == "rotate_with_grace" else 0
                    remember(credential_rotate(acting=None, credential=credential, grace_period_seconds=grace))
                elif operation == "delete":
                    credential_delete(acting=None, credential=credential)
                else:
                    credential_authenticate(client_id=credential.client_id, client_secret=latest)
                done.append(operation)
            except InvalidClient:
                pass  # rotated or deleted meanwhile
            except ApiError as exc:
                if exc.status >= 500:
                    unexpected.append(f"{operation}: {exc!r}")
            except Exception as exc:
                unexpected.append(f"{operation}: {exc!r}")

    for outcome in run_together(*[lambda seed=seed: work(seed) for seed in range(6)]):
        outcome.get()

    assert not unexpected, unexpected
    assert {"create", "rotate", "rotate_with_grace", "delete", "auth"} <= set(done), done  # each happened
    end_grace_periods_of_all()
    assert_store_consistent(vault)
    for credential in Credential.objects.filter(agent=agent):
        history = sorted(known[credential.pk])
        assert authenticates(credential.client_id, history[-1][1])
        assert not any(authenticates(credential.client_id, secret) for _, secret in history[:-1])


def end_grace_periods_of_all() -> None:
    for credential in Credential.objects.all():
        end_grace_periods(credential)


# --- upgrade on use racing the same secret ------------------------------------------------------------


def test_concurrent_requests_with_the_right_secret_all_get_tokens_while_one_of_them_moves_it_into_vault(
    vault, settings, agent, monkeypatch, caplog
):
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0  # every request verifies with bcrypt, as cold workers do
    issued = make_credential(agent)  # bcrypt: Vault is not on yet
    credential = issued.credential
    settings.VAULTSTORE = vault.vaultstore_setting()  # an operator switches Vault on

    # Force the order the race needs: every bcrypt check but the first returns only once the
    # first request has moved the secret into Vault, so each re-checks a row that moved.
    import bcrypt

    original, first = bcrypt.checkpw, threading.Lock()

    def checkpw(password, hashed):
        matched = original(password, hashed)
        if not first.acquire(blocking=False):
            wait_until(
                lambda: Credential.objects.filter(pk=credential.pk, storage="vault").exists(), "the secret moved"
            )
        return matched

    monkeypatch.setattr(bcrypt, "checkpw", checkpw)

    def request_token() -> int:
        return token_status(Client(raise_request_exception=False), credential.client_id, issued.client_secret)

    statuses = [outcome.get() for outcome in run_together(*[request_token] * 6)]

    assert statuses == [200] * 6
    assert "rotated_during_verification" not in caplog.text
    row = Credential.objects.get(pk=credential.pk)
    assert row.storage == "vault"
    assert vault.read(row.vault_path, version=row.vault_version) == {"clientSecret": issued.client_secret}
    assert token_status(Client(), credential.client_id, issued.client_secret) == 200
    assert_store_consistent(vault)


def test_a_rotation_during_verification_still_refuses_the_old_secret_when_vault_has_just_been_switched_on(
    vault, settings, agent, monkeypatch
):
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0
    issued = make_credential(agent)
    credential = issued.credential
    settings.VAULTSTORE = vault.vaultstore_setting()

    import bcrypt

    original = bcrypt.checkpw
    checking, rotated = threading.Event(), threading.Event()

    def checkpw(password, hashed):
        checking.set()
        matched = original(password, hashed)
        wait_until(rotated.is_set, "the rotation committed")
        return matched

    monkeypatch.setattr(bcrypt, "checkpw", checkpw)

    def rotate() -> None:
        wait_until(checking.is_set, "the request is verifying the old secret")
        credential_rotate(acting=None, credential=credential)  # into Vault: a new secret, a new moment trusted
        rotated.set()

    request, rotation = run_together(
        lambda: token_status(Client(raise_request_exception=False), credential.client_id, issued.client_secret),
        rotate,
    )

    rotation.get()
    assert request.get() == 401
    assert_store_consistent(vault)


def test_deleting_an_agent_waits_for_a_rotation_of_its_later_credential_without_a_deadlock(agent):
    """
    A deletion renews the change token (credentials.rows) in its transaction; a rotation of another
    of the agent's credentials needs it too. The agent's deletion locks every credential first, so
    it waits for the rotation before it holds the token, never while holding it.
    """
    from credentials.services import agent_delete

    first, second = make_credential(agent).credential, make_credential(agent).credential
    locked, release = threading.Event(), threading.Event()

    def rotation_holding_the_second():
        with transaction.atomic():
            Credential.objects.select_for_update().get(pk=second.pk)  # as credential_rotate's lock
            locked.set()
            release.wait(PATIENCE_SECONDS)
            Credential.objects.filter(pk=second.pk).update(description="rotated meanwhile")

    rotation = InThread(rotation_holding_the_second)
    assert locked.wait(PATIENCE_SECONDS)
    deletion = InThread(lambda: agent_delete(acting=None, agent=agent))
    wait_until(lambda: lock_waiters() >= 1, "the deletion waiting for the rotation's lock")
    release.set()

    assert rotation.result().error is None
    assert deletion.result().error is None
    assert not Credential.objects.filter(pk__in=[first.pk, second.pk]).exists()
