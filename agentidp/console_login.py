"""
Limits on failed sign-ins at the operators' console (the Django admin): per account and per address.

ConsoleLoginBackend is Django's ModelBackend behind two of oauth.throttling's failure
limits, counted in the same fixed windows of AGENTIDP_RATE_LIMIT_WINDOW_SECONDS in the
Django cache:

- failed sign-ins per account (AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ACCOUNT), keyed by a
  digest of the normalised username, so that usernames no account holds count alike and
  nothing tells whether an account exists;
- failed sign-ins per client address (AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS), the
  address oauth.addresses.client_address works out (AGENTIDP_TRUSTED_PROXIES).

Over either, no password is checked (no hasher work) and the backend tells authenticate()
to stop (PermissionDenied); ConsoleAuthenticationForm then says so on the login page, the
same for every username. An address that signed in as this account within
AGENTIDP_KNOWN_ADDRESS_SECONDS is heard past both, so that nobody elsewhere, nor a
neighbour behind the same NAT, can lock an operator out from where they usually sign in;
until that pair of address and account itself fails AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS
times in a window (someone on the operator's own address guessing the operator's
password). A right password from a new address waits for the window while the account is
over its limit.

Each limit reached writes one `client.rate_limited` audit event per window and key, with
the username only when an account holds it. If the cache fails, nothing is limited
(logged), as at the OAuth endpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import unicodedata

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest
from django.utils.crypto import salted_hmac

from oauth.addresses import client_address
from oauth.throttling import (
    FailureLimit,
    Throttled,
    counters_read,
    known_mark,
    known_remember,
    limit_reached,
    refusal,
)

logger = logging.getLogger(__name__)

REF_SALT = "agentidp.console_login"
#: Where the backend leaves a refusal for the login form to explain.
THROTTLED_ATTRIBUTE = "_agentidp_console_throttled"


def account_ref(username: str) -> str:
    """
    Return a short keyed digest of a username, normalised as Django compares them (NFKC) and case-folded.

    It names an account in cache keys, logs and audit events without saying whether the
    account exists. Spellings that differ in case count as one account, as Django's
    UserCreationForm refuses to create them side by side.
    """
    normalised = unicodedata.normalize("NFKC", username).casefold()
    return salted_hmac(REF_SALT, normalised, algorithm="sha256").hexdigest()[:16]


@dataclasses.dataclass
class ConsoleLoginGuard:
    """The failure limits for one console sign-in: check before the password is checked, record after."""

    address: str
    username: str
    #: This address signed in as this account lately.
    known: bool = False

    @classmethod
    def for_request(cls, request: HttpRequest, username: str) -> ConsoleLoginGuard:
        return cls(address=client_address(request), username=username)

    @functools.cached_property
    def ref(self) -> str:
        return account_ref(self.username)

    @property
    def limits(self) -> tuple[FailureLimit, FailureLimit, FailureLimit]:
        """The failures for this account, from this address, and of this pair of address and account."""
        return (
            FailureLimit(
                "console_account_failures",
                "console-failures-account",
                self.ref,
                settings.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ACCOUNT,
            ),
            FailureLimit(
                "console_address_failures",
                "console-failures-address",
                self.address,
                settings.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS,
            ),
            FailureLimit(
                "console_pair_failures",
                "console-failures-pair",
                f"{self.ref}:{self.address}",
                settings.AGENTIDP_CONSOLE_LOGIN_FAILURES_PER_ADDRESS,
            ),
        )

    @property
    def _known_key(self) -> tuple[str, str]:
        return known_mark(f"console:{self.ref}:{self.address}")

    def check(self) -> Throttled | None:
        """Return the refusal when a limit is reached and this address has not signed in as this account lately."""
        per_account, per_address, pair = self.limits
        if not (per_account.on or per_address.on):
            return None
        counts = counters_read(per_account.key, per_address.key, pair.key, self._known_key)
        self.known = bool(counts.get(self._known_key))
        if self.known and not pair.over(counts):
            return None  # no attacker's or neighbour's failures silence an operator where they sign in
        for limit in (pair, per_account, per_address) if self.known else (per_account, per_address):
            if limit.over(counts):
                return refusal(limit.name)
        return None

    def failed(self) -> None:
        per_account, per_address, pair = self.limits
        if self.known and pair.count():
            limit_reached(pair.name, address=self.address, details={"accountRef": self.ref})
        if per_account.count():
            user = _user_named(self.username)
            limit_reached(
                per_account.name,
                address=self.address,
                details={"accountRef": self.ref, **({"username": user.get_username()} if user else {})},
                log_fields={"account_ref": self.ref, "user_id": user.pk if user else "-"},
            )
        if per_address.count():
            limit_reached(per_address.name, address=self.address)

    def succeeded(self) -> None:
        """Remember that this address signed in as this account (written once, not on every sign-in)."""
        if not self.known and any(limit.on for limit in self.limits):
            known_remember(self._known_key)


def _user_named(username: str):
    """The account a username names exactly, or None: only then may an audit event name it."""
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        return None


class ConsoleLoginBackend(ModelBackend):
    """
    Check passwords as ModelBackend does, within the console's failure limits.

    Over a limit, no password is checked and PermissionDenied stops authenticate(); the
    refusal is left on the request for ConsoleAuthenticationForm. A call without a request
    (a management command, the test client's login()) has no address and is not limited.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if request is None or username is None or password is None:
            return super().authenticate(request, username=username, password=password, **kwargs)
        guard = ConsoleLoginGuard.for_request(request, username)
        throttled = guard.check()
        if throttled is not None:
            setattr(request, THROTTLED_ATTRIBUTE, throttled)
            logger.warning(
                "console sign-in refused limit=%s address=%s account_ref=%s", throttled.limit, guard.address, guard.ref
            )
            raise PermissionDenied(throttled.limit)
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            guard.failed()
            logger.info("console sign-in failed address=%s account_ref=%s", guard.address, guard.ref)
        else:
            guard.succeeded()
        return user

    async def aauthenticate(self, request, username=None, password=None, **kwargs):
        return await sync_to_async(self.authenticate)(request, username=username, password=password, **kwargs)


class ConsoleAuthenticationForm(AdminAuthenticationForm):
    """The console's sign-in form: says when a sign-in was refused for too many failures, and for how long."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "Too many failed sign-ins; try again in %(seconds)s seconds.",
    }

    def get_invalid_login_error(self) -> ValidationError:
        throttled = getattr(self.request, THROTTLED_ATTRIBUTE, None)
        if throttled is None:
            return super().get_invalid_login_error()
        return ValidationError(
            self.error_messages["throttled"], code="throttled", params={"seconds": throttled.retry_after}
        )
