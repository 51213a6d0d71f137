"""
Fetch JSON from a URL that someone else chose (a JWKS, an OpenID discovery document), without
letting it reach what it must not: the one hardened fetcher for key URLs.

A key URL is an SSRF surface: whoever registers it, or an issuer's discovery document, decides
where AgentIdP connects. So the fetcher speaks https only (http to loopback is a development
switch), resolves the host itself and refuses private, loopback, link-local, reserved,
multicast and shared addresses unless an operator allowed their network, then connects to an
address it checked (never a second DNS lookup: no rebinding), verifying the certificate against
the hostname. Time is bounded per read and overall, the body is capped, redirects stay on the
same origin, and nothing from the environment (proxies, cookies) takes part. The response body
is never logged nor put in an exception: it may be anything.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import http.client
import io
import ipaddress
import json
import re
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
MAX_REDIRECTS = 3
USER_AGENT = "AgentIdP"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"https": 443, "http": 80}
#: Letters, digits, hyphens and dots (and the underscores some internal names carry): no IDN, no spaces.
_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?$")
#: IPv6 prefixes that carry an IPv4 address which the packet may end up at: NAT64 (RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class FetchError(Exception):
    """
    A key URL could not be fetched. `reason` is a short word safe for logs (timeout, too_large,
    http_status, not_json, tls, connect, dns, ...); the message adds a little more, never the body.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


class FetchRefused(FetchError):
    """The fetch was refused by policy before or instead of following it: scheme, address or redirect."""


class _Refusal(ValueError):
    """Why check_key_url refuses a URL: a ValueError for the API, with the reason fetch_json reports."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class _Target:
    """Where a checked URL points: its scheme, host (no brackets), port, and request path with query."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


# --- Static checks (no network) ------------------------------------------------------------------


def check_key_url(url: str) -> str:
    """
    Return `url` if AgentIdP may fetch keys from it; raise ValueError saying why not.

    Static only (the management API calls it when a key URL is registered): the scheme, the
    parts a URL must not have, and an IP-literal host. A DNS name is checked again, by what it
    resolves to, each time fetch_json connects.
    """
    _target(url)
    return url


def _target(url: str) -> _Target:
    if not isinstance(url, str) or not url:
        raise _Refusal("refused_url", "The key URL must be a non-empty string.")
    if len(url) > MAX_URL_LENGTH:
        raise _Refusal("refused_url", f"The key URL must be at most {MAX_URL_LENGTH} characters long.")
    if not url.isascii() or any(char.isspace() or not char.isprintable() for char in url):
        raise _Refusal(
            "refused_url", "The key URL must be ASCII without spaces or control characters (percent-encode the rest)."
        )
    if "#" in url:
        raise _Refusal("refused_url", "The key URL must not have a fragment (#...).")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Refusal("refused_url", "The key URL cannot be read as a URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _Refusal("refused_scheme", "The key URL must use https.")
    if "@" in parts.netloc:
        raise _Refusal("refused_url", "The key URL must not carry a user name or password (user:pass@).")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _Refusal("refused_url", "The key URL must name a host.")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise _Refusal("refused_url", "The key URL's port must be a number from 1 to 65535.") from None
    address = _ip_literal(host)
    if address is None and not _HOSTNAME.match(host):
        raise _Refusal(
            "refused_url", "The key URL's host must be a DNS name in ASCII (punycode for international names)."
        )
    if scheme == "http" and not _http_allowed(host, address):
        raise _Refusal("refused_scheme", "The key URL must use https (plain http is for loopback in development only).")
    if address is not None and not address_allowed(address):
        raise _Refusal(
            "refused_address",
            "The key URL's host is a private, loopback, link-local or reserved address, which is not allowed.",
        )
    path = parts.path or "/"
    return _Target(scheme, host, port, f"{path}?{parts.query}" if parts.query else path)


def _ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host names, including the short and numeric forms (127.1, 2130706433)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # What the resolver would read as IPv4: 127.1, 0x7f000001, 2130706433, 017700000001.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _http_allowed(host: str, address: IPAddress | None) -> bool:
    if not settings.AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK:
        return False
    return host == "localhost" if address is None else address.is_loopback


def address_allowed(address: IPAddress) -> bool:
    """
    Whether a key URL may reach this address: a public one, or one inside
    AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS. An IPv6 address that carries an IPv4 one (mapped,
    NAT64, 6to4, Teredo) must pass for both.
    """
    if any(address in network for network in _allowed_networks() if network.version == address.version):
        return True
    if not _public(address):
        return False
    embedded = _embedded_ipv4(address)
    return embedded is None or address_allowed(embedded)


def _public(address: IPAddress) -> bool:
    # is_global leaves out private, shared (100.64/10), loopback, link-local (and so 169.254.169.254),
    # reserved and unspecified ranges; multicast is named because some multicast ranges count as global.
    return address.is_global and not (
        address.is_multicast or address.is_private or address.is_reserved or address.is_link_local
    )


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@functools.cache
def _allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for cidr in settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS: {cidr!r} is not a network.") from exc
    return tuple(networks)


@functools.cache
def _tls_context(ca_bundle: str) -> ssl.SSLContext:
    """
    The client TLS context: certificates verified against the hostname, by the system's CAs
    and, if one is configured, a bundle of more (a cluster's own CA beside the public roots
    that GitHub's or GitLab's issuers use).
    """
    context = ssl.create_default_context()
    try:
        if ca_bundle:
            context.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ImproperlyConfigured(f"AGENTIDP_KEY_FETCH_CA_BUNDLE: cannot load {ca_bundle!r}.") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@receiver(setting_changed)
def _forget_fetch_settings(*, setting: str, **kwargs: object) -> None:
    if setting in ("AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS", "AGENTIDP_KEY_FETCH_CA_BUNDLE"):
        _allowed_networks.cache_clear()
        _tls_context.cache_clear()


# --- Fetching --------------------------------------------------------------------------------------


def fetch_json(url: str) -> dict:
    """
    GET `url` and return the JSON object it answers with.

    Raises FetchRefused when policy forbids the URL, an address its host resolves to, or a
    redirect (to another origin, or more than MAX_REDIRECTS); FetchError for everything else
    (dns, connect, tls, timeout, http_status, too_large, not_json). Every hop and all of its
    reading share one deadline.
    """
    timeout = float(settings.AGENTIDP_KEY_FETCH_TIMEOUT_SECONDS)
    deadline = time.monotonic() + 2 * timeout  # one connect and one read's worth, for all hops together
    target = _checked_target(url)
    origin = target.origin
    for _hop in range(MAX_REDIRECTS + 1):
        status, location, body = _get(target, timeout=timeout, deadline=deadline)
        if status in _REDIRECTS and location is not None:
            target = _redirect_target(urljoin(_url_of(target), location), origin)
            continue
        if status != 200:
            raise FetchError("http_status", f"the server answered {status}")
        return _json_object(body)
    raise FetchRefused("redirect_refused", f"more than {MAX_REDIRECTS} redirects")


def _checked_target(url: str) -> _Target:
    try:
        return _target(url)
    except _Refusal as exc:
        raise FetchRefused(exc.reason, str(exc)) from None


def _redirect_target(url: str, origin: tuple[str, str, int]) -> _Target:
    try:
        target = _target(url)
    except _Refusal:
        raise FetchRefused("redirect_refused", "a redirect to a URL that is not allowed") from None
    if target.origin != origin:
        raise FetchRefused("redirect_refused", "a redirect to another scheme, host or port")
    return target


def _url_of(target: _Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.scheme}://{host}:{target.port}{target.path}"


def _get(target: _Target, *, timeout: float, deadline: float) -> tuple[int, str | None, bytes]:
    """One GET: the status, the Location header, and the body (read only when the status is 200)."""
    addresses = _resolve(target, timeout=_left(timeout, deadline))
    connection = _connection(target, addresses, timeout=timeout, deadline=deadline)
    try:
        try:
            connection.connect()
        except FetchError:
            raise
        except ssl.SSLError as exc:
            raise FetchError("tls", type(exc).__name__) from None
        except TimeoutError:
            raise FetchError("timeout", "connecting") from None
        except OSError as exc:
            raise FetchError("connect", type(exc).__name__) from None
        return _exchange(connection, target)
    finally:
        connection.close()


def _exchange(connection: http.client.HTTPConnection, target: _Target) -> tuple[int, str | None, bytes]:
    limit = int(settings.AGENTIDP_KEY_FETCH_MAX_BYTES)
    try:
        connection.putrequest("GET", target.path, skip_accept_encoding=True)
        connection.putheader("Accept", "application/json")
        connection.putheader("Accept-Encoding", "identity")
        connection.putheader("User-Agent", USER_AGENT)
        connection.putheader("Connection", "close")
        connection.endheaders()
        with connection.getresponse() as response:
            if response.status != 200:
                return response.status, response.getheader("Location"), b""
            declared = response.getheader("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > limit:
                raise FetchError("too_large", f"the body is declared longer than {limit} bytes")
            body = response.read(limit + 1)  # never more than the cap and one byte
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError("timeout", "waiting for the answer") from None
    except ssl.SSLError as exc:
        raise FetchError("tls", type(exc).__name__) from None
    except (http.client.HTTPException, OSError) as exc:
        raise FetchError("protocol", type(exc).__name__) from None
    if len(body) > limit:
        raise FetchError("too_large", f"the body is longer than {limit} bytes")
    return 200, None, body


def _json_object(body: bytes) -> dict:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FetchError("not_json", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise FetchError("not_json", "the body is not a JSON object")
    return document


#: getaddrinfo has no timeout of its own: lookups run here, and a fetch waits for one only until its deadline.
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="agentidp-key-dns")


def _resolve(target: _Target, *, timeout: float) -> list[tuple[socket.AddressFamily, tuple]]:
    """
    Resolve the host once, and refuse it if any address it has is not allowed: an attacker's
    name may hold one public and one private address, and the connection must not pick.
    A resolver slower than the fetch's deadline is a timeout (its lookup finishes unwatched).
    """
    lookup = _resolver.submit(
        socket.getaddrinfo,
        target.host,
        target.port,
        type=socket.SOCK_STREAM,
        proto=socket.IPPROTO_TCP,
        flags=socket.AI_NUMERICSERV,
    )
    try:
        infos = lookup.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        lookup.cancel()
        raise FetchError("timeout", "the host's name was not resolved in time") from None
    except (socket.gaierror, UnicodeError):
        raise FetchError("dns", "the host could not be resolved") from None
    addresses = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if not address_allowed(address):
            raise FetchRefused("refused_address", "the host resolves to an address that is not allowed")
        if (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    if not addresses:
        raise FetchError("dns", "the host has no address")
    return addresses


def _connection(
    target: _Target, addresses: list[tuple[socket.AddressFamily, tuple]], *, timeout: float, deadline: float
) -> http.client.HTTPConnection:
    if target.scheme == "https":
        context = _tls_context(settings.AGENTIDP_KEY_FETCH_CA_BUNDLE or "")
        return _PinnedHTTPSConnection(target, addresses, timeout=timeout, deadline=deadline, context=context)
    return _PinnedHTTPConnection(target, addresses, timeout=timeout, deadline=deadline)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """
    An HTTP connection to the addresses already checked, never to what the host resolves to
    again, whose socket enforces the fetch's deadline on every read and write.
    """

    def __init__(
        self,
        target: _Target,
        addresses: list[tuple[socket.AddressFamily, tuple]],
        *,
        timeout: float,
        deadline: float,
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        last: OSError | None = None
        for family, sockaddr in self._addresses:
            timeout = _left(self.timeout, self._deadline)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            self._wrap()
            self.sock = _DeadlineSocket(self.sock, timeout=self.timeout, deadline=self._deadline)
            return
        raise last or OSError("no address")

    def _wrap(self) -> None:
        """Nothing for plain http; TLS for https."""


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """The same, over TLS: SNI and the certificate checked for the URL's host, not for the address reached."""

    def __init__(
        self,
        target: _Target,
        addresses: list[tuple[socket.AddressFamily, tuple]],
        *,
        timeout: float,
        deadline: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(target, addresses, timeout=timeout, deadline=deadline)
        self._context = context

    def _wrap(self) -> None:
        self.sock.settimeout(_left(self.timeout, self._deadline))
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def _left(timeout: float, deadline: float) -> float:
    """The timeout for the next socket operation: the per-operation one, or what is left of the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("timeout", "the fetch took too long")
    return min(timeout, left)


class _DeadlineSocket:
    """
    A socket whose every read and write gets at most what is left of the fetch's deadline, so
    a server that drips one byte just inside the read timeout cannot hold a worker for long.

    Like socket.socket, it stays open while the response's file is, even after the connection
    closes it (http.client does so as soon as it has the headers of a Connection: close answer).
    """

    def __init__(self, sock: socket.socket, *, timeout: float, deadline: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._deadline = deadline
        self._files = 0
        self._closed = False

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_left(self._timeout, self._deadline))
        self._sock.sendall(data)

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        self._sock.settimeout(_left(self._timeout, self._deadline))
        return self._sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", **kwargs: object) -> io.BufferedReader:
        # http.client reads the answer through this file; SocketIO calls recv_into above.
        self._files += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:
        """Called by SocketIO when the file closes."""
        self._files -= 1
        if self._closed and self._files <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._files <= 0:
            self._sock.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)
