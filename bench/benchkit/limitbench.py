"""Authentication + limits per request, in process: the gateway's own objects, no HTTP.

Builds what `relaygate serve` builds (settings from bench/relaygate.yaml, a migrated SQLite
database holding the admin key, the lifespan's AppState), then times, for one key, what
api/openai.py runs for every request: authenticate -> admit -> settle.

    cd bench && ../.venv/bin/python -m benchkit.limitbench [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import keys, redis_store
from .common import CHAT, percentile
from .gateway import CONFIG
from .sse_client import run_async

if TYPE_CHECKING:
    from relaygate.settings import Settings
    from relaygate.state import AppState

STAGES = ("authenticate", "admit", "settle")
MODEL = "bench-model"
# What the upstream reports at the end (the nginx fake's figures).
USAGE: Mapping[str, Any] = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
WARMUP = 500  # requests before timing: the first reads the database, Redis loads scripts
ITERATIONS = {"memory": 10_000, "redis": 4_000}  # requests per round
AT_ONCE = 32  # requests in flight for the round trips of a busy worker


@dataclass
class MicroRun:
    """One backend and one key; times in microseconds per request."""

    backend: str
    key: str
    rules: int  # limit rules each request is checked against
    iterations: int  # requests per round
    totals_us: list[float]  # mean per request, one per round
    stages_us: dict[str, list[float]]  # mean per stage, one per round
    p50_us: float  # over every timed request
    p99_us: float
    round_trips: float | None = None  # the Redis client's round trips, per request
    round_trips_at_once: float | None = None  # the same, AT_ONCE requests in flight
    redis_commands: float | None = None  # commands run inside scripts (Redis-wide), per request
    stage_trips: dict[str, float] = field(default_factory=dict)  # round trips by stage
    warnings: list[str] = field(default_factory=list)  # e.g. "Redis unreachable"

    @property
    def median_us(self) -> float:
        return statistics.median(self.totals_us)

    def stage_us(self, stage: str) -> float:
        return statistics.median(self.stages_us[stage])


class _Warnings(logging.Handler):
    """Keeps what the gateway's objects log at WARNING and above (limiter fallbacks)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _scope(secret: str) -> dict[str, Any]:
    """The smallest ASGI scope the authenticator reads."""
    return {
        "type": "http",
        "headers": [(b"authorization", f"Bearer {secret}".encode())],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }


async def _round(state: AppState, scope: dict[str, Any], n: int) -> list[tuple[int, int, int]]:
    """``n`` requests' worth of authenticate/admit/settle; ns per stage for each."""
    from relaygate.asgi import new_request_id

    auth, admission, clock = state.auth, state.admission, time.perf_counter_ns
    out = []
    for _ in range(n):
        request_id = new_request_id()
        t0 = clock()
        principal = await auth.authenticate(scope)
        t1 = clock()
        admitted = await admission.admit(
            principal, request_id, model=MODEL, endpoint=CHAT, body_size=100, max_output_tokens=16
        )
        t2 = clock()
        await admission.settle(admitted, USAGE)
        out.append((t1 - t0, t2 - t1, clock() - t2))
    return out


def _summarise(
    backend: str, key: str, rules: int, rounds: list[list[tuple[int, int, int]]]
) -> MicroRun:
    pooled = [sum(sample) / 1000 for samples in rounds for sample in samples]
    return MicroRun(
        backend=backend,
        key=key,
        rules=rules,
        iterations=len(rounds[0]),
        totals_us=[statistics.fmean(sum(s) for s in samples) / 1000 for samples in rounds],
        stages_us={
            stage: [statistics.fmean(s[i] for s in samples) / 1000 for samples in rounds]
            for i, stage in enumerate(STAGES)
        },
        p50_us=percentile(pooled, 50),
        p99_us=percentile(pooled, 99),
    )


class _Sent:
    """Counts the gateway's Redis round trips: the connections its client takes from its
    pool, one for a command sent alone or for a batch of them (GatewayRedis.batched).

    Wraps the client's own pool, so other clients of the same Redis do not count."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        pool = client.connection_pool
        take = pool.get_connection

        async def counted(*args: Any, **options: Any) -> Any:
            self.count += 1
            return await take(*args, **options)

        pool.get_connection = counted


async def _case(
    state: AppState, key: tuple[str, str], backend: str, rounds: int, sent: _Sent | None
) -> MicroRun:
    """Warm up, then ``rounds`` rounds for one key; Redis commands counted around them."""
    label, secret = key
    scope = _scope(secret)
    await _round(state, scope, WARMUP)
    principal = await state.auth.authenticate(scope)
    rules = len(state.admission.rules(principal, model=MODEL, endpoint=CHAT))
    redis_url = state.settings.redis_url
    before = redis_store.command_calls(redis_url) if redis_url else {}
    sent_before = sent.count if sent else 0
    timed = [await _round(state, scope, ITERATIONS[backend]) for _ in range(rounds)]
    run = _summarise(backend, label, rules, timed)
    if redis_url and sent:
        total = ITERATIONS[backend] * rounds
        _, inner = redis_store.calls_between(before, redis_store.command_calls(redis_url))
        run.round_trips, run.redis_commands = (sent.count - sent_before) / total, inner / total
        run.stage_trips = await _trips_by_stage(state, scope, sent)
        run.round_trips_at_once = await _trips_at_once(state, scope, sent)
    return run


async def _trips_at_once(
    state: AppState, scope: dict[str, Any], sent: _Sent, rounds: int = 20
) -> float:
    """Round trips per request with AT_ONCE requests in flight, as a busy worker has
    them: their commands share batches."""
    from relaygate.asgi import new_request_id

    principal = await state.auth.authenticate(scope)

    async def one() -> None:
        admitted = await state.admission.admit(
            principal, new_request_id(), model=MODEL, endpoint=CHAT, body_size=100,
            max_output_tokens=16,
        )  # fmt: skip
        await state.admission.settle(admitted, USAGE)

    start = sent.count
    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(AT_ONCE)))
    return (sent.count - start) / (rounds * AT_ONCE)


async def _trips_by_stage(
    state: AppState, scope: dict[str, Any], sent: _Sent, n: int = 100
) -> dict[str, float]:
    """Redis commands sent per request in each stage, over ``n`` more requests."""
    from relaygate.asgi import new_request_id

    counts = dict.fromkeys(STAGES, 0)
    for _ in range(n):
        start = sent.count
        principal = await state.auth.authenticate(scope)
        authenticated = sent.count
        admitted = await state.admission.admit(
            principal, new_request_id(), model=MODEL, endpoint=CHAT, body_size=100,
            max_output_tokens=16,
        )  # fmt: skip
        admitted_at = sent.count
        await state.admission.settle(admitted, USAGE)
        counts["authenticate"] += authenticated - start
        counts["admit"] += admitted_at - authenticated
        counts["settle"] += sent.count - admitted_at
    return {stage: count / n for stage, count in counts.items()}


async def _measure(settings: Settings, admin_key: str, rounds: int) -> list[MicroRun]:
    """The admin key (tier unlimited: 1 rule) and a key of the bench tier (5 rules)."""
    from relaygate.auth.bootstrap import ensure_admin_key
    from relaygate.state import close_state, open_state

    await ensure_admin_key(settings)
    log, warnings = logging.getLogger("bench"), _Warnings()
    log.addHandler(warnings)
    state = await open_state(settings, log)
    try:
        tenant = await state.identity.create_tenant(keys.BENCH_TENANT)
        _, user = await state.identity.create_key(
            tenant.id, prefix=keys.KEY_PREFIX, tier=keys.BENCH_TIER, name="bench"
        )
        cases = [("admin key, tier unlimited", admin_key), (f"key of tier {keys.BENCH_TIER}", user)]
        sent = _Sent(state.redis) if state.redis is not None else None
        backend = "redis" if sent else "memory"
        runs = [await _case(state, case, backend, rounds, sent) for case in cases]
    finally:
        await close_state(state)
        log.removeHandler(warnings)
    for run in runs:
        run.warnings = warnings.messages
    return runs


def measure(redis_url: str | None, rounds: int = 5) -> list[MicroRun]:
    """Both keys against the memory backend (no ``redis_url``) or Redis (a fresh prefix)."""
    from relaygate.settings import load_settings
    from relaygate.store.migrate import upgrade

    db_url = keys.fresh_db(f"micro-{'redis' if redis_url else 'memory'}")
    upgrade(db_url)  # blocking, outside the event loop, as `relaygate serve` does
    admin_key, prefix = keys.new_secret(), redis_store.new_prefix()
    overrides: dict[str, Any] = {"database_url": db_url, "admin_key": admin_key}
    overrides["log_level"] = "warning"
    if outbox := keys.fresh_outbox(f"micro-{'redis' if redis_url else 'memory'}"):
        overrides["usage"] = {"outbox_dir": outbox}
    if redis_url:
        overrides.update(redis_url=redis_url, redis_prefix=prefix)
    settings = load_settings(CONFIG, environ={}, overrides=overrides)
    try:
        return run_async(_measure(settings, admin_key, rounds))
    finally:
        if redis_url:
            redis_store.forget(prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", metavar="URL", help="Redis backend (default: memory)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for run in measure(args.redis, args.rounds):
        stages = ", ".join(f"{s} {run.stage_us(s):.1f}" for s in STAGES)
        print(f"{run.backend} {run.key} ({run.rules} rules): {run.median_us:.1f} µs/request")
        print(f"  median of {args.rounds} rounds of {run.iterations}; {stages}")
        print(
            f"  p50 {run.p50_us:.1f} µs, p99 {run.p99_us:.1f} µs; round trips {run.round_trips}"
            f" ({run.round_trips_at_once} with {AT_ONCE} at once)"
        )


if __name__ == "__main__":
    main()
