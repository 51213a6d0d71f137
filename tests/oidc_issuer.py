"""
An OpenID Connect issuer in the test process: a discovery document and a JWK Set over real
HTTP (or https, with a CA made for the run), private keys to sign tokens with, and switches
for the faults a key fetcher must survive (down, slow, dripping, garbage, oversized,
redirecting, rotated keys, a discovery document naming another issuer).

    with OidcIssuer() as issuer:
        token = issuer.mint({"sub": "system:serviceaccount:ci:builder", "aud": "agentidp"})
        issuer.requests["/jwks"]  # how many times the keys were fetched

The issuer listens on 127.0.0.1: the fetcher refuses loopback unless a test allows it
(AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS, and AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK for http).
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"


class OidcIssuer:
    """
    The issuer. Its base URL is its `issuer`; fault switches apply to every path until `up()`.
    `requests` counts the requests each path received, faults included.
    """

    def __init__(self, *, tls_dir: Path | None = None) -> None:
        #: The CA certificate (PEM file) clients must trust, when serving https.
        self.ca_bundle: Path | None = None
        self._tls = _server_context(tls_dir, self) if tls_dir is not None else None
        self.requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._generation = 0
        self.keys = _new_keys(self._generation)
        self.up()
        self._server = _Server(("127.0.0.1", 0), _Handler, issuer=self)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        scheme = "https" if self._tls is not None else "http"
        self.issuer = f"{scheme}://127.0.0.1:{self.port}"
        self.jwks_uri = self.issuer + JWKS_PATH
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="oidc-issuer", daemon=True
        )

    # --- Lifecycle ---

    def start(self) -> OidcIssuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OidcIssuer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- Tokens ---

    def mint(
        self, claims: dict[str, Any], *, alg: str = "ES256", kid: str | None = None, headers: dict | None = None
    ) -> str:
        """A JWT signed by the current key for `alg`; `kid` overrides the header's kid (the key still signs)."""
        key = self.key_for(alg)
        header = {"alg": alg, "typ": "JWT", "kid": kid or key.kid, **(headers or {})}
        return jwt.encode(header, {"iss": self.issuer, **claims}, key)

    def key_for(self, alg: str) -> ECKey | RSAKey | OKPKey:
        """The current private key that signs `alg`."""
        return next(key for key in self.keys.keys if key.alg == alg)

    def public_jwks(self) -> dict:
        return {"keys": [key.as_dict(private=False) for key in self.keys.keys]}

    # --- Fault switches ---

    def up(self) -> None:
        """Answer normally again: every fault switched off (the keys stay as they are)."""
        with self._lock:
            self._down = False
            self._delay = 0.0
            self._drip = 0.0
            self._garbage: bytes | None = None
            self._oversized: int | None = None
            self._declare_length = True
            self._redirect: tuple[str, str | None] | None = None
            self._announced_issuer: str | None = None

    def down(self) -> None:
        """Answer every request with 503."""
        with self._lock:
            self._down = True

    def slow(self, seconds: float, *, drip: float = 0.0) -> None:
        """Wait `seconds` before answering; with `drip`, then send the answer one byte every `drip` seconds."""
        with self._lock:
            self._delay = seconds
            self._drip = drip

    def rotate(self) -> None:
        """Replace every key with new ones (new kids): tokens signed before no longer verify."""
        with self._lock:
            self._generation += 1
            self.keys = _new_keys(self._generation)

    def garbage(self, body: bytes = b"<html>not json</html>") -> None:
        """Answer 200 with `body` (not JSON by default; or JSON nested too deep, an array, ...)."""
        with self._lock:
            self._garbage = body

    def oversized(self, size: int = 1 << 20, *, declare_length: bool = True) -> None:
        """Answer with a JSON body of `size` bytes; without `declare_length`, no Content-Length: read to the end."""
        with self._lock:
            self._oversized = size
            self._declare_length = declare_length

    def redirect_to(self, url: str, *, path: str | None = None) -> None:
        """Answer requests for `path` (every path by default) with 302 to `url`, relative or absolute."""
        with self._lock:
            self._redirect = (url, path)

    def announce_issuer(self, issuer: str) -> None:
        """Name `issuer` in the discovery document instead of this one."""
        with self._lock:
            self._announced_issuer = issuer

    # --- Answers ---

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes, float, float]:
        """Status, headers, body, delay and drip for a GET of `path` under the current switches."""
        with self._lock:
            self.requests[path] += 1
            delay, drip = self._delay, self._drip
            if self._down:
                return 503, {}, b'{"error": "down"}', delay, drip
            if self._redirect is not None and self._redirect[1] in (None, path):
                return 302, {"Location": self._redirect[0]}, b"", delay, drip
            if self._garbage is not None:
                return 200, {"Content-Type": "text/html"}, self._garbage, delay, drip
            if self._oversized is not None:
                body = json.dumps({"keys": [], "padding": "x" * self._oversized}).encode()
                headers = {"Content-Length": str(len(body))} if self._declare_length else {}
                return 200, {"Content-Type": "application/json", **headers}, body, delay, drip
            if path == DISCOVERY_PATH:
                document = {"issuer": self._announced_issuer or self.issuer, "jwks_uri": self.jwks_uri}
            elif path == JWKS_PATH:
                document = self.public_jwks()
            else:
                return 404, {}, b"", delay, drip
        body = json.dumps(document).encode()
        return 200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body, delay, drip


def _new_keys(generation: int) -> KeySet:
    """One private key per algorithm the tests sign with, kids naming their generation."""
    parameters = {"use": "sig"}
    return KeySet(
        [
            ECKey.generate_key("P-256", parameters={**parameters, "alg": "ES256", "kid": f"es256-{generation}"}),
            RSAKey.generate_key(2048, parameters={**parameters, "alg": "RS256", "kid": f"rs256-{generation}"}),
            OKPKey.generate_key("Ed25519", parameters={**parameters, "alg": "EdDSA", "kid": f"eddsa-{generation}"}),
        ]
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, *, issuer: OidcIssuer) -> None:
        self.issuer = issuer
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (the fetcher's deadline) is expected here, not a test failure."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        status, headers, body, delay, drip = self.server.issuer.answer(self.path.partition("?")[0])
        time.sleep(delay)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if not drip:
            self.wfile.write(body)
            return
        for index in range(len(body)):
            self.wfile.write(body[index : index + 1])
            self.wfile.flush()
            time.sleep(drip)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the counter is what tests look at."""


# --- A CA for the https issuer ------------------------------------------------------------------

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _server_context(directory: Path, issuer: OidcIssuer) -> ssl.SSLContext:
    """Make a CA and a certificate for 127.0.0.1 and localhost under `directory`; return the server's TLS context."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AgentIdP test CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    alternative_names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf_cert = (
        _builder(leaf_name, ca_name, leaf_key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    issuer.ca_bundle = directory / "ca.pem"
    issuer.ca_bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.pem").write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    return context


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, now: datetime.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
