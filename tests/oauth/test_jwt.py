"""Access tokens are RFC 9068 JWTs that anyone can verify with the published JWK Set alone."""

import base64
import hashlib
import hmac
import json
import uuid

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from django.conf import settings
from django.core.checks import Error
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, RSAKey, import_key

from oauth.checks import check_signing_key
from oauth.keys import generate_signing_key_pem, get_signing_key, load_signing_key
from oauth.tokens import access_token_decode, access_token_issue
from tests.conftest import token_for
from tests.oauth.conftest import forge_token, is_active, unverified_claims, unverified_header

JWKS_URL = "/.well-known/jwks.json"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def public_keyset(client) -> KeySet:
    response = client.get(JWKS_URL)
    assert response.status_code == 200
    return KeySet.import_key_set(response.json())


def pem_of(private) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.fixture(params=["ES256", "RS256"])
def signing_pem(request) -> str:
    """The PEM of a signing key of each algorithm AgentIdP signs with (RS256: the test settings' key)."""
    if request.param == "RS256":
        return settings.AGENTIDP_SIGNING_KEY
    return generate_signing_key_pem("ES256").decode()


def issue(**params) -> str:
    defaults = {"agent_id": uuid.uuid4(), "client_id": "client-1", "scopes": ["reports:read", "reports:write"]}
    return access_token_issue(**{**defaults, **params}).access_token


def verify_with_cryptography(token: str, pem: str) -> None:
    """Check a compact JWS's signature with cryptography alone, as a resource server without joserfc would."""
    header, payload, signature = token.split(".")
    signing_input = f"{header}.{payload}".encode("ascii")
    raw = b64url_decode(signature)
    public = serialization.load_pem_private_key(pem.encode(), password=None).public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        # JWS carries an ECDSA signature as r || s, 32 bytes each for P-256 (RFC 7518 section 3.4).
        assert len(raw) == 64
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(raw, signing_input, padding.PKCS1v15(), hashes.SHA256())


# --- the token's bytes: the same whichever way joserfc is asked to sign them --------------------


def test_issued_token_verifies_with_joserfc_and_with_cryptography_alone(signing_pem):
    with override_settings(AGENTIDP_SIGNING_KEY=signing_pem):
        key = get_signing_key()
        agent_id = uuid.uuid4()
        token = issue(agent_id=agent_id, client_id="client-1")

    decoded = jwt.decode(token, import_key(key.public_jwk()), algorithms=[key.algorithm])
    verify_with_cryptography(token, signing_pem)
    header, payload, _ = token.split(".")
    assert b64url_decode(header) == json.dumps(
        {"typ": "at+jwt", "alg": key.algorithm, "kid": key.kid}, separators=(",", ":")
    ).encode("ascii")
    assert decoded.header == {"typ": "at+jwt", "alg": key.algorithm, "kid": key.kid}
    assert json.loads(b64url_decode(payload)) == decoded.claims
    assert list(decoded.claims) == ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"]
    assert decoded.claims["sub"] == str(agent_id)
    assert decoded.claims["client_id"] == "client-1"
    assert decoded.claims["scope"] == "reports:read reports:write"


def test_issued_token_fails_cryptographys_check_once_its_claims_change(signing_pem):
    with override_settings(AGENTIDP_SIGNING_KEY=signing_pem):
        header, payload, signature = issue().split(".")
    claims = {**json.loads(b64url_decode(payload)), "scope": "admin"}
    tampered = f"{header}.{b64url(claims)}.{signature}"

    with pytest.raises(InvalidSignature):
        verify_with_cryptography(tampered, signing_pem)


def test_issued_token_has_the_header_and_payload_bytes_of_joserfcs_jwt_encode(signing_pem):
    with override_settings(AGENTIDP_SIGNING_KEY=signing_pem):
        key = get_signing_key()
        token = issue(
            scopes=["reports:read", "r\u00e9sum\u00e9s:read"], resources=["https://a.example", "https://b.example"]
        )
        claims = jwt.decode(token, key.key, algorithms=[key.algorithm]).claims
        encoded = jwt.encode(
            {"alg": key.algorithm, "typ": "at+jwt", "kid": key.kid}, claims, key.key, algorithms=[key.algorithm]
        )
        decoded_issued, decoded_encoded = access_token_decode(token), access_token_decode(encoded)

    assert token.split(".")[:2] == encoded.split(".")[:2]
    assert "r\u00e9sum\u00e9s:read".encode() in b64url_decode(token.split(".")[1])  # as UTF-8, not as \u escapes
    assert decoded_issued == decoded_encoded == claims
    if key.algorithm == "RS256":
        # RSASSA-PKCS1-v1_5 is deterministic: the whole token is the same.
        assert token == encoded


def test_tokens_of_jwt_encode_and_of_the_issuer_stay_valid_once_the_key_is_loaded_again(signing_pem):
    with override_settings(AGENTIDP_SIGNING_KEY=signing_pem):
        key = get_signing_key()
        claims = jwt.decode(issue(), key.key, algorithms=[key.algorithm]).claims
        encoded = jwt.encode(
            {"alg": key.algorithm, "typ": "at+jwt", "kid": key.kid}, claims, key.key, algorithms=[key.algorithm]
        )
        issued = issue()

    # As in a new process: the same key, its header and algorithm worked out afresh.
    with override_settings(AGENTIDP_SIGNING_KEY=signing_pem):
        assert get_signing_key() is not key
        assert access_token_decode(encoded) == claims
        assert access_token_decode(issued)["jti"] == unverified_claims(issued)["jti"]
        assert access_token_decode(issue()) is not None


def test_access_token_header_is_at_jwt_signed_rs256_with_a_kid(client, issued):
    header = unverified_header(token_for(client, issued))

    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    assert header["kid"] == get_signing_key().kid


def test_access_token_verifies_with_only_the_public_jwks_and_carries_the_rfc_9068_claims(client, issued):
    token = token_for(client, issued)

    decoded = jwt.decode(token, public_keyset(client), algorithms=["RS256"])

    claims = decoded.claims
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"}
    assert claims["iss"] == settings.AGENTIDP_ISSUER
    assert claims["sub"] == str(issued.credential.agent_id)
    assert claims["aud"] == settings.AGENTIDP_AUDIENCE
    assert claims["client_id"] == issued.credential.client_id
    assert claims["scope"] == "reports:read reports:write"
    assert claims["exp"] - claims["iat"] == settings.AGENTIDP_ACCESS_TOKEN_TTL
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_each_access_token_has_its_own_jti(client, issued):
    first = jwt.decode(token_for(client, issued), public_keyset(client), algorithms=["RS256"])
    second = jwt.decode(token_for(client, issued), public_keyset(client), algorithms=["RS256"])

    assert first.claims["jti"] != second.claims["jti"]


def test_access_token_does_not_verify_with_another_keys_jwks(client, issued, foreign_key):
    token = token_for(client, issued)
    kid = unverified_header(token)["kid"]
    impostor = KeySet.import_key_set({"keys": [{**foreign_key.as_dict(private=False), "kid": kid}]})

    with pytest.raises(BadSignatureError):
        jwt.decode(token, impostor, algorithms=["RS256"])


def test_token_kid_names_a_key_in_the_jwks(client, issued):
    kid = unverified_header(token_for(client, issued))["kid"]

    keys = client.get(JWKS_URL).json()["keys"]

    assert kid in {key["kid"] for key in keys}


def test_jwks_publishes_public_signing_keys_without_private_members(client, db):
    response = client.get(JWKS_URL)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["kty"] == "RSA"
        assert key["use"] == "sig"
        assert key["alg"] == "RS256"
        assert {"n", "e", "kid"} <= set(key)


def test_jwks_rejects_post_with_405(client, db):
    response = client.post(JWKS_URL)

    assert response.status_code == 405
    assert "GET" in response["Allow"]
    assert set(response.json()) == {"error", "error_description"}


def test_token_signed_by_another_key_is_refused_by_the_management_api(client, admin_issued, foreign_key):
    genuine = token_for(client, admin_issued)
    forged = forge_token(genuine, foreign_key)

    accepted = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + genuine)
    refused = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + forged)

    assert accepted.status_code == 200
    assert refused.status_code == 401
    assert refused.json()["code"] == "UNAUTHORIZED"
    assert refused["WWW-Authenticate"].startswith("Bearer")


def test_token_signed_by_another_key_is_inactive_at_introspection(client, issued, admin_issued, foreign_key):
    genuine = token_for(client, issued)

    assert is_active(client, admin_issued, genuine) is True
    assert is_active(client, admin_issued, forge_token(genuine, foreign_key)) is False


def test_unsigned_token_with_alg_none_is_refused(client, admin_issued):
    genuine = token_for(client, admin_issued)
    header = {**unverified_header(genuine), "alg": "none"}
    unsigned = f"{b64url(header)}.{genuine.split('.')[1]}."

    response = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + unsigned)

    assert response.status_code == 401
    assert is_active(client, admin_issued, unsigned) is False


def test_token_signed_hs256_with_the_public_key_as_secret_is_refused(client, admin_issued):
    genuine = token_for(client, admin_issued)
    header = {**unverified_header(genuine), "alg": "HS256"}
    public_pem = RSAKey.import_key(settings.AGENTIDP_SIGNING_KEY).as_pem(private=False)
    signing_input = f"{b64url(header)}.{genuine.split('.')[1]}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    confused = signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()

    response = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + confused)

    assert response.status_code == 401


def test_es256_signing_key_issues_tokens_that_verify_with_the_jwks(client, admin_issued):
    with override_settings(AGENTIDP_SIGNING_KEY=generate_signing_key_pem("ES256").decode()):
        token = token_for(client, admin_issued)
        keys = client.get(JWKS_URL).json()["keys"]
        decoded = jwt.decode(token, KeySet.import_key_set({"keys": keys}), algorithms=["ES256"])
        api_response = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + token)

    assert unverified_header(token)["alg"] == "ES256"
    assert decoded.claims["client_id"] == admin_issued.credential.client_id
    assert [(key["kty"], key["crv"], key["alg"]) for key in keys] == [("EC", "P-256", "ES256")]
    assert not PRIVATE_MEMBERS & set(keys[0])
    assert api_response.status_code == 200
    # Back on the original key, the ES256 token no longer verifies.
    assert client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + token).status_code == 401


def test_signing_key_is_read_from_the_key_file_when_no_pem_is_set(client, admin_issued, tmp_path):
    path = tmp_path / "signing-key.pem"
    path.write_bytes(generate_signing_key_pem("ES256"))

    with override_settings(AGENTIDP_SIGNING_KEY="", AGENTIDP_SIGNING_KEY_FILE=path):
        token = token_for(client, admin_issued)
        kid = get_signing_key().kid

    assert unverified_header(token)["kid"] == kid == load_signing_key(path.read_bytes()).kid


def test_system_check_passes_with_a_usable_signing_key():
    assert check_signing_key() == []


def test_system_check_reports_a_missing_signing_key_file(tmp_path):
    with override_settings(AGENTIDP_SIGNING_KEY="", AGENTIDP_SIGNING_KEY_FILE=tmp_path / "missing.pem"):
        with pytest.raises(SystemCheckError, match=r"oauth\.E001"):
            call_command("check", deploy=True)
        call_command("check")  # only what serves or deploys needs the key
        problems = check_signing_key()

    assert [problem.id for problem in problems] == ["oauth.E001"]
    assert isinstance(problems[0], Error)
    assert "missing.pem" in problems[0].msg


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param("not a key", id="garbage"),
        pytest.param("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", id="truncated-pem"),
        pytest.param(pem_of(rsa.generate_private_key(public_exponent=65537, key_size=1024)), id="rsa-1024"),
        pytest.param(pem_of(ec.generate_private_key(ec.SECP384R1())), id="ec-p384"),
    ],
)
def test_system_check_reports_an_unusable_signing_key(pem):
    with override_settings(AGENTIDP_SIGNING_KEY=pem):
        problems = check_signing_key()

    assert [problem.id for problem in problems] == ["oauth.E001"]


def test_rsa_key_below_2048_bits_is_refused():
    small = pem_of(rsa.generate_private_key(public_exponent=65537, key_size=1024)).encode()

    with pytest.raises(ImproperlyConfigured, match="2048"):
        load_signing_key(small)


def test_rsa_key_of_2048_bits_is_accepted():
    key = load_signing_key(pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)).encode())

    assert key.algorithm == "RS256"


# --- switching keys: a retired key keeps verifying, and is published, but signs nothing -------------


def test_tokens_of_a_retired_key_stay_active_while_new_ones_are_signed_by_the_current_key(
    client, admin_issued, tmp_path
):
    old_pem = settings.AGENTIDP_SIGNING_KEY.encode()
    old_token = token_for(client, admin_issued)
    retired = tmp_path / "retired.pem"
    retired.write_bytes(old_pem)
    new_pem = generate_signing_key_pem("ES256").decode()

    with override_settings(AGENTIDP_SIGNING_KEY=new_pem, AGENTIDP_RETIRED_SIGNING_KEY_FILES=[str(retired)]):
        new_token = token_for(client, admin_issued)
        keys = client.get(JWKS_URL).json()["keys"]
        old_api = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + old_token)
        old_active = is_active(client, admin_issued, old_token)
        assert check_signing_key() == []

    current, previous = load_signing_key(new_pem.encode()), load_signing_key(old_pem)
    assert [(key["kid"], key["alg"]) for key in keys] == [(current.kid, "ES256"), (previous.kid, "RS256")]
    assert not any(PRIVATE_MEMBERS & set(key) for key in keys)
    assert unverified_header(new_token)["kid"] == current.kid
    # Both verify with the published JWK Set alone, each with its own algorithm.
    keyset = KeySet.import_key_set({"keys": keys})
    assert jwt.decode(old_token, keyset, algorithms=["RS256"]).claims["client_id"] == admin_issued.credential.client_id
    assert jwt.decode(new_token, keyset, algorithms=["ES256"]).claims["client_id"] == admin_issued.credential.client_id
    assert old_api.status_code == 200
    assert old_active is True


def test_once_a_retired_key_is_dropped_its_tokens_are_inactive(client, admin_issued):
    old_token = token_for(client, admin_issued)

    with override_settings(AGENTIDP_SIGNING_KEY=generate_signing_key_pem("ES256").decode()):
        assert client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + old_token).status_code == 401
        assert is_active(client, admin_issued, old_token) is False
        assert len(client.get(JWKS_URL).json()["keys"]) == 1


def test_a_token_naming_a_retired_key_but_signed_with_another_algorithm_is_refused(client, admin_issued, tmp_path):
    retired_pem = generate_signing_key_pem("ES256")
    retired = tmp_path / "retired.pem"
    retired.write_bytes(retired_pem)
    retired_key = load_signing_key(retired_pem)
    claims = jwt.decode(token_for(client, admin_issued), get_signing_key().key).claims
    # Signed by the current RSA key, but claiming the retired EC key's kid.
    forged = jwt.encode(
        {"alg": "RS256", "typ": "at+jwt", "kid": retired_key.kid}, claims, get_signing_key().key, algorithms=["RS256"]
    )

    with override_settings(AGENTIDP_RETIRED_SIGNING_KEY_FILES=[str(retired)]):
        assert client.get("/api/v1/agents", HTTP_AUTHORIZATION="Bearer " + forged).status_code == 401


def test_system_check_reports_an_unreadable_retired_key(tmp_path):
    with override_settings(AGENTIDP_RETIRED_SIGNING_KEY_FILES=[str(tmp_path / "gone.pem")]):
        problems = check_signing_key()

    assert [problem.id for problem in problems] == ["oauth.E002"]
    assert "gone.pem" in problems[0].msg
