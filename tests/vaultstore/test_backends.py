import copy
import uuid
from unittest import mock

import bcrypt
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from vaultstore.backends import (
    StoredSecret,
    get_backend,
    get_backend_for,
    get_backends,
    get_default_backend,
)
from vaultstore.backends.base import BaseSecretBackend
from vaultstore.backends.bcrypt import BcryptSecretBackend
from vaultstore.checks import check_vaultstore_configuration
from vaultstore.exceptions import SecretStoreError, SecretStoreUnavailable

BCRYPT_PATH = "vaultstore.backends.bcrypt.BcryptSecretBackend"


class Owner:
    """What a backend sees of a credential."""

    def __init__(self):
        self.id = uuid.uuid4()
        self.agent_id = uuid.uuid4()


def bcrypt_config(**options) -> dict:
    return {"DEFAULT": "bcrypt", "BACKENDS": {"bcrypt": {"BACKEND": BCRYPT_PATH, "OPTIONS": options}}}


@pytest.fixture
def backend() -> BcryptSecretBackend:
    return BcryptSecretBackend(rounds=4)


# --- the loader -----------------------------------------------------------------------------


def test_default_backend_is_bcrypt():
    backend = get_default_backend()

    assert backend.name == "bcrypt"
    assert isinstance(backend, BcryptSecretBackend)
    assert get_backend("bcrypt") is backend
    assert set(get_backends()) == {"bcrypt"}


def test_backends_are_built_once_and_rebuilt_when_the_setting_changes():
    before = get_default_backend()
    assert get_default_backend() is before

    with override_settings(VAULTSTORE=bcrypt_config(rounds=5)):
        during = get_default_backend()
        assert during is not before
        assert during.options["rounds"] == 5

    after = get_default_backend()
    assert after is not during
    assert after.options["rounds"] == settings.AGENTIDP_BCRYPT_ROUNDS


def test_get_backend_for_finds_the_backend_named_by_the_stored_secret():
    assert get_backend_for(StoredSecret(storage="bcrypt", secret_hash="x")) is get_default_backend()


def test_unconfigured_vault_backend_is_unavailable():
    with pytest.raises(SecretStoreUnavailable) as excinfo:
        get_backend("vault")

    assert excinfo.value.code == "VAULT_UNAVAILABLE"
    assert excinfo.value.retry_after == 5
    assert isinstance(excinfo.value, SecretStoreError)


def test_a_secret_kept_by_an_unconfigured_store_is_unavailable_not_a_mismatch():
    with pytest.raises(SecretStoreUnavailable):
        get_backend_for(StoredSecret(storage="vault"))


BAD_CONFIGS = {
    "unknown-option": (bcrypt_config(rounds=4, cost=10), "cost"),
    "rounds-too-low": (bcrypt_config(rounds=3), "rounds"),
    "rounds-too-high": (bcrypt_config(rounds=32), "rounds"),
    "rounds-not-int": (bcrypt_config(rounds="12"), "rounds"),
    "rounds-bool": (bcrypt_config(rounds=True), "rounds"),
    "wrong-name-key": (
        {"DEFAULT": "hash", "BACKENDS": {"hash": {"BACKEND": BCRYPT_PATH, "OPTIONS": {"rounds": 4}}}},
        "own name",
    ),
    "default-not-configured": ({**bcrypt_config(rounds=4), "DEFAULT": "vault"}, "DEFAULT"),
    "default-missing": ({"BACKENDS": bcrypt_config(rounds=4)["BACKENDS"]}, "DEFAULT"),
    "no-backends": ({"DEFAULT": "bcrypt", "BACKENDS": {}}, "BACKENDS"),
    "not-a-dict": ("bcrypt", "BACKENDS"),
    "backend-not-importable": (
        {"DEFAULT": "bcrypt", "BACKENDS": {"bcrypt": {"BACKEND": "vaultstore.backends.nope.Backend"}}},
        "importable",
    ),
    "backend-missing": ({"DEFAULT": "bcrypt", "BACKENDS": {"bcrypt": {"OPTIONS": {}}}}, "importable"),
}


@pytest.mark.parametrize("config, named", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_configuration_is_improperly_configured_naming_the_problem(config, named):
    with override_settings(VAULTSTORE=config):
        with pytest.raises(ImproperlyConfigured, match=named):
            get_backends()
        with pytest.raises(ImproperlyConfigured):
            get_default_backend()


@pytest.mark.parametrize("config, named", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_configuration_is_reported_by_the_system_check(config, named):
    with override_settings(VAULTSTORE=config):
        errors = check_vaultstore_configuration()

    assert [e.id for e in errors] == ["vaultstore.E010"]
    assert named in errors[0].msg


def test_good_configuration_passes_the_system_check():
    assert check_vaultstore_configuration() == []


def test_the_system_check_runs_with_django_checks():
    from django.core import checks

    with override_settings(VAULTSTORE=bcrypt_config(rounds=99)):
        errors = checks.run_checks()

    assert "vaultstore.E010" in {e.id for e in errors}


def test_bad_configuration_does_not_outlive_the_override():
    with override_settings(VAULTSTORE=bcrypt_config(rounds=0)), pytest.raises(ImproperlyConfigured):
        get_backends()

    assert get_default_backend().name == "bcrypt"


def test_the_configured_rounds_are_honoured(backend):
    assert get_default_backend().store(owner=Owner(), secret="s").secret_hash.startswith("$2b$04$")

    with override_settings(VAULTSTORE=bcrypt_config(rounds=5)):
        stored = get_default_backend().store(owner=Owner(), secret="s")

    assert stored.secret_hash.startswith("$2b$05$")


def test_the_default_rounds_are_12_when_none_are_configured():
    with override_settings(VAULTSTORE=bcrypt_config()):
        assert get_default_backend().options["rounds"] == 12


def test_test_settings_carry_the_rounds_into_vaultstore():
    options = copy.deepcopy(settings.VAULTSTORE)["BACKENDS"]["bcrypt"]["OPTIONS"]

    assert options["rounds"] == settings.AGENTIDP_BCRYPT_ROUNDS == 4


# --- the bcrypt backend ---------------------------------------------------------------------


def test_bcrypt_store_returns_a_bcrypt_hash_of_the_secret(backend):
    stored = backend.store(owner=Owner(), secret="correct horse")

    assert stored.storage == "bcrypt"
    assert stored.secret_hash.startswith("$2b$04$")
    assert len(stored.secret_hash) == 60
    assert "correct horse" not in stored.secret_hash
    assert bcrypt.checkpw(b"correct horse", stored.secret_hash.encode())


def test_bcrypt_store_salts_every_hash(backend):
    first = backend.store(owner=Owner(), secret="same")
    second = backend.store(owner=Owner(), secret="same")

    assert first.secret_hash != second.secret_hash
    assert backend.verify(stored=first, secret="same") and backend.verify(stored=second, secret="same")


def test_bcrypt_verify_accepts_the_secret_and_refuses_others(backend):
    stored = backend.store(owner=Owner(), secret="correct horse")

    assert backend.verify(stored=stored, secret="correct horse") is True
    assert backend.verify(stored=stored, secret="correct horsE") is False
    assert backend.verify(stored=stored, secret="correct horse ") is False
    assert backend.verify(stored=stored, secret="") is False
    assert backend.verify(stored=stored, secret=stored.secret_hash) is False


def test_bcrypt_store_refuses_a_secret_longer_than_72_bytes(backend):
    with pytest.raises(ValueError):
        backend.store(owner=Owner(), secret="x" * 73)
    with pytest.raises(ValueError):
        backend.store(owner=Owner(), secret="\u00e9" * 37)  # 74 bytes

    assert backend.store(owner=Owner(), secret="x" * 72).secret_hash.startswith("$2b$")


def test_bcrypt_verify_refuses_a_longer_secret_that_starts_with_the_real_one(backend):
    secret = "x" * 72
    stored = backend.store(owner=Owner(), secret=secret)

    assert backend.verify(stored=stored, secret=secret) is True
    assert backend.verify(stored=stored, secret=secret + "y") is False


@pytest.mark.parametrize(
    "stored",
    [
        StoredSecret(storage="bcrypt", secret_hash=""),
        StoredSecret(storage="bcrypt", secret_hash="not a hash"),
        StoredSecret(storage="bcrypt", secret_hash="$2b$04$" + "." * 53),
        StoredSecret(storage="vault", secret_hash=""),
    ],
    ids=["empty-hash", "garbage-hash", "malformed-hash", "other-storage"],
)
def test_bcrypt_verify_of_something_it_does_not_keep_is_false(backend, stored):
    assert backend.verify(stored=stored, secret="anything") is False


def test_bcrypt_verify_refuses_a_hash_that_another_store_holds(backend):
    stored = backend.store(owner=Owner(), secret="s")

    assert backend.verify(stored=StoredSecret(storage="vault", secret_hash=stored.secret_hash), secret="s") is False


@pytest.mark.parametrize("secret", ["", "\x00", "a\x00b", "\ud800", "\U0001f511", "y" * 10_000])
def test_bcrypt_verify_of_odd_secrets_is_false_without_an_exception(backend, secret):
    stored = backend.store(owner=Owner(), secret="real")

    assert backend.verify(stored=stored, secret=secret) is False


def test_bcrypt_verify_dummy_pays_one_bcrypt_verification_at_the_configured_cost(backend):
    with mock.patch("vaultstore.backends.bcrypt.bcrypt.checkpw", wraps=bcrypt.checkpw) as checkpw:
        assert backend.verify_dummy(secret="guess") is None

    checkpw.assert_called_once()
    password, hashed = checkpw.call_args.args
    assert password == b"guess"
    assert hashed.startswith(b"$2b$04$")


def test_bcrypt_verify_dummy_reuses_its_hash(backend):
    with mock.patch("vaultstore.backends.bcrypt.bcrypt.hashpw", wraps=bcrypt.hashpw) as hashpw:
        backend.verify_dummy(secret="a")
        backend.verify_dummy(secret="b")

    assert hashpw.call_count == 1


def test_bcrypt_delete_and_check_have_nothing_to_do(backend):
    stored = backend.store(owner=Owner(), secret="s")

    assert backend.delete(stored=[stored]) is None
    assert backend.location(owner=Owner()) == StoredSecret(storage="bcrypt")
    assert backend.check() == []


def test_backend_repr_names_the_backend_only(backend):
    assert repr(backend) == "<BcryptSecretBackend name='bcrypt'>"


def test_stored_secret_repr_hides_the_hash(backend):
    stored = backend.store(owner=Owner(), secret="s")

    assert stored.secret_hash not in repr(stored)
    assert stored.secret_hash not in str(stored)
    assert "bcrypt" in repr(stored)


# --- the base class -------------------------------------------------------------------------


def test_base_backend_refuses_unknown_options_naming_the_first():
    class Backend(BaseSecretBackend):
        name = "test"
        default_options = {"timeout": 5}

    with pytest.raises(ImproperlyConfigured, match="'other'"):
        Backend(timeout=1, other=2, zzz=3)

    assert Backend(timeout=1).options == {"timeout": 1}
    assert Backend().options == {"timeout": 5}


def test_base_backend_leaves_store_and_verify_to_subclasses():
    backend = BaseSecretBackend()

    with pytest.raises(NotImplementedError):
        backend.store(owner=Owner(), secret="s")
    with pytest.raises(NotImplementedError):
        backend.verify(stored=StoredSecret(storage=""), secret="s")
    with pytest.raises(NotImplementedError):
        backend.verify_dummy(secret="s")
