"""
The verified-secret cache (credentials/verified.py): a secret a store verified is taken as
verified for AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS without asking the store again, yet
rotation, deletion, expiry and suspension refuse it on the very next request, in this
process and in others.

How often a store is asked is counted by wrapping the backends' `verify` (the real one
still runs) and, for Vault, by the test server's recorded reads. What the cache holds is
read from the local-memory cache itself, and from this process's table of digests. Another
process is played by emptying that table (forget_all) and leaving the Django cache as it
is; time passes on patched clocks. The cross-process tests run two long-lived
AgentIdP processes (tests/credentials/cacheworker.py) on an installation of their own,
once sharing Redis (CACHE_URL=redis://127.0.0.1:6379/15) and once each with its own
local-memory cache.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import logging
import pickle
import re
import secrets
import socket
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from io import StringIO
from unittest import mock

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone
from prometheus_client import REGISTRY

from credentials import services, verified
from credentials.clientauth.secret import credential_authenticate
from credentials.models import Credential, GraceSecret
from credentials.services import credential_delete, credential_rotate
from credentials.trust import Trusted, current_secret
from credentials.verified import KEY_PREFIX, forget_all, remember_verified, verified_recently
from tests.conftest import assert_logs_keep
from tests.credentials.helpers import end_grace_periods, expire, reason
from tests.factories import AgentFactory, make_credential, near_miss
from tests.factories import wrong_secret as new_wrong_secret
from vaultstore.backends import StoredSecret
from vaultstore.backends.bcrypt import BcryptSecretBackend
from vaultstore.backends.vault import VaultSecretBackend
from vaultstore.exceptions import SecretReadError

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 15
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "verified-cache-tests"}}


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def store_asked() -> Iterator[types.SimpleNamespace]:
    """
    Count the verifications each store runs (the real verification still runs); `answers`
    keeps what each said, (stored, matched), in order.
    """
    answers = []

    def answering(real):
        def verify(self, *, stored, secret, **options):
            matched = real(self, stored=stored, secret=secret, **options)
            answers.append((stored, matched))
            return matched

        return verify

    with (
        mock.patch.object(
            BcryptSecretBackend, "verify", autospec=True, side_effect=answering(BcryptSecretBackend.verify)
        ) as bcrypt_verify,
        mock.patch.object(
            VaultSecretBackend, "verify", autospec=True, side_effect=answering(VaultSecretBackend.verify)
        ) as vault_verify,
    ):
        yield types.SimpleNamespace(bcrypt=bcrypt_verify, vault=vault_verify, answers=answers)


def asked_for(spy) -> list:
    """The stored secrets a spied verify was asked about, in order; then forget them."""
    stored = [call.kwargs["stored"] for call in spy.call_args_list]
    spy.reset_mock()
    return stored


@pytest.fixture
def locmem(settings):
    """Pin the cache to Django's local-memory backend (whatever CACHE_URL says), empty, to read what it holds."""
    settings.CACHES = LOCMEM
    cache.clear()
    yield cache
    cache.clear()


def verified_entries(locmem_cache) -> dict[str, bytes]:
    """The verified-secret entries of the local-memory cache: key -> the pickled value as kept."""
    inner = locmem_cache._cache  # the LocMemCache behind the proxy keeps pickled values
    return {key: value for key, value in inner.items() if KEY_PREFIX in key}


def table() -> dict[str, float]:
    """This process's verified digests: digest -> the time.monotonic() moment it stops being believed."""
    return dict(verified._local)


@contextlib.contextmanager
def clocks() -> Iterator[Callable[[float], None]]:
    """
    Stop the clocks of the verified-secret table and of the local-memory cache; yield `move`,
    which sets them to that many seconds after now.
    """
    wall, monotonic = time.time(), time.monotonic()
    with (
        mock.patch("django.core.cache.backends.locmem.time") as locmem_clock,
        mock.patch("credentials.verified.time") as verified_clock,
    ):

        def move(seconds: float) -> None:
            locmem_clock.time.return_value = verified_clock.time.return_value = wall + seconds
            verified_clock.monotonic.return_value = monotonic + seconds

        move(0)
        yield move


@contextlib.contextmanager
def cache_reads() -> Iterator[list[str]]:
    """Record the keys of the verified-secret cache that are read from the Django cache (the real read still runs)."""
    read: list[str] = []
    real = cache.get

    def get(key, *args, **kwargs):
        if key.startswith(KEY_PREFIX):
            read.append(key)
        return real(key, *args, **kwargs)

    with mock.patch.object(cache, "get", side_effect=get):
        yield read


def a_trusted() -> Trusted:
    """A trusted secret of a made-up credential: a name the verified-secret cache can key on."""
    stored = StoredSecret(storage="bcrypt", secret_hash="$2b$04$" + secrets.token_hex(26))
    return Trusted(uuid.uuid4(), stored, since=timezone.now())


def row(issued) -> Credential:
    return Credential.objects.select_related("agent").get(pk=issued.credential.pk)


def wrong_secret(secret: str) -> str:
    """One character off, checksum made right: a well-formed secret the store must refuse."""
    return near_miss(secret)


def vault_reads(server, credential: Credential) -> int:
    """How many KV reads of this credential's entry the test server has received."""
    return sum(1 for r in server.requests if r.method == "GET" and r.path == "/v1/" + credential.vault_path)


@pytest.fixture
def vault_issued(db, vault_enabled):
    issued = make_credential(AgentFactory())
    assert issued.credential.storage == "vault"
    return issued


# --- the store is asked once ------------------------------------------------------------------


def test_second_authentication_is_answered_without_asking_bcrypt(issued, store_asked):
    first = credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)
    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret]

    for _ in range(3):
        again = credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)
        assert again.pk == first.pk == issued.credential.pk
        assert again.agent_id == issued.credential.agent_id
    assert asked_for(store_asked.bcrypt) == []


def test_second_authentication_of_a_vault_credential_reads_vault_no_more(vault_issued, vault, store_asked):
    credential = vault_issued.credential
    reads_before = vault_reads(vault.server, credential) if vault.is_server else 0

    for _ in range(3):
        authenticated = credential_authenticate(
            client_id=credential.client_id, client_secret=vault_issued.client_secret
        )
        assert authenticated.pk == credential.pk

    assert asked_for(store_asked.vault) == [credential.stored_secret]
    if vault.is_server:
        assert vault_reads(vault.server, credential) == reads_before + 1


def test_with_the_cache_off_every_authentication_asks_the_store(issued, store_asked, settings, locmem):
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0

    for _ in range(3):
        credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)

    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret] * 3
    assert verified_entries(locmem) == {}
    assert table() == {}


def test_with_the_cache_off_every_authentication_reads_vault(vault_issued, vault, settings):
    server = vault.require_server("counts the test server's reads")
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0
    credential = vault_issued.credential
    before = vault_reads(server, credential)

    for _ in range(3):
        credential_authenticate(client_id=credential.client_id, client_secret=vault_issued.client_secret)

    assert vault_reads(server, credential) == before + 3


# --- what the cache holds ---------------------------------------------------------------------


def test_the_cache_holds_a_keyed_digest_never_the_secret_nor_its_hash(issued, locmem, settings):
    secret, secret_hash = issued.client_secret, issued.credential.secret_hash
    assert verified_entries(locmem) == {}
    before = time.time()

    credential_authenticate(client_id=issued.credential.client_id, client_secret=secret)

    [(key, pickled)] = verified_entries(locmem).items()
    kept, until = pickle.loads(pickled)
    assert isinstance(kept, str) and HEX_DIGEST.fullmatch(kept)
    # The moment the lifetime ends, for every process that copies it.
    lifetime = settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS
    assert before + lifetime <= until <= time.time() + lifetime
    # This process's table holds the same digest, and nothing else.
    assert list(table()) == [kept]
    for value in (secret, secret_hash, issued.credential.client_id):
        assert value not in key and value.encode() not in pickled and value not in kept
    # Keyed: not a bare hash of the secret, which a copy of the cache would let anyone test guesses against.
    assert kept not in {hashlib.sha256(secret.encode()).hexdigest(), hashlib.sha256(secret_hash.encode()).hexdigest()}


def test_the_digest_is_keyed_by_secret_key(issued, store_asked, settings):
    credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)
    asked_for(store_asked.bcrypt)
    settings.SECRET_KEY = "another-signing-key-" + secrets.token_hex(8)

    credential_authenticate(client_id=issued.credential.client_id, client_secret=issued.client_secret)

    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret]


def test_the_cache_holds_neither_a_vault_secret_nor_its_path(vault_issued, locmem):
    credential = vault_issued.credential

    credential_authenticate(client_id=credential.client_id, client_secret=vault_issued.client_secret)

    [(key, pickled)] = verified_entries(locmem).items()
    kept, _ = pickle.loads(pickled)
    assert HEX_DIGEST.fullmatch(kept)
    assert list(table()) == [kept]
    for value in (vault_issued.client_secret, credential.vault_path, str(credential.id)):
        assert value not in key and value.encode() not in pickled


# --- wrong secrets pay the full price and are not kept ----------------------------------------


def test_a_wrong_secret_for_a_warm_credential_asks_the_store_and_is_refused(issued, store_asked):
    client_id = issued.credential.client_id
    credential_authenticate(client_id=client_id, client_secret=issued.client_secret)
    asked_for(store_asked.bcrypt)

    assert reason(client_id, wrong_secret(issued.client_secret)) == "wrong_secret"
    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret]

    credential_authenticate(client_id=client_id, client_secret=issued.client_secret)
    assert asked_for(store_asked.bcrypt) == []  # the right one is still answered from the cache


def test_wrong_secrets_and_unknown_client_ids_add_no_cache_entries(issued, store_asked, locmem):
    client_id = issued.credential.client_id
    credential_authenticate(client_id=client_id, client_secret=issued.client_secret)
    entries, digests = verified_entries(locmem), table()
    assert len(entries) == len(digests) == 1
    asked_for(store_asked.bcrypt)

    for _ in range(25):
        assert reason(client_id, new_wrong_secret()) == "wrong_secret"
        assert reason(secrets.token_hex(16), new_wrong_secret()) == "unknown_client"
        assert reason(secrets.token_hex(16), issued.client_secret) == "unknown_client"

    assert verified_entries(locmem) == entries
    assert table() == digests
    assert len(locmem._cache) == len(entries)  # nothing else was kept either
    assert len(asked_for(store_asked.bcrypt)) == 75  # each failure paid a verification (dummy ones included)


# --- changes take effect on the very next request --------------------------------------------


def test_rotation_without_grace_refuses_the_cached_old_secret_at_once(issued, store_asked):
    client_id, old = issued.credential.client_id, issued.client_secret
    credential_authenticate(client_id=client_id, client_secret=old)
    credential_authenticate(client_id=client_id, client_secret=old)
    asked_for(store_asked.bcrypt)

    new = credential_rotate(acting=None, credential=issued.credential).client_secret

    assert reason(client_id, old) == "wrong_secret"
    assert asked_for(store_asked.bcrypt) == [row(issued).stored_secret]
    credential_authenticate(client_id=client_id, client_secret=new)
    credential_authenticate(client_id=client_id, client_secret=new)
    assert asked_for(store_asked.bcrypt) == [row(issued).stored_secret]


def test_rotation_with_grace_keeps_the_old_secret_working_from_the_cache_until_the_grace_ends(issued, store_asked):
    client_id, old = issued.credential.client_id, issued.client_secret
    old_stored = issued.credential.stored_secret
    credential_authenticate(client_id=client_id, client_secret=old)
    asked_for(store_asked.bcrypt)

    new = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600).client_secret
    current = row(issued)
    [grace] = GraceSecret.objects.filter(credential=current)
    assert grace.stored_secret == old_stored

    # Matched as the grace entry: a secret trusted since the rotation, so checked by the store once...
    store_asked.answers.clear()
    assert credential_authenticate(client_id=client_id, client_secret=old).pk == current.pk
    assert store_asked.answers == [(current.stored_secret, False), (old_stored, True)]
    assert asked_for(store_asked.bcrypt) == [current.stored_secret, old_stored]
    # ...and then answered from the cache; only the new current hash is still asked.
    assert credential_authenticate(client_id=client_id, client_secret=old).pk == current.pk
    assert asked_for(store_asked.bcrypt) == [current.stored_secret]
    assert credential_authenticate(client_id=client_id, client_secret=new).pk == current.pk

    end_grace_periods(current)

    assert reason(client_id, old) == "wrong_secret"
    assert credential_authenticate(client_id=client_id, client_secret=new).pk == current.pk


def test_deletion_refuses_the_cached_secret_at_once(issued, store_asked):
    client_id = issued.credential.client_id
    credential_authenticate(client_id=client_id, client_secret=issued.client_secret)

    credential_delete(acting=None, credential=issued.credential)

    assert reason(client_id, issued.client_secret) == "unknown_client"


def test_expiry_refuses_the_cached_secret_at_once_and_an_extension_lets_it_work_again(issued, store_asked):
    client_id = issued.credential.client_id
    credential_authenticate(client_id=client_id, client_secret=issued.client_secret)
    asked_for(store_asked.bcrypt)

    expire(issued.credential)

    assert reason(client_id, issued.client_secret) == "credential_expired"
    Credential.objects.filter(pk=issued.credential.pk).update(expires_at=timezone.now() + datetime.timedelta(days=1))
    assert credential_authenticate(client_id=client_id, client_secret=issued.client_secret).pk == issued.credential.pk
    assert asked_for(store_asked.bcrypt) == []  # still the cached verification: the row decided


def test_suspension_refuses_the_cached_secret_at_once_and_reactivation_lets_it_work_again(issued, store_asked):
    client_id, agent = issued.credential.client_id, issued.credential.agent
    credential_authenticate(client_id=client_id, client_secret=issued.client_secret)
    asked_for(store_asked.bcrypt)

    services.agent_update(acting=None, agent=agent, status="suspended")

    assert reason(client_id, issued.client_secret) == "agent_suspended"
    services.agent_update(acting=None, agent=agent, status="active")
    assert credential_authenticate(client_id=client_id, client_secret=issued.client_secret).pk == issued.credential.pk
    assert asked_for(store_asked.bcrypt) == []


def test_vault_rotation_refuses_the_cached_old_version_at_once(vault_issued, store_asked):
    client_id, old = vault_issued.credential.client_id, vault_issued.client_secret
    credential_authenticate(client_id=client_id, client_secret=old)

    new = credential_rotate(acting=None, credential=vault_issued.credential).client_secret

    assert reason(client_id, old) == "wrong_secret"
    assert credential_authenticate(client_id=client_id, client_secret=new).pk == vault_issued.credential.pk


def test_a_secret_from_before_a_move_off_vault_and_back_is_refused(
    vault_issued, vault, settings, django_capture_on_commit_callbacks
):
    credential = vault_issued.credential
    first = vault_issued.client_secret
    credential_authenticate(client_id=credential.client_id, client_secret=first)  # cached under version 1
    assert credential.vault_version == 1

    # Vault switched off (no VAULT_ADDR): a rotation moves the secret to bcrypt; the purge of the entry waits.
    settings.VAULTSTORE = {
        "DEFAULT": "bcrypt",
        "BACKENDS": {"bcrypt": vault.vaultstore_setting()["BACKENDS"]["bcrypt"]},
    }
    with django_capture_on_commit_callbacks(execute=True):
        credential_rotate(acting=None, credential=credential)
    assert row(vault_issued).storage == "bcrypt"
    # Vault on again: `manage.py purge_secrets` destroys the entry, and the next rotation writes a new one.
    settings.VAULTSTORE = vault.vaultstore_setting()
    call_command("purge_secrets", stdout=StringIO(), stderr=StringIO())
    assert vault.metadata(credential.vault_path) is None
    third = credential_rotate(acting=None, credential=row(vault_issued)).client_secret
    moved_back = row(vault_issued)
    assert (moved_back.storage, moved_back.vault_path, moved_back.vault_version) == (
        "vault",
        credential.vault_path,
        1,
    )
    assert vault.read(moved_back.vault_path) == {"clientSecret": third}

    assert reason(credential.client_id, first) == "wrong_secret"


# --- this process's table, in front of the Django cache ----------------------------------------


def shared_entry(issued) -> tuple[str, tuple[str, float]]:
    """The Django cache's key and value for the credential's current secret."""
    key = verified._cache_key(current_secret(issued.credential))
    return key, cache.get(key)


def test_a_secret_this_process_verified_is_answered_without_reading_the_cache(issued, store_asked):
    client_id, secret = issued.credential.client_id, issued.client_secret
    credential_authenticate(client_id=client_id, client_secret=secret)
    asked_for(store_asked.bcrypt)

    with cache_reads() as read:
        for _ in range(3):
            assert credential_authenticate(client_id=client_id, client_secret=secret).pk == issued.credential.pk

    assert read == []
    assert asked_for(store_asked.bcrypt) == []


def test_a_wrong_secret_reads_the_cache_whatever_the_table_holds(issued, store_asked):
    # As an unknown clientId's does: a wrong secret costs the same whether this process knows the right one.
    client_id = issued.credential.client_id
    credential_authenticate(client_id=client_id, client_secret=issued.client_secret)
    asked_for(store_asked.bcrypt)

    with cache_reads() as read:
        assert reason(client_id, wrong_secret(issued.client_secret)) == "wrong_secret"

    assert read == [verified._cache_key(current_secret(issued.credential))]
    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret]


def test_a_digest_another_process_verified_is_believed_only_until_its_own_end(issued, store_asked, settings, locmem):
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 300
    client_id, secret = issued.credential.client_id, issued.client_secret
    with clocks() as move:
        credential_authenticate(client_id=client_id, client_secret=secret)  # the store verifies it at 0...
        asked_for(store_asked.bcrypt)
        forget_all()  # ...in another process
        move(200)
        with cache_reads() as read:
            assert credential_authenticate(client_id=client_id, client_secret=secret).pk == issued.credential.pk
            move(299)
            assert credential_authenticate(client_id=client_id, client_secret=secret).pk == issued.credential.pk
        assert len(read) == 1  # copied from the Django cache at 200, then answered from the table
        assert asked_for(store_asked.bcrypt) == []

        move(301)  # 300 after the store's verification, not 300 after the copy

        assert credential_authenticate(client_id=client_id, client_secret=secret).pk == issued.credential.pk
        assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret]


def test_an_entry_past_its_end_is_not_believed_though_the_cache_still_holds_it(issued, store_asked):
    client_id, secret = issued.credential.client_id, issued.client_secret
    credential_authenticate(client_id=client_id, client_secret=secret)
    key, (digest, _) = shared_entry(issued)
    cache.set(key, (digest, time.time() - 1), 300)  # kept longer by a cache whose clock lags
    forget_all()
    asked_for(store_asked.bcrypt)

    credential_authenticate(client_id=client_id, client_secret=secret)

    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret]
    assert shared_entry(issued)[1][1] > time.time()  # the store's verification, kept afresh


def test_a_copy_is_never_kept_longer_than_the_lifetime_from_now(issued, store_asked, settings):
    lifetime = settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS
    client_id, secret = issued.credential.client_id, issued.client_secret
    credential_authenticate(client_id=client_id, client_secret=secret)
    key, (digest, _) = shared_entry(issued)
    cache.set(key, (digest, time.time() + 10 * lifetime), lifetime)  # written by a host whose clock runs ahead
    forget_all()
    asked_for(store_asked.bcrypt)

    credential_authenticate(client_id=client_id, client_secret=secret)

    assert asked_for(store_asked.bcrypt) == []
    [(kept, until)] = table().items()
    assert kept == digest
    assert until <= time.monotonic() + lifetime


def test_a_bare_digest_in_the_cache_is_not_believed(issued, store_asked):
    # As an earlier version of AgentIdP kept it: without the moment it ends, nothing says when the store verified it.
    client_id, secret = issued.credential.client_id, issued.client_secret
    credential_authenticate(client_id=client_id, client_secret=secret)
    key, (digest, _) = shared_entry(issued)
    cache.set(key, digest, 300)
    forget_all()
    asked_for(store_asked.bcrypt)

    with cache_reads() as read:
        assert credential_authenticate(client_id=client_id, client_secret=secret).pk == issued.credential.pk

    assert read == [key]
    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret]
    kept, until = shared_entry(issued)[1]  # written again, with its end
    assert kept == digest and until > time.time()


def test_the_table_answers_only_for_exactly_the_trusted_secret_and_the_secret(locmem):
    trusted, secret = a_trusted(), secrets.token_urlsafe(32)
    stored = trusted.stored
    remember_verified(trusted=trusted, secret=secret)
    assert verified_recently(trusted=trusted, secret=secret)
    digests = table()
    others = [
        dataclasses.replace(trusted, stored=dataclasses.replace(stored, secret_hash=stored.secret_hash[:-1] + "x")),
        dataclasses.replace(trusted, since=trusted.since + datetime.timedelta(microseconds=1)),
        dataclasses.replace(trusted, credential_id=uuid.uuid4()),
        dataclasses.replace(trusted, stored=dataclasses.replace(stored, storage="vault")),
    ]

    with cache_reads() as read:
        for other in others:  # a rotation, a secret trusted again later, another credential, another store
            assert not verified_recently(trusted=other, secret=secret)
        assert not verified_recently(trusted=trusted, secret=secret + "x")

    assert len(read) == len(others) + 1  # each missed in the table, and the Django cache was asked
    assert table() == digests


def test_with_the_lifetime_zero_nothing_is_kept_or_believed_anywhere(settings, locmem):
    trusted, secret = a_trusted(), secrets.token_urlsafe(32)
    remember_verified(trusted=trusted, secret=secret)
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 0

    with cache_reads() as read:
        assert not verified_recently(trusted=trusted, secret=secret)
    later, later_secret = a_trusted(), secrets.token_urlsafe(32)
    remember_verified(trusted=later, secret=later_secret)

    assert read == []
    assert len(table()) == len(verified_entries(locmem)) == 1  # only the one kept before
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 300
    assert not verified_recently(trusted=later, secret=later_secret)


def test_the_table_is_bounded_and_drops_what_has_ended_first(settings, monkeypatch, locmem):
    monkeypatch.setattr(verified, "LOCAL_ENTRIES", 8)
    lifetime = settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS
    secret = secrets.token_urlsafe(32)

    def digest(trusted: Trusted) -> str:
        return verified._digest(trusted, secret)

    with clocks() as move:
        early = [a_trusted() for _ in range(4)]
        for trusted in early:
            remember_verified(trusted=trusted, secret=secret)
        move(lifetime / 2)
        late = [a_trusted() for _ in range(7)]
        for trusted in late[:4]:
            remember_verified(trusted=trusted, secret=secret)
        assert len(table()) == 8
        move(lifetime + 1)  # the early ones have ended

        for trusted in late[4:]:
            remember_verified(trusted=trusted, secret=secret)
        assert set(table()) == {digest(trusted) for trusted in late}
        newest = a_trusted()
        remember_verified(trusted=newest, secret=secret)
        assert set(table()) == {digest(trusted) for trusted in [*late, newest]}

        overflow = [a_trusted() for _ in range(50)]
        for trusted in overflow:
            remember_verified(trusted=trusted, secret=secret)
            assert len(table()) <= 8
        assert digest(overflow[-1]) in table()
        assert digest(late[0]) not in table()  # the oldest went first


def test_threads_keeping_and_reading_digests_keep_the_table_within_its_bound(monkeypatch, locmem):
    monkeypatch.setattr(verified, "LOCAL_ENTRIES", 64)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(300):
                trusted, secret = a_trusted(), secrets.token_urlsafe(8)
                remember_verified(trusted=trusted, secret=secret)
                verified_recently(trusted=trusted, secret=secret)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert 0 < len(table()) <= 64


def test_a_hit_in_either_place_counts_as_a_hit(issued):
    client_id, secret = issued.credential.client_id, issued.client_secret

    def counted() -> tuple[float, float]:
        return tuple(
            REGISTRY.get_sample_value("agentidp_verified_secret_cache_total", {"result": result}) or 0.0
            for result in ("hit", "miss")
        )

    hits, misses = counted()
    credential_authenticate(client_id=client_id, client_secret=secret)  # a miss; the store verifies it
    credential_authenticate(client_id=client_id, client_secret=secret)  # the table
    forget_all()
    credential_authenticate(client_id=client_id, client_secret=secret)  # the Django cache

    assert counted() == (hits + 2, misses + 1)


# --- Vault outages ----------------------------------------------------------------------------


def test_a_recently_verified_vault_credential_gets_tokens_while_vault_is_down(
    db, vault_enabled, vault, store_asked, token_response, settings, locmem
):
    server = vault.require_server("takes the test server down")
    settings.AGENTIDP_VERIFIED_SECRET_CACHE_SECONDS = 60
    warm, cold = make_credential(AgentFactory()), make_credential(AgentFactory())
    assert token_response(warm.credential.client_id, warm.client_secret).status_code == 200
    asked_for(store_asked.vault)
    server.go_down()

    for _ in range(2):
        response = token_response(warm.credential.client_id, warm.client_secret)
        assert response.status_code == 200, response.content
    assert asked_for(store_asked.vault) == []

    unavailable = token_response(cold.credential.client_id, cold.client_secret)
    assert unavailable.status_code == 503, unavailable.content
    assert unavailable.json()["error"] == "temporarily_unavailable"
    with pytest.raises(SecretReadError):
        credential_authenticate(client_id=cold.credential.client_id, client_secret=cold.client_secret)
    assert asked_for(store_asked.vault) == [cold.credential.stored_secret] * 2

    # Once the lifetime has run out (the clocks moved on), Vault is asked again.
    with clocks() as move:
        move(59)
        assert token_response(warm.credential.client_id, warm.client_secret).status_code == 200
        assert asked_for(store_asked.vault) == []
        move(61)
        assert token_response(warm.credential.client_id, warm.client_secret).status_code == 503
        assert asked_for(store_asked.vault) == [warm.credential.stored_secret]

        server.recover()
        reads = vault_reads(server, warm.credential)
        assert token_response(warm.credential.client_id, warm.client_secret).status_code == 200
        assert vault_reads(server, warm.credential) == reads + 1


# --- a cache that cannot answer is a miss ----------------------------------------------------


@pytest.mark.parametrize("broken", ["get", "set"])
def test_a_broken_cache_is_a_miss_and_the_store_is_asked(issued, store_asked, broken, caplog):
    caplog.set_level(logging.DEBUG)
    client_id, secret = issued.credential.client_id, issued.client_secret

    with mock.patch.object(cache, broken, side_effect=ConnectionError("cache down")):
        for _ in range(2):
            forget_all()  # as in a process that has not verified it itself: only the Django cache could answer
            assert credential_authenticate(client_id=client_id, client_secret=secret).pk == issued.credential.pk
        assert reason(client_id, wrong_secret(secret)) == "wrong_secret"

    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret] * 3
    warnings = [r for r in caplog.records if r.name == "credentials.verified" and r.levelno == logging.WARNING]
    assert warnings and all(str(issued.credential.id) in r.getMessage() for r in warnings)
    assert_logs_keep(caplog, secret, wrong_secret(secret), issued.credential.secret_hash)


def test_while_the_cache_is_down_this_process_answers_what_it_verified(issued, store_asked):
    client_id, secret = issued.credential.client_id, issued.client_secret
    down = ConnectionError("cache down")

    with mock.patch.object(cache, "get", side_effect=down), mock.patch.object(cache, "set", side_effect=down):
        for _ in range(3):
            assert credential_authenticate(client_id=client_id, client_secret=secret).pk == issued.credential.pk
        assert reason(client_id, wrong_secret(secret)) == "wrong_secret"

    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret] * 2  # the first, and the wrong one


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_redis_is_a_miss_and_tokens_are_still_issued(
    issued, store_asked, settings, token_response, caplog
):
    caplog.set_level(logging.DEBUG)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }

    for _ in range(2):
        forget_all()  # as in a process that has not verified it itself
        response = token_response(issued.credential.client_id, issued.client_secret)
        assert response.status_code == 200, response.content
    assert asked_for(store_asked.bcrypt) == [issued.credential.stored_secret] * 2

    # What this process verified itself, its table still answers.
    assert token_response(issued.credential.client_id, issued.client_secret).status_code == 200
    assert asked_for(store_asked.bcrypt) == []
    assert "verified-secret cache unavailable" in caplog.text
    assert_logs_keep(caplog, issued.client_secret, issued.credential.secret_hash)


# --- the cost of a warm token request ----------------------------------------------------------


def test_a_warm_token_request_costs_one_sql_query(issued, token_response, django_assert_num_queries):
    assert token_response(issued.credential.client_id, issued.client_secret).status_code == 200  # warms, notes the use

    with django_assert_num_queries(1):
        response = token_response(issued.credential.client_id, issued.client_secret)

    assert response.status_code == 200, response.content


# --- across processes -------------------------------------------------------------------------


def redis_listening() -> bool:
    try:
        socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture
def redis_db():
    """Redis database 15, emptied before and after (the shared cache of the workers)."""
    if not redis_listening():
        pytest.skip(f"nothing listens on {REDIS_HOST}:{REDIS_PORT}: start Redis to test a cache shared by processes")
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_cache_shared_through_redis_warms_every_process_and_changes_refuse_on_the_very_next_request(
    start_workers, redis_db
):
    a, b = start_workers(f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}")
    seeded = a.seed()
    for cred in seeded.values():
        assert a.auth(cred["clientId"], cred["clientSecret"]) == {"ok": True, "reason": None, "store_asked": 1}
        # B never saw this secret: A's verification, kept in Redis, answers it.
        assert b.auth(cred["clientId"], cred["clientSecret"]) == {"ok": True, "reason": None, "store_asked": 0}

    keys = redis_db.keys("*")
    assert len(keys) == 4
    for key in keys:
        value = redis_db.get(key)
        assert 0 < redis_db.ttl(key) <= 300
        assert all(cred["clientSecret"].encode() not in value + key for cred in seeded.values())

    rotated = seeded["rotated"]
    new = a.ask("rotate", rotated["clientId"])["secret"]
    assert b.auth(rotated["clientId"], rotated["clientSecret"]) == {
        "ok": False,
        "reason": "wrong_secret",
        "store_asked": 1,
    }
    assert b.auth(rotated["clientId"], new) == {"ok": True, "reason": None, "store_asked": 1}
    assert a.auth(rotated["clientId"], new) == {"ok": True, "reason": None, "store_asked": 0}

    a.ask("delete", seeded["deleted"]["clientId"])
    assert b.auth(seeded["deleted"]["clientId"], seeded["deleted"]["clientSecret"])["reason"] == "unknown_client"

    a.ask("expire", seeded["expired"]["clientId"])
    assert b.auth(seeded["expired"]["clientId"], seeded["expired"]["clientSecret"])["reason"] == "credential_expired"

    suspended = seeded["suspended"]
    a.ask("suspend", suspended["clientId"])
    assert b.auth(suspended["clientId"], suspended["clientSecret"]) == {
        "ok": False,
        "reason": "agent_suspended",
        "store_asked": 0,  # the cached verification stands; the row refuses it
    }
    a.ask("reactivate", suspended["clientId"])
    assert b.auth(suspended["clientId"], suspended["clientSecret"]) == {"ok": True, "reason": None, "store_asked": 0}


def test_with_a_local_memory_cache_each_process_keeps_its_own_and_a_change_in_one_refuses_in_the_other(
    start_workers,
):
    a, b = start_workers(None)
    seeded = a.seed()
    for cred in seeded.values():
        for worker in (a, b):  # each warms its own cache
            assert worker.auth(cred["clientId"], cred["clientSecret"]) == {"ok": True, "reason": None, "store_asked": 1}
        for worker in (a, b):
            assert worker.auth(cred["clientId"], cred["clientSecret"]) == {"ok": True, "reason": None, "store_asked": 0}

    rotated = seeded["rotated"]
    new = a.ask("rotate", rotated["clientId"])["secret"]
    assert b.auth(rotated["clientId"], rotated["clientSecret"]) == {
        "ok": False,
        "reason": "wrong_secret",
        "store_asked": 1,
    }
    assert b.auth(rotated["clientId"], new) == {"ok": True, "reason": None, "store_asked": 1}
    assert b.auth(rotated["clientId"], new)["store_asked"] == 0

    a.ask("delete", seeded["deleted"]["clientId"])
    assert b.auth(seeded["deleted"]["clientId"], seeded["deleted"]["clientSecret"])["reason"] == "unknown_client"

    a.ask("expire", seeded["expired"]["clientId"])
    assert b.auth(seeded["expired"]["clientId"], seeded["expired"]["clientSecret"])["reason"] == "credential_expired"

    suspended = seeded["suspended"]
    a.ask("suspend", suspended["clientId"])
    assert b.auth(suspended["clientId"], suspended["clientSecret"])["reason"] == "agent_suspended"
    a.ask("reactivate", suspended["clientId"])
    assert b.auth(suspended["clientId"], suspended["clientSecret"]) == {"ok": True, "reason": None, "store_asked": 0}
