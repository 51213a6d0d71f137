"""The kit's local verification of AgentIdP access tokens: signature, claims and the key cache."""

from __future__ import annotations

import base64
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from agentidp.resource_server import InsufficientScope, InvalidToken, Settings, TokenVerifier, VerifierUnavailable
from agentidp.resource_server.verify import KeyCache
from tests.oidc_issuer import JWKS_PATH, OidcIssuer
from tests.resource_server.conftest import RESOURCE, access_claims, access_token, kit_settings


def test_a_valid_token_is_verified_with_what_it_says(token_issuer):
    verifier = TokenVerifier(kit_settings(token_issuer))
    claims = access_claims(token_issuer)

    verified = verifier.verify(token_issuer.mint(claims, headers={"typ": "at+jwt"}), scopes=["reports:read"])

    assert verified.subject == claims["sub"] and verified.client_id == "client-1" and verified.jti == claims["jti"]
    assert verified.scopes == {"reports:read", "reports:write"}
    assert verified.audiences == (RESOURCE,)
    assert (verified.expires_at, verified.issued_at) == (claims["exp"], claims["iat"])


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_each_key_verifies_its_own_algorithm(token_issuer, alg):
    verifier = TokenVerifier(kit_settings(token_issuer))

    assert verifier.verify(access_token(token_issuer, alg=alg)).client_id == "client-1"


def test_an_audience_array_naming_this_resource_is_accepted(token_issuer):
    verifier = TokenVerifier(kit_settings(token_issuer, audiences=("https://alias.example/",)))

    assert verifier.verify(access_token(token_issuer, aud=["https://other.example/", RESOURCE]))
    assert verifier.verify(access_token(token_issuer, aud="https://alias.example/"))


@pytest.mark.parametrize(
    "claims, message",
    [
        ({"aud": "https://other.example/api"}, "another resource"),
        ({"aud": RESOURCE + "/"}, "another resource"),
        ({"aud": ["https://other.example/api"]}, "another resource"),
        ({"aud": None}, "another resource"),
        ({"aud": [7]}, "another resource"),
        ({"iss": "https://impostor.example"}, "another server"),
        ({"exp": -31}, "expired"),
        ({"exp": None}, "expired"),
        ({"exp": "never"}, "expired"),
        ({"exp": True}, "expired"),
        ({"nbf": +90}, "not valid yet"),  # well past the 30 s leeway, whatever a slow machine takes
        ({"iat": +90}, "not valid yet"),
        ({"client_id": None}, "lacks a claim"),
        ({"sub": 7}, "lacks a claim"),
        ({"jti": None}, "lacks a claim"),
        ({"scope": ["reports:read"]}, "lacks a claim"),
    ],
)
def test_claims_that_do_not_hold_are_invalid_token(token_issuer, claims, message):
    """Times given as small integers are seconds from now."""
    verifier = TokenVerifier(kit_settings(token_issuer))
    now = int(time.time())
    claims = {
        name: now + value if name in ("exp", "nbf", "iat") and type(value) is int else value
        for name, value in claims.items()
    }

    with pytest.raises(InvalidToken, match=message):
        verifier.verify(access_token(token_issuer, **claims))


def test_times_within_the_leeway_are_accepted(token_issuer):
    verifier = TokenVerifier(kit_settings(token_issuer, leeway_seconds=30))
    now = int(time.time())

    assert verifier.verify(access_token(token_issuer, exp=now - 20, nbf=now + 20, iat=now + 20))


def test_a_token_without_a_required_scope_is_insufficient_scope(token_issuer):
    verifier = TokenVerifier(kit_settings(token_issuer))

    with pytest.raises(InsufficientScope) as raised:
        verifier.verify(access_token(token_issuer, scope="reports:read"), scopes=["reports:read", "reports:delete"])

    assert raised.value.status == 403 and raised.value.required == ("reports:read", "reports:delete")


def segments(token: str) -> list[str]:
    return token.split(".")


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_forged_and_malformed_tokens_are_invalid_token_and_fetch_nothing_they_need_not(token_issuer):
    verifier = TokenVerifier(kit_settings(token_issuer))
    genuine = access_token(token_issuer)
    header, payload, signature = segments(genuine)
    es_kid = token_issuer.key_for("ES256").kid
    public_es = token_issuer.key_for("ES256").as_dict(private=False)
    forged = {
        "tampered claims": f"{header}.{b64({**access_claims(token_issuer), 'scope': 'admin'})}.{signature}",
        "alg none": f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': es_kid})}.{payload}.",
        # The public key used as an HMAC secret: the algorithm is the key's, never the token's.
        "HS256 with the public key": jwt.encode(
            {"alg": "HS256", "typ": "at+jwt", "kid": es_kid},
            access_claims(token_issuer),
            OctKey.import_key(json.dumps(public_es).encode()),
        ),
        "RS256 header, ES256 key": f"{b64({'alg': 'RS256', 'typ': 'at+jwt', 'kid': es_kid})}.{payload}.{signature}",
        "crit": f"{b64({'alg': 'ES256', 'typ': 'at+jwt', 'kid': es_kid, 'crit': ['x'], 'x': 1})}.{payload}.{signature}",
        "typ JWT": token_issuer.mint(access_claims(token_issuer)),
        "no kid": f"{b64({'alg': 'ES256', 'typ': 'at+jwt'})}.{payload}.{signature}",
    }
    for name, token in forged.items():
        with pytest.raises(InvalidToken):
            verifier.verify(token)
        assert name
    fetched = token_issuer.requests[JWKS_PATH]
    for token in ("", "abc", "a.b", "a.b.c.d", "!!!.e30.x", f"{b64([1])}.e30.x", "x" * 40000 + ".a.b"):
        with pytest.raises(InvalidToken, match="malformed"):
            verifier.verify(token)
    assert token_issuer.requests[JWKS_PATH] == fetched


# --- The key cache -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_fetched_once_and_kept_for_their_lifetime(token_issuer):
    clock = Clock()
    cache = KeyCache(kit_settings(token_issuer, keys_ttl_seconds=300), clock=clock)
    kid = token_issuer.key_for("ES256").kid

    for _ in range(5):
        assert cache.key(kid) is not None
    clock.now += 299
    cache.key(kid)
    assert token_issuer.requests[JWKS_PATH] == 1
    clock.now += 2
    cache.key(kid)
    assert token_issuer.requests[JWKS_PATH] == 2


def test_an_unknown_kid_refetches_at_most_once_per_interval(token_issuer):
    clock = Clock()
    cache = KeyCache(kit_settings(token_issuer, refresh_min_interval_seconds=10), clock=clock)
    cache.key(token_issuer.key_for("ES256").kid)

    for n in range(20):
        clock.now += 0.4
        assert cache.key(f"forged-{n}") is None
    # 8 s passed: the first unknown kid came 0.4 s after the first fetch, within the interval.
    assert token_issuer.requests[JWKS_PATH] == 1
    clock.now += 2.5
    cache.key("forged-again")
    assert token_issuer.requests[JWKS_PATH] == 2


def test_a_rolled_over_key_is_found_by_refetching(token_issuer):
    verifier = TokenVerifier(kit_settings(token_issuer, refresh_min_interval_seconds=0))
    assert verifier.verify(access_token(token_issuer))

    token_issuer.rotate()

    assert verifier.verify(access_token(token_issuer))
    assert token_issuer.requests[JWKS_PATH] == 2


def test_the_last_good_keys_verify_while_the_issuer_is_down_until_they_go_stale(token_issuer):
    clock = Clock()
    settings = kit_settings(token_issuer, keys_ttl_seconds=60, keys_stale_seconds=3600)
    cache = KeyCache(settings, clock=clock)
    kid = token_issuer.key_for("ES256").kid
    cache.key(kid)

    token_issuer.down()
    clock.now += 600
    assert cache.key(kid) is not None
    assert token_issuer.requests[JWKS_PATH] == 2  # it tried
    clock.now += 3001
    with pytest.raises(VerifierUnavailable):
        cache.key(kid)


@pytest.mark.parametrize(
    "fault",
    [
        lambda issuer: issuer.down(),
        lambda issuer: issuer.garbage(),
        lambda issuer: issuer.garbage(b"[1, 2]"),
        lambda issuer: issuer.garbage(b"[" * 100000),
        lambda issuer: issuer.oversized(300 * 1024),
        lambda issuer: issuer.oversized(300 * 1024, declare_length=False),
        lambda issuer: issuer.redirect_to("http://169.254.169.254/latest/meta-data/"),
        lambda issuer: issuer.redirect_to("/jwks-elsewhere"),
        lambda issuer: issuer.slow(2),
        lambda issuer: issuer.slow(0, drip=0.05),
    ],
    ids=[
        "down",
        "html",
        "array",
        "deep",
        "oversized",
        "oversized-undeclared",
        "redirect-metadata",
        "redirect-same-host",
        "slow",
        "drip",
    ],
)
def test_an_issuer_that_never_answered_well_leaves_tokens_unjudged_quickly(token_issuer, fault):
    verifier = TokenVerifier(kit_settings(token_issuer))
    token = access_token(token_issuer)
    fault(token_issuer)

    started = time.monotonic()
    with pytest.raises(VerifierUnavailable):
        verifier.verify(token)

    assert time.monotonic() - started < 1.5


def test_keys_without_an_algorithm_of_the_list_or_for_encryption_are_not_used():
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {**OidcIssuer().key_for("ES256").as_dict(private=False), "kid": "enc", "use": "enc"},
            {**OidcIssuer().key_for("ES256").as_dict(private=True), "kid": "private"},
            {**OidcIssuer().key_for("ES256").as_dict(private=False), "kid": "no-alg", "alg": None},
        ]
    }
    from agentidp.resource_server.verify import _usable_keys

    keys = _usable_keys({"keys": [{k: v for k, v in key.items() if v is not None} for key in document["keys"]]})

    assert set(keys) == {"no-alg"} and keys["no-alg"][1] == "ES256"


# --- Configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"issuer": "http://idp.example"},
        {"issuer": "https://idp.example", "jwks_uri": "http://idp.example/jwks"},
        {"issuer": "ftp://idp.example"},
        {"issuer": "https://user:pw@idp.example"},
        {"issuer": "https://idp.example", "resource": ""},
    ],
)
def test_settings_refuse_plain_http_and_odd_urls_unless_allowed(options):
    with pytest.raises(ValueError):
        Settings(**{"resource": RESOURCE, **options})


def test_https_is_verified_against_the_configured_ca(tmp_path):
    with OidcIssuer(tls_dir=tmp_path / "tls") as issuer:
        trusted = TokenVerifier(kit_settings(issuer, allow_http=False, ca_file=str(issuer.ca_bundle)))
        untrusted = TokenVerifier(kit_settings(issuer, allow_http=False))
        token = access_token(issuer)

        assert trusted.verify(token)
        with pytest.raises(VerifierUnavailable):
            untrusted.verify(token)
