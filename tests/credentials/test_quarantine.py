"""Leaked secrets checked by their own store, and the quarantine of a credential whose live secret leaked."""

from __future__ import annotations

import datetime

import pytest
from django.test import override_settings
from django.utils import timezone

from credentials.audit import Actor
from credentials.errors import ValidationFailed
from credentials.leaks import Reported, ReportUnavailable, leaks_check
from credentials.models import AuditEvent, Credential, GraceSecret
from credentials.services import agent_update, credential_delete, credential_rotate
from oauth.tokens import access_token_issue, access_token_validate
from tests.credentials.helpers import authenticates, reason
from tests.factories import AgentFactory, make_credential, near_miss, wrong_secret

REPORTER = Actor(type=AuditEvent.ActorType.REPORTER, id="198.51.100.7", label="GitHub secret scanning")


def report(*secrets: str, found_at: str = "https://github.com/example/repo/blob/main/.env") -> list[bool]:
    return leaks_check(reported=[Reported(s, found_at=found_at, source="commit") for s in secrets], acting=REPORTER)


def token_of(credential: Credential) -> str:
    return access_token_issue(agent_id=credential.agent_id, client_id=credential.client_id, scopes=[]).access_token


def test_a_live_secret_quarantines_its_credential_at_once(issued):
    token = token_of(issued.credential)

    assert report(issued.client_secret) == [True]

    credential = Credential.objects.get(pk=issued.credential.pk)
    assert credential.status == "compromised"
    assert reason(credential.client_id, issued.client_secret) == "credential_compromised"
    assert access_token_validate(token) is None
    [event] = AuditEvent.objects.filter(action=AuditEvent.Action.CREDENTIAL_COMPROMISED)
    assert (event.actor_type, event.actor_label, event.credential_id) == (
        "reporter",
        "GitHub secret scanning",
        credential.pk,
    )
    assert event.details == {
        "clientId": credential.client_id,
        "secret": "current",
        "foundAt": "https://github.com/example/repo/blob/main/.env",
        "source": "commit",
    }


def test_rotating_is_the_way_back_and_the_old_tokens_stay_inactive(issued):
    old_token = token_of(issued.credential)
    report(issued.client_secret)

    rotated = credential_rotate(acting=None, credential=Credential.objects.get(pk=issued.credential.pk))

    credential = Credential.objects.get(pk=issued.credential.pk)
    assert credential.status == "active"
    assert authenticates(credential.client_id, rotated.client_secret)
    assert reason(credential.client_id, issued.client_secret) == "wrong_secret"
    assert access_token_validate(old_token) is None
    new_token = access_token_issue(agent_id=credential.agent_id, client_id=credential.client_id, scopes=[]).access_token
    if int(datetime.datetime.now(tz=datetime.UTC).timestamp()) > int(credential.tokens_not_before.timestamp()):
        assert access_token_validate(new_token) is not None
    rotation = AuditEvent.objects.filter(action=AuditEvent.Action.CREDENTIAL_ROTATED).get()
    assert rotation.details["wasCompromised"] is True


def test_a_compromised_credential_is_rotated_without_a_grace_period_and_its_previous_secrets_end(issued):
    first = issued.client_secret
    second = credential_rotate(acting=None, credential=issued.credential, grace_period_seconds=600)
    assert report(first) == [True]  # the previous secret, in its grace period, leaked
    event = AuditEvent.objects.get(action=AuditEvent.Action.CREDENTIAL_COMPROMISED)
    assert event.details["secret"] == "grace"
    compromised = Credential.objects.get(pk=issued.credential.pk)

    with pytest.raises(ValidationFailed, match="grace period"):
        credential_rotate(acting=None, credential=compromised, grace_period_seconds=60)
    third = credential_rotate(acting=None, credential=compromised)

    assert not GraceSecret.objects.filter(credential_id=issued.credential.pk).exists()
    assert reason(issued.credential.client_id, second.client_secret) == "wrong_secret"
    assert authenticates(issued.credential.client_id, third.client_secret)


@pytest.mark.parametrize(
    "state", ["unknown", "near-miss", "bad-checksum", "legacy", "other-format", "rotated", "deleted", "expired"]
)
def test_what_is_not_a_live_secret_is_a_false_positive_and_changes_nothing(agent, state):
    issued = make_credential(agent)
    secret = {
        "unknown": wrong_secret(),
        "near-miss": near_miss(issued.client_secret),
        "bad-checksum": issued.client_secret[:-1] + ("A" if issued.client_secret[-1] != "A" else "B"),
        "legacy": "q" * 43,
        "other-format": "ghp_" + "a" * 36,
    }.get(state, issued.client_secret)
    if state == "rotated":
        credential_rotate(acting=None, credential=issued.credential)
    elif state == "deleted":
        credential_delete(acting=None, credential=issued.credential)
    elif state == "expired":
        past = timezone.now() - datetime.timedelta(seconds=1)
        Credential.objects.filter(pk=issued.credential.pk).update(expires_at=past)

    assert report(secret) == [False]

    assert not Credential.objects.filter(compromised_at__isnull=False).exists()
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.CREDENTIAL_COMPROMISED).exists()


def test_a_suspended_agents_live_secret_is_quarantined_too(issued):
    agent_update(acting=None, agent=issued.credential.agent, status="suspended")

    assert report(issued.client_secret) == [True]
    assert Credential.objects.get(pk=issued.credential.pk).is_compromised


def test_a_report_of_the_same_secret_again_is_true_and_records_nothing_more(issued):
    assert report(issued.client_secret, issued.client_secret) == [True, True]
    assert report(issued.client_secret) == [True]

    assert AuditEvent.objects.filter(action=AuditEvent.Action.CREDENTIAL_COMPROMISED).count() == 1


def test_other_credentials_of_the_agent_keep_working(agent):
    leaked, kept = make_credential(agent), make_credential(agent)

    report(leaked.client_secret)

    assert authenticates(kept.credential.client_id, kept.client_secret)


def test_a_report_of_thousands_costs_one_query_for_the_lot_and_a_store_check_per_found_secret(
    db, django_assert_max_num_queries
):
    live = [make_credential(AgentFactory()) for _ in range(3)]
    strangers = [wrong_secret() for _ in range(3000)]
    noise = ["aidp_" + "x" * 61, "not a secret", *(near_miss(wrong_secret()) for _ in range(2000))]
    secrets = [*strangers, *noise, *(issued.client_secret for issued in live)]

    # One lookup for every reference, then per live secret its grace query and the quarantine's writes.
    with django_assert_max_num_queries(1 + 3 * 8):
        verdicts = report(*secrets)

    assert verdicts == [False] * (len(secrets) - 3) + [True] * 3


def test_a_vault_secret_is_checked_by_vault_and_an_unreachable_vault_is_unavailable(vault_enabled, agent):
    issued = make_credential(agent)
    assert Credential.objects.get(pk=issued.credential.pk).storage == "vault"
    server = vault_enabled.require_server()

    server.go_down()
    with pytest.raises(ReportUnavailable):
        report(issued.client_secret)
    assert not Credential.objects.get(pk=issued.credential.pk).is_compromised
    server.recover()

    assert report(near_miss(issued.client_secret)) == [False]
    assert report(issued.client_secret) == [True]
    assert Credential.objects.get(pk=issued.credential.pk).is_compromised


def test_what_could_be_checked_is_quarantined_before_an_unavailable_store_is_reported(vault_enabled, agent, settings):
    with override_settings(VAULTSTORE={**settings.VAULTSTORE, "DEFAULT": "bcrypt"}):
        in_bcrypt = make_credential(agent)
    in_vault = make_credential(agent)
    vault_enabled.require_server().go_down()

    with pytest.raises(ReportUnavailable):
        report(in_vault.client_secret, in_bcrypt.client_secret)

    assert Credential.objects.get(pk=in_bcrypt.credential.pk).is_compromised
    assert not Credential.objects.get(pk=in_vault.credential.pk).is_compromised
