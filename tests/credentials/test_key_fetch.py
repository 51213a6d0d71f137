"""
Fetching the public keys of clients and platforms from URLs someone else chose: what the
fetcher refuses to reach, how it bounds a hostile server, and how the cache spares issuers.

The issuer is tests.oidc_issuer, over real HTTP (and https with a CA made for the test) on
127.0.0.1, which the tests allow on purpose; everything else about the fetcher is as deployed.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OKPKey

from credentials.jwtauth import keysets
from credentials.jwtauth.fetch import FetchError, FetchRefused, check_key_url, fetch_json
from credentials.jwtauth.keysets import (
    KeysUnavailable,
    RemoteKeys,
    forget_keys,
    keyset_from_jwks,
    public_jwks_check,
    remote_keyset,
)
from tests.oidc_fixtures import FETCH_TIMEOUT  # the fixtures themselves come through tests/conftest.py
from tests.oidc_issuer import DISCOVERY_PATH, JWKS_PATH

REFUSED_HOSTS = [
    "10.0.0.1",
    "169.254.169.254",  # cloud metadata
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:10.0.0.1]",
    "0.0.0.0",
    "127.1",  # what the resolver reads as 127.0.0.1
    "2130706433",  # likewise
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "192.168.1.10",
    "[fe80::1]",
    "[fc00::1]",
    "224.0.0.1",
    "[64:ff9b::a00:1]",  # NAT64 for 10.0.0.1
]


class Clock:
    """The key cache's clock (keysets.now), moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(keysets, "now", clock)
    return clock


@pytest.fixture(autouse=True)
def _no_keys_cached():
    forget_keys()
    yield
    forget_keys()


def resolving(mapping: dict[str, list[str]]):
    """
    A getaddrinfo that answers for made-up names: no DNS server is reachable from the tests,
    so a name that resolves to a private address (the attack) can only be made up here.
    Other names go to the real resolver.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in mapping:
            return real(host, port, *args, **kwargs)
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, port, 0, 0) if ":" in address else (address, port),
            )
            for address in mapping[host]
        ]

    return getaddrinfo


# --- check_key_url -------------------------------------------------------------------------------


def test_check_key_url_accepts_an_https_url_with_a_public_host():
    assert check_key_url("https://token.actions.githubusercontent.com/.well-known/jwks") == (
        "https://token.actions.githubusercontent.com/.well-known/jwks"
    )
    assert check_key_url("https://8.8.8.8:8443/keys?v=1") == "https://8.8.8.8:8443/keys?v=1"


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_check_key_url_refuses_a_private_loopback_link_local_or_reserved_address(host):
    with pytest.raises(ValueError, match="private, loopback, link-local or reserved address"):
        check_key_url(f"https://{host}/jwks")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://keys.example.com/jwks", "must use https"),
        ("ftp://keys.example.com/jwks", "must use https"),
        ("file:///etc/passwd", "must use https"),
        ("https://user:pass@keys.example.com/jwks", "user name or password"),
        ("https://keys.example.com/jwks#frag", "fragment"),
        ("https:///jwks", "name a host"),
        ("https://keys.example.com:99999/", "port"),
        ("https://keys.exämple.com/", "ASCII"),
        ("https://keys.example.com/a b", "ASCII"),
        ("https://keys.example.com/\r\nX-Injected: 1", "ASCII"),
        ("https://keys.example.com/" + "a" * 2048, "2048"),
        ("", "non-empty"),
    ],
)
def test_check_key_url_refuses_what_a_key_url_must_not_be(url, why):
    with pytest.raises(ValueError, match=why):
        check_key_url(url)


def test_plain_http_needs_the_development_switch_and_the_loopback_network(settings):
    url = "http://127.0.0.1:8080/jwks"
    with pytest.raises(ValueError, match="https"):
        check_key_url(url)
    settings.AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK = True
    with pytest.raises(ValueError, match="loopback"):
        check_key_url(url)  # the switch alone does not open loopback
    settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert check_key_url(url) == url
    assert check_key_url("http://localhost:8080/jwks")
    with pytest.raises(ValueError, match="https"):
        check_key_url("http://keys.example.com/jwks")  # never plain http beyond loopback


def test_an_allowed_network_opens_its_private_addresses_only(settings):
    settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    assert check_key_url("https://10.20.3.4/jwks")
    with pytest.raises(ValueError, match="private"):
        check_key_url("https://10.21.3.4/jwks")


# --- fetch_json: where it connects -------------------------------------------------------------------


def test_fetch_over_https_verifies_the_issuers_certificate_with_the_configured_ca(oidc_issuer_tls):
    assert oidc_issuer_tls.jwks_uri.startswith("https://")
    assert fetch_json(oidc_issuer_tls.jwks_uri) == oidc_issuer_tls.public_jwks()


def test_fetch_over_https_refuses_a_certificate_no_trusted_ca_signed(oidc_issuer_tls, settings):
    settings.AGENTIDP_KEY_FETCH_CA_BUNDLE = ""  # the system's CAs, which never signed the test CA
    with pytest.raises(FetchError) as caught:
        fetch_json(oidc_issuer_tls.jwks_uri)
    assert caught.value.reason == "tls"
    assert not isinstance(caught.value, FetchRefused)


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_fetch_refuses_a_private_address_before_connecting(host, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", pytest.fail)
    with pytest.raises(FetchRefused) as caught:
        fetch_json(f"https://{host}/jwks")
    assert caught.value.reason == "refused_address"


def test_fetch_refuses_plain_http_without_the_development_switch(oidc_issuer, settings):
    settings.AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK = False
    with pytest.raises(FetchRefused) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "refused_scheme"
    assert oidc_issuer.requests[JWKS_PATH] == 0


def test_fetch_refuses_a_name_that_resolves_to_loopback(oidc_issuer_tls, settings):
    """localhost really resolves to 127.0.0.1 (and ::1) here: the name passes the static check, its addresses do not."""
    settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = []
    url = f"https://localhost:{oidc_issuer_tls.port}{JWKS_PATH}"
    assert check_key_url(url) == url
    with pytest.raises(FetchRefused) as caught:
        fetch_json(url)
    assert caught.value.reason == "refused_address"
    assert oidc_issuer_tls.requests[JWKS_PATH] == 0


@pytest.mark.parametrize(
    "addresses",
    [["10.0.0.1"], ["169.254.169.254"], ["93.184.216.34", "10.0.0.1"], ["fd00::1"]],
    ids=["private", "metadata", "one-public-one-private", "unique-local-v6"],
)
def test_fetch_refuses_a_name_with_any_private_address(addresses, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", resolving({"keys.example.test": addresses}))
    monkeypatch.setattr(socket, "create_connection", pytest.fail)
    with pytest.raises(FetchRefused) as caught:
        fetch_json("https://keys.example.test/jwks")
    assert caught.value.reason == "refused_address"


def test_fetch_resolves_once_and_connects_to_the_address_it_checked(oidc_issuer, monkeypatch):
    """DNS rebinding: a second lookup would now answer 10.0.0.1; the fetch must not make one."""
    lookups = []
    first = resolving({"localhost": ["127.0.0.1"]})
    second = resolving({"localhost": ["10.0.0.1"]})

    def getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        return (first if len(lookups) == 1 else second)(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert fetch_json(f"http://localhost:{oidc_issuer.port}{JWKS_PATH}") == oidc_issuer.public_jwks()
    assert lookups == ["localhost"]


def test_a_resolver_slower_than_the_deadline_is_a_timeout(settings, monkeypatch):
    """getaddrinfo has no timeout of its own: a fetch must not wait on a stuck resolver past its deadline."""
    settings.AGENTIDP_KEY_FETCH_TIMEOUT_SECONDS = 0.2
    release = threading.Event()

    def stuck(*args, **kwargs):
        release.wait(5)
        raise socket.gaierror("too late")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as caught:
            fetch_json("https://keys.example.test/jwks")
    finally:
        release.set()

    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 2


def test_fetch_reports_a_refused_connection(loopback_key_urls):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(FetchError) as caught:
        fetch_json(f"http://127.0.0.1:{port}/jwks")
    assert caught.value.reason == "connect"


# --- fetch_json: redirects ------------------------------------------------------------------------------


def test_fetch_follows_a_redirect_on_the_same_origin(oidc_issuer):
    oidc_issuer.redirect_to(JWKS_PATH, path="/old-jwks")
    assert fetch_json(f"{oidc_issuer.issuer}/old-jwks") == oidc_issuer.public_jwks()
    assert oidc_issuer.requests == {"/old-jwks": 1, JWKS_PATH: 1}


@pytest.mark.parametrize(
    "location",
    [
        "http://localhost:{port}/jwks",  # another host, though the same machine
        "http://127.0.0.1:1/jwks",  # another port
        "https://127.0.0.1:{port}/jwks",  # another scheme
        "http://10.0.0.1/jwks",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://keys.example.com/jwks",
    ],
)
def test_fetch_refuses_a_redirect_to_another_origin(oidc_issuer, location, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", resolving({"keys.example.com": ["93.184.216.34"]}))
    oidc_issuer.redirect_to(location.format(port=oidc_issuer.port))
    with pytest.raises(FetchRefused) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "redirect_refused"
    assert sum(oidc_issuer.requests.values()) == 1


def test_fetch_follows_at_most_three_redirects(oidc_issuer):
    oidc_issuer.redirect_to(JWKS_PATH)  # to itself, for ever
    with pytest.raises(FetchRefused) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "redirect_refused"
    assert oidc_issuer.requests[JWKS_PATH] == 4


# --- fetch_json: what it reads -------------------------------------------------------------------------------


def test_a_slow_issuer_times_out_within_the_timeout(oidc_issuer):
    oidc_issuer.slow(5)
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 2 * FETCH_TIMEOUT + 0.5


def test_a_dripping_issuer_is_cut_off_at_the_overall_deadline(oidc_issuer):
    """One byte every 0.1s never trips the per-read timeout: only the deadline stops it."""
    oidc_issuer.slow(0, drip=FETCH_TIMEOUT / 5)
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 2 * FETCH_TIMEOUT + 0.5


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "read-to-the-end"])
def test_an_oversized_body_is_refused(oidc_issuer, settings, declare_length):
    settings.AGENTIDP_KEY_FETCH_MAX_BYTES = 4096
    oidc_issuer.oversized(4096, declare_length=declare_length)
    with pytest.raises(FetchError) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "too_large"


def test_a_body_of_exactly_the_cap_is_read(oidc_issuer, settings):
    settings.AGENTIDP_KEY_FETCH_MAX_BYTES = 4096
    oidc_issuer.oversized(4096 - len('{"keys": [], "padding": ""}'), declare_length=False)
    assert fetch_json(oidc_issuer.jwks_uri)["keys"] == []


@pytest.mark.parametrize(
    "body",
    [b"<html>SECRET-MARKER</html>", b"[1, 2, 3]", b"[" * 100_000 + b"]" * 100_000, b'"SECRET-MARKER"', b"\xff\xfe"],
    ids=["html", "array", "nested-too-deep", "string", "not-utf8"],
)
def test_a_body_that_is_not_a_json_object_is_refused_without_repeating_it(oidc_issuer, settings, body, caplog):
    settings.AGENTIDP_KEY_FETCH_MAX_BYTES = 300_000
    oidc_issuer.garbage(body)
    with caplog.at_level(logging.DEBUG), pytest.raises(FetchError) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "not_json"
    assert "SECRET-MARKER" not in str(caught.value)
    assert "SECRET-MARKER" not in caplog.text


def test_an_error_status_is_refused(oidc_issuer):
    oidc_issuer.down()
    with pytest.raises(FetchError) as caught:
        fetch_json(oidc_issuer.jwks_uri)
    assert caught.value.reason == "http_status"
    assert "503" in str(caught.value)


# --- remote_keyset ---------------------------------------------------------------------------------------------------


def test_keys_come_from_the_issuers_discovery_document(oidc_issuer):
    keys = remote_keyset(RemoteKeys(issuer=oidc_issuer.issuer), kid="es256-0")
    assert {key.kid for key in keys.keys} == {"es256-0", "rs256-0", "eddsa-0"}
    assert all(not key.is_private for key in keys.keys)
    assert oidc_issuer.requests == {DISCOVERY_PATH: 1, JWKS_PATH: 1}


def test_a_discovery_document_naming_another_issuer_is_refused(oidc_issuer):
    oidc_issuer.announce_issuer("https://token.actions.githubusercontent.com")
    with pytest.raises(KeysUnavailable) as caught:
        remote_keyset(RemoteKeys(issuer=oidc_issuer.issuer), kid=None)
    assert caught.value.reason == "issuer_mismatch"
    assert oidc_issuer.requests[JWKS_PATH] == 0


def test_the_issuer_must_match_exactly_even_a_trailing_slash(oidc_issuer):
    with pytest.raises(KeysUnavailable) as caught:
        remote_keyset(RemoteKeys(issuer=oidc_issuer.issuer + "/"), kid=None)
    assert caught.value.reason == "issuer_mismatch"


def test_a_discovery_document_pointing_at_a_private_jwks_uri_is_refused(oidc_issuer, monkeypatch):
    oidc_issuer.announce_issuer(oidc_issuer.issuer)
    original = oidc_issuer.answer

    def answer(path):
        status, headers, body, delay, drip = original(path)
        if path == DISCOVERY_PATH:
            body = body.replace(oidc_issuer.jwks_uri.encode(), b"https://169.254.169.254/latest/meta-data/")
            headers = {**headers, "Content-Length": str(len(body))}
        return status, headers, body, delay, drip

    monkeypatch.setattr(oidc_issuer, "answer", answer)
    with pytest.raises(KeysUnavailable) as caught:
        remote_keyset(RemoteKeys(issuer=oidc_issuer.issuer), kid=None)
    assert caught.value.reason == "refused_jwks_uri"


def test_cached_keys_are_used_without_asking_again(oidc_issuer, clock, settings):
    source = RemoteKeys(jwks_uri=oidc_issuer.jwks_uri)
    first = remote_keyset(source, kid="es256-0")
    clock.advance(settings.AGENTIDP_KEY_CACHE_SECONDS - 1)
    assert remote_keyset(source, kid="es256-0") is first
    assert remote_keyset(source, kid=None) is first
    assert oidc_issuer.requests[JWKS_PATH] == 1
    clock.advance(1)
    remote_keyset(source, kid="es256-0")
    assert oidc_issuer.requests[JWKS_PATH] == 2


def test_an_unknown_kid_fetches_again_once_per_refresh_period(oidc_issuer, clock, settings):
    source = RemoteKeys(jwks_uri=oidc_issuer.jwks_uri)
    remote_keyset(source, kid="es256-0")
    remote_keyset(source, kid="made-up")  # the fetch just made counts: not asked again yet
    assert oidc_issuer.requests[JWKS_PATH] == 1
    clock.advance(settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS)
    for attempt in range(20):
        keys = remote_keyset(source, kid=f"made-up-{attempt}")
        assert {key.kid for key in keys.keys} == {"es256-0", "rs256-0", "eddsa-0"}
    assert oidc_issuer.requests[JWKS_PATH] == 2
    clock.advance(settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS)
    remote_keyset(source, kid="made-up-again")
    remote_keyset(source, kid="made-up-once-more")
    assert oidc_issuer.requests[JWKS_PATH] == 3


def test_rotated_keys_are_picked_up_through_their_new_kid(oidc_issuer, clock, settings):
    source = RemoteKeys(issuer=oidc_issuer.issuer)
    remote_keyset(source, kid="es256-0")
    clock.advance(settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS)
    oidc_issuer.rotate()
    keys = remote_keyset(source, kid="es256-1")
    assert {key.kid for key in keys.keys} == {"es256-1", "rs256-1", "eddsa-1"}  # the old ones are gone
    assert oidc_issuer.requests[JWKS_PATH] == 2


def test_while_the_issuer_is_down_its_last_good_keys_serve_until_they_are_stale(oidc_issuer, clock, settings, caplog):
    settings.AGENTIDP_KEY_CACHE_SECONDS = 60
    settings.AGENTIDP_KEY_STALE_SECONDS = 600
    source = RemoteKeys(jwks_uri=oidc_issuer.jwks_uri)
    good = remote_keyset(source, kid="es256-0")
    oidc_issuer.down()
    clock.advance(60)
    with caplog.at_level(logging.WARNING, logger="credentials.jwtauth.keysets"):
        assert remote_keyset(source, kid="es256-0") is good
        assert remote_keyset(source, kid="es256-0") is good  # within the refresh period: not asked
    assert oidc_issuer.requests[JWKS_PATH] == 2
    assert len(caplog.records) == 1
    assert oidc_issuer.jwks_uri in caplog.text and "http_status" in caplog.text
    assert all(key.as_dict()["x"] not in caplog.text for key in good.keys if key.key_type != "RSA")

    clock.advance(600 - 60 - 1)
    assert remote_keyset(source, kid="es256-0") is good
    clock.advance(1)
    with pytest.raises(KeysUnavailable) as caught:
        remote_keyset(source, kid="es256-0")
    assert caught.value.reason == "http_status"

    oidc_issuer.up()
    clock.advance(settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS)
    assert remote_keyset(source, kid="es256-0") is good  # fetched again: the same set, parsed once
    assert oidc_issuer.requests[JWKS_PATH] == 4


def test_an_issuer_never_reached_is_asked_once_per_refresh_period(oidc_issuer, clock, settings):
    oidc_issuer.down()
    source = RemoteKeys(jwks_uri=oidc_issuer.jwks_uri)
    for _ in range(5):
        with pytest.raises(KeysUnavailable):
            remote_keyset(source, kid="es256-0")
    assert oidc_issuer.requests[JWKS_PATH] == 1
    clock.advance(settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS)
    with pytest.raises(KeysUnavailable):
        remote_keyset(source, kid="es256-0")
    assert oidc_issuer.requests[JWKS_PATH] == 2


def test_a_jwks_with_no_usable_key_keeps_the_last_good_keys(oidc_issuer, clock, settings):
    source = RemoteKeys(jwks_uri=oidc_issuer.jwks_uri)
    good = remote_keyset(source, kid=None)
    oidc_issuer.garbage(b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    clock.advance(settings.AGENTIDP_KEY_CACHE_SECONDS)
    assert remote_keyset(source, kid=None) is good


def test_concurrent_requests_fetch_once(oidc_issuer):
    oidc_issuer.slow(0.2)
    source = RemoteKeys(jwks_uri=oidc_issuer.jwks_uri)
    results = []
    threads = [threading.Thread(target=lambda: results.append(remote_keyset(source, kid="es256-0"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(results) == 8
    assert len({id(keys) for keys in results}) == 1
    assert oidc_issuer.requests[JWKS_PATH] == 1


def test_remote_keys_name_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        RemoteKeys()
    with pytest.raises(ValueError, match="exactly one"):
        RemoteKeys(jwks_uri="https://a.example/jwks", issuer="https://a.example")


# --- What a JWK Set may hold ----------------------------------------------------------------------------------------


def ec_public(kid: str = "ec-1", crv: str = "P-256") -> dict:
    return ECKey.generate_key(crv, parameters={"kid": kid}).as_dict(private=False)


def rsa_public(bits: int, kid: str = "rsa-1") -> dict:
    """Built with cryptography directly: joserfc warns when it makes a small RSA key."""
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key().public_numbers()

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e), "kid": kid}


def test_public_jwks_check_keeps_public_members_kid_use_and_alg():
    ec = {**ec_public(), "use": "sig", "alg": "ES256", "key_ops": ["verify"], "x5c": ["..."]}
    rsa_key = rsa_public(2048)
    okp = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"}).as_dict(private=False)
    checked = public_jwks_check({"keys": [ec, rsa_key, okp], "extra": 1})
    assert checked == {
        "keys": [
            {key: ec[key] for key in ("kty", "crv", "x", "y", "kid", "use", "alg")},
            rsa_key,
            okp,
        ]
    }


@pytest.mark.parametrize(
    ("jwks", "message"),
    [
        (["not", "a", "dict"], 'JSON object with a "keys" array'),
        ({"keys": "nope"}, 'JSON object with a "keys" array'),
        ({"keys": []}, "from 1 to 10 keys"),
        ({"keys": [ec_public(f"k{index}") for index in range(11)]}, "from 1 to 10 keys"),
        ({"keys": [ec_public("same"), ec_public("same")]}, "different kids"),
        ({"keys": [ECKey.generate_key("P-256").as_dict(private=True)]}, r"keys\[0\] holds private key material"),
        ({"keys": [ec_public(), {"kty": "oct", "k": "c2VjcmV0LWhtYWMta2V5"}]}, r"keys\[1\]: the key type"),
        ({"keys": [rsa_public(1024)]}, r"keys\[0\]: an RSA key must have 2048"),
        ({"keys": [ec_public(crv="P-521")]}, r"keys\[0\]: the curve"),
        ({"keys": [OKPKey.generate_key("X25519").as_dict(private=False)]}, r"keys\[0\]: the curve"),
        ({"keys": [{**ec_public(), "use": "enc"}]}, "for signatures"),
        ({"keys": [{**ec_public(), "use": "x509-svid"}]}, "for signatures"),
        ({"keys": [{**ec_public(), "alg": "HS256"}]}, "alg must be one of ES256"),
        ({"keys": [{**ec_public(), "x": ec_public()["y"]}]}, r"keys\[0\] cannot be read"),
        ({"keys": [{"kty": "EC", "crv": "P-256"}]}, "needs crv, x, y"),
        ({"keys": ["a string"]}, "must be a JSON object"),
    ],
    ids=[
        "list",
        "keys-not-a-list",
        "no-keys",
        "eleven-keys",
        "duplicate-kids",
        "private-ec",
        "hmac-oct",
        "small-rsa",
        "p521",
        "x25519",
        "encryption-key",
        "x509-svid-key",
        "hmac-alg",
        "not-on-curve",
        "missing-members",
        "key-not-a-dict",
    ],
)
def test_public_jwks_check_refuses_what_cannot_verify_a_client_safely(jwks, message):
    with pytest.raises(ValueError, match=message) as caught:
        public_jwks_check(jwks)
    for key in jwks.get("keys", []) if isinstance(jwks, dict) and isinstance(jwks.get("keys"), list) else []:
        for member in ("d", "k", "x", "n"):
            if isinstance(key, dict) and member in key:
                assert key[member] not in str(caught.value)


def test_keyset_from_jwks_skips_keys_it_does_not_accept_and_parses_each_set_once():
    jwks = {
        "keys": [
            ec_public("sig"),
            {**ec_public("enc"), "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0"},
            rsa_public(1024, kid="small"),
            {**ec_public("private"), "d": "AAAA"},
        ]
    }
    keys = keyset_from_jwks(jwks)
    assert [key.kid for key in keys.keys] == ["sig"]
    assert keyset_from_jwks(dict(reversed(list(jwks.items())))) is keys
    with pytest.raises(ValueError):
        keyset_from_jwks({"not": "a jwks"})


def test_a_bad_allowed_network_is_a_configuration_error(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = ["10.0.0.0/33"]
    with pytest.raises(ImproperlyConfigured, match=r"10\.0\.0\.0/33"):
        check_key_url("https://10.0.0.1/jwks")


def test_a_spiffe_bundles_jwt_svid_keys_are_signature_keys_and_its_x509_keys_are_skipped():
    bundle = {"keys": [{**ec_public("jwt"), "use": "jwt-svid"}, {**ec_public("x509"), "use": "x509-svid"}]}

    assert public_jwks_check({"keys": bundle["keys"][:1]})["keys"][0]["use"] == "sig"
    assert [key.kid for key in keyset_from_jwks(bundle).keys] == ["jwt"]
