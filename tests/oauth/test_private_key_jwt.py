"""
private_key_jwt at the token, introspection and revocation endpoints: a real client
(authlib), assertions minted with joserfc, and the hostile ones that must all be refused.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from django.utils import timezone
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from credentials.models import Agent, GraceKeys
from tests.conftest import assert_logs_keep, form_post
from tests.credentials.test_verified_cache import REDIS_DB, REDIS_HOST, REDIS_PORT, redis_db  # noqa: F401
from tests.factories import AgentFactory
from tests.oauth.conftest import INTROSPECT_URL, REVOKE_URL
from tests.oauth.jwtclients import (
    TOKEN_URL,
    assertion_params,
    client_claims,
    key_credential,
    new_key,
    public_jwks,
    raw_sign,
    sign,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def key():
    return new_key("ES256")


@pytest.fixture
def credential(agent, key):
    return key_credential(agent, jwks=public_jwks(key))


def token_request(client, assertion: str, **extra):
    return form_post(client, TOKEN_URL, assertion_params(assertion, **extra))


def assert_invalid_client(response):
    assert response.status_code == 401, response.content
    assert response.json() == {"error": "invalid_client", "error_description": "Client authentication failed."}
    assert response["Cache-Control"] == "no-store"


# --- A real client --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256", "EdDSA"])
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # the client's own signing; clients still send "EdDSA"
def test_authlib_gets_a_token_with_private_key_jwt_and_introspects_it(live_server, settings, db, alg):
    settings.AGENTIDP_ISSUER = settings.AGENTIDP_AUDIENCE = live_server.url
    key = new_key(alg)
    credential = key_credential(AgentFactory(scopes=["reports:read"]), jwks=public_jwks(key))
    token_endpoint = live_server.url + TOKEN_URL
    session = OAuth2Session(credential.client_id, key, token_endpoint_auth_method="private_key_jwt")
    session.register_client_auth_method(PrivateKeyJWT(token_endpoint, alg=alg))

    with session:  # closed before the live server's thread gives the database back
        token = session.fetch_token(token_endpoint, grant_type="client_credentials")
        session.register_client_auth_method(PrivateKeyJWT(live_server.url + INTROSPECT_URL, alg=alg))
        introspection = session.introspect_token(live_server.url + INTROSPECT_URL, token=token["access_token"])

    assert token["token_type"] == "Bearer" and token["scope"] == "reports:read"
    claims = jwt.decode(token["access_token"], _jwks_key(live_server)).claims
    assert claims["client_id"] == credential.client_id and claims["sub"] == str(credential.agent_id)
    assert introspection.json()["active"] is True
    assert introspection.json()["client_id"] == credential.client_id


def _jwks_key(live_server):
    with requests.Session() as http:
        return KeySet.import_key_set(http.get(live_server.url + "/.well-known/jwks.json", timeout=5).json())


def test_a_key_credential_revokes_its_own_token(client, credential, key):
    access_token = token_request(client, sign(key, client_claims(credential.client_id))).json()["access_token"]

    revoked = form_post(
        client,
        REVOKE_URL,
        {
            **assertion_params(sign(key, client_claims(credential.client_id, aud="http://testserver" + REVOKE_URL))),
            "token": access_token,
        },
    )
    introspected = form_post(
        client,
        INTROSPECT_URL,
        {**assertion_params(sign(key, client_claims(credential.client_id))), "token": access_token},
    )

    assert revoked.status_code == 200
    assert introspected.json() == {"active": False}


@pytest.mark.parametrize(
    "audience", ["http://testserver", "http://testserver/api/v1/token", ["x", "http://testserver"]]
)
def test_the_audience_may_be_the_issuer_or_the_token_endpoint(client, credential, key, audience):
    response = token_request(client, sign(key, client_claims(credential.client_id, aud=audience)))

    assert response.status_code == 200, response.content


def test_client_id_in_the_body_must_be_the_assertions(client, credential, key, agent):
    other = key_credential(agent, jwks=public_jwks(new_key()))

    same = token_request(client, sign(key, client_claims(credential.client_id)), client_id=credential.client_id)
    different = token_request(client, sign(key, client_claims(credential.client_id)), client_id=other.client_id)

    assert same.status_code == 200
    assert different.status_code == 401 and different.json()["error"] == "invalid_client"


def test_previous_keys_verify_during_their_grace_period_only(client, agent):
    old, new = new_key(), new_key()
    credential = key_credential(agent, jwks=public_jwks(new))
    grace = GraceKeys.objects.create(
        credential=credential, jwks=public_jwks(old), valid_until=timezone.now() + datetime.timedelta(hours=1)
    )

    during = token_request(client, sign(old, client_claims(credential.client_id)))
    GraceKeys.objects.filter(pk=grace.pk).update(valid_until=timezone.now() - datetime.timedelta(seconds=1))
    after = token_request(client, sign(old, client_claims(credential.client_id)))
    current = token_request(client, sign(new, client_claims(credential.client_id)))

    assert during.status_code == 200
    assert_invalid_client(after)
    assert current.status_code == 200


def test_keys_from_a_jwks_uri_are_fetched_once_and_rotated_keys_picked_up(client, agent, oidc_issuer, settings):
    settings.AGENTIDP_KEY_REFRESH_MIN_SECONDS = 0
    credential = key_credential(agent, jwks_uri=oidc_issuer.jwks_uri)
    claims = {"iss": credential.client_id, "sub": credential.client_id}

    first = token_request(client, oidc_issuer.mint(client_claims(credential.client_id, **claims)))
    second = token_request(client, oidc_issuer.mint(client_claims(credential.client_id, **claims)))
    oidc_issuer.rotate()
    rotated = token_request(client, oidc_issuer.mint(client_claims(credential.client_id, **claims)))

    assert (first.status_code, second.status_code, rotated.status_code) == (200, 200, 200)
    assert oidc_issuer.requests["/jwks"] == 2  # once, then once more for the new kid


def test_a_jwks_uri_that_cannot_be_fetched_is_503_not_invalid_client(client, agent, oidc_issuer):
    credential = key_credential(agent, jwks_uri=oidc_issuer.jwks_uri)
    oidc_issuer.down()

    response = token_request(client, oidc_issuer.mint(client_claims(credential.client_id)))

    assert response.status_code == 503
    assert response.json()["code"] == "KEYS_UNAVAILABLE"
    assert response["Retry-After"]


@pytest.mark.parametrize("address", ["10.0.0.5", "169.254.169.254", "127.0.0.1"])
def test_a_jwks_uri_at_a_private_address_is_never_fetched(client, agent, key, settings, address):
    """Made past the API's own check (as an old row might be): the fetcher still refuses to connect."""
    credential = key_credential(agent, jwks_uri=f"https://{address}/jwks")

    response = token_request(client, sign(key, client_claims(credential.client_id)))

    assert response.status_code == 503 and response.json()["code"] == "KEYS_UNAVAILABLE"


# --- The hostile sweep ------------------------------------------------------------------------


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unsigned(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{_b64(header)}.{_b64(claims)}.{_b64(signature) if signature else ''}"


def _hs256_with_public_key(credential, key) -> str:
    """The classic confusion: HMAC keyed with the public key's own bytes."""
    secret = json.dumps(key.as_dict(private=False), sort_keys=True).encode()
    return jwt.encode({"alg": "HS256", "kid": key.kid}, client_claims(credential.client_id), OctKey.import_key(secret))


def _ago(seconds: int) -> int:
    return int(time.time()) - seconds


HOSTILE = {
    "alg_none": lambda c, k, a: _unsigned({"alg": "none"}, client_claims(c.client_id)),
    "alg_none_with_signature": lambda c, k, a: _unsigned({"alg": "none"}, client_claims(c.client_id), b"x"),
    "hs256_signed_with_the_public_key": lambda c, k, a: _hs256_with_public_key(c, k),
    "expired": lambda c, k, a: sign(
        k, client_claims(c.client_id, iat=int(time.time()) - 600, exp=int(time.time()) - 300)
    ),
    "not_yet_valid": lambda c, k, a: sign(k, client_claims(c.client_id, nbf=int(time.time()) + 600)),
    "issued_in_the_future": lambda c, k, a: sign(k, client_claims(c.client_id, iat=int(time.time()) + 600)),
    "lives_too_long": lambda c, k, a: sign(k, client_claims(c.client_id, exp=int(time.time()) + 7200)),
    "no_exp": lambda c, k, a: sign(k, client_claims(c.client_id, exp=None)),
    "no_jti": lambda c, k, a: sign(k, client_claims(c.client_id, jti=None)),
    "wrong_aud": lambda c, k, a: sign(k, client_claims(c.client_id, aud="https://other.example/token")),
    "no_aud": lambda c, k, a: sign(k, client_claims(c.client_id, aud=None)),
    "wrong_iss": lambda c, k, a: sign(k, client_claims(c.client_id, iss="someone-else")),
    "iss_is_not_sub": lambda c, k, a: sign(k, client_claims(c.client_id, iss=a.client_id)),
    "unknown_kid": lambda c, k, a: sign(k, client_claims(c.client_id), header={"kid": "not-a-kid-of-ours"}),
    "signed_by_another_key": lambda c, k, a: sign(new_key(), client_claims(c.client_id), header={"kid": k.kid}),
    "another_clients_key": lambda c, k, a: sign(a.key, client_claims(c.client_id), header={"kid": k.kid}),
    "oversized": lambda c, k, a: sign(k, client_claims(c.client_id, padding="x" * 20000)),
    "nested_jwt": lambda c, k, a: sign(k, client_claims(c.client_id), header={"cty": "JWT"}),
    "crit_header": lambda c, k, a: raw_sign(
        k, {"alg": "ES256", "kid": k.kid, "crit": ["exp"], "exp": 1}, client_claims(c.client_id)
    ),
    "five_parts_jwe_shape": lambda c, k, a: "a.b.c.d.e",
    "two_parts": lambda c, k, a: sign(k, client_claims(c.client_id)).rsplit(".", 1)[0],
    "garbage": lambda c, k, a: "not a jwt at all",
    "exp_is_a_string": lambda c, k, a: sign(k, client_claims(c.client_id, exp=str(int(time.time()) + 60))),
    "exp_is_a_bool": lambda c, k, a: sign(k, client_claims(c.client_id, exp=True)),
    "aud_is_a_number": lambda c, k, a: sign(k, client_claims(c.client_id, aud=5)),
    "sub_is_a_list": lambda c, k, a: sign(k, client_claims(c.client_id, sub=[c.client_id])),
    "jti_is_a_number": lambda c, k, a: sign(k, client_claims(c.client_id, jti=12345)),
    "alg_off_the_list": lambda c, k, a: raw_sign(
        RSAKey.generate_key(2048), {"alg": "RS512", "kid": k.kid}, client_claims(c.client_id)
    ),
}


@pytest.fixture
def attacker(db):
    """Another agent's key credential, whose key an attacker holds."""
    attacker_key = new_key("ES256")
    credential = key_credential(AgentFactory(), jwks=public_jwks(attacker_key))
    credential.key = attacker_key
    return credential


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_assertions_are_invalid_client(client, credential, key, attacker, case, caplog):
    assertion = HOSTILE[case](credential, key, attacker)
    caplog.set_level(logging.INFO)

    response = token_request(client, assertion)

    assert response.status_code in (400, 401), response.content
    assert response.json()["error"] in ("invalid_client", "invalid_request")
    if response.status_code == 401:
        assert_invalid_client(response)
    assert_logs_keep(caplog, assertion)


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_keys_named_by_the_assertion_itself_are_never_used(client, credential, key, header):
    attacker_key = new_key("ES256", kid=key.kid)
    pointers = {
        "jku": "https://attacker.example/jwks",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": attacker_key.as_dict(private=False),
        "x5c": ["MIIBattacker"],
    }

    response = token_request(
        client, sign(attacker_key, client_claims(credential.client_id), header={header: pointers[header]})
    )

    assert_invalid_client(response)


def test_an_assertion_is_accepted_once(client, credential, key):
    assertion = sign(key, client_claims(credential.client_id))

    first = token_request(client, assertion)
    replayed = token_request(client, assertion)

    assert first.status_code == 200
    assert_invalid_client(replayed)


def test_the_same_jti_from_two_clients_is_two_assertions(client, agent, key):
    other_key = new_key()
    one = key_credential(agent, jwks=public_jwks(key))
    two = key_credential(agent, jwks=public_jwks(other_key))

    first = token_request(client, sign(key, client_claims(one.client_id, jti="shared")))
    second = token_request(client, sign(other_key, client_claims(two.client_id, jti="shared")))

    assert first.status_code == second.status_code == 200


@pytest.mark.usefixtures("redis_db")
def test_a_jti_used_in_one_process_is_refused_in_another_sharing_the_cache(client, credential, key, settings):
    cache_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": cache_url}}
    assertion = sign(key, client_claims(credential.client_id))
    assert token_request(client, assertion).status_code == 200

    # A second process, sharing only the cache, checks the same assertion's jti.
    program = (
        "import django, sys; django.setup()\n"
        "from credentials.clientauth.assertion import _use_jti_once\n"
        "from credentials.clientauth import StoreUnavailable\n"
        "from credentials.jwtauth.verify import InvalidAssertion, read_unverified\n"
        "class C: client_id = sys.argv[1]\n"
        "try:\n"
        "    _use_jti_once(C, read_unverified(sys.argv[2]).claims)\n"
        "    print('accepted')\n"
        "except InvalidAssertion as exc:\n"
        "    print(exc.reason)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "CACHE_URL": cache_url}
    result = subprocess.run(
        [sys.executable, "-c", program, credential.client_id, assertion],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=60,
        check=True,
    )

    assert result.stdout.strip() == "jti_replayed"


# --- Equal answers, the wrong kind of credential, and the agent's state --------------------------


def test_unknown_client_and_bad_signature_get_the_same_answer(client, credential, key):
    unknown = token_request(client, sign(key, client_claims("aidp-no-such-client")))
    bad = token_request(client, sign(new_key(), client_claims(credential.client_id), header={"kid": key.kid}))

    assert_invalid_client(unknown)
    assert_invalid_client(bad)
    assert unknown.content == bad.content
    assert dict(unknown.items()).keys() == dict(bad.items()).keys()


def test_an_assertion_for_a_secret_credential_and_a_secret_for_a_key_credential_are_refused(
    client, issued, credential, key
):
    assertion_for_secret = token_request(client, sign(key, client_claims(issued.credential.client_id)))
    secret_for_key = form_post(
        client,
        TOKEN_URL,
        {"grant_type": "client_credentials", "client_id": credential.client_id, "client_secret": "anything"},
    )

    assert_invalid_client(assertion_for_secret)
    assert secret_for_key.status_code == 401 and secret_for_key.json()["error"] == "invalid_client"


def test_suspension_deletion_and_expiry_act_on_the_next_request(client, credential, key):
    agent = credential.agent
    Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.SUSPENDED)
    suspended = token_request(client, sign(key, client_claims(credential.client_id)))
    Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.ACTIVE)
    type(credential).objects.filter(pk=credential.pk).update(expires_at=timezone.now())
    expired = token_request(client, sign(key, client_claims(credential.client_id)))
    type(credential).objects.filter(pk=credential.pk).delete()
    deleted = token_request(client, sign(key, client_claims(credential.client_id)))

    for response in (suspended, expired, deleted):
        assert_invalid_client(response)


def test_each_attempt_is_logged_with_its_method_and_reason_and_never_the_assertion(client, credential, key, caplog):
    caplog.set_level(logging.INFO, logger="agentidp.auth")
    good = sign(key, client_claims(credential.client_id))
    bad = sign(key, client_claims(credential.client_id, aud="https://elsewhere.example"))

    token_request(client, good)
    token_request(client, bad)

    records = [record.auth for record in caplog.records if hasattr(record, "auth")]
    assert [(r["outcome"], r["reason"], r["auth_method"]) for r in records] == [
        ("success", "verified", "private_key_jwt"),
        ("failure", "aud_mismatch", "private_key_jwt"),
    ]
    assert records[1]["client_id"] == credential.client_id
    assert_logs_keep(caplog, good, bad)


def test_a_throttled_client_with_a_valid_assertion_is_heard_and_a_bad_one_waits(client, credential, key, settings):
    settings.AGENTIDP_AUTH_FAILURES_PER_CLIENT = 2
    for _ in range(3):
        token_request(client, sign(new_key(), client_claims(credential.client_id), header={"kid": key.kid}))

    bad = token_request(client, sign(new_key(), client_claims(credential.client_id), header={"kid": key.kid}))
    good = token_request(client, sign(key, client_claims(credential.client_id)))

    assert bad.status_code == 429 and bad.json()["code"] == "RATE_LIMITED"
    assert good.status_code == 200


def test_a_cache_that_cannot_remember_jtis_refuses_assertions_with_503(client, credential, key, monkeypatch):
    from django.core.cache import cache

    def failing_add(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "add", failing_add)

    response = token_request(client, sign(key, client_claims(credential.client_id)))

    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
