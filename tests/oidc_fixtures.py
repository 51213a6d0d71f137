"""
Fixtures for tests that fetch keys from a test OIDC issuer (tests.oidc_issuer): the issuer
itself, over http or https, and the settings that let the key fetcher reach it on loopback.

tests/conftest.py imports them, so every test can take them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from credentials.jwtauth.keysets import forget_keys
from tests.oidc_issuer import OidcIssuer

#: Short enough that a test of a slow issuer takes about a second.
FETCH_TIMEOUT = 0.5


@pytest.fixture
def loopback_key_urls(settings) -> None:
    """Let key URLs reach 127.0.0.0/8, over plain http too (both switches are needed), with a short timeout."""
    settings.AGENTIDP_KEY_FETCH_ALLOW_HTTP_LOOPBACK = True
    settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.AGENTIDP_KEY_FETCH_TIMEOUT_SECONDS = FETCH_TIMEOUT


@pytest.fixture
def oidc_issuer(loopback_key_urls) -> Iterator[OidcIssuer]:
    """A running issuer over http on 127.0.0.1, with no keys of it cached yet."""
    forget_keys()
    with OidcIssuer() as issuer:
        yield issuer
    forget_keys()


@pytest.fixture
def oidc_issuer_tls(tmp_path, settings) -> Iterator[OidcIssuer]:
    """A running issuer over https on 127.0.0.1, its CA trusted through AGENTIDP_KEY_FETCH_CA_BUNDLE."""
    forget_keys()
    with OidcIssuer(tls_dir=tmp_path / "tls") as issuer:
        settings.AGENTIDP_KEY_FETCH_ALLOWED_NETWORKS = ["127.0.0.0/8"]
        settings.AGENTIDP_KEY_FETCH_CA_BUNDLE = str(issuer.ca_bundle)
        settings.AGENTIDP_KEY_FETCH_TIMEOUT_SECONDS = FETCH_TIMEOUT
        yield issuer
    forget_keys()
