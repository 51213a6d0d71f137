"""
Send every method, Accept header, body and identity to every route of the URLconf: never a 5xx.

The routes come from `get_resolver().url_patterns` itself (the admin site's, the API's and
the `re_path` catch-alls included), so a route added later is swept without touching this
module. Each route is filled with values that exist (an agent, its credential, an audit
event, the admin's app labels) and with values that do not (an unknown UUID, "not-a-uuid",
a very long string, another agent's credential), then sent:

- block A: every path x every method x every identity, with `Accept: application/json`;
  the bodies rotate so that each (path, method) gets each body once;
- block B: the paths with existing values (with and without their optional trailing slash)
  and with a malformed id x GET/POST/OPTIONS x every Accept variant, for the superuser
  session and the admin bearer token.

Every response is checked, and all failures of a route are reported together: status below
500 and no traceback; under /api/, a 4xx is JSON in the contract's shape (the OAuth shape on
the OAuth endpoints) and a 405 has `Allow`; OPTIONS answers 200, 204 or 405, or is refused
exactly as GET is; and Django's CSRF page never stands in for the 405 that the same request
would get with a CSRF token.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404
from django.urls.resolvers import RegexPattern, RoutePattern

from credentials.models import Agent, AuditEvent, Credential, TrustPolicy
from tests.conftest import token_for
from tests.factories import AgentFactory, make_credential, make_trust_policy

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
IDENTITIES = ("anonymous", "staff", "superuser", "admin_token")
#: Identities whose client sends no CSRF token, as a real API client or a stranger does.
CSRF_ENFORCED = {"anonymous", "admin_token"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
#: (label, Accept header or None, query string) sent in block B.
ACCEPTS = (
    ("no Accept", None, ""),
    ("application/json", "application/json", ""),
    ("text/html", "text/html", ""),
    ("browser", BROWSER_ACCEPT, ""),
    ("*/*", "*/*", ""),
    ("application/xml", "application/xml", ""),
    ("foo/bar", "foo/bar", ""),
    ("?format=api", None, "format=api"),
    ("?format=json", None, "format=json"),
)
BLOCK_A_ACCEPT = ACCEPTS[1]
BLOCK_B_METHODS = ("GET", "POST", "OPTIONS")
BLOCK_B_IDENTITIES = ("superuser", "admin_token")


@dataclass(frozen=True)
class Body:
    label: str
    content: bytes
    content_type: str | None


BODIES = (
    Body("empty", b"", None),
    Body("json {}", b"{}", "application/json"),
    Body(
        "form",
        b"grant_type=client_credentials&token=not-a-token&name=route-sweep&description=sweep",
        "application/x-www-form-urlencoded",
    ),
    Body("malformed JSON", b'{"name": "route-sweep", ', "application/json"),
)
NO_BODY = BODIES[0]

LONG = "a" * 5000
MALFORMED = "not-a-uuid"
MANAGEMENT_KEYS = {"code", "message", "details"}
OAUTH_KEYS = {"error", "error_description", "error_uri"}
ERROR_CODE = re.compile(r"[A-Z]+(?:_[A-Z]+)*")
#: At most this many routes may be left out, each with its reason; none under /api/.
MAX_SKIPPED = 2


# --- routes, from the URLconf ---------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A converter or named group to fill; `model` is the admin model whose URLs it sits in."""

    name: str
    regex: str
    model: type[models.Model] | None


@dataclass(frozen=True)
class OptionalText:
    """A literal that the pattern makes optional (`/?`): sent with it and without it."""

    text: str


@dataclass
class Route:
    route: str  # as ResolverMatch.route spells it
    tokens: list[str | Slot | OptionalText] = field(default_factory=list)
    skipped: str = ""

    @property
    def slots(self) -> list[Slot]:
        return [token for token in self.tokens if isinstance(token, Slot)]

    def __str__(self) -> str:
        return self.route


_ROUTE_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")
_REGEX_LITERAL = re.compile(r"[\w/.\-~]")


def _join_route(first: str, second: str) -> str:
    """Join two patterns as Django does for ResolverMatch.route."""
    return second if not first else first + second.removeprefix("^")


def _admin_model(pattern) -> type[models.Model] | None:
    """The model of a `<app_label>/<model_name>/` include, as the admin site lays its URLs out."""
    match = re.fullmatch(r"(\w+)/(\w+)/", str(pattern))
    if match is None:
        return None
    try:
        return apps.get_model(match[1], match[2])
    except LookupError:
        return None


def _closing_parenthesis(regex: str, start: int) -> int:
    depth, index, in_class = 0, start, False
    while index < len(regex):
        char = regex[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise ValueError(f"unbalanced parentheses in {regex!r}")


def _regex_tokens(regex: str, model, *, leaf: bool) -> list[str | Slot | OptionalText] | str:
    """Turn a regex pattern into literals and slots, or return why it cannot be sampled."""
    body = regex.removeprefix("^")
    anchored = body.endswith("$") and not body.endswith("\\$")
    body = body.removesuffix("$") if anchored else body
    tokens: list[str | Slot | OptionalText] = []
    index = 0
    while index < len(body):
        if body.startswith("(?P<", index):
            close = _closing_parenthesis(body, index)
            name, _, inner = body[index + 4 : close].partition(">")
            tokens.append(Slot(name, inner, model))
            index = close + 1
            continue
        if body.startswith(".*", index):  # an unnamed wildcard: sampled as nothing
            index += 2
            continue
        char = body[index]
        if char == "\\" and index + 1 < len(body) and not body[index + 1].isalnum():
            literal, index = body[index + 1], index + 2
        elif _REGEX_LITERAL.fullmatch(char):
            literal, index = char, index + 1
        else:
            return f"cannot sample the regex {regex!r}: {char!r} at {index} is neither a literal nor a named group"
        if body.startswith("?", index):
            tokens.append(OptionalText(literal))
            index += 1
        elif body[index : index + 1] in ("*", "+", "{"):
            return f"cannot sample the regex {regex!r}: a repeated literal at {index}"
        else:
            tokens.append(literal)
    if leaf and not anchored:
        # The pattern matches a prefix: whatever follows it is one more thing to fill.
        tokens.append(Slot("__rest__", ".*", model))
    return tokens


def _pattern_tokens(pattern, model, *, leaf: bool) -> list[str | Slot | OptionalText] | str:
    if isinstance(pattern, RoutePattern):
        route, tokens, position = str(pattern), [], 0
        for match in _ROUTE_PARAMETER.finditer(route):
            tokens.extend(route[position : match.start()])
            converter = pattern.converters[match["name"]]
            tokens.append(Slot(match["name"], converter.regex, model))
            position = match.end()
        tokens.extend(route[position:])
        return tokens
    if isinstance(pattern, RegexPattern):
        return _regex_tokens(str(pattern), model, leaf=leaf)
    return f"unknown pattern type {type(pattern).__name__}"


def collect_routes(patterns=None, prefix: Route | None = None, model=None) -> list[Route]:
    """Walk the URLconf recursively and describe every URLPattern as a Route."""
    prefix = prefix or Route(route="")
    routes = []
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        leaf = isinstance(entry, URLPattern)
        entry_model = model if leaf else (_admin_model(entry.pattern) or model)
        tokens = _pattern_tokens(entry.pattern, entry_model, leaf=leaf)
        route = Route(route=_join_route(prefix.route, str(entry.pattern)), tokens=list(prefix.tokens))
        if isinstance(tokens, str) or prefix.skipped:
            route.skipped = prefix.skipped or tokens
        else:
            route.tokens.extend(tokens)
        if isinstance(entry, URLResolver):
            routes.extend(collect_routes(entry.url_patterns, route, entry_model))
        else:
            routes.append(route)
    return routes


# --- values that exist and values that do not -----------------------------------------------


class World:
    """The objects the routes' parameters name; rebuilt whenever a request destroys one."""

    def __init__(self):
        self.generation = 0
        self.build()

    def build(self) -> None:
        self.generation += 1
        tag = f"route-sweep-{self.generation}"
        self.agent = AgentFactory(name=tag)
        self.credential = make_credential(self.agent).credential
        other = AgentFactory(name=f"{tag}-other")
        self.foreign_credential = make_credential(other).credential
        self.policy = make_trust_policy(self.agent)
        self.foreign_policy = make_trust_policy(other)
        self.event = AuditEvent.objects.filter(credential_id=self.credential.pk).order_by("pk").first()
        self.group = Group.objects.create(name=tag)
        self.victim = apps.get_model(settings.AUTH_USER_MODEL).objects.create_user(username=tag, password="unused")

    def objects(self) -> dict[type[models.Model], models.Model]:
        return {
            Agent: self.agent,
            Credential: self.credential,
            TrustPolicy: self.policy,
            AuditEvent: self.event,
            Group: self.group,
            type(self.victim): self.victim,
        }

    def intact(self) -> bool:
        return all(type(obj)._default_manager.filter(pk=obj.pk).exists() for obj in self.objects().values())

    def pk_for(self, model) -> str:
        obj = self.objects().get(model) or model._default_manager.order_by("pk").first()
        return str(obj.pk) if obj is not None else "1"


Value = Callable[[World], str]


def _unknown_pk(model) -> str:
    if model is not None and not isinstance(model._meta.pk, models.UUIDField):
        return "2147483647"
    return str(uuid.uuid4())


def slot_values(slot: Slot) -> tuple[list[Value], list[tuple[str, Value]]]:
    """Return a slot's values that name something, and its hostile ones by label."""
    name, model = slot.name, slot.model
    broken = [("malformed", lambda w: MALFORMED), ("long", lambda w: LONG)]
    if name == "agent_id":
        return [lambda w: str(w.agent.pk)], [("unknown", lambda w: str(uuid.uuid4())), *broken]
    if name == "credential_id":
        hostile = [
            ("another agent's", lambda w: str(w.foreign_credential.pk)),
            ("unknown", lambda w: str(uuid.uuid4())),
        ]
        return [lambda w: str(w.credential.pk)], [*hostile, *broken]
    if name == "trust_policy_id":
        hostile = [
            ("another agent's", lambda w: str(w.foreign_policy.pk)),
            ("unknown", lambda w: str(uuid.uuid4())),
        ]
        return [lambda w: str(w.policy.pk)], [*hostile, *broken]
    if name == "content_type_id":
        return [lambda w: str(ContentType.objects.get_for_model(Agent).pk)], [
            ("unknown", lambda w: "2147483647"),
            *broken,
        ]
    if name in ("object_id", "id", "pk"):
        target = model or Agent
        return [lambda w: w.pk_for(target)], [("unknown", lambda w: _unknown_pk(target)), *broken]
    if name == "app_label":
        alternatives = slot.regex.split("|")
        if not all(re.fullmatch(r"\w+", label) for label in alternatives):
            alternatives = [config.label for config in apps.get_app_configs() if re.fullmatch(slot.regex, config.label)]
        existing = [lambda w, label=label: label for label in alternatives]
        return existing, [("unknown", lambda w: "nope"), ("long", lambda w: LONG)]
    if slot.regex in (".*", ".+") or name in ("url", "__rest__"):
        return [lambda w: "nope/"], [("deep", lambda w: "v1/agents/x/y/z"), ("long", lambda w: LONG)]
    for sample in ("1", str(uuid.uuid4()), "sample"):
        if re.fullmatch(slot.regex, sample):
            return [lambda w, sample=sample: sample], broken
    return [], []


@dataclass(frozen=True)
class Variant:
    """One concrete way of filling a route: a label and how to render it against the world."""

    label: str
    values: tuple[Value, ...]
    optional: bool  # whether the pattern's optional literals are included

    def render(self, route: Route, world: World) -> str:
        values = iter(self.values)
        parts = []
        for token in route.tokens:
            if isinstance(token, Slot):
                parts.append(next(values)(world))
            elif isinstance(token, OptionalText):
                parts.append(token.text if self.optional else "")
            else:
                parts.append(token)
        return "/" + "".join(parts)


def route_variants(route: Route) -> tuple[list[Variant], list[Variant]]:
    """Return the variants that name existing objects, and the hostile ones (one bad value each)."""
    slots = route.slots
    filled = [slot_values(slot) for slot in slots]
    optional = "".join(token.text for token in route.tokens if isinstance(token, OptionalText))
    existing: list[Variant] = []
    for choice in itertools.product(*(values for values, _ in filled)):
        existing.append(Variant("existing", tuple(choice), True))
        if optional:
            existing.append(Variant(f"existing without {optional!r}", tuple(choice), False))
    hostile: list[Variant] = []
    base = [values[0] for values, _ in filled] if all(values for values, _ in filled) else None
    for index, (slot, (_, bad_values)) in enumerate(zip(slots, filled, strict=True)):
        for label, value in bad_values:
            if base is None:
                continue
            values = list(base)
            values[index] = value
            hostile.append(Variant(f"{slot.name} {label}", tuple(values), True))
    return existing, hostile


def _unfillable(route: Route) -> str:
    for slot in route.slots:
        if not slot_values(slot)[0]:
            return f"no sample value for the parameter {slot.name!r} (regex {slot.regex!r})"
    return ""


ROUTES = collect_routes()
for _route in ROUTES:
    _route.skipped = _route.skipped or _unfillable(_route)
SWEPT = [route for route in ROUTES if not route.skipped]
SKIPPED = [route for route in ROUTES if route.skipped]


# --- the sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    route: str
    method: str
    identity: str
    accept: str
    body: str
    variant: str
    status: int
    problem: str
    path: str

    def key(self) -> tuple:
        return (self.route, self.method, self.identity, self.status, self.problem)


def _resolved_route(path: str) -> str:
    try:
        return resolve(path).route
    except Resolver404:
        return "(no route)"


def _is_oauth(path: str) -> bool:
    try:
        return resolve(path).namespace == "oauth"
    except Resolver404:
        return False


def _in_admin_site(path: str) -> bool:
    try:
        return "admin" in resolve(path).namespaces
    except Resolver404:
        return False


def _is_csrf_page(response) -> bool:
    return response.status_code == 403 and b"CSRF verification failed" in response.content


def _error_shape_problem(response, path: str) -> str:
    """Return what is wrong with a 4xx under /api/, or ''."""
    content_type = response.get("Content-Type", "")
    if not content_type.startswith("application/json"):
        return f"4xx not JSON (Content-Type {content_type!r})"
    try:
        body = json.loads(response.content)
    except ValueError:
        return "4xx body is not valid JSON"
    if not isinstance(body, dict):
        return "4xx body is not a JSON object"
    if _is_oauth(path):
        if not {"error", "error_description"} <= set(body) or not set(body) <= OAUTH_KEYS:
            return f"4xx not in the OAuth shape (keys {sorted(body)})"
        if not (isinstance(body["error"], str) and isinstance(body["error_description"], str)):
            return "4xx OAuth error members are not strings"
        return ""
    if not {"code", "message"} <= set(body) or not set(body) <= MANAGEMENT_KEYS:
        return f"4xx not in the management shape (keys {sorted(body)})"
    if not (isinstance(body["code"], str) and ERROR_CODE.fullmatch(body["code"])):
        return f"4xx code is not UPPER_SNAKE ({body['code']!r})"
    if not (isinstance(body["message"], str) and body["message"]):
        return "4xx message is empty"
    return ""


class Sweep:
    def __init__(self, route: Route, clients: dict[str, Client], twins: dict[str, Client], users: dict[str, Any]):
        self.route = route
        self.clients = clients
        self.twins = twins
        self.users = users
        self.world = World()
        self.failures: list[Failure] = []
        self.requests = 0
        self.get_status: dict[tuple, int] = {}

    def send(self, client: Client, method: str, path: str, accept, body: Body):
        _, header, query = accept
        extra = {"HTTP_ACCEPT": header} if header is not None else {}
        url = f"{path}?{query}" if query else path
        self.requests += 1
        return client.generic(method, url, body.content, content_type=body.content_type or "", **extra)

    def run(self, identity: str, method: str, variant: Variant, accept, body: Body) -> None:
        path = variant.render(self.route, self.world)
        response = self.send(self.clients[identity], method, path, accept, body)
        status = response.status_code

        def fail(problem: str, status: int = status) -> None:
            self.failures.append(
                Failure(
                    _resolved_route(path), method, identity, accept[0], body.label, variant.label, status, problem, path
                )
            )

        if status >= 500:
            fail("server error")
        if b"Traceback (most recent call last)" in response.content:
            fail("traceback in the body")
        if path.startswith("/api/"):
            if 400 <= status < 500 and method != "HEAD":
                problem = _error_shape_problem(response, path)
                if problem:
                    fail(problem)
            if status == 405 and not response.has_header("Allow"):
                fail("405 without Allow")
        key = (identity, variant, accept[0])
        if method == "GET":
            self.get_status[key] = status
        if method == "OPTIONS" and status not in (200, 204, 405) and status < 500:
            refused_like_get = status == self.get_status.get(key) and (300 <= status < 500)
            if not refused_like_get:
                fail(f"OPTIONS answered {status} (GET answered {self.get_status.get(key)})")
        # Django's admin checks CSRF before the method on purpose: its pages are forms for browsers.
        if identity in CSRF_ENFORCED and _is_csrf_page(response) and not _in_admin_site(path):
            twin = self.send(self.twins[identity], method, path, accept, body)
            if twin.status_code == 405:
                fail("CSRF failure page instead of the 405 the method gets")
            elif twin.status_code >= 500:
                fail("server error (with a CSRF token)", twin.status_code)
        self.after(identity, method, response)

    def after(self, identity: str, method: str, response) -> None:
        """Keep the sweep's preconditions: the world's objects exist and the sessions are logged in."""
        if method not in SAFE_METHODS and response.status_code < 400 and not self.world.intact():
            self.world.build()
        user = self.users.get(identity)
        if user is not None and settings.SESSION_COOKIE_NAME in response.cookies:
            self.clients[identity].force_login(user)

    def sweep(self) -> None:
        existing, hostile = route_variants(self.route)
        # Block A: every path x every method x every identity, one Accept; the bodies rotate.
        for variant in existing + hostile:
            for identity_index, identity in enumerate(IDENTITIES):
                for method_index, method in enumerate(METHODS):
                    body = NO_BODY if method in SAFE_METHODS else BODIES[(identity_index + method_index) % len(BODIES)]
                    self.run(identity, method, variant, BLOCK_A_ACCEPT, body)
        # Block B: existing and malformed paths x GET/POST/OPTIONS x every Accept, two identities.
        malformed = [variant for variant in hostile if variant.label.endswith("malformed")][:1] or hostile[:1]
        for variant in existing + malformed:
            for identity_index, identity in enumerate(BLOCK_B_IDENTITIES):
                for accept_index, accept in enumerate(ACCEPTS):
                    for method in BLOCK_B_METHODS:
                        body = (
                            NO_BODY if method in SAFE_METHODS else BODIES[(identity_index + accept_index) % len(BODIES)]
                        )
                        self.run(identity, method, variant, accept, body)

    def report(self) -> str:
        groups: dict[tuple, list[Failure]] = {}
        for failure in self.failures:
            groups.setdefault(failure.key(), []).append(failure)
        lines = [f"{len(self.failures)} failing responses of {self.requests} requests, {len(groups)} distinct:"]
        for (route, method, identity, status, problem), failures in sorted(groups.items(), key=str):
            example = failures[0]
            path = example.path if len(example.path) < 120 else example.path[:100] + "...(long)"
            accepts = ", ".join(label for label, _, _ in ACCEPTS if label in {f.accept for f in failures})
            variants = " / ".join(sorted({f.variant for f in failures}))
            bodies = " / ".join(sorted({f.body for f in failures}))
            lines.append(
                f"  {route} | {method} | {identity} | Accept: {accepts} -> {status} {problem}"
                f" [x{len(failures)}; paths: {variants}; bodies: {bodies}; e.g. {path}]"
            )
        return "\n".join(lines)


@pytest.fixture
def quiet_request_log():
    """Keep Django's one warning per 4xx out of the captured log; 5xx errors are still logged."""
    loggers = [logging.getLogger(name) for name in ("django.request", "django.security.csrf")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture
def identities(db, client, admin_issued, django_user_model):
    """The clients of every identity, and the CSRF-exempt twins of those that send no CSRF token."""
    token = token_for(client, admin_issued)
    staff = django_user_model.objects.create_user(username="sweep-staff", password="unused", is_staff=True)
    root = django_user_model.objects.create_superuser(
        username="sweep-root", password="unused", email="root@example.com"
    )
    bearer = {"Authorization": f"Bearer {token}"}
    clients = {
        "anonymous": Client(enforce_csrf_checks=True, raise_request_exception=False),
        "staff": Client(raise_request_exception=False),
        "superuser": Client(raise_request_exception=False),
        "admin_token": Client(enforce_csrf_checks=True, raise_request_exception=False, headers=bearer),
    }
    twins = {
        "anonymous": Client(raise_request_exception=False),
        "admin_token": Client(raise_request_exception=False, headers=bearer),
    }
    users = {"staff": staff, "superuser": root}
    for identity, user in users.items():
        clients[identity].force_login(user)
    return clients, twins, users


@pytest.mark.parametrize("route", SWEPT, ids=str)
def test_route_answers_every_method_accept_body_and_identity_without_5xx_or_contract_breach(
    route, identities, quiet_request_log
):
    sweep = Sweep(route, *identities)
    existing, _ = route_variants(route)
    for variant in existing:
        path = variant.render(route, sweep.world)
        resolved = _resolved_route(path)
        assert resolved == route.route, f"the sweep fills {route} wrongly: {path} resolves to {resolved}"

    sweep.sweep()

    print(f"{route}: {sweep.requests} requests")

    if sweep.failures:
        pytest.fail(sweep.report(), pytrace=False)


def test_the_sweep_covers_every_api_route_and_skips_few():
    for route in SKIPPED:
        message = f"route sweep skips {route}: {route.skipped}"
        print(message)
        warnings.warn(message, UserWarning, stacklevel=1)
    reasons = "\n".join(f"  {route}: {route.skipped}" for route in SKIPPED)
    assert not [route for route in SKIPPED if route.route.lstrip("^").startswith("api/")], reasons
    assert len(SKIPPED) <= MAX_SKIPPED, reasons

    def leaves(patterns) -> int:
        return sum(leaves(p.url_patterns) if isinstance(p, URLResolver) else 1 for p in patterns)

    assert len(ROUTES) == leaves(get_resolver().url_patterns)
    assert len(SWEPT) + len(SKIPPED) == len(ROUTES)
