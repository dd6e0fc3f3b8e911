"""Monthly quotas primed from the daily rollups: what counts, for whom, once, and on failure.

A real database (SQLite and PostgreSQL) holds the rollups; a real memory limiter
holds the primed counters; a fixed clock makes the month and the windows exact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.limits.base import Rule
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.quotas import QuotaPrimer
from relaygate.limits.rules import month_period, rules_for
from relaygate.settings import LimitSet, TierConfig
from relaygate.store.engine import create_engine
from relaygate.store.tables import usage_daily

LOG = logging.getLogger("relaygate.tests.quotas")
NOW = datetime(2026, 11, 15, 12, tzinfo=UTC).timestamp()
SINCE = month_period(NOW).start  # 2026-11-01 00:00 UTC
MONTHLY = LimitSet(requests_per_month=100, tokens_per_month=10_000, budget_per_month=1.0)


def day_row(day: date, key_id: str, tenant_id: str = "", **figures: float) -> dict[str, object]:
    row: dict[str, object] = {
        "day": day, "tenant_id": tenant_id, "key_id": key_id, "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini", "request_count": 0, "prompt_tokens": 0, "completion_tokens": 0,
        "duration_ms_sum": 0.0, "cached_requests": 0, "error_requests": 0, "cost": 0.0,
    }  # fmt: skip
    row.update(figures)
    return row


ROWS = [
    # key k1 of tenant t1 this month: 10 requests (3 failed), 150 tokens, $0.25 ...
    day_row(
        date(2026, 11, 1),
        "k1",
        "t1",
        request_count=6,
        error_requests=1,
        prompt_tokens=60,
        completion_tokens=30,
        cost=0.125,
    ),
    day_row(
        date(2026, 11, 14),
        "k1",
        "t1",
        request_count=4,
        error_requests=2,
        prompt_tokens=40,
        completion_tokens=20,
        cost=0.125,
    ),
    # ... and last month, which no longer counts
    day_row(date(2026, 10, 31), "k1", "t1", request_count=50, prompt_tokens=5000, cost=0.5),
    # another key of the same tenant, and a key of another tenant
    day_row(date(2026, 11, 2), "k2", "t1", request_count=20, prompt_tokens=1000, cost=0.25),
    day_row(date(2026, 11, 2), "k9", "t9", request_count=40, prompt_tokens=4000, cost=0.5),
    day_row(date(2026, 11, 3), "k3", "t3", request_count=1),  # a single request
]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(sa.insert(usage_daily), ROWS)
    try:
        yield engine
    finally:
        await engine.dispose()


def tier_rules(
    limits: LimitSet = MONTHLY, tenant: str | None = None, tenant_limits: LimitSet | None = None
) -> list[Rule]:
    return rules_for(
        "k1", limits, TierConfig(), now=NOW, tenant=tenant, tenant_limits=tenant_limits
    )


async def remaining(limiter: MemoryLimiter, rules: list[Rule]) -> dict[str, int]:
    return {s.rule.name: s.remaining for s in await limiter.peek(rules)}


async def test_each_monthly_quota_is_primed_with_this_months_use(engine: AsyncEngine) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    rules = tier_rules(
        LimitSet(
            requests_per_hour=50,
            requests_per_month=100,
            tokens_per_month=10_000,
            budget_per_month=1.0,
        )
    )
    await QuotaPrimer(engine, limiter, LOG).prime(rules, "k1", "t1", SINCE)
    assert await remaining(limiter, rules) == {
        "requests_per_month": 100 - 7,  # failed requests are not counted
        "tokens_per_month": 10_000 - 150,
        "budget_per_month": 1_000_000 - 250_000,  # micro-dollars
        "requests_per_hour": 50,  # not a quota: never primed
    }
    for state in await limiter.peek(rules):  # a primed quota resets when the month ends
        expected = state.rule.window if state.rule.kind == "quota" else 0.0
        assert state.reset_after == pytest.approx(expected)


async def test_a_models_or_endpoints_quota_counts_only_that_models_or_endpoints_use(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:  # k1 also used another model and another endpoint
        await conn.execute(
            sa.insert(usage_daily),
            [
                day_row(date(2026, 11, 5), "k1", "t1", model="llama3", request_count=30),
                day_row(date(2026, 11, 5), "k1", "t1", endpoint="/api/chat", request_count=12),
            ],
        )
    tier = TierConfig(
        models={"gpt-4o-mini": LimitSet(requests_per_month=40)},
        endpoints={"/api/chat": LimitSet(requests_per_month=20)},
    )
    limiter = MemoryLimiter(clock=lambda: NOW)
    rules = rules_for("k1", LimitSet(), tier, now=NOW, model="gpt-4o-mini", endpoint="/api/chat")
    await QuotaPrimer(engine, limiter, LOG).prime(rules, "k1", "t1", SINCE)
    assert await remaining(limiter, rules) == {
        "requests_per_month for model gpt-4o-mini": 40 - 7 - 12,  # not llama3's 30
        "requests_per_month for endpoint /api/chat": 20 - 12,  # not the chat/completions 7
    }


async def test_a_tenants_quota_counts_every_key_of_the_tenant(engine: AsyncEngine) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    rules = tier_rules(
        LimitSet(requests_per_month=1000),
        tenant="t1",
        tenant_limits=LimitSet(requests_per_month=1000),
    )
    await QuotaPrimer(engine, limiter, LOG).prime(rules, "k1", "t1", SINCE)
    assert await remaining(limiter, rules) == {
        "requests_per_month": 1000 - 7,
        "requests_per_month for tenant": 1000 - 7 - 20,
    }


async def test_use_beyond_the_limit_fills_the_quota_and_no_more(engine: AsyncEngine) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    rules = tier_rules(LimitSet(requests_per_month=5))
    await QuotaPrimer(engine, limiter, LOG).prime(rules, "k1", "t1", SINCE)
    assert await remaining(limiter, rules) == {"requests_per_month": 0}
    assert not (await limiter.acquire(rules, "next")).allowed


async def test_each_quota_is_primed_once_per_process(engine: AsyncEngine) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    primer = QuotaPrimer(engine, limiter, LOG)
    rules = tier_rules()
    await primer.prime(rules, "k1", "t1", SINCE)
    await primer.prime(rules, "k1", "t1", SINCE)
    assert (await remaining(limiter, rules))["requests_per_month"] == 100 - 7


async def test_no_use_and_no_subject_prime_nothing(engine: AsyncEngine) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    primer = QuotaPrimer(engine, limiter, LOG)
    unused = rules_for("k5", MONTHLY, TierConfig(), now=NOW)
    await primer.prime(unused, "k5", None, SINCE)
    tenantless = tier_rules(tenant="t1", tenant_limits=LimitSet(requests_per_month=1000))
    await primer.prime(tenantless, "k1", None, SINCE)  # the tenant's quota has no tenant to read
    assert len(limiter) == 3  # only k1's own three quotas hold state
    assert (await remaining(limiter, tenantless))["requests_per_month for tenant"] == 1000


async def test_an_unknown_quota_is_not_primed(engine: AsyncEngine) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    odd = Rule("odd/2026-11:k1", "quota", 100, 3600.0, 1, "odd_per_month")
    await QuotaPrimer(engine, limiter, LOG).prime([odd], "k1", "t1", SINCE)
    assert len(limiter) == 0


async def test_an_unreadable_database_is_logged_and_retried(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    down = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    primer = QuotaPrimer(down, limiter, LOG)
    rules = tier_rules()
    try:
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            await primer.prime(rules, "k1", "t1", SINCE)
    finally:
        await down.dispose()
    assert [r.getMessage() for r in caplog.records] == [
        f"could not read this month's usage for {name}"
        for name in ("requests_per_month", "tokens_per_month", "budget_per_month")
    ]  # each quota is tried, and said
    assert len(limiter) == 0
    primer.engine = engine  # the database is back: the next request primes
    await primer.prime(rules, "k1", "t1", SINCE)
    assert (await remaining(limiter, rules))["requests_per_month"] == 100 - 7


async def test_a_single_request_is_primed(engine: AsyncEngine) -> None:
    limiter = MemoryLimiter(clock=lambda: NOW)
    rules = rules_for("k3", MONTHLY, TierConfig(), now=NOW)
    await QuotaPrimer(engine, limiter, LOG).prime(rules, "k3", "t3", SINCE)
    assert (await remaining(limiter, rules))["requests_per_month"] == 100 - 1


async def test_a_tenants_quota_is_primed_for_a_principal_without_a_key(engine: AsyncEngine) -> None:
    """A token of the tenant with no key of its own: the key's quotas are skipped, not the rest."""
    limiter = MemoryLimiter(clock=lambda: NOW)
    rules = tier_rules(tenant="t1", tenant_limits=LimitSet(requests_per_month=1000))
    await QuotaPrimer(engine, limiter, LOG).prime(rules, None, "t1", SINCE)
    assert (await remaining(limiter, rules))["requests_per_month for tenant"] == 1000 - 27
    assert len(limiter) == 1


async def test_the_month_starts_on_its_utc_day_whatever_the_hosts_timezone(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``since`` in another zone (and a host in Tokyo): the rollups' days are UTC days."""
    since = datetime(2026, 11, 1, 1, tzinfo=timezone(timedelta(hours=2)))  # 10-31 23:00 UTC
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        limiter = MemoryLimiter(clock=lambda: NOW)
        rules = tier_rules(LimitSet(requests_per_month=1000))
        await QuotaPrimer(engine, limiter, LOG).prime(rules, "k1", "t1", since)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (await remaining(limiter, rules))["requests_per_month"] == 1000 - 7 - 50
