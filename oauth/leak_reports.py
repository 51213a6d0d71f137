"""
Where leaked secrets are reported (credentials.leaks checks them and quarantines the live ones):

- POST /api/v1/leaks: anyone who found a secret; always the same 202, rate limited per address;
- POST /api/v1/secret-scanning/github: GitHub's secret-scanning partner call, signed with
  GitHub's ECDSA keys (AGENTIDP_GITHUB_SECRET_SCANNING_KEYS);
- POST /api/v1/secret-scanning/github/alerts: a GitHub organisation's or repository's
  `secret_scanning_alert` webhook (HMAC with AGENTIDP_GITHUB_WEBHOOK_SECRET), for a
  self-hosted AgentIdP that cannot be GitHub's partner: the alert's secret is read from
  GitHub's API with AGENTIDP_GITHUB_API_TOKEN;
- GET /api/v1/secret-scanning/gitlab/revocable_token_types and
  POST /api/v1/secret-scanning/gitlab/revoke_tokens: GitLab's token revocation API.

A signed call is remembered (by the digest of its signed body) for AGENTIDP_LEAK_REPLAY_SECONDS
once it was processed: the same call again is refused. Errors have the management API's shape.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables

from credentials import outbound
from credentials.audit import Actor
from credentials.leaks import MAX_REPORTED_SECRETS, Reported, ReportUnavailable, leaks_check
from credentials.models import AuditEvent

from .addresses import client_address
from .throttling import Throttled, window_limit

logger = logging.getLogger(__name__)

REPLAY_PREFIX = "agentidp:leak-report:"
#: The token type GitLab asks about: its gitleaks rule id, as GitLab names it.
GITLAB_TOKEN_TYPE = "gitleaks_rule_id_aidp_client_secret"  # noqa: S105 (a type's name)
GITHUB_TOKEN_TYPE = "agentidp_client_secret"  # noqa: S105 (a type's name)
#: What GitHub's partner call and an alert's fetched secret may be at most.
MAX_TOKEN_LENGTH = 4096


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse({"code": code, "message": message}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _unauthorized(message: str) -> JsonResponse:
    return _error(401, "UNAUTHORIZED", message)


def _unavailable() -> JsonResponse:
    return _error(
        503,
        "SERVICE_UNAVAILABLE",
        "A secret store cannot say now whether a reported secret is live; send the report again shortly.",
        {"Retry-After": "30"},
    )


def _post_only(view):
    @functools.wraps(view)
    def wrapped(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", f"Use POST, not {request.method}.", {"Allow": "POST"})
        if (request.content_type or "").lower() != "application/json":
            return _error(415, "UNSUPPORTED_MEDIA_TYPE", "Send the report as application/json.")
        try:
            request.body  # noqa: B018 (read once, within the size limit)
        except RequestDataTooBig:
            return _error(413, "PAYLOAD_TOO_LARGE", "The request body is larger than this server accepts.")
        return view(request)

    return csrf_exempt(wrapped)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _reporter(label: str, address: str) -> Actor:
    return Actor(type=AuditEvent.ActorType.REPORTER, id=address[:64], label=label)


# --- Replays ---------------------------------------------------------------------------------


class _Replay:
    """A signed call's mark: refused if seen, remembered once processed, forgotten if processing failed."""

    def __init__(self, kind: str, signed: bytes) -> None:
        self.key = REPLAY_PREFIX + kind + ":" + hashlib.sha256(signed).hexdigest()

    def claim(self) -> bool:
        """Return whether this call is new (and mark it taken); raise on a cache that cannot answer."""
        return bool(cache.add(self.key, 1, timeout=settings.AGENTIDP_LEAK_REPLAY_SECONDS))

    def release(self) -> None:
        try:
            cache.delete(self.key)
        except Exception:
            logger.warning("could not forget a leak report's replay mark")


def _claimed(replay: _Replay) -> JsonResponse | None:
    try:
        if replay.claim():
            return None
    except Exception as exc:
        logger.warning("leak report refused, the replay cache cannot answer error=%s", type(exc).__name__)
        return _error(503, "SERVICE_UNAVAILABLE", "Try again shortly.", {"Retry-After": "5"})
    logger.warning("leak report refused as a replay")
    return _unauthorized("This call was received before: a replay is refused.")


# --- Self-report -----------------------------------------------------------------------------

SELF_REPORT_ANSWER = {"status": "received"}


@_post_only
@sensitive_variables()  # every local may hold the reported secret
def self_report(request: HttpRequest) -> HttpResponse:
    """
    Whoever found a secret reports it: `{"secret": "...", "foundAt": "..."?}`. Always 202 with
    the same body, whether the secret was live or not, so the answer is no oracle.
    """
    address = client_address(request)
    try:
        window_limit("leak_reports", address, limit=settings.AGENTIDP_LEAK_REPORTS_PER_ADDRESS, address=address)
    except Throttled as exc:
        return _error(
            429,
            "RATE_LIMITED",
            f"Too many reports; try again in {exc.retry_after} seconds.",
            {"Retry-After": str(exc.retry_after)},
        )
    data = _json(request.body)
    secret = data.get("secret") if isinstance(data, dict) else None
    found_at = data.get("foundAt", "") if isinstance(data, dict) else ""
    if not isinstance(secret, str) or not 0 < len(secret) <= MAX_TOKEN_LENGTH or not isinstance(found_at, str):
        return _error(400, "VALIDATION_ERROR", 'Send {"secret": "<the secret you found>", "foundAt": "<where>"?}.')
    # A store that cannot answer is logged; answering otherwise would tell that the secret names a credential.
    with contextlib.suppress(ReportUnavailable):
        leaks_check(
            reported=[Reported(secret=secret, found_at=found_at, source="self_report")],
            acting=_reporter("leak report (anonymous)", address),
        )
    return JsonResponse(SELF_REPORT_ANSWER, status=202)


# --- GitHub's partner call -------------------------------------------------------------------


@functools.cache
def github_keys() -> dict[str, ec.EllipticCurvePublicKey]:
    """GitHub's secret-scanning public keys by key identifier, from AGENTIDP_GITHUB_SECRET_SCANNING_KEYS(_FILE)."""
    text = settings.AGENTIDP_GITHUB_SECRET_SCANNING_KEYS
    if not text and settings.AGENTIDP_GITHUB_SECRET_SCANNING_KEYS_FILE:
        with open(settings.AGENTIDP_GITHUB_SECRET_SCANNING_KEYS_FILE, encoding="utf-8") as handle:
            text = handle.read()
    if not text:
        return {}
    try:
        document = json.loads(text)
        keys = {}
        for entry in document["public_keys"]:
            key = serialization.load_pem_public_key(entry["key"].encode())
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
                raise ValueError("not a P-256 key")
            keys[str(entry["key_identifier"])] = key
    except (ValueError, KeyError, TypeError) as exc:
        raise ImproperlyConfigured(
            "AGENTIDP_GITHUB_SECRET_SCANNING_KEYS is not GitHub's public key document "
            '({"public_keys": [{"key_identifier", "key" (PEM, P-256), "is_current"}]}).'
        ) from exc
    return keys


@receiver(setting_changed)
def _forget_github_keys(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("AGENTIDP_GITHUB_SECRET_SCANNING_KEYS"):
        github_keys.cache_clear()


def _github_signature_valid(request: HttpRequest) -> bool:
    key = github_keys().get(request.headers.get("Github-Public-Key-Identifier", ""))
    encoded = request.headers.get("Github-Public-Key-Signature", "")
    if key is None or not encoded:
        return False
    try:
        key.verify(base64.b64decode(encoded, validate=True), request.body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _matches(data: Any, required: tuple[str, ...]) -> list[dict[str, str]] | None:
    """The report's entries if `data` is an array of objects whose `required` members are strings, else None."""
    if not isinstance(data, list) or len(data) > MAX_REPORTED_SECRETS:
        return None
    for entry in data:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(name), str) for name in required):
            return None
        if len(entry["token"]) > MAX_TOKEN_LENGTH:
            return None
    return data


@_post_only
@sensitive_variables()  # every local may hold a reported secret
def github_partner_report(request: HttpRequest) -> HttpResponse:
    """
    GitHub's secret-scanning partner call: a signed JSON array of `{"token", "type", "url",
    "source"}`; the answer labels each token true_positive (a live secret, now quarantined)
    or false_positive.
    """
    if not _github_signature_valid(request):
        logger.warning("github secret-scanning call refused: no valid signature")
        return _unauthorized("The call is not signed by one of GitHub's secret-scanning keys.")
    matches = _matches(_json(request.body), ("token",))
    if matches is None:
        return _error(400, "VALIDATION_ERROR", 'Send a JSON array of {"token", "type", "url", "source"}.')
    # By the body, not the signature: an ECDSA signature has twins ((r, n - s), other DER
    # spellings) that verify the same body, so a replay could come with another signature.
    replay = _Replay("github", request.body)
    if (refused := _claimed(replay)) is not None:
        return refused
    reported = [
        Reported(secret=m["token"], found_at=str(m.get("url") or ""), source=str(m.get("source") or "github"))
        for m in matches
    ]
    try:
        live = leaks_check(reported=reported, acting=_reporter("GitHub secret scanning", client_address(request)))
    except ReportUnavailable:
        replay.release()
        return _unavailable()
    logger.info("github secret-scanning call reported=%s live=%s", len(matches), sum(live))
    return JsonResponse(
        [
            {
                "token_raw": m["token"],
                "token_type": str(m.get("type") or GITHUB_TOKEN_TYPE),
                "label": "true_positive" if is_live else "false_positive",
            }
            for m, is_live in zip(matches, live, strict=True)
        ],
        safe=False,
    )


# --- GitHub's secret-scanning alert webhook --------------------------------------------------

#: The alert actions that may mean a secret is out there.
ALERT_ACTIONS = {"created", "reopened", "publicly_leaked"}


def _github_webhook_signature_valid(request: HttpRequest) -> bool:
    secret = settings.AGENTIDP_GITHUB_WEBHOOK_SECRET
    presented = request.headers.get("X-Hub-Signature-256", "")
    if not secret or not presented:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(presented.encode(), expected.encode())


def _alert_secret(repository: str, number: int) -> tuple[str, str]:
    """
    Read an alert's secret and its page from GitHub's API. The URL is built from the setting
    and the alert's repository and number, never taken from the payload; no redirect is
    followed, so the API token goes to that URL only.
    """
    path = f"/repos/{urllib.parse.quote(repository, safe='/')}/secret-scanning/alerts/{number}"
    request = urllib.request.Request(  # noqa: S310 (https from the operator's setting)
        settings.AGENTIDP_GITHUB_API_URL + path,
        headers={
            "Accept": "application/vnd.github+json",
            "Authorization": "Bearer " + settings.AGENTIDP_GITHUB_API_TOKEN,
            "User-Agent": "AgentIdP",
            "X-GitHub-Api-Version": "2022-11-28",
        },
    )
    with outbound.opener().open(request, timeout=10) as response:
        alert = json.loads(response.read(1 << 20))
    secret = alert.get("secret") if isinstance(alert, dict) else None
    if not isinstance(secret, str) or len(secret) > MAX_TOKEN_LENGTH:
        raise ValueError("the alert has no secret")
    return secret, str(alert.get("html_url") or "")


@_post_only
@sensitive_variables()  # every local may hold a reported secret
def github_alert_webhook(request: HttpRequest) -> HttpResponse:
    """A `secret_scanning_alert` webhook delivery: the alert's secret is read from GitHub and checked."""
    if not _github_webhook_signature_valid(request):
        logger.warning("github webhook refused: no valid signature")
        return _unauthorized("The delivery is not signed with the configured webhook secret.")
    event = request.headers.get("X-GitHub-Event", "")
    delivery = request.headers.get("X-GitHub-Delivery", "")
    if event == "ping":
        return JsonResponse({"status": "pong"})
    data = _json(request.body)
    alert = data.get("alert") if isinstance(data, dict) else None
    repository = (data.get("repository") or {}).get("full_name") if isinstance(data, dict) else None
    if event != "secret_scanning_alert" or not isinstance(alert, dict) or not isinstance(repository, str):
        return _error(400, "VALIDATION_ERROR", "Only secret_scanning_alert deliveries are taken here.")
    if data.get("action") not in ALERT_ACTIONS:
        return JsonResponse({"status": "ignored"})
    number = alert.get("number")
    if not isinstance(number, int) or isinstance(number, bool) or not delivery:
        return _error(400, "VALIDATION_ERROR", "The delivery has no alert number or delivery id.")
    # By the body, which the HMAC covers; X-GitHub-Delivery does not, so it cannot name a replay.
    replay = _Replay("github-alert", request.body)
    if (refused := _claimed(replay)) is not None:
        return refused
    try:
        secret, page = _alert_secret(repository, number)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        replay.release()
        logger.warning("github alert secret could not be read repository=%s error=%s", repository, type(exc).__name__)
        return _error(
            503, "SERVICE_UNAVAILABLE", "The alert's secret could not be read from GitHub.", {"Retry-After": "30"}
        )
    reporter = _reporter(f"GitHub secret-scanning alert ({repository[:128]})", client_address(request))
    try:
        [live] = leaks_check(reported=[Reported(secret=secret, found_at=page, source="github_alert")], acting=reporter)
    except ReportUnavailable:
        replay.release()
        return _unavailable()
    return JsonResponse({"status": "checked", "live": live})


# --- GitLab's token revocation API -----------------------------------------------------------


def _gitlab_authorized(request: HttpRequest) -> bool:
    token = settings.AGENTIDP_GITLAB_REVOCATION_TOKEN
    presented = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(presented.encode(), token.encode())


@csrf_exempt
def gitlab_token_types(request: HttpRequest) -> HttpResponse:
    """GET: the token types GitLab may send (its gitleaks rule id for AgentIdP's secrets)."""
    if request.method not in ("GET", "HEAD"):
        return _error(405, "METHOD_NOT_ALLOWED", f"Use GET, not {request.method}.", {"Allow": "GET, HEAD"})
    if not _gitlab_authorized(request):
        return _unauthorized("The Authorization header is not the configured revocation token.")
    return JsonResponse({"types": [GITLAB_TOKEN_TYPE]})


@_post_only
@sensitive_variables()  # every local may hold a reported secret
def gitlab_revoke_tokens(request: HttpRequest) -> HttpResponse:
    """POST: `[{"type", "token", "location"}]`; 204 once every token was checked (live ones quarantined)."""
    if not _gitlab_authorized(request):
        return _unauthorized("The Authorization header is not the configured revocation token.")
    matches = _matches(_json(request.body), ("type", "token"))
    if matches is None or any(m["type"] != GITLAB_TOKEN_TYPE for m in matches):
        return _error(
            400, "VALIDATION_ERROR", f'Send a JSON array of {{"type": "{GITLAB_TOKEN_TYPE}", "token", "location"}}.'
        )
    reported = [Reported(secret=m["token"], found_at=str(m.get("location") or ""), source="gitlab") for m in matches]
    try:
        leaks_check(reported=reported, acting=_reporter("GitLab secret detection", client_address(request)))
    except ReportUnavailable:
        return _error(429, "RATE_LIMITED", "A secret store cannot answer now; try again later.", {"Retry-After": "30"})
    return HttpResponse(status=204)
