"""
The token endpoint's benchmark (bench/run.py): POST /api/v1/token in up to nine scenarios,
against the ceiling project (bench/ceiling), both served by the same gunicorn shape, on one
PostgreSQL, one after the other in one run.

The sequence: AgentIdP's database, environment and Vault server (bench/orchestrator.py);
the ceiling's own database with one row; warm credentials, key credentials and a trust
policy with its platform tokens; the ceiling, served and measured; AgentIdP, served with
nothing of the benchmark inside it, and each scenario measured (single-use pools, never-used
credentials or client assertions, made just before their scenario, sized from the ceiling's
rate); the soak; and last a short diagnostic pass on AgentIdP with per-request counting
(bench/counting), one worker, for each scenario's SQL statements and bcrypt verifications
per request.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import statistics
from typing import Any

import psutil
import psycopg

from bench import token_report
from bench.machine import bcrypt_verify_seconds, note_disturbance
from bench.options import shown, without_password
from bench.orchestrator import CONN_MAX_AGE, Orchestrator, clean_environment
from bench.servers import PYTHON, Gunicorn, Shape
from bench.stats import stats

RESULTS_PREFIX = ""
#: The exit status when the benchmark could not run (targets that fail do not change it).
ERROR_STATUS = 1
TOKEN_PATH = "/api/v1/token"
#: gunicorn's shape for AgentIdP and the ceiling alike.
WORKERS = 2
#: Credentials in each warm pool (made through credentials.services, so each costs one hash to create).
WARM_POOL = 8
#: A cold pool holds this much more than the scenario's estimated need, and this many per client on top.
COLD_POOL_MARGIN = 1.3
COLD_POOL_EXTRA_PER_CLIENT = 4
#: With each worker's own cache, a warm-up presents each warm credential this many times per worker, so that
#: every worker very likely verified it; with the shared Redis cache, once is enough.
WARMUP_PASSES_PER_WORKER = 10
#: The scenarios whose target compares them with a warm secret request, and the one they are compared with.
SIGNED_JWT_SCENARIOS = ("private_key_jwt", "jwt-bearer")
WARM_SECRET_SCENARIO = "bcrypt-warm"
#: The scenarios whose target is their rate against the ceiling's: measured in --rounds rounds
#: that take turns with the ceiling, so that both meet the same stretch of a machine whose speed drifts.
TAKING_TURNS = ("bcrypt-warm", "vault-warm")
#: Requests per scenario in the diagnostic pass, and its time limit per scenario.
DIAGNOSTIC_REQUESTS = 20
DIAGNOSTIC_MAX_SECONDS = 120.0
#: The rate limits count as in a deployment, with limits no run reaches: every request here comes from one
#: address (127.0.0.1), and the wrong-secret scenarios measure what a failure costs the store, not a 429.
LIMIT_OUT_OF_REACH = "1000000000"
RATE_LIMITS = dict.fromkeys(
    (
        "AGENTIDP_TOKEN_REQUESTS_PER_ADDRESS",
        "AGENTIDP_AUTH_FAILURES_PER_ADDRESS",
        "AGENTIDP_AUTH_FAILURES_PER_CLIENT",
        "AGENTIDP_AUTH_FAILURES_PER_KNOWN_PAIR",
        "AGENTIDP_AUTH_FAILURES_TOTAL",
    ),
    LIMIT_OUT_OF_REACH,
)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    pool: str | None  # a key of the pools (bcrypt-warm, ..., private_key_jwt, jwt-bearer) or None (random clients)
    expected_status: int = 200
    wrong_secret: bool = False
    random_client: bool = False
    warm_up: bool = False  # every credential verified before the window
    # How a request proves who sends it (bench.traffic.Encoder.pair): "basic", "client_assertion", "jwt_bearer".
    request: str = "basic"
    single_use: bool = False  # each pool entry at most once (a client assertion's jti), with warm-up entries of its own
    # The warm state is each worker's own (parsed keys), whatever the cache: the warm-up reaches every worker.
    per_worker_warm_up: bool = False

    @property
    def order(self) -> str:
        return "once" if self.single_use or (self.pool and self.pool.endswith("-cold")) else "cycle"


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("ceiling", "the ceiling project: one primary-key SELECT, tiny JSON", "bcrypt-warm", warm_up=True),
        Scenario("bcrypt-warm", f"{WARM_POOL} bcrypt credentials, each used before", "bcrypt-warm", warm_up=True),
        Scenario(
            "private_key_jwt",
            f"{WARM_POOL} key credentials (ES256, keys held inline), each used before; a new assertion per request",
            "private_key_jwt",
            warm_up=True,
            request="client_assertion",
            single_use=True,
            per_worker_warm_up=True,
        ),
        Scenario(
            "jwt-bearer",
            f"{WARM_POOL} workloads' platform tokens (ES256, one trust policy, inline JWKS), each used before",
            "jwt-bearer",
            warm_up=True,
            request="jwt_bearer",
            per_worker_warm_up=True,
        ),
        Scenario("bcrypt-cold", "a never-used bcrypt credential per request", "bcrypt-cold"),
        Scenario("vault-warm", f"{WARM_POOL} Vault credentials, each used before", "vault-warm", warm_up=True),
        Scenario("vault-cold", "a never-used Vault credential per request", "vault-cold"),
        Scenario("wrong-secret-bcrypt", "known bcrypt clientIds, a random wrong secret", "bcrypt-warm", 401, True),
        Scenario("wrong-secret-vault", "known Vault clientIds, a random wrong secret", "vault-warm", 401, True),
        Scenario(
            "unknown-client",
            "a random clientId never issued (Vault is the default store)",
            None,
            401,
            random_client=True,
        ),
    )
}


def measure(orc: Orchestrator) -> dict[str, Any]:
    """Run the scenarios; return the results document."""
    args = orc.args
    names = scenario_names(args.scenarios)
    shape = Shape(WORKERS)
    orc.prepare_agentidp(RATE_LIMITS)
    ceiling_env, ceiling_path = prepare_ceiling(orc)
    orc.log(f"Seeding {WARM_POOL} bcrypt and {WARM_POOL} Vault credentials (bcrypt cost {args.bcrypt_rounds})")
    pools: dict[str, Any] = {}
    for store in ("bcrypt", "vault"):
        pools[f"{store}-warm"] = orc.seed_warm(store, name=f"bench-{store}-warm", count=WARM_POOL)
    if "private_key_jwt" in names:
        orc.log(f"Seeding {WARM_POOL} key credentials (ES256, public keys held inline)")
        pools["private_key_jwt-keys"] = orc.seed_keys(name="bench-private-key-jwt", count=WARM_POOL)
    if "jwt-bearer" in names:
        orc.log(f"Seeding a trust policy (inline JWKS, ES256) and {WARM_POOL} workloads' platform tokens")
        pools["jwt-bearer"] = orc.seed_platform(name="bench-jwt-bearer", count=WARM_POOL)
    verify_s = bcrypt_verify_seconds(args.bcrypt_rounds)
    passes = 1 if orc.cache == "redis" else WARMUP_PASSES_PER_WORKER * WORKERS

    orc.log(f"Serving the ceiling project under gunicorn ({shape.describe()}, CONN_MAX_AGE={CONN_MAX_AGE})")
    # Served beside AgentIdP for the whole run: the warm secret scenarios take turns with it.
    ceiling = Gunicorn(
        name="ceiling", application="bench.ceiling.wsgi:application", env=ceiling_env, shape=shape, logs=orc.tmp
    )
    ceiling.start(ceiling_path)
    try:
        with orc.serving(ceiling):
            rows = [measure_scenario(orc, SCENARIOS["ceiling"], pools, path=ceiling_path, passes=passes)]
        orc.log(f"Serving AgentIdP under gunicorn ({shape.describe()}, CONN_MAX_AGE={CONN_MAX_AGE}, cache {orc.cache})")
        orc.serve_agentidp(shape)
        for name in names[1:]:
            scenario = SCENARIOS[name]
            if scenario.single_use:  # as many as the ceiling's rate could use, with the cold pools' margin
                count = math.ceil(args.duration * rows[0]["rps"] * COLD_POOL_MARGIN)
                count += COLD_POOL_EXTRA_PER_CLIENT * args.concurrency
                mint_assertions(orc, scenario, pools, count=count, warmup=WARM_POOL * warm_up_passes(scenario, passes))
            elif scenario.order == "once" and scenario.pool not in pools:
                seed_cold_pool(orc, scenario.pool, pools, ceiling_rps=rows[0]["rps"], verify_s=verify_s)
            if name in TAKING_TURNS:
                rows.append(measure_in_turns(orc, scenario, pools, ceiling, ceiling_path=ceiling_path, passes=passes))
            else:
                rows.append(measure_scenario(orc, scenario, pools, path=TOKEN_PATH, passes=passes))
    finally:
        ceiling.stop()
    metrics = metrics_seen(orc)
    warm_secret = next((row for row in rows if row["scenario"] == WARM_SECRET_SCENARIO), None)
    for row in rows:
        if "round_ratios" not in row:
            row["ratio_to_ceiling"] = round(row["rps"] / rows[0]["rps"], 3) if rows[0]["rps"] else None
        row["p50_ratio_to_warm_secret"] = p50_ratio(row, warm_secret)

    soak = None
    if args.soak:
        orc.log(f"Soak: {args.soak} bcrypt-warm requests (at most {args.soak_max_seconds:g} s)")
        before = orc.server.worker_rss_mb()
        soak = measure_scenario(
            orc, SCENARIOS["bcrypt-warm"], pools, path=TOKEN_PATH, passes=0,
            duration=args.soak_max_seconds, max_requests=args.soak,
        )  # fmt: skip
        soak["worker_rss_mb_before"] = before
        soak["stopped_by_time_limit"] = soak["requests"] < args.soak
    diagnose(orc, rows[1:], pools)

    return {
        **orc.results_header(),
        "settings": settings(orc, names, verify_s, passes, shape),
        "summary": summary(rows),
        "scenarios": rows,
        "soak": soak,
        "targets": token_report.evaluate_targets(rows, soak),
        "metrics": metrics,
        "run_seconds": None,
    }


def metrics_seen(orc) -> dict:
    """Read AgentIdP's /metrics after its scenarios: the families it shows, and its token requests by outcome."""
    text = orc.server.get("/metrics")
    families = sorted({line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")})
    requests: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("agentidp_token_requests_total{"):
            labels, _, value = line.rpartition(" ")
            requests[labels.removeprefix("agentidp_token_requests_total")] = float(value)
    orc.log(f"/metrics after the scenarios: {len(families)} families, {sum(requests.values()):.0f} token requests")
    return {"families": families, "token_requests": requests}


def scenario_names(chosen: list[str]) -> list[str]:
    """
    The scenarios to run, in their order: the ceiling always (the ratios need it), and the
    warm secret scenario whenever a signed-JWT one runs (its target compares them).
    """
    names = {"ceiling", *chosen}
    if names.intersection(SIGNED_JWT_SCENARIOS):
        names.add(WARM_SECRET_SCENARIO)
    return [name for name in SCENARIOS if name in names]


def p50_ratio(row: dict, reference: dict | None) -> float | None:
    """A row's p50 over the reference row's (the warm secret scenario's); None without one."""
    if reference is None or row["scenario"] == "ceiling":
        return None
    p50, base = row["latency_ms"]["p50"], reference["latency_ms"]["p50"]
    return round(p50 / base, 3) if p50 is not None and base else None


def prepare_ceiling(orc: Orchestrator) -> tuple[dict[str, str], str]:
    """The ceiling's own database, migrated, with its one row; return its environment and its URL path."""
    database = f"{orc.args.database}_ceiling"
    orc.log(f"PostgreSQL: fresh database {database} for the ceiling project")
    url = orc.create_database(database)
    env = {
        **clean_environment(),
        "DJANGO_SETTINGS_MODULE": "bench.ceiling.settings",
        "DATABASE_URL": url,
        "CONN_MAX_AGE": str(CONN_MAX_AGE),
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1",
    }
    migrate = [PYTHON, "-m", "django", "migrate", "--noinput", "--verbosity", "0"]
    orc.run_quietly(migrate, env=env, what="the ceiling's migrate")
    with psycopg.connect(url, autocommit=True) as connection:
        row_id = connection.execute("INSERT INTO ceiling_row (name) VALUES ('ceiling') RETURNING id").fetchone()[0]
    return env, f"/ceiling/{row_id}"


def seed_cold_pool(orc: Orchestrator, pool: str, pools: dict, *, ceiling_rps: float, verify_s: float) -> None:
    """Never-used credentials for one cold scenario, sized from the ceiling's rate and bcrypt's cost, and 20 more."""
    args = orc.args
    store = pool.removesuffix("-cold")
    rate = ceiling_rps
    if store == "bcrypt":  # each worker verifies one secret at a time
        rate = min(rate, min(WORKERS, psutil.cpu_count() or 1) / verify_s)
    count = math.ceil(args.duration * rate * COLD_POOL_MARGIN) + COLD_POOL_EXTRA_PER_CLIENT * args.concurrency
    orc.log(f"Seeding {count} never-used {store} credentials for {pool} (and {DIAGNOSTIC_REQUESTS} for the diagnostic)")
    pairs = orc.seed_cold(store, name=f"bench-{pool}", count=count + DIAGNOSTIC_REQUESTS)
    pools[pool], pools[f"{pool}-diagnostic"] = pairs[:count], pairs[count:]


def warm_up_passes(scenario: Scenario, passes: int) -> int:
    """The warm-up's passes over a scenario's credentials: the run's, or enough to reach every worker."""
    if not scenario.warm_up:
        return 0
    return max(passes, WARMUP_PASSES_PER_WORKER * WORKERS) if scenario.per_worker_warm_up else passes


def mint_assertions(
    orc: Orchestrator, scenario: Scenario, pools: dict, *, count: int, warmup: int, suffix: str = ""
) -> None:
    """
    Client assertions for a single-use scenario on the AgentIdP being served, signed before its
    window (the load generator signs nothing): `count` for the window, one per request, and
    `warmup` for its warm-up, in pools[pool + suffix] and pools[pool + suffix + "-warmup"].
    """
    pool = scenario.pool
    orc.log(
        f"Signing {count + warmup} client assertions for {pool}{suffix} ({count} for the window, {warmup} to warm up)"
    )
    signed = orc.seed_assertions(pools[f"{pool}-keys"], count=warmup + count)
    # The warm-up takes whole turns of the keys, so that it presents every credential.
    pools[f"{pool}{suffix}-warmup"], pools[f"{pool}{suffix}"] = signed[:warmup], signed[warmup:]


def pool_credentials(pools: dict, pool: str | None) -> dict[str, list] | None:
    """What the load generator draws from: the pool, and its own warm-up entries if it has them."""
    if pool is None:
        return None
    credentials = {"pool": pools[pool]}
    if f"{pool}-warmup" in pools:
        credentials["warmup"] = pools[f"{pool}-warmup"]
    return credentials


def job_for(
    scenario: Scenario, *, path: str, concurrency: int, duration: float, max_requests: int | None, passes: int
) -> dict:
    return {
        "path": path,
        "concurrency": concurrency,
        "traffic": {
            "kind": "pool",
            "label": scenario.name,
            "order": scenario.order,
            "wrong_secret": scenario.wrong_secret,
            "random_client": scenario.random_client,
            "request": scenario.request,
        },
        "min_seconds": duration,
        "max_seconds": duration,
        "max_requests": max_requests,
        "warmup_passes": passes,
    }


def measure_scenario(
    orc: Orchestrator, scenario: Scenario, pools: dict, *, path: str, passes: int,
    duration: float | None = None, max_requests: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run one scenario's window; return its row of results."""
    window = run_window(orc, scenario, pools, path=path, passes=passes, duration=duration, max_requests=max_requests)
    return scenario_row(scenario, [window])


def measure_in_turns(
    orc: Orchestrator, scenario: Scenario, pools: dict, ceiling: Gunicorn, *, ceiling_path: str, passes: int
) -> dict[str, Any]:
    """
    Run a scenario's --duration in --rounds windows that take turns with the ceiling's (the
    ceiling first, then the scenario first, ...); return its row with each round's ratio of
    the two rates, and their median as its ratio to the ceiling.
    """
    rounds, seconds = orc.args.rounds, orc.args.duration / orc.args.rounds
    windows: dict[str, list[dict[str, Any]]] = {"ceiling": [], scenario.name: []}
    for side in orc.in_turns(rounds, "ceiling", scenario.name):
        if side == "ceiling":
            with orc.serving(ceiling):
                window = run_window(orc, SCENARIOS["ceiling"], pools, path=ceiling_path, passes=passes,
                                    duration=seconds)  # fmt: skip
        else:
            window = run_window(orc, scenario, pools, path=TOKEN_PATH, passes=passes, duration=seconds)
        windows[side].append(window)
    rate = lambda window: len(window["records"]) / window["result"]["elapsed_s"]  # noqa: E731
    ratios = [
        round(rate(own) / rate(base), 3)
        for own, base in zip(windows[scenario.name], windows["ceiling"], strict=True)
        if rate(base)
    ]
    row = scenario_row(scenario, windows[scenario.name])
    row["ceiling_rps_rounds"] = [round(rate(base), 1) for base in windows["ceiling"]]
    row["round_ratios"] = ratios
    row["ratio_to_ceiling"] = statistics.median(ratios) if len(ratios) == rounds else None
    return row


def run_window(
    orc: Orchestrator, scenario: Scenario, pools: dict, *, path: str, passes: int,
    duration: float | None = None, max_requests: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One window of a scenario on the application being served (Orchestrator.window's answer)."""
    args = orc.args
    duration = args.duration if duration is None else duration
    orc.log(f"Scenario {scenario.name}: {scenario.description} ({duration:g} s, {args.concurrency} clients)")
    job = job_for(
        scenario, path=path, concurrency=args.concurrency, duration=duration, max_requests=max_requests,
        passes=warm_up_passes(scenario, passes),
    )  # fmt: skip
    return orc.window(job, pool_credentials(pools, scenario.pool))


def scenario_row(scenario: Scenario, windows: list[dict[str, Any]]) -> dict[str, Any]:
    """A scenario's row of results from its windows: their requests and CPU together, the RSS after the last."""
    records = [record for window in windows for record in window["records"]]
    elapsed = round(sum(window["result"]["elapsed_s"] for window in windows), 3)
    cpu = {group: round(sum(window["cpu_s"][group] for window in windows), 3) for group in windows[0]["cpu_s"]}
    figures = stats(records, elapsed)
    requests = figures["requests"]
    vault_calls = sum(window["vault_calls"] for window in windows)
    redis_calls = None if any(w["redis_calls"] is None for w in windows) else sum(w["redis_calls"] for w in windows)
    handling = [window["vault_handling_ms"] for window in windows]
    vault_handling_ms = None if None in handling else sum(handling)
    row = {
        "scenario": scenario.name,
        "description": scenario.description,
        "requests": requests,
        "elapsed_s": elapsed,
        "rps": figures["rps"] or 0.0,
        "expected_status": scenario.expected_status,
        "statuses": figures["statuses"],
        "errors": requests - figures["statuses"].get(str(scenario.expected_status), 0),
        "latency_ms": figures["latency_ms"],
        "vault_calls_per_request": round(vault_calls / requests, 3) if requests else None,
        "redis_calls_per_request": round(redis_calls / requests, 3) if redis_calls is not None and requests else None,
        "vault_handling_ms_per_call": (
            round(vault_handling_ms / vault_calls, 3) if vault_handling_ms and vault_calls else None
        ),
        "cpu_s": cpu,
        "server_cpu_ms_per_request": round(cpu["gunicorn"] / requests * 1000, 3) if requests else None,
        "loadgen_core_share": round(cpu["loadgen"] / elapsed, 3) if elapsed else None,
        "worker_rss_mb": windows[-1]["worker_rss_mb"],
        "warmup": windows[0]["warmup"],
        "pool_exhausted": any(window["result"]["pool_exhausted"] for window in windows),
    }
    if row["pool_exhausted"]:
        print(f"    the pool of never-used credentials ran out after {requests} requests", flush=True)
    note_disturbance(cpu, elapsed)
    return row


def diagnose(orc: Orchestrator, rows: list[dict], pools: dict) -> None:
    """Replay each scenario briefly on AgentIdP with per-request counting; add its counts to each row."""
    orc.log(f"Diagnostic pass: AgentIdP with per-request counting, 1 worker, {DIAGNOSTIC_REQUESTS} requests a scenario")
    orc.serve_agentidp(Shape(1), settings_module="bench.counting.settings", name="agentidp-counting")
    for row in rows:
        scenario = SCENARIOS[row["scenario"]]
        pool = scenario.pool
        if scenario.single_use:  # assertions name the server they are for: this one's
            mint_assertions(orc, scenario, pools, count=DIAGNOSTIC_REQUESTS, warmup=WARM_POOL, suffix="-diagnostic")
        if pool and scenario.order == "once":
            pool = f"{pool}-diagnostic"
        job = job_for(
            scenario, path=TOKEN_PATH, concurrency=1, duration=DIAGNOSTIC_MAX_SECONDS,
            max_requests=DIAGNOSTIC_REQUESTS, passes=1 if scenario.warm_up else 0,
        )  # fmt: skip
        window = orc.window(job, pool_credentials(pools, pool))
        requests = window["result"]["requests"]
        counted = window["result"]["per_request"]
        row["diagnostic"] = {
            "requests": requests,
            "sql_queries_per_request": counted["x-bench-queries"],
            "bcrypt_checks_per_request": counted["x-bench-bcrypt"],
            "vault_calls_per_request": round(window["vault_calls"] / requests, 3) if requests else None,
        }
        row["sql_queries_per_request"] = counted["x-bench-queries"]
        row["bcrypt_checks_per_request"] = counted["x-bench-bcrypt"]
    orc.stop_server()


def settings(orc: Orchestrator, names: list[str], verify_s: float, passes: int, shape: Shape) -> dict[str, Any]:
    args = orc.args
    return {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "scenarios": names,
        "bcrypt_rounds": args.bcrypt_rounds,
        "bcrypt_verify_ms": round(verify_s * 1000, 3),
        "warm_pool": WARM_POOL,
        "warmup_passes": passes,
        "rounds": {"scenarios": list(TAKING_TURNS), "count": args.rounds},
        "gunicorn": shape.as_json(),
        "conn_max_age": CONN_MAX_AGE,
        "debug": False,
        "log_level": "INFO (AgentIdP's default: LOG_LEVEL is not set)",
        "cache": orc.cache,
        "vault_server": args.vault,
        "vault": orc.vault.describe(),
        "vault_default_store": True,
        "upgrade_on_use": False,
        "rate_limits": f"counting, each limit {LIMIT_OUT_OF_REACH} per window (out of reach)",
        "agentidp_environment": orc.agentidp_settings(),
        "extra_environment": {name: shown(name, value) for name, value in args.settings},
        "ceiling": {
            "project": "bench/ceiling: Django + DRF only, no middleware, one APIView (no authentication, "
            "JSONRenderer), one primary-key SELECT, tiny JSON body",
            "database": f"{args.database}_ceiling",
            "conn_max_age": CONN_MAX_AGE,
            "gunicorn": shape.as_json(),
        },
        "diagnostic_pass": {
            "settings_module": "bench.counting.settings",
            "workers": 1,
            "requests_per_scenario": DIAGNOSTIC_REQUESTS,
            "counts": "sql_queries_per_request and bcrypt_checks_per_request of each row come from this pass",
        },
        "load_generator": "bench/loadgen.py (Python, raw sockets, one process)",
        "database": args.database,
        "postgres": without_password(args.postgres),
        "client_auth": "client_secret_basic, grant_type=client_credentials form body",
        "signed_jwts": {
            "private_key_jwt": f"{WARM_POOL} key credentials, one ES256 key each, public keys held inline (jwks); "
            "client_assertion in the form body, no client_id; one assertion per request (its jti is accepted once), "
            "signed by bench/seed.py just before the scenario (iss = sub = clientId, aud = the token endpoint's URL, "
            "the longest lifetime accepted), none signed by the load generator",
            "jwt-bearer": "one trust policy: issuer https://kubernetes.default.svc.cluster.local, inline JWKS (two "
            "ES256 keys), subjectPattern system:serviceaccount:bench:worker-*, one required claim (namespace), "
            f"maxTokenAgeSeconds 3600; {WARM_POOL} workloads, each presenting its one platform token in turn "
            "(a platform token is reusable until it expires)",
            "warmup_passes": WARMUP_PASSES_PER_WORKER * WORKERS,
            "compared_with": WARM_SECRET_SCENARIO,
        },
        "soak": args.soak or None,
    }


def summary(rows: list[dict]) -> dict[str, Any]:
    """The figures that count, for a quick look: each scenario's rate, p50, p99 and ratio to the ceiling."""
    return {
        row["scenario"]: {
            "rps": row["rps"],
            "p50_ms": row["latency_ms"]["p50"],
            "p99_ms": row["latency_ms"]["p99"],
            "ratio_to_ceiling": row["ratio_to_ceiling"],
            "p50_ratio_to_warm_secret": row["p50_ratio_to_warm_secret"],
        }
        for row in rows
    }


render = token_report.render
exit_status = token_report.exit_status
