"""
Read Vault's KV v2 answers for the Vault backend: check their shape and take out what it needs.

An answer in no shape Vault gives (a garbled 200, a proxy's page) raises ValueError, which
the backend counts as an outage; an entry in Vault's shape that holds no client secret
raises MalformedEntry, which is about that one key. Nothing here logs or keeps a secret.
"""

from __future__ import annotations

from typing import Any

import hvac.exceptions
from django.views.decorators.debug import sensitive_variables

#: The data key that holds the plaintext secret in each KV entry.
SECRET_KEY = "clientSecret"  # noqa: S105 (the data key's name)


class MalformedEntry(Exception):
    """
    Vault answered a read in its own shape, but the entry holds no client secret string.

    The entry is about one key (written by hand, or by something other than AgentIdP), not
    an outage: it fails that key's verifications and never counts towards the breaker, so
    that a few bad entries cannot stop every Vault credential. It carries nothing of the entry.
    """


def data_of(response: Any) -> dict[str, Any]:
    """Return the `data` object of a Vault answer, or raise ValueError for anything else (garbled 200s)."""
    # hvac returns a dict only for a 200 with a JSON body; otherwise the raw requests.Response.
    if not isinstance(response, dict) or not isinstance(response.get("data"), dict):
        raise ValueError("not a Vault data envelope")
    return response["data"]


def entry_of(response: Any) -> dict[str, Any]:
    """
    Return the entry of a KV v2 read (`{"data": ..., "metadata": {...}}`), or raise ValueError if it is not one.

    Only the shape of Vault's answer is checked here: what the entry holds is about one key
    (see client_secret_of), whereas an answer in no KV v2 shape says Vault, or whatever
    answered in its place, cannot serve.
    """
    entry = data_of(response)
    if not isinstance(entry.get("metadata"), dict):
        raise ValueError("not a KV v2 read")
    return entry


@sensitive_variables("entry", "values", "kept")
def client_secret_of(entry: dict[str, Any]) -> str:
    """Return the client secret an entry holds, or raise MalformedEntry (an entry no one can verify against)."""
    values = entry.get("data")
    kept = values.get(SECRET_KEY) if isinstance(values, dict) else None
    if not isinstance(kept, str):
        raise MalformedEntry()
    return kept


def kv_version(value: Any) -> int:
    """Return `value` if it is a KV version (a positive integer), or raise ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("not a KV version")
    return value


def mismatched_cas(exc: hvac.exceptions.VaultError) -> bool:
    """Return whether Vault refused a write because its check-and-set version is not the key's newest."""
    return isinstance(exc, hvac.exceptions.InvalidRequest) and any(
        "check-and-set parameter did not match" in str(error) for error in exc.errors or ()
    )


def upgrading(exc: hvac.exceptions.VaultError) -> bool:
    """Return whether Vault asks for a retry because the mount is being upgraded from KV v1 to v2."""
    # A KV v1 mount being upgraded to v2 answers 400 for a moment; Vault says to retry.
    return isinstance(exc, hvac.exceptions.InvalidRequest) and any(
        "Upgrading from non-versioned to versioned data" in str(error) for error in exc.errors or ()
    )
