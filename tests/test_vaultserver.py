"""The Vault KV v2 double (tests/vaultserver.py), driven through hvac over real HTTP.

Each test proves one behaviour of Vault's HTTP API that the server imitates. No database is used.
"""

import re
import socket
import threading
import time
import uuid

import hvac
import pytest
import requests
from hvac import exceptions

from tests.vaultserver import RecordedRequest, VaultTestServer

KEY = "agentidp/agents/a1/credentials/c1"
DATA_URL = "/v1/secret/data/" + KEY
SECRET = {"clientSecret": "s3cret"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
ENVELOPE_KEYS = {
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
    "mount_type",
}


@pytest.fixture
def vault():
    with VaultTestServer() as server:
        yield server


@pytest.fixture
def make_client(vault):
    clients = []

    def make(token=None, **kwargs) -> hvac.Client:
        client = hvac.Client(url=vault.url, token=token or vault.create_token(), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.adapter.close()


@pytest.fixture
def app(make_client) -> hvac.Client:
    """A client with the app's token (policy "agentidp" plus "default")."""
    return make_client()


@pytest.fixture
def root(make_client) -> hvac.Client:
    return make_client(VaultTestServer.ROOT_TOKEN)


def write(client, secret=SECRET, *, path=KEY, cas=None):
    return client.secrets.kv.v2.create_or_update_secret(path, secret, cas=cas, mount_point="secret")


def read(client, *, path=KEY, version=None, raise_on_deleted_version=True):
    return client.secrets.kv.v2.read_secret_version(
        path, version=version, mount_point="secret", raise_on_deleted_version=raise_on_deleted_version
    )


def raw(vault, method, path, *, token=VaultTestServer.ROOT_TOKEN, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers.setdefault("X-Vault-Token", token)
    return requests.request(method, vault.url + path, headers=headers, timeout=5, **kwargs)


# --- transport, envelopes, headers ---------------------------------------------------


def test_write_and_read_use_the_success_envelope(vault, app):
    written = write(app)
    response = raw(vault, "GET", DATA_URL)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    for envelope in (written, body):
        assert set(envelope) == ENVELOPE_KEYS
        uuid.UUID(envelope["request_id"])
        assert envelope["lease_id"] == "" and envelope["renewable"] is False and envelope["lease_duration"] == 0
        assert envelope["wrap_info"] is None and envelope["warnings"] is None and envelope["auth"] is None
        assert envelope["mount_type"] == "kv"
    assert written["request_id"] != body["request_id"]
    assert written["data"] == {
        "created_time": written["data"]["created_time"],
        "custom_metadata": None,
        "deletion_time": "",
        "destroyed": False,
        "version": 1,
    }
    assert TIMESTAMP.match(written["data"]["created_time"])
    assert body["data"] == {"data": SECRET, "metadata": written["data"]}


def test_204_has_no_body_but_the_json_content_type(vault, app):
    response = app.secrets.kv.v2.delete_metadata_and_all_versions(KEY, mount_point="secret")

    assert isinstance(response, requests.Response)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["Content-Type"] == "application/json"


def test_authorization_bearer_is_accepted(vault):
    write(hvac.Client(url=vault.url, token=VaultTestServer.ROOT_TOKEN))
    response = raw(vault, "GET", DATA_URL, token=None, headers={"Authorization": "Bearer " + vault.create_token()})

    assert response.status_code == 200
    assert response.json()["data"]["data"] == SECRET


def test_unknown_route_is_404_with_empty_errors_for_root_and_403_for_the_app(vault, app, root):
    assert raw(vault, "GET", "/v1/sys/nothing-here").json() == {"errors": []}
    assert raw(vault, "GET", "/v1/sys/nothing-here").status_code == 404

    with pytest.raises(exceptions.Forbidden):
        app.adapter.get("/v1/sys/nothing-here")


def test_body_that_is_not_json_is_400(vault):
    response = raw(vault, "POST", DATA_URL, data=b"{not json", headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {"errors": ["error parsing JSON"]}


def test_body_that_is_not_a_json_object_is_400(vault):
    response = raw(vault, "POST", DATA_URL, json=[1, 2])

    assert response.status_code == 400
    assert response.json() == {"errors": ["error parsing JSON"]}


def test_unparseable_version_is_400(vault, app):
    write(app)
    with pytest.raises(exceptions.InvalidRequest, match='field "version"'):
        read(app, version="abc")


def test_write_without_data_is_400(vault, app):
    with pytest.raises(exceptions.InvalidRequest, match="no data provided"):
        app.adapter.post(DATA_URL, json={"options": {}})


def test_write_to_a_path_ending_in_slash_is_400(vault):
    # hvac strips a trailing slash itself, so send the request by hand
    response = raw(vault, "POST", "/v1/secret/data/agentidp/agents/", json={"options": {}, "data": SECRET})

    assert response.status_code == 400
    assert response.json() == {"errors": ["cannot write to a path ending in '/'"]}


def test_segment_ending_in_dot_is_unsupported_path(vault, root):
    with pytest.raises(exceptions.InvalidPath, match="unsupported path"):
        write(root, path="agentidp/agents./c")


# --- versions ---------------------------------------------------------------------


def test_each_write_adds_a_version_and_any_version_can_be_read(app):
    assert write(app, {"clientSecret": "one"})["data"]["version"] == 1
    assert write(app, {"clientSecret": "two"})["data"]["version"] == 2

    assert read(app)["data"]["data"] == {"clientSecret": "two"}
    assert read(app)["data"]["metadata"]["version"] == 2
    assert read(app, version=1)["data"]["data"] == {"clientSecret": "one"}
    assert read(app, version=0)["data"]["metadata"]["version"] == 2


@pytest.mark.parametrize("version", [None, 7])
def test_missing_key_or_version_is_404_with_empty_errors(app, version):
    if version:
        write(app)

    with pytest.raises(exceptions.InvalidPath) as caught:
        read(app, version=version)

    assert caught.value.json == {"errors": []}
    assert caught.value.errors == []


def test_max_versions_prunes_the_oldest_and_advances_oldest_version(vault, app, root):
    vault.set_max_versions(3)
    for n in range(5):
        write(app, {"clientSecret": str(n)})

    assert sorted(vault.secret_versions(KEY)) == [3, 4, 5]
    metadata = root.secrets.kv.v2.read_secret_metadata(KEY, mount_point="secret")["data"]
    assert metadata["oldest_version"] == 3
    assert metadata["current_version"] == 5
    assert sorted(metadata["versions"]) == ["3", "4", "5"]
    with pytest.raises(exceptions.InvalidPath) as caught:
        read(app, version=1)
    assert caught.value.json == {"errors": []}


def test_lowering_max_versions_prunes_on_the_next_write(vault, app, root):
    for _ in range(5):
        write(app)
    assert len(vault.secret_versions(KEY)) == 5

    vault.set_max_versions(2)
    write(app)

    assert sorted(vault.secret_versions(KEY)) == [5, 6]
    assert root.secrets.kv.v2.read_secret_metadata(KEY, mount_point="secret")["data"]["oldest_version"] == 5


def test_metadata_read_shape(vault, app, root):
    write(app)
    metadata = root.secrets.kv.v2.read_secret_metadata(KEY, mount_point="secret")["data"]

    assert metadata == {
        "cas_required": False,
        "created_time": metadata["created_time"],
        "current_version": 1,
        "custom_metadata": None,
        "delete_version_after": "0s",
        "max_versions": 0,
        "oldest_version": 0,
        "updated_time": metadata["updated_time"],
        "versions": {"1": {"created_time": metadata["created_time"], "deletion_time": "", "destroyed": False}},
    }


def test_metadata_delete_removes_the_key_and_the_next_write_is_version_1(vault, app):
    write(app)
    write(app)

    app.secrets.kv.v2.delete_metadata_and_all_versions(KEY, mount_point="secret")

    assert vault.secret_versions(KEY) is None
    with pytest.raises(exceptions.InvalidPath):
        read(app)
    assert write(app)["data"]["version"] == 1


def test_metadata_delete_is_idempotent(app):
    for _ in range(2):
        response = app.secrets.kv.v2.delete_metadata_and_all_versions("agentidp/never/written", mount_point="secret")
        assert response.status_code == 204


def test_concurrent_writes_get_distinct_versions(vault, app):
    results = []

    def writer(n):
        client = hvac.Client(url=vault.url, token=app.token)
        results.append(write(client, {"clientSecret": str(n)})["data"]["version"])
        client.adapter.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)

    assert sorted(results) == list(range(1, 9))
    assert sorted(vault.secret_versions(KEY)) == list(range(1, 9))


# --- check-and-set ----------------------------------------------------------------


def test_cas_equal_to_the_current_version_writes(app):
    write(app)
    assert write(app, cas=1)["data"]["version"] == 2


def test_cas_is_weakly_decoded_from_a_string(app):
    write(app)
    write(app)
    assert write(app, cas="2")["data"]["version"] == 3


def test_cas_mismatch_is_400(vault, app):
    write(app)

    with pytest.raises(exceptions.InvalidRequest) as caught:
        write(app, cas=5)

    assert caught.value.errors == ["check-and-set parameter did not match the current version"]
    assert len(vault.secret_versions(KEY)) == 1


def test_cas_zero_only_creates(app):
    assert write(app, cas=0)["data"]["version"] == 1

    with pytest.raises(exceptions.InvalidRequest, match="did not match the current version"):
        write(app, cas=0)


@pytest.mark.parametrize("cas", ["abc", 1.5, [1], {"v": 1}])
def test_undecodable_cas_is_400(app, cas):
    with pytest.raises(exceptions.InvalidRequest) as caught:
        write(app, cas=cas)

    assert caught.value.errors == ["error parsing check-and-set parameter"]


def test_cas_required_rejects_writes_without_cas(vault, app):
    vault.set_cas_required(True)

    with pytest.raises(exceptions.InvalidRequest) as caught:
        write(app)
    assert caught.value.errors == ["check-and-set parameter required for this call"]

    assert write(app, cas=0)["data"]["version"] == 1
    vault.set_cas_required(False)
    assert write(app)["data"]["version"] == 2


# --- soft-deleted and destroyed versions ------------------------------------------


def test_soft_deleted_version_is_404_with_the_full_envelope_and_no_errors(vault, app):
    write(app)
    app.secrets.kv.v2.delete_latest_version_of_secret(KEY, mount_point="secret")

    response = raw(vault, "GET", DATA_URL)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["data"]["data"] is None
    assert TIMESTAMP.match(body["data"]["metadata"]["deletion_time"])
    assert body["data"]["metadata"]["destroyed"] is False

    with pytest.raises(exceptions.InvalidPath) as caught:
        read(app)
    assert caught.value.errors is None
    assert caught.value.json["data"]["metadata"]["version"] == 1

    returned = read(app, raise_on_deleted_version=False)
    assert returned["data"]["data"] is None
    assert returned["data"]["metadata"]["deletion_time"] != ""


def test_undelete_brings_a_version_back(app, root):
    write(app)
    root.secrets.kv.v2.delete_secret_versions(KEY, versions=[1], mount_point="secret")
    with pytest.raises(exceptions.InvalidPath):
        read(app)

    root.secrets.kv.v2.undelete_secret_versions(KEY, versions=[1], mount_point="secret")

    assert read(app)["data"]["data"] == SECRET
    assert read(app)["data"]["metadata"]["deletion_time"] == ""


def test_destroyed_version_raises_even_without_raise_on_deleted_version(vault, app, root):
    write(app)
    write(app, {"clientSecret": "two"})

    response = root.secrets.kv.v2.destroy_secret_versions(KEY, versions=[2], mount_point="secret")

    assert response.status_code == 204
    with pytest.raises(exceptions.InvalidPath) as caught:
        read(app, raise_on_deleted_version=False)
    metadata = caught.value.json["data"]["metadata"]
    assert metadata["destroyed"] is True and metadata["deletion_time"] == ""
    assert vault.secret_versions(KEY)[2]["data"] is None
    assert vault.secret_versions(KEY)[2]["destroyed"] is True
    assert read(app, version=1)["data"]["data"] == SECRET


def test_version_endpoints_need_versions(root):
    write(root)
    with pytest.raises(exceptions.InvalidRequest, match="no version number provided"):
        root.adapter.post("/v1/secret/destroy/" + KEY, json={})


def test_soft_delete_of_a_missing_key_is_204(app):
    response = app.secrets.kv.v2.delete_latest_version_of_secret("agentidp/nothing", mount_point="secret")
    assert response.status_code == 204


def test_list_returns_keys_and_folders_or_404_when_empty(root):
    write(root, path="agentidp/agents/a1/credentials/c1")
    write(root, path="agentidp/agents/a1/credentials/c2")
    write(root, path="agentidp/agents/a2/credentials/c1")
    write(root, path="agentidp/top")

    assert root.secrets.kv.v2.list_secrets("agentidp", mount_point="secret")["data"]["keys"] == ["agents/", "top"]
    keys = root.secrets.kv.v2.list_secrets("agentidp/agents/a1/credentials", mount_point="secret")["data"]["keys"]
    assert keys == ["c1", "c2"]
    listed = root.adapter.get("/v1/secret/metadata/agentidp/agents", params={"list": "true"})
    assert listed["data"]["keys"] == ["a1/", "a2/"]
    with pytest.raises(exceptions.InvalidPath) as caught:
        root.secrets.kv.v2.list_secrets("agentidp/none", mount_point="secret")
    assert caught.value.json == {"errors": []}


# --- policies -------------------------------------------------------------------------


def test_app_token_may_not_read_metadata_even_of_a_missing_key(app):
    for path in (KEY, "agentidp/never/written"):
        with pytest.raises(exceptions.Forbidden) as caught:
            app.secrets.kv.v2.read_secret_metadata(path, mount_point="secret")
        assert caught.value.errors == ["1 error occurred:\n\t* permission denied\n\n"]
        assert "invalid token" not in str(caught.value)


@pytest.mark.parametrize("path", ["other/thing", "agentidpX/y", "agentidp"])
def test_app_token_is_denied_outside_agentidp(vault, app, path):
    vault.write_secret(path, SECRET)

    with pytest.raises(exceptions.Forbidden, match="permission denied"):
        read(app, path=path)
    with pytest.raises(exceptions.Forbidden, match="permission denied"):
        write(app, path=path)
    with pytest.raises(exceptions.Forbidden):
        app.secrets.kv.v2.delete_metadata_and_all_versions(path, mount_point="secret")
    assert len(vault.secret_versions(path)) == 1


@pytest.mark.parametrize("endpoint", ["destroy", "delete", "undelete"])
def test_app_token_may_not_use_the_version_endpoints(vault, app, endpoint):
    write(app)

    with pytest.raises(exceptions.Forbidden, match="permission denied"):
        app.adapter.post(f"/v1/secret/{endpoint}/{KEY}", json={"versions": [1]})
    assert vault.secret_versions(KEY)[1]["data"] == SECRET


def test_app_token_may_not_list_but_may_soft_delete(vault, app):
    write(app)

    with pytest.raises(exceptions.Forbidden):
        app.secrets.kv.v2.list_secrets("agentidp", mount_point="secret")
    app.secrets.kv.v2.delete_latest_version_of_secret(KEY, mount_point="secret")
    assert vault.secret_versions(KEY)[1]["deletion_time"] != ""


def test_write_needs_create_when_the_key_is_absent_and_update_when_present(vault, make_client):
    vault.add_policy("create-only", {"secret/data/agentidp/*": ["create", "read"]})
    vault.add_policy("update-only", {"secret/data/agentidp/*": ["update", "read"]})
    creator = make_client(vault.create_token(policies=("create-only",)))
    updater = make_client(vault.create_token(policies=("update-only",)))

    with pytest.raises(exceptions.Forbidden):
        write(updater)
    write(creator)
    with pytest.raises(exceptions.Forbidden):
        write(creator)
    assert write(updater)["data"]["version"] == 2


def test_agentidp_policy_follows_the_mount():
    with VaultTestServer(mount="kv") as server:
        client = hvac.Client(url=server.url, token=server.create_token())
        client.secrets.kv.v2.create_or_update_secret(KEY, SECRET, mount_point="kv")
        assert server.secret_versions(KEY)[1]["data"] == SECRET
        with pytest.raises(exceptions.Forbidden):
            client.secrets.kv.v2.create_or_update_secret(KEY, SECRET, mount_point="secret")
        client.adapter.close()


# --- tokens --------------------------------------------------------------------------------------


def _assert_invalid_token(error: exceptions.VaultError):
    assert "permission denied" in str(error)
    assert "invalid token" in str(error)


@pytest.mark.parametrize("kind", ["unknown", "revoked", "expired"])
def test_invalid_token_is_403_with_permission_denied_and_invalid_token(vault, make_client, kind):
    token = {"unknown": "hvs.not-a-token", "revoked": vault.create_token(), "expired": vault.create_token(ttl=0.05)}[
        kind
    ]
    if kind == "revoked":
        vault.revoke_token(token)
    if kind == "expired":
        time.sleep(0.08)
    client = make_client(token)

    for call in (lambda: read(client), lambda: write(client), client.auth.token.lookup_self):
        with pytest.raises(exceptions.Forbidden) as caught:
            call()
        _assert_invalid_token(caught.value)


def test_missing_token_is_403_invalid_token(vault):
    response = raw(vault, "GET", DATA_URL, token=None)

    assert response.status_code == 403
    assert "invalid token" in response.json()["errors"][0]


def test_token_revoked_mid_run(vault, app):
    write(app)
    vault.revoke_token(app.token)

    with pytest.raises(exceptions.Forbidden) as caught:
        read(app)
    _assert_invalid_token(caught.value)
    assert vault.token_info(app.token)["revoked"] is True


def test_lookup_self(vault, make_client):
    token = vault.create_token(ttl=600, renewable=True)
    data = make_client(token).auth.token.lookup_self()["data"]

    assert data["id"] == token
    assert data["policies"] == ["agentidp", "default"]
    assert data["renewable"] is True
    assert 598 <= data["ttl"] <= 600
    assert data["creation_ttl"] == 600
    assert TIMESTAMP.match(data["expire_time"])
    assert data["explicit_max_ttl"] == 0 and data["num_uses"] == 0 and data["type"] == "service"
    assert {"accessor", "orphan"} <= set(data)


def test_root_and_never_expiring_tokens_have_ttl_0(vault, root, make_client):
    assert root.auth.token.lookup_self()["data"]["policies"] == ["root"]
    for client in (root, make_client()):
        data = client.auth.token.lookup_self()["data"]
        assert data["ttl"] == 0 and data["expire_time"] is None


def test_is_authenticated(vault, app, make_client):
    assert app.is_authenticated() is True
    assert make_client("hvs.bogus").is_authenticated() is False


def test_renew_self_extends_by_the_original_ttl(vault, make_client):
    token = vault.create_token(ttl=60, renewable=True)
    before = vault.token_info(token)["expires_at"]
    time.sleep(0.01)

    auth = make_client(token).auth.token.renew_self()["auth"]

    assert auth["client_token"] == token
    assert auth["lease_duration"] == 60
    assert auth["renewable"] is True
    assert auth["policies"] == ["agentidp", "default"]
    assert auth["token_type"] == "service"
    info = vault.token_info(token)
    assert info["renewals"] == 1
    assert info["expires_at"] > before


def test_renew_self_is_capped_by_max_ttl_with_a_warning(vault, make_client):
    token = vault.create_token(ttl=60, renewable=True, max_ttl=120)

    response = make_client(token).auth.token.renew_self(increment="1h")

    assert 118 <= response["auth"]["lease_duration"] <= 120
    assert len(response["warnings"]) == 1
    assert re.fullmatch(
        r'TTL of "1h0m0s" exceeded the effective max_ttl of "1m5\ds"; TTL value is capped accordingly',
        response["warnings"][0],
    )
    assert vault.token_info(token)["expires_at"] <= vault.token_info(token)["created_at"] + 120


def test_renewed_token_outlives_its_first_ttl(vault, make_client):
    token = vault.create_token(ttl=0.15, renewable=True)
    client = make_client(token)
    time.sleep(0.1)
    client.auth.token.renew_self(increment=1)
    time.sleep(0.1)

    assert write(client)["data"]["version"] == 1


def test_renew_self_of_a_non_renewable_token_is_400(vault, app):
    with pytest.raises(exceptions.InvalidRequest) as caught:
        app.auth.token.renew_self()

    assert caught.value.errors == ["lease is not renewable"]
    assert vault.token_info(app.token)["renewals"] == 0


def test_without_the_default_policy_self_service_is_denied(vault, make_client):
    client = make_client(vault.create_token(renewable=True, ttl=60, no_default_policy=True))

    assert vault.token_info(client.token)["policies"] == ["agentidp"]
    for call in (client.auth.token.lookup_self, client.auth.token.renew_self):
        with pytest.raises(exceptions.Forbidden) as caught:
            call()
        assert "invalid token" not in str(caught.value)
    write(client)


def test_revoke_self(vault, app):
    assert app.auth.token.revoke_self().status_code == 204

    with pytest.raises(exceptions.Forbidden) as caught:
        app.auth.token.lookup_self()
    _assert_invalid_token(caught.value)


# --- sys/health -----------------------------------------------------------------------


def test_health_head_and_get_need_no_token(vault, make_client):
    client = make_client("hvs.irrelevant")

    head = client.sys.read_health_status(method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Type"] == "application/json"
    body = client.sys.read_health_status(method="GET")
    assert body["initialized"] is True and body["sealed"] is False and body["standby"] is False
    assert {
        "performance_standby",
        "replication_performance_mode",
        "replication_dr_mode",
        "server_time_utc",
        "version",
        "cluster_name",
        "cluster_id",
    } <= set(body)
    assert raw(vault, "GET", "/v1/sys/health", token=None).status_code == 200


def test_sealed_vault(vault, app):
    write(app)
    vault.seal()

    assert app.sys.read_health_status(method="HEAD").status_code == 503
    get = app.sys.read_health_status(method="GET")
    assert get.status_code == 503 and get.json()["sealed"] is True
    with pytest.raises(exceptions.VaultDown) as caught:
        read(app)
    assert caught.value.errors == ["Vault is sealed"]
    with pytest.raises(exceptions.VaultDown):
        app.auth.token.lookup_self()

    vault.unseal()
    assert read(app)["data"]["data"] == SECRET


def test_health_query_overrides(vault, app):
    assert app.sys.read_health_status(method="GET", active_code=299).status_code == 299
    assert app.sys.read_health_status(method="GET", standby_ok=True, standby_code=200)["sealed"] is False
    vault.seal()
    assert app.sys.read_health_status(method="GET", sealed_code=200)["sealed"] is True
    bad = raw(vault, "GET", "/v1/sys/health?sealedcode=abc", token=None)
    assert bad.status_code == 400 and bad.json() == {"errors": []}


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception", "message"),
    [
        (500, exceptions.InternalServerError, "internal error"),
        (502, exceptions.BadGateway, "upstream error"),
        (503, exceptions.VaultDown, "Vault is sealed"),
        (429, exceptions.RateLimitExceeded, f'request path "secret/data/{KEY}": rate limit quota exceeded'),
        (412, exceptions.UnexpectedError, None),
        (403, exceptions.Forbidden, "1 error occurred:\n\t* permission denied\n\n"),
    ],
)
def test_status_fault(vault, app, status, exception, message):
    vault.inject("status", status=status)

    with pytest.raises(exception) as caught:
        write(app)

    assert caught.value.json["errors"]
    if message:
        assert caught.value.errors == [message]
    assert vault.secret_versions(KEY) is None  # nothing applied


def test_fault_times_method_and_path_filters(vault, app):
    vault.inject("status", status=500, method="POST", times=2)
    vault.inject("status", status=502, path="/metadata/")

    for _ in range(2):
        with pytest.raises(exceptions.InternalServerError):
            write(app)
    assert write(app)["data"]["version"] == 1
    assert read(app)["data"]["data"] == SECRET
    with pytest.raises(exceptions.BadGateway):
        app.secrets.kv.v2.delete_metadata_and_all_versions(KEY, mount_point="secret")

    vault.clear_faults()
    assert app.secrets.kv.v2.delete_metadata_and_all_versions(KEY, mount_point="secret").status_code == 204


def test_list_method_filter_matches_get_with_list_true(vault, root):
    write(root)
    vault.inject("status", status=500, method="LIST")

    with pytest.raises(exceptions.InternalServerError):
        root.adapter.get("/v1/secret/metadata/agentidp", params={"list": "true"})
    assert read(root)["data"]["data"] == SECRET


def test_slow_fault_times_the_client_out_but_still_applies(vault, make_client):
    client = make_client(timeout=0.1)
    vault.inject("slow", delay=0.3, times=1)

    with pytest.raises(requests.exceptions.ReadTimeout):
        write(client)
    time.sleep(0.3)

    assert vault.secret_versions(KEY)[1]["data"] == SECRET  # the server went on, like Vault would
    assert read(client)["data"]["metadata"]["version"] == 1


def test_stop_does_not_wait_for_a_slow_request():
    server = VaultTestServer().start()
    server.inject("slow", delay=30)
    errors = []

    def call():
        try:
            requests.get(server.url + "/v1/sys/health", timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    server.stop()  # idempotent
    thread.join(5)

    assert time.monotonic() - started < 1
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], requests.exceptions.ConnectionError)


def test_reset_fault_closes_the_connection_without_applying(vault, app):
    vault.inject("reset", times=1)

    with pytest.raises(requests.exceptions.ConnectionError):
        write(app)

    assert vault.secret_versions(KEY) is None
    assert write(app)["data"]["version"] == 1


def test_applied_then_dropped_commits_the_write(vault, app):
    vault.inject("applied_then_dropped", method="POST", times=1)

    with pytest.raises(requests.exceptions.ConnectionError):
        write(app, cas=0)

    assert vault.secret_versions(KEY)[1]["data"] == SECRET
    with pytest.raises(exceptions.InvalidRequest, match="did not match"):
        write(app, cas=0)  # the retry with the same cas finds the write already done
    assert write(app, cas=1)["data"]["version"] == 2


def test_garbled_200_is_returned_as_a_response(vault, app):
    write(app)
    vault.inject("garbled", times=1)

    result = read(app)

    assert isinstance(result, requests.Response)
    assert result.status_code == 200
    assert result.headers["Content-Type"] == "application/json"
    assert result.text == "<html>oops"


def test_missing_key_fault_only_affects_data_reads(vault, app):
    vault.inject("missing_key", times=1)
    write(app)  # not consumed by the write

    result = read(app)

    assert result["data"]["data"] == {"other": "x"}
    assert result["data"]["metadata"]["version"] == 1
    assert read(app)["data"]["data"] == SECRET


def test_charset_fault_hides_the_errors_from_hvac(vault, app):
    vault.inject("charset")
    vault.inject("status", status=500, times=1)

    with pytest.raises(exceptions.InternalServerError) as caught:
        read(app)
    assert caught.value.errors is None and caught.value.json is None
    assert "internal error" in caught.value.text

    write(app)
    with pytest.raises(exceptions.InvalidRequest) as caught:
        write(app, cas=0)
    assert caught.value.errors is None
    assert "did not match the current version" in str(caught.value)
    assert read(app)["data"]["data"] == SECRET  # success responses keep the plain content type


def test_upgrading_fault(vault, app):
    vault.inject("upgrading", times=1)

    with pytest.raises(exceptions.InvalidRequest) as caught:
        read(app)

    assert caught.value.errors[0].startswith("Upgrading from non-versioned to versioned data.")
    with pytest.raises(exceptions.InvalidPath):
        read(app)


def test_inject_rejects_unknown_kinds(vault):
    with pytest.raises(ValueError):
        vault.inject("explode")
    with pytest.raises(ValueError):
        vault.inject("status")


def test_go_down_refuses_connections_and_come_up_keeps_url_and_state(vault, app):
    write(app)
    url = vault.url

    vault.go_down()
    with pytest.raises(requests.exceptions.ConnectionError):
        read(app)  # the pooled keep-alive connection is gone too
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1)

    vault.come_up()
    assert vault.url == url
    assert read(app)["data"]["data"] == SECRET


# --- recording and state helpers -------------------------------------------------------------


def test_every_request_is_recorded(vault, app):
    write(app, cas=0)
    read(app, version=1)
    vault.inject("status", status=500, times=1)
    with pytest.raises(exceptions.InternalServerError):
        read(app)
    vault.inject("reset", times=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        read(app)
    app.secrets.kv.v2.delete_metadata_and_all_versions(KEY, mount_point="secret")

    recorded = vault.requests
    assert all(isinstance(r, RecordedRequest) for r in recorded)
    assert [(r.method, r.path, r.status) for r in recorded] == [
        ("POST", DATA_URL, 200),
        ("GET", DATA_URL, 200),
        ("GET", DATA_URL, 500),
        ("GET", DATA_URL, None),
        ("DELETE", "/v1/secret/metadata/" + KEY, 204),
    ]
    post = recorded[0]
    assert post.json == {"options": {"cas": 0}, "data": SECRET}
    assert post.body.startswith(b"{")
    assert post.headers["X-Vault-Token"] == app.token
    assert post.headers["X-Vault-Request"] == "true"
    assert recorded[1].query == {"version": "1"}
    assert recorded[2].query == {}
    assert not any("/metadata/" in r.path and r.method == "GET" for r in recorded)

    vault.clear_requests()
    assert vault.requests == []


def test_writes_without_cas_send_empty_options(vault, app):
    write(app)
    assert vault.requests[-1].json == {"options": {}, "data": SECRET}


def test_state_helpers(vault, app):
    assert vault.secret_versions(KEY) is None
    assert vault.write_secret(KEY, {"clientSecret": "a"}) == 1
    assert write(app, cas=1)["data"]["version"] == 2

    versions = vault.secret_versions(KEY)
    assert versions[1]["data"] == {"clientSecret": "a"}
    assert versions[2]["data"] == SECRET
    assert TIMESTAMP.match(versions[1]["created_time"])
    assert versions[1]["deletion_time"] == "" and versions[1]["destroyed"] is False
    versions[1]["data"]["clientSecret"] = "changed"
    assert vault.secret_versions(KEY)[1]["data"] == {"clientSecret": "a"}  # a copy
    info = vault.token_info(app.token)
    assert info["renewals"] == 0 and info["expires_at"] is None
