"""An in-process HTTP server that imitates HashiCorp Vault's KV v2 HTTP API for tests.

The real client library (hvac) talks to it over real HTTP on 127.0.0.1, so the whole wire path
(requests, urllib3, hvac's adapters and exception mapping) is exercised. It follows Vault's API
documentation (KV v2, sys/health, token auth) and source (the KV plugin's ``path_data.go`` and
``path_metadata.go``, ``sdk/logical/response*.go``, ``http/handler.go``), as hvac 2.4 sees them:

- transport: routes under /v1/, ``X-Vault-Token`` or ``Authorization: Bearer``, responses with
  ``Content-Type: application/json`` exactly, the success envelope, ``{"errors": [...]}`` error
  bodies, 204 without a body;
- the KV v2 endpoints and their semantics: versions, check-and-set (weakly decoded,
  ``cas_required``), soft delete / undelete / destroy, the deleted-version 404 that carries the full
  envelope and no ``errors`` key, ``max_versions`` pruning with ``oldest_version``, idempotent
  metadata delete after which the next write is version 1 again, LIST, create vs update capability,
  writes to a path ending in ``/``, segments ending in ``.``;
- statuses and error bodies (invalid token: 403 with "permission denied" and "invalid token";
  ACL denial: 403 "permission denied");
- ``sys/health`` (GET and HEAD, query overrides) and token ``lookup-self``, ``renew-self`` and
  ``revoke-self`` with the built-in ``default`` policy;
- AgentIdP's least-privilege policy (``agentidp``), ``root``, and policies a root token writes
  through ``sys/policy`` (the ``path "..." { capabilities = [...] }`` form of HCL), with token
  creation and revocation for test set-up;
- fault injection (down, slow, sealed, any status, reset, garbled, shapeless, applied-then-dropped,
  cas_required, lower max_versions) and recording of every request.

Standard library only. Usage::

    with VaultTestServer() as vault:
        token = vault.create_token()
        client = hvac.Client(url=vault.url, token=token)
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["RecordedRequest", "VaultTestServer"]

JSON = "application/json"
JSON_CHARSET = "application/json; charset=utf-8"

#: How long the "slow" outage of `fail` waits: longer than the read timeout tests give the app.
SLOW_SECONDS = 1.2

PERMISSION_DENIED = "1 error occurred:\n\t* permission denied\n\n"
INVALID_TOKEN = "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"
UPGRADING = (
    "Upgrading from non-versioned to versioned data. This backend will be unavailable for a brief "
    "period and will resume service shortly."
)
FAULT_KINDS = frozenset(
    {"status", "slow", "reset", "applied_then_dropped", "garbled", "shapeless", "missing_key", "charset", "upgrading"}
)
# Faults that decide the whole answer; "slow", "missing_key" and "charset" modify a normal one.
_ACTION_KINDS = frozenset({"status", "reset", "applied_then_dropped", "garbled", "shapeless", "upgrading"})
_KV_ROUTES = frozenset({"data", "metadata", "delete", "undelete", "destroy"})
_TOKEN_ROUTES = frozenset({"lookup-self", "renew-self", "revoke-self", "create", "revoke"})
# `path "<glob>" { capabilities = ["read", ...] }` blocks of an HCL policy, as far as tests write them.
_HCL_RULE = re.compile(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}', re.S)
VAULT_VERSION = "1.17.3"


# --- small helpers -----------------------------------------------------------------------------


def _rfc3339(ns: int | None) -> str:
    """A Go ``time.RFC3339Nano`` timestamp (trailing zeros of the fraction trimmed), "" for None."""
    if ns is None:
        return ""
    secs, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def _go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String()``: "1h0m0s", "59m58s", "1.5s", "500ms"."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, ns = divmod(ns, 3600 * 10**9)
    minutes, ns = divmod(ns, 60 * 10**9)
    text = _trim(ns / 1e9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value) -> float:
    """Vault's ``parseutil.ParseDurationSecond``: a number of seconds or a Go duration string."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if text == "":
        return 0.0
    if re.fullmatch(r"\d+", text):
        return float(text)
    if not re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", text):
        raise ValueError(value)
    return sum(float(num) * _DURATION_UNITS[unit] for num, unit in _DURATION_PART.findall(text))


def _weak_int(value) -> int:
    """``mapstructure.WeakDecode`` into a Go int, as the KV engine decodes ``options.cas``.

    Vault decodes JSON numbers as ``json.Number``, so ``2.0`` or ``1.5`` fail like ``"abc"`` does.
    """
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value or "0"
        if re.fullmatch(r"[+-]?0[0-7]+", text):  # Go's base-0 octal
            return int(text, 8)
        if text != text.strip():
            raise ValueError(value)
        return int(text, 0)
    raise ValueError(value)


def _int_list(value) -> list[int]:
    """Vault's ``TypeCommaIntSlice``: a list of ints/strings or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        value = [value]
    return [_weak_int(item) for item in value]


def _parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``, with anything unparseable as false."""
    return text in ("1", "t", "T", "true", "TRUE", "True")


# --- data kept by the server --------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as received (also ones answered by a fault)."""

    method: str
    path: str  # URL path without the query, percent-decoded, e.g. "/v1/secret/data/agentidp/..."
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: object | None = None
    status: int | None = None  # the status answered; None while running or when the socket was dropped
    received_at: float = field(default_factory=time.time)
    done: bool = False  # handled: answered, or dropped on purpose


@dataclass
class _Version:
    data: dict | None
    created: int  # ns since the epoch
    deleted: int | None = None
    destroyed: bool = False

    def gone(self, now_ns: int) -> bool:
        return self.destroyed or (self.deleted is not None and self.deleted <= now_ns)

    def metadata(self) -> dict:
        return {
            "created_time": _rfc3339(self.created),
            "custom_metadata": None,
            "deletion_time": _rfc3339(self.deleted),
            "destroyed": self.destroyed,
        }


@dataclass
class _Key:
    created: int
    updated: int = 0
    current: int = 0
    oldest: int = 0
    cas_required: bool = False
    max_versions: int = 0
    versions: dict[int, _Version] = field(default_factory=dict)


@dataclass
class _Token:
    id: str
    accessor: str
    policies: list[str]
    created: float
    ttl: float | None
    renewable: bool
    max_ttl: float | None
    expires_at: float | None
    path: str = "auth/token/create"
    renewals: int = 0
    last_renewal: float | None = None
    revoked: bool = False

    @property
    def max_expires_at(self) -> float | None:
        return None if self.max_ttl is None else self.created + self.max_ttl

    def valid(self, now: float) -> bool:
        if self.revoked:
            return False
        return all(limit is None or now < limit for limit in (self.expires_at, self.max_expires_at))


@dataclass
class _Fault:
    kind: str
    path: str | None
    method: str | None
    times: int | None
    status: int | None
    delay: float | None

    def matches(self, req: RecordedRequest) -> bool:
        if self.path is not None and self.path not in req.path:
            return False
        if self.method is None:
            return True
        method = self.method.upper()
        return method == req.method or (method == "LIST" and VaultTestServer._operation(req) == "list")


@dataclass
class _Reply:
    status: int
    body: object = None  # JSON value; None means no body
    raw: bytes | None = None  # sent as is instead of body
    content_type: str = JSON
    drop: bool = False  # close the socket without answering


def _error(status: int, *messages: str) -> _Reply:
    return _Reply(status, {"errors": list(messages)})


def _envelope(data, *, mount_type: str | None = "kv", auth=None, warnings=None) -> dict:
    body = {
        "request_id": str(uuid.uuid4()),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": warnings,
        "auth": auth,
    }
    if mount_type is not None:
        body["mount_type"] = mount_type
    return body


# --- HTTP plumbing ------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address, vault: VaultTestServer):
        self.vault = vault
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):  # client went away, socket shut down by us...
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "VaultTestServer"

    def log_message(self, format, *args):  # quiet
        pass

    def version_string(self) -> str:
        return self.server_version

    def setup(self):
        super().setup()
        self.server.vault._register_connection(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.vault._unregister_connection(self.connection)

    def _handle(self):
        url = urlsplit(self.path)
        body = self._read_body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        req = RecordedRequest(
            method=self.command,
            path=unquote(url.path),
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers=dict(self.headers.items()),
            body=body,
            json=parsed,
        )
        vault: VaultTestServer = self.server.vault
        vault._record(req)
        try:
            reply = vault._serve(req)
        except Exception as exc:  # a bug in the double: say so instead of dropping the connection
            traceback.print_exc()
            reply = _error(500, f"VaultTestServer bug: {exc!r}")
        try:
            if reply.drop:
                self._drop()
                return
            req.status = reply.status
            self._send(reply)
        finally:
            req.done = True

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_HEAD = do_PATCH = do_OPTIONS = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: _Reply):
        if reply.raw is not None:
            payload = reply.raw
        elif reply.body is not None:
            payload = json.dumps(reply.body, separators=(",", ":")).encode() + b"\n"
        else:
            payload = b""
        no_body = reply.status == 204 or self.command == "HEAD"
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)  # Vault sets it even on 204
        self.send_header("Cache-Control", "no-store")
        if not no_body:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not no_body:
            self.wfile.write(payload)
        self.wfile.flush()

    def _drop(self):
        """Close the connection without a response (with an RST where the OS allows)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# --- the server ---------------------------------------------------------------------------------


class VaultTestServer:
    """A Vault KV v2 double on 127.0.0.1; see the module docstring."""

    ROOT_TOKEN = "root-test-token"

    def __init__(self, *, mount: str = "secret", max_versions: int = 10):
        self.mount = mount.strip("/")
        self.url = ""
        self.requests: list[RecordedRequest] = []
        #: Called at the end of recover().
        self.on_recover: list[Callable[[], None]] = []
        self._lock = threading.RLock()  # all state below
        self._kv: dict[str, _Key] = {}
        self._max_versions = max_versions
        self._cas_required = False
        self._sealed = False
        self._faults: list[_Fault] = []
        self._tokens: dict[str, _Token] = {}
        self._policies: dict[str, dict[str, set[str]]] = {
            "default": {
                "auth/token/lookup-self": {"read"},
                "auth/token/renew-self": {"update"},
                "auth/token/revoke-self": {"update"},
                "sys/capabilities-self": {"update"},
            },
            "agentidp": {
                f"{self.mount}/data/agentidp/*": {"create", "read", "update", "delete"},
                f"{self.mount}/metadata/agentidp/*": {"delete"},
            },
        }
        self._add_token(self.ROOT_TOKEN, ["root"], ttl=None, renewable=False, max_ttl=None, path="auth/token/root")
        # serving
        self._server_lock = threading.Lock()  # start/stop/go_down/come_up
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._port: int | None = None
        self._stopped = False
        self._interrupt = threading.Event()  # wakes "slow" faults when going down
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._conn_lock = threading.Lock()
        self._cluster_id = str(uuid.uuid4())

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, port: int | None = None) -> VaultTestServer:
        """Listen on 127.0.0.1, on `port` or a free one."""
        with self._server_lock:
            if port is not None:
                self._port = port
            if self._httpd is None:
                self._stopped = False
                self._listen()
        return self

    def stop(self) -> None:
        with self._server_lock:
            self._stopped = True
            self._close()
            with self._conn_lock:
                threads = list(self._handler_threads)
        deadline = time.monotonic() + 2.0
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> VaultTestServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def go_down(self) -> None:
        """Stop listening: connections to ``url`` are refused, open ones are closed. State is kept."""
        with self._server_lock:
            self._close()

    def come_up(self) -> None:
        """Listen again on the same port, with the same state."""
        with self._server_lock:
            if self._httpd is None and not self._stopped and self._port is not None:
                self._listen()

    def _listen(self):
        self._interrupt.clear()
        self._httpd = _HTTPServer(("127.0.0.1", self._port or 0), self)
        self._port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self._port}"
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="vault-test-server", daemon=True
        )
        self._serve_thread.start()

    def _close(self):
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._interrupt.set()
        httpd.shutdown()
        httpd.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(2.0)
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _register_connection(self, conn: socket.socket):
        with self._conn_lock:
            self._connections.add(conn)
            self._handler_threads.add(threading.current_thread())
            closing = self._httpd is None
        if closing:  # accepted just before going down
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _unregister_connection(self, conn: socket.socket):
        with self._conn_lock:
            self._connections.discard(conn)
            self._handler_threads.discard(threading.current_thread())

    # -- tokens and policies ----------------------------------------------------------------

    def create_token(
        self,
        *,
        policies=("agentidp",),
        ttl: float | None = None,
        renewable: bool = False,
        max_ttl: float | None = None,
        no_default_policy: bool = False,
    ) -> str:
        names = set(policies)
        if "root" in names:
            names = {"root"}
        elif not no_default_policy:
            names.add("default")
        if ttl is not None and max_ttl is not None:
            ttl = min(ttl, max_ttl)
        token_id = "hvs." + uuid.uuid4().hex[:24]
        self._add_token(token_id, sorted(names), ttl=ttl, renewable=renewable, max_ttl=max_ttl)
        return token_id

    def _add_token(self, token_id, policies, *, ttl, renewable, max_ttl, path="auth/token/create"):
        now = time.time()
        with self._lock:
            self._tokens[token_id] = _Token(
                id=token_id,
                accessor=uuid.uuid4().hex[:24],
                policies=policies,
                created=now,
                ttl=ttl,
                renewable=renewable,
                max_ttl=max_ttl,
                expires_at=None if ttl is None else now + ttl,
                path=path,
            )

    def revoke_token(self, token: str) -> None:
        with self._lock:
            if token in self._tokens:
                self._tokens[token].revoked = True

    def token_info(self, token: str) -> dict:
        """For assertions: renewals, expires_at (time.time() based, None = never), policies, ..."""
        with self._lock:
            entry = self._tokens[token]
            return {
                "id": entry.id,
                "accessor": entry.accessor,
                "policies": list(entry.policies),
                "renewable": entry.renewable,
                "ttl": entry.ttl,
                "max_ttl": entry.max_ttl,
                "created_at": entry.created,
                "expires_at": entry.expires_at,
                "renewals": entry.renewals,
                "last_renewal": entry.last_renewal,
                "revoked": entry.revoked,
                "valid": entry.valid(time.time()),
            }

    def add_policy(self, name: str, rules: dict[str, list[str] | set[str]]) -> None:
        """Define a policy: path (exact, or a prefix ending in ``*``) -> capabilities."""
        with self._lock:
            self._policies[name] = {path: set(caps) for path, caps in rules.items()}

    # -- state helpers (root view, no HTTP) -------------------------------------------------

    def secret_versions(self, path: str) -> dict[int, dict] | None:
        with self._lock:
            key = self._kv.get(path.strip("/"))
            if key is None:
                return None
            return {
                number: {
                    "data": None if version.data is None else json.loads(json.dumps(version.data)),
                    "created_time": _rfc3339(version.created),
                    "deletion_time": _rfc3339(version.deleted),
                    "destroyed": version.destroyed,
                }
                for number, version in sorted(key.versions.items())
            }

    def write_secret(self, path: str, data: object) -> int:
        """Add a version as is, without the checks of the HTTP API: `data` may be any JSON value (null, a list)."""
        with self._lock:
            return self._add_version(path.strip("/"), json.loads(json.dumps(data))).current

    def set_max_versions(self, n: int) -> None:
        with self._lock:
            self._max_versions = n

    def set_cas_required(self, required: bool) -> None:
        with self._lock:
            self._cas_required = required

    def seal(self) -> None:
        with self._lock:
            self._sealed = True

    def unseal(self) -> None:
        with self._lock:
            self._sealed = False

    # -- request recording and faults -------------------------------------------------------

    def _record(self, req: RecordedRequest):
        with self._lock:
            self.requests.append(req)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def inject(
        self,
        kind: str,
        *,
        path: str | None = None,
        method: str | None = None,
        times: int | None = None,
        status: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Make matching requests misbehave.

        `path` is a substring of the request path (None: every path, sys/health included), `method`
        an HTTP method ("LIST" also matches GET ?list=true), `times` the number of matching requests
        the fault applies to (None: until clear_faults()). Kinds:

        - "status": answer `status` with a Vault-style ``{"errors": [...]}`` body; nothing applied.
        - "slow": sleep `delay` seconds (default 2.0), then handle normally. Combines with the others.
        - "reset": read the request, then close the socket without answering; nothing applied.
        - "applied_then_dropped": handle the request fully, then close the socket without answering.
        - "garbled": 200, ``application/json``, body ``<html>oops``; nothing applied.
        - "shapeless": 200, ``application/json``, body ``{"unexpected": true}``: JSON, but not Vault's
          envelope (a proxy or a different service answering); nothing applied.
        - "missing_key": a successful data read answers ``data.data == {"other": "x"}``; only data
          reads use it up.
        - "charset": error responses say ``application/json; charset=utf-8``; only errors use it up.
        - "upgrading": 400 "Upgrading from non-versioned to versioned data..."; nothing applied.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if kind == "status" and status is None:
            raise ValueError('the "status" fault needs status=')
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (None = until cleared)")
        with self._lock:
            self._faults.append(_Fault(kind, path, method, times, status, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    #: The outages tests name: any `inject` kind, an HTTP status ("403", "500", ...), "down" and "sealed".
    OUTAGES = (
        "down",
        "sealed",
        "slow",
        "403",
        "429",
        "500",
        "502",
        "reset",
        "applied_then_dropped",
        "garbled",
        "shapeless",
    )

    def fail(
        self,
        outage: str,
        *,
        path: str | None = None,
        method: str | None = None,
        times: int | None = None,
        delay: float = 1.2,
    ) -> None:
        """Start one named outage; `path`, `method` and `times` narrow it as for `inject` (not "down"/"sealed")."""
        if outage == "down":
            self.go_down()
        elif outage == "sealed":
            self.seal()
        elif outage.isdigit():
            self.inject("status", status=int(outage), path=path, method=method, times=times)
        else:
            self.inject(outage, path=path, method=method, times=times, delay=delay if outage == "slow" else None)

    def recover(self, *, timeout: float = 5.0) -> None:
        """
        End every outage, then wait until the requests still in flight (a slow write) have been answered.

        Then run `on_recover`'s callbacks (the test fixtures let the app's circuit breaker
        probe again there, as the passing of its open period would).
        """
        self.clear_faults()
        self.unseal()
        self.come_up()
        deadline = time.monotonic() + timeout
        while not all(request.done for request in list(self.requests)) and time.monotonic() < deadline:
            time.sleep(0.02)
        for callback in list(self.on_recover):
            callback()

    def _take_fault(self, req: RecordedRequest, kinds) -> _Fault | None:
        """The first active fault of one of `kinds` matching `req`, using up one of its times."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(req):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _serve(self, req: RecordedRequest) -> _Reply:
        """Answer one request: faults first, then Vault's own handling."""
        slow = self._take_fault(req, {"slow"})
        if slow is not None and self._interrupt.wait(2.0 if slow.delay is None else slow.delay):
            return _Reply(0, drop=True)  # going down while sleeping: nothing applied
        fault = self._take_fault(req, _ACTION_KINDS)
        if fault is None:
            reply = self._process(req)
        elif fault.kind == "status":
            reply = self._fault_status(fault.status, req)
        elif fault.kind == "reset":
            return _Reply(0, drop=True)
        elif fault.kind == "applied_then_dropped":
            self._process(req)
            return _Reply(0, drop=True)
        elif fault.kind == "garbled":
            return _Reply(200, raw=b"<html>oops")
        elif fault.kind == "shapeless":
            return _Reply(200, {"unexpected": True})
        else:  # upgrading
            reply = _error(400, UPGRADING)
        if reply.status >= 400 and self._take_fault(req, {"charset"}) is not None:
            reply.content_type = JSON_CHARSET
        return reply

    def _fault_status(self, status: int, req: RecordedRequest) -> _Reply:
        vault_path = req.path.removeprefix("/v1/")
        messages = {
            400: ["invalid request"],
            401: ["permission denied"],
            403: [PERMISSION_DENIED],
            404: [],
            405: [],
            412: ["required index state not present"],
            413: ["http: request body too large"],
            429: [f'request path "{vault_path}": rate limit quota exceeded'],
            500: ["internal error"],
            501: ["Vault is not initialized"],
            502: ["upstream error"],
            503: ["Vault is sealed"],
        }
        if status == 204:
            return _Reply(204)
        if status < 400:
            return _Reply(status, _envelope(None))
        try:
            default = [HTTPStatus(status).phrase.lower()]
        except ValueError:
            default = ["error"]
        return _error(status, *messages.get(status, default))

    # -- Vault's request handling -----------------------------------------------------------

    def _process(self, req: RecordedRequest) -> _Reply:
        if not req.path.startswith("/v1/"):
            return _error(404)
        vpath = req.path[len("/v1/") :]
        if vpath == "sys/health":
            return self._health(req)
        operation = self._operation(req)
        if operation is None:
            return _error(405)
        with self._lock:
            if self._sealed:
                return _error(503, "Vault is sealed")
            body = None
            if req.method in ("POST", "PUT") and req.body.strip():
                try:
                    body = json.loads(req.body)
                except ValueError:
                    return _error(400, "error parsing JSON")
                if body is not None and not isinstance(body, dict):  # Vault decodes into a map
                    return _error(400, "error parsing JSON")
            if operation == "list" and not vpath.endswith("/"):
                vpath += "/"
            if operation == "write" and vpath.endswith("/"):
                return _error(400, "cannot write to a path ending in '/'")
            token = self._token_for(req)
            if token is None:
                return _error(403, INVALID_TOKEN)
            route, key = self._route(vpath)
            if not self._allowed(token, vpath, self._capability(operation, route, key)):
                return _error(403, PERMISSION_DENIED)
            handler = self._handlers().get((route, operation))
            if route is None:
                return _error(404)
            if handler is None:
                return _error(405, "unsupported operation")
            if route in _KV_ROUTES and any(segment.endswith(".") for segment in key.split("/")):
                return _error(404, "unsupported path")
            reply = handler(req, key, body, token)
        if (
            route == "data"
            and operation == "read"
            and reply.status == 200
            and self._take_fault(req, {"missing_key"}) is not None
        ):
            reply.body["data"]["data"] = {"other": "x"}
        return reply

    @staticmethod
    def _operation(req: RecordedRequest) -> str | None:
        method = req.method
        if method == "LIST" or (method == "GET" and "list" in req.query and _parse_bool(req.query["list"])):
            return "list"
        return {"GET": "read", "HEAD": "read", "POST": "write", "PUT": "write", "DELETE": "delete"}.get(
            method, "patch" if method == "PATCH" else None
        )

    def _route(self, vpath: str) -> tuple[str | None, str]:
        if vpath.startswith("auth/token/") and vpath[len("auth/token/") :] in _TOKEN_ROUTES:
            return vpath[len("auth/token/") :], ""
        if vpath.startswith("sys/policy/") and len(vpath) > len("sys/policy/"):
            return "policy", vpath[len("sys/policy/") :]
        prefix = self.mount + "/"
        if vpath.startswith(prefix):
            sub, slash, key = vpath[len(prefix) :].partition("/")
            if slash and sub in _KV_ROUTES:
                return sub, key
        return None, ""

    def _handlers(self):
        return {
            ("data", "read"): self._data_read,
            ("data", "write"): self._data_write,
            ("data", "delete"): self._data_delete,
            ("metadata", "read"): self._metadata_read,
            ("metadata", "list"): self._metadata_list,
            ("metadata", "delete"): self._metadata_delete,
            ("delete", "write"): self._versions_delete,
            ("undelete", "write"): self._versions_undelete,
            ("destroy", "write"): self._versions_destroy,
            ("lookup-self", "read"): self._lookup_self,
            ("renew-self", "write"): self._renew_self,
            ("revoke-self", "write"): self._revoke_self,
            ("create", "write"): self._token_create,
            ("revoke", "write"): self._token_revoke,
            ("policy", "write"): self._policy_write,
            ("policy", "delete"): self._policy_delete,
        }

    # -- authentication and ACLs ------------------------------------------------------------

    def _token_for(self, req: RecordedRequest) -> _Token | None:
        headers = {name.lower(): value for name, value in req.headers.items()}
        token_id = headers.get("x-vault-token", "")
        if not token_id and headers.get("authorization", "").lower().startswith("bearer "):
            token_id = headers["authorization"][len("bearer ") :].strip()
        entry = self._tokens.get(token_id)
        if entry is None or not entry.valid(time.time()):
            return None
        return entry

    def _capability(self, operation: str, route: str | None, key: str) -> str:
        if operation == "write":
            if route in ("data", "metadata"):
                return "update" if key in self._kv else "create"  # the existence check
            return "update"
        return operation

    def _allowed(self, token: _Token, vpath: str, capability: str) -> bool:
        if "root" in token.policies:
            return True
        rules: dict[str, set[str]] = {}
        for name in token.policies:
            for pattern, caps in self._policies.get(name, {}).items():
                rules.setdefault(pattern, set()).update(caps)
        caps = rules.get(vpath)
        if caps is None:  # the longest matching prefix rule
            prefixes = [p for p in rules if p.endswith("*") and vpath.startswith(p[:-1])]
            caps = rules[max(prefixes, key=len)] if prefixes else set()
        return "deny" not in caps and capability in caps

    # -- KV v2 --------------------------------------------------------------------------------

    def _add_version(self, path: str, data: dict) -> _Key:
        """Add a version and prune past max_versions (the KV engine's ``AddVersion``)."""
        now = time.time_ns()
        key = self._kv.setdefault(path, _Key(created=now))
        key.current += 1
        key.versions[key.current] = _Version(data=data, created=now)
        key.updated = now
        limit = max(key.max_versions, self._max_versions) or 10
        if key.current - key.oldest >= limit:
            to_delete = key.current - limit
            for number in range(key.oldest, to_delete + 1):
                key.versions.pop(number, None)
            key.oldest = to_delete + 1
        return key

    def _data_read(self, req, path, body, token) -> _Reply:
        key = self._kv.get(path)
        raw = req.query.get("version", "")
        try:
            requested = int(raw) if raw != "" else 0
        except ValueError:
            return _error(400, f'error converting input {raw} for field "version"')
        if key is None:
            return _error(404)
        number = requested if requested > 0 else key.current
        version = key.versions.get(number)
        if version is None:
            return _error(404)
        data = {"data": None, "metadata": {**version.metadata(), "version": number}}
        if version.gone(time.time_ns()):
            return _Reply(404, _envelope(data))  # the full envelope, no "errors"
        data["data"] = json.loads(json.dumps(version.data))
        return _Reply(200, _envelope(data))

    def _data_write(self, req, path, body, token) -> _Reply:
        body = body or {}
        data = body.get("data")
        if data is None:
            return _error(400, "no data provided")
        if not isinstance(data, dict):
            return _error(400, f"error converting input for field \"data\": '' expected a map, got '{_go_type(data)}'")
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            return _error(
                400, f"error converting input for field \"options\": '' expected a map, got '{_go_type(options)}'"
            )
        key = self._kv.get(path)
        current = key.current if key else 0
        if options and "cas" in options:
            try:
                cas = _weak_int(options["cas"])
            except ValueError:
                return _error(400, "error parsing check-and-set parameter")
            if cas != current:
                return _error(400, "check-and-set parameter did not match the current version")
        elif self._cas_required or (key is not None and key.cas_required):
            return _error(400, "check-and-set parameter required for this call")
        key = self._add_version(path, data)
        return _Reply(200, _envelope({**key.versions[key.current].metadata(), "version": key.current}))

    def _data_delete(self, req, path, body, token) -> _Reply:
        key = self._kv.get(path)
        if key is not None:
            latest = key.versions.get(key.current)
            if latest is not None and not latest.gone(time.time_ns()):
                latest.deleted = time.time_ns()
        return _Reply(204)

    def _versions_param(self, body) -> list[int] | _Reply:
        try:
            versions = _int_list((body or {}).get("versions"))
        except ValueError:
            return _error(400, 'error converting input for field "versions"')
        return versions or _error(400, "no version number provided")

    def _versions_delete(self, req, path, body, token) -> _Reply:
        return self._versions_apply(path, body, self._soft_delete)

    def _versions_undelete(self, req, path, body, token) -> _Reply:
        return self._versions_apply(path, body, self._undelete)

    def _versions_destroy(self, req, path, body, token) -> _Reply:
        return self._versions_apply(path, body, self._destroy)

    def _versions_apply(self, path, body, action) -> _Reply:
        versions = self._versions_param(body)
        if isinstance(versions, _Reply):
            return versions
        key = self._kv.get(path)
        for number in versions if key else ():
            version = key.versions.get(number)
            if version is not None and not version.destroyed:
                action(version)
        return _Reply(204)

    @staticmethod
    def _soft_delete(version: _Version):
        now = time.time_ns()
        if version.deleted is None or version.deleted > now:
            version.deleted = now

    @staticmethod
    def _undelete(version: _Version):
        version.deleted = None

    @staticmethod
    def _destroy(version: _Version):
        version.destroyed = True
        version.data = None

    def _metadata_read(self, req, path, body, token) -> _Reply:
        key = self._kv.get(path)
        if key is None:
            return _error(404)
        versions = {
            str(number): {k: v for k, v in version.metadata().items() if k != "custom_metadata"}
            for number, version in sorted(key.versions.items())
        }
        return _Reply(
            200,
            _envelope(
                {
                    "cas_required": key.cas_required,
                    "created_time": _rfc3339(key.created),
                    "current_version": key.current,
                    "custom_metadata": None,
                    "delete_version_after": "0s",
                    "max_versions": key.max_versions,
                    "oldest_version": key.oldest,
                    "updated_time": _rfc3339(key.updated),
                    "versions": versions,
                }
            ),
        )

    def _metadata_list(self, req, path, body, token) -> _Reply:
        prefix = path.lstrip("/")  # ends in "/" (added for LIST, as Vault does) unless it is the root
        keys = set()
        for name in self._kv:
            if name.startswith(prefix) and name != prefix:
                head, slash, _ = name[len(prefix) :].partition("/")
                keys.add(head + slash)
        if not keys:
            return _error(404)
        return _Reply(200, _envelope({"keys": sorted(keys)}))

    def _metadata_delete(self, req, path, body, token) -> _Reply:
        self._kv.pop(path, None)
        return _Reply(204)

    # -- sys/health ---------------------------------------------------------------------------

    def _health(self, req: RecordedRequest) -> _Reply:
        if req.method not in ("GET", "HEAD"):
            return _error(405)
        codes = {"activecode": 200, "sealedcode": 503}
        for name in (
            "uninitcode",
            "sealedcode",
            "standbycode",
            "activecode",
            "drsecondarycode",
            "performancestandbycode",
        ):
            if name in req.query:
                try:
                    codes[name] = int(req.query[name])
                except ValueError:
                    return _error(400)
        with self._lock:
            sealed = self._sealed
        body = {
            "initialized": True,
            "sealed": sealed,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(time.time()),
            "version": VAULT_VERSION,
            "enterprise": False,
        }
        if not sealed:
            body["cluster_name"] = "vault-cluster-test"
            body["cluster_id"] = self._cluster_id
        return _Reply(codes["sealedcode"] if sealed else codes["activecode"], body)

    # -- token self-service -------------------------------------------------------------------

    def _lookup_self(self, req, path, body, token: _Token) -> _Reply:
        now = time.time()
        data = {
            "accessor": token.accessor,
            "creation_time": int(token.created),
            "creation_ttl": int(token.ttl or 0),
            "display_name": "root" if token.path == "auth/token/root" else "token",
            "entity_id": "",
            "expire_time": None if token.expires_at is None else _rfc3339(int(token.expires_at * 1e9)),
            "explicit_max_ttl": int(token.max_ttl or 0),
            "id": token.id,
            "issue_time": _rfc3339(int(token.created * 1e9)),
            "meta": None,
            "num_uses": 0,
            "orphan": token.path == "auth/token/root",
            "path": token.path,
            "policies": list(token.policies),
            "renewable": token.renewable,
            "ttl": 0 if token.expires_at is None else max(0, int(token.expires_at - now)),
            "type": "service",
        }
        if token.last_renewal is not None:
            data["last_renewal"] = _rfc3339(int(token.last_renewal * 1e9))
            data["last_renewal_time"] = int(token.last_renewal)
        return _Reply(200, _envelope(data, mount_type="token"))

    def _renew_self(self, req, path, body, token: _Token) -> _Reply:
        if not token.renewable:
            return _error(400, "lease is not renewable")
        increment = (body or {}).get("increment")
        try:
            wanted = _parse_duration(increment) if increment not in (None, "", 0) else token.ttl
        except ValueError:
            return _error(400, f'error converting input {increment} for field "increment"')
        now = time.time()
        warnings = None
        if wanted is not None and token.max_expires_at is not None:
            left = max(0.0, token.max_expires_at - now)
            if wanted > left:
                shown = int(left) if left >= 1 else left  # Vault shows whole seconds
                warnings = [
                    f'TTL of "{_go_duration(wanted)}" exceeded the effective max_ttl of "{_go_duration(shown)}"; '
                    "TTL value is capped accordingly"
                ]
                wanted = left
        if wanted is not None:
            token.expires_at = now + wanted
        token.renewals += 1
        token.last_renewal = now
        auth = {
            "client_token": token.id,
            "accessor": token.accessor,
            "policies": list(token.policies),
            "token_policies": list(token.policies),
            "identity_policies": None,
            "metadata": None,
            "lease_duration": int(wanted or 0),
            "renewable": token.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": False,
            "mfa_requirement": None,
            "num_uses": 0,
        }
        return _Reply(200, _envelope(None, mount_type="token", auth=auth, warnings=warnings))

    def _revoke_self(self, req, path, body, token: _Token) -> _Reply:
        token.revoked = True
        return _Reply(204)

    # -- administration, as a root token does it in test set-up (tests/vault_fixtures.py) ----

    def _token_create(self, req, path, body, token: _Token) -> _Reply:
        body = body or {}
        try:
            ttl = _parse_duration(body["ttl"]) if body.get("ttl") not in (None, "") else None
            period = _parse_duration(body["period"]) if body.get("period") not in (None, "") else None
            max_ttl = _parse_duration(body["explicit_max_ttl"]) if body.get("explicit_max_ttl") else None
        except ValueError:
            return _error(400, "error parsing duration")
        policies = [str(name) for name in body.get("policies") or []] or list(token.policies)
        names = set(policies)
        if not body.get("no_default_policy") and "root" not in names:
            names.add("default")
        token_id = "hvs." + uuid.uuid4().hex[:24]
        renewable = body.get("renewable")
        self._add_token(
            token_id,
            sorted(names),
            ttl=period or ttl,
            renewable=True if renewable is None else bool(renewable),
            max_ttl=max_ttl,
        )
        created = self._tokens[token_id]
        auth = {
            "client_token": token_id,
            "accessor": created.accessor,
            "policies": created.policies,
            "token_policies": created.policies,
            "metadata": body.get("meta"),
            "lease_duration": int(created.ttl or 0),
            "renewable": created.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": bool(body.get("no_parent")),
            "num_uses": 0,
        }
        return _Reply(200, _envelope(None, mount_type="token", auth=auth))

    def _token_revoke(self, req, path, body, token: _Token) -> _Reply:
        target = self._tokens.get(str((body or {}).get("token", "")))
        if target is not None:
            target.revoked = True
        return _Reply(204)

    def _policy_write(self, req, path, body, token: _Token) -> _Reply:
        text = (body or {}).get("policy")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "'policy' parameter not supplied or empty")
        rules = {
            glob: {cap.strip().strip('"') for cap in caps.split(",") if cap.strip()}
            for glob, caps in _HCL_RULE.findall(text)
        }
        if not rules:
            return _error(400, "failed to parse policy")
        self._policies[path] = rules
        return _Reply(204)

    def _policy_delete(self, req, path, body, token: _Token) -> _Reply:
        self._policies.pop(path, None)
        return _Reply(204)


def main() -> None:
    """Serve a test Vault on a fixed port, to run the suite's real-Vault mode against it by hand."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    server = VaultTestServer()
    server.start(port=args.port)
    print(f"VAULT_ADDR={server.url} VAULT_TOKEN={server.ROOT_TOKEN}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


def _go_type(value) -> str:
    return {str: "string", int: "int", float: "float64", bool: "bool", list: "[]interface {}"}.get(
        type(value), type(value).__name__
    )


if __name__ == "__main__":
    main()
