"""One contract, two backends: every test runs against the memory and the Redis limiter.

Time is passed explicitly (``now``) so the figures are exact; Redis is the real
server at 127.0.0.1:6379, each test under its own key prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from relaygate.limits.base import Decision, Lease, Limiter, Rule
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.redis import RedisLimiter, connect

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def rate(key: str, limit: int, window: float = 60.0, cost: int = 1) -> Rule:
    return Rule(key, "rate", limit, window, cost, f"{key}_rate")


def quota(key: str, limit: int, window: float = 100.0, cost: int = 1) -> Rule:
    return Rule(key, "quota", limit, window, cost, f"{key}_quota")


def conc(key: str, limit: int, window: float = 900.0) -> Rule:
    return Rule(key, "concurrency", limit, window, 1, "max_concurrent")


async def admitted(limiter: Limiter, rules: list[Rule], n: int, now: float) -> int:
    decisions = [await limiter.acquire(rules, uuid4().hex, now) for _ in range(n)]
    return sum(d.allowed for d in decisions)


def lease_of(decision: Decision) -> Lease:
    assert decision.allowed and decision.lease is not None
    return decision.lease


def redis_client() -> Redis:
    return connect("redis://127.0.0.1:6379/0", max_connections=32, wait=5)


async def delete_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        memory = MemoryLimiter()
        yield memory
        await memory.aclose()
        return
    client = redis_client()
    prefix = f"rgtest:{uuid4().hex}:"
    shared = RedisLimiter(client, prefix, close_client=False)
    try:
        yield shared
    finally:
        await delete_prefix(client, prefix)
        await shared.aclose()
        await client.aclose()


async def test_burst_of_limit_admitted_then_refused(limiter: Limiter) -> None:
    rule = rate("rph", 10, 60)
    assert await admitted(limiter, [rule], 10, T0) == 10
    refused = await limiter.acquire([rule], "r11", T0)
    assert not refused.allowed and refused.lease is None
    assert refused.denied is not None and refused.denied.rule == rule
    assert refused.denied.remaining == 0
    assert refused.denied.retry_after == pytest.approx(6.0)  # one unit per W/N
    assert refused.denied.reset_after == pytest.approx(60.0)


async def test_rate_refills_one_unit_per_interval(limiter: Limiter) -> None:
    rule = rate("rpm", 10, 60)
    assert await admitted(limiter, [rule], 10, T0) == 10
    assert await admitted(limiter, [rule], 1, T0 + 5.9) == 0
    assert await admitted(limiter, [rule], 2, T0 + 6.0) == 1
    assert await admitted(limiter, [rule], 3, T0 + 18.0) == 2
    assert await admitted(limiter, [rule], 11, T0 + 200) == 10  # back to a full burst


async def test_limit_one_and_awkward_intervals(limiter: Limiter) -> None:
    """N requests fit in a burst even when W/N is not exact in binary (60/7, 1/3)."""
    assert await admitted(limiter, [rate("seven", 7, 60)], 8, T0) == 7
    assert await admitted(limiter, [rate("third", 3, 1)], 4, T0) == 3
    assert await admitted(limiter, [rate("one", 1, 3600)], 2, T0) == 1
    assert await admitted(limiter, [rate("third", 3, 1)], 2, T0 + 1 / 3) == 1


async def test_all_or_nothing(limiter: Limiter) -> None:
    roomy, full = rate("roomy", 5), rate("full", 1)
    q, c = quota("q", 10), conc("c", 10)
    rules = [roomy, q, c, full]
    first = await limiter.acquire(rules, "r1", T0)
    assert first.allowed
    second = await limiter.acquire(rules, "r2", T0)
    assert not second.allowed
    assert second.denied is not None and second.denied.rule == full
    states = {s.rule.key: s for s in await limiter.peek(rules, T0)}
    assert states["roomy"].remaining == 4
    assert states["q"].remaining == 9
    assert states["c"].remaining == 9  # r2 holds no lease
    assert states["full"].remaining == 0
    # every rule reports where it stands in the refusal, not only the denied one
    assert [s.rule for s in second.states] == rules
    assert [s.retry_after > 0 for s in second.states] == [False, False, False, True]


async def test_cost_above_one(limiter: Limiter) -> None:
    tokens = rate("tpm", 100, 60, cost=30)
    assert await admitted(limiter, [tokens], 4, T0) == 3
    [state] = await limiter.peek([tokens], T0)
    assert state.remaining == 10
    assert state.retry_after == pytest.approx(12.0)  # 20 more units at 0.6 s each
    too_big = rate("tpm", 100, 60, cost=101)
    refused = await limiter.acquire([too_big], "big", T0 + 3600)
    assert not refused.allowed  # a cost above the limit never fits


async def test_zero_limit_refuses_everything(limiter: Limiter) -> None:
    for rule in (rate("r0", 0), quota("q0", 0), conc("c0", 0)):
        refused = await limiter.acquire([rule], "r", T0)
        assert not refused.allowed and refused.denied is not None
        assert refused.denied.remaining == 0 and refused.denied.retry_after > 0


async def test_settle_refunds_and_charges(limiter: Limiter) -> None:
    tokens = rate("tpm", 100, 60, cost=80)
    month = quota("tpmo", 1000, 100, cost=500)
    rules = [tokens, month]
    lease = lease_of(await limiter.acquire(rules, "r1", T0))
    assert not (await limiter.acquire(rules, "r2", T0)).allowed
    await limiter.settle(lease, {"tpm": 10, "tpmo": 100}, T0)
    assert [s.remaining for s in await limiter.peek(rules, T0)] == [90, 900]
    # an extra charge: 80 reserved, 100 used
    lease = lease_of(await limiter.acquire(rules, "r3", T0))
    await limiter.settle(lease, {"tpm": 100, "tpmo": 700}, T0)
    tpm, tpmo = await limiter.peek(rules, T0)
    assert tpm.remaining == 0  # 100 - 10 - 100 = -10: over, shown as 0
    assert tpm.reset_after == pytest.approx(66.0)  # 110 units of 0.6 s
    assert tpmo.remaining == 200
    small = rate("tpm", 100, 60, cost=10)
    refused = await limiter.acquire([small], "r4", T0)
    assert not refused.allowed and refused.denied is not None
    assert refused.denied.retry_after == pytest.approx(12.0)  # 10 over + 10 needed


async def test_settle_refund_never_goes_below_empty(limiter: Limiter) -> None:
    tokens = rate("tpm", 100, 60, cost=50)
    lease = lease_of(await limiter.acquire([tokens], "r1", T0))
    await limiter.settle(lease, {"tpm": 0}, T0 + 30)  # half of it already refilled
    assert await admitted(limiter, [rate("tpm", 100, 60)], 101, T0 + 30) == 100


async def test_settle_is_idempotent(limiter: Limiter) -> None:
    tokens = rate("tpm", 100, 60, cost=50)
    c = conc("c", 2)
    lease = lease_of(await limiter.acquire([tokens, c], "r1", T0))
    other = lease_of(await limiter.acquire([rate("tpm", 100, 60, cost=10), c], "r2", T0))
    await limiter.settle(lease, {"tpm": 0}, T0)
    await limiter.settle(lease, {"tpm": 0}, T0)
    assert lease.settled and not other.settled
    tpm, held = await limiter.peek([tokens, c], T0)
    assert tpm.remaining == 90  # refunded once, not twice
    assert held.remaining == 1  # r2 still holds its slot


async def test_settle_tolerates_missing_state(limiter: Limiter) -> None:
    rules = [rate("gone", 10), quota("gone_q", 10), conc("gone_c", 1)]
    await limiter.settle(Lease("never-acquired", tuple(rules)), {"gone": 0, "gone_q": 5}, T0)
    assert [s.remaining for s in await limiter.peek(rules, T0)] == [10, 10, 1]


async def test_quota_counts_and_expires_at_period_end(limiter: Limiter) -> None:
    month = quota("rpmo", 3, window=100)
    assert await admitted(limiter, [month], 4, T0) == 3
    [state] = await limiter.peek([month], T0 + 40)
    assert state.remaining == 0
    assert state.reset_after == pytest.approx(60.0)
    assert state.retry_after == pytest.approx(60.0)
    assert await admitted(limiter, [month], 1, T0 + 99.9) == 0
    assert await admitted(limiter, [month], 2, T0 + 100) == 2  # a new period: a new count
    [state] = await limiter.peek([month], T0 + 100)
    assert state.remaining == 1 and state.reset_after == pytest.approx(100.0)


async def test_concurrency_held_released_and_expired(limiter: Limiter) -> None:
    slots = conc("c", 2, window=30)
    first = lease_of(await limiter.acquire([slots], "r1", T0))
    lease_of(await limiter.acquire([slots], "r2", T0 + 1))
    refused = await limiter.acquire([slots], "r3", T0 + 2)
    assert not refused.allowed and refused.denied is not None
    assert 0 < refused.denied.retry_after <= 1.0  # leases end with requests: retry soon
    assert refused.denied.reset_after == pytest.approx(29.0)  # r2's lease ends at T0 + 31
    await limiter.settle(first, None, T0 + 3)
    assert (await limiter.acquire([slots], "r3", T0 + 3)).allowed
    assert not (await limiter.acquire([slots], "r4", T0 + 4)).allowed
    # r2 and r3 never settle (a crashed worker): their leases expire on their own
    assert (await limiter.acquire([slots], "r5", T0 + 31)).allowed
    assert (await limiter.acquire([slots], "r6", T0 + 33.5)).allowed
    [state] = await limiter.peek([slots], T0 + 33.5)
    assert state.remaining == 0 and state.reset_after == pytest.approx(30.0)


async def test_peek_consumes_nothing(limiter: Limiter) -> None:
    rules = [rate("r", 3), quota("q", 3), conc("c", 3)]
    for _ in range(5):
        states = await limiter.peek(rules, T0)
    assert [s.remaining for s in states] == [3, 3, 3]
    assert [s.reset_after for s in states] == [0, 0, 0]
    assert [s.retry_after for s in states] == [0, 0, 0]
    assert await admitted(limiter, rules, 4, T0) == 3


async def test_remaining_and_reset_after(limiter: Limiter) -> None:
    per_second = rate("rate", 60, 60)  # one unit a second
    month = quota("month", 10, window=1000)
    slots = conc("slots", 5, window=100)
    rules = [per_second, month, slots]
    decisions = [await limiter.acquire(rules, f"r{i}", T0) for i in range(3)]
    last = decisions[-1]
    assert [s.remaining for s in last.states] == [57, 7, 2]
    assert [s.reset_after for s in last.states] == pytest.approx([3.0, 1000.0, 100.0])
    assert [s.retry_after for s in last.states] == [0, 0, 0]
    later = await limiter.peek(rules, T0 + 1.5)
    assert [s.remaining for s in later] == [58, 7, 2]
    assert [s.reset_after for s in later] == pytest.approx([1.5, 998.5, 98.5])


async def test_wall_clock_default(limiter: Limiter) -> None:
    """Without ``now`` both backends read wall-clock seconds, the same scale as ``now``."""
    rule = rate("clock", 10, 60)
    assert (await limiter.acquire([rule], "r1")).allowed
    [state] = await limiter.peek([rule], time.time())
    assert state.remaining == 9
    assert state.reset_after == pytest.approx(6.0, abs=0.5)


async def test_concurrent_acquires_admit_exactly_the_limit(limiter: Limiter) -> None:
    rules = [rate("burst", 50, 3600), quota("burst_q", 1000), conc("burst_c", 500)]
    decisions = await asyncio.gather(*(limiter.acquire(rules, f"r{i}", T0) for i in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    states = await limiter.peek(rules, T0)
    assert [s.remaining for s in states] == [0, 950, 450]


async def test_two_clients_share_one_limit() -> None:
    """Two separate connection pools (two processes' worth) agree on one limit. Each
    sends 100 at once (in batches, in whichever order): 150 of the 200 fit, so each
    client gets at least 50, whoever's batches Redis runs first."""
    prefix = f"rgtest:{uuid4().hex}:"
    clients = [redis_client(), redis_client()]
    limiters = [RedisLimiter(client, prefix, close_client=False) for client in clients]
    rule = rate("shared", 150, 3600)
    try:
        decisions = await asyncio.gather(
            *(limiters[i % 2].acquire([rule], f"r{i}", T0) for i in range(200))
        )
        assert sum(d.allowed for d in decisions) == 150
        assert sum(d.allowed for d in decisions[0::2]) >= 50  # both clients got theirs
        assert sum(d.allowed for d in decisions[1::2]) >= 50
        [state] = await limiters[1].peek([rule], T0)
        assert state.remaining == 0
    finally:
        await delete_prefix(clients[0], prefix)
        for client in clients:
            await client.aclose()


async def test_redis_keys_expire_when_idle() -> None:
    """Redis state carries a TTL, so idle subjects do not stay in Redis for ever."""
    prefix = f"rgtest:{uuid4().hex}:"
    client = redis_client()
    shared = RedisLimiter(client, prefix, close_client=False)
    try:
        rules = [rate("r", 10, 60), quota("q", 10, window=100), conc("c", 10, window=30)]
        assert (await shared.acquire(rules, "r1")).allowed
        ttls = [await client.pttl(prefix + key) for key in ("r", "q", "c")]
        assert 0 < ttls[0] <= 6_001
        assert 99_000 < ttls[1] <= 100_001
        assert 29_000 < ttls[2] <= 30_001
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


async def test_memory_drops_reset_state_and_caps_keys() -> None:
    memory = MemoryLimiter(max_keys=100)
    for i in range(1000):
        assert (await memory.acquire([rate(f"k{i}", 5, 60)], "r", T0)).allowed
    assert len(memory) == 100  # the oldest keys were evicted
    # 12 s later every rate is back to full: the next call's sweep drops them
    await memory.acquire([], "r", T0 + 12)
    assert len(memory) == 0
    lease = lease_of(await memory.acquire([conc("c", 1), quota("q", 5)], "r", T0))
    await memory.settle(lease, {"q": 0}, T0)
    assert len(memory) == 0  # released and refunded state is dropped at once


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(
    window_and_most=st.sampled_from([(0.3, 40), (1.0, 100), (60.0, 1000), (3600.0, 1000)]),
    share=st.floats(0.0, 1.0),
    early=st.floats(0.0, 1.0),
)
async def test_a_burst_of_the_limit_fits_and_no_unit_comes_back_early(
    limiter: Limiter, window_and_most: tuple[float, int], share: float, early: float
) -> None:
    """Spent at once, a burst of ``limit`` fits whatever the rule (26 of 27 a minute did,
    summing window/limit steps on an epoch timestamp). The next unit comes back
    window/limit later: not 2 µs sooner (one an hour came 3.6 ms early), and at that time
    exactly. (Redis: a unit a second at most, as it expires a key when its bucket would
    have drained, in its own time, and the burst takes some of that.)"""
    window, most = window_and_most
    limit = max(1, round(share * most))
    assume(isinstance(limiter, MemoryLimiter) or window / limit >= 1.0)
    rule = rate(uuid4().hex, limit, window)
    decisions = await asyncio.gather(*(limiter.acquire([rule], f"r{i}", T0) for i in range(limit)))
    assert all(d.allowed for d in decisions)
    assert await admitted(limiter, [rule], 1, T0) == 0
    interval = window / limit
    sooner = T0 + interval - max(2e-6, early * interval)
    assert await admitted(limiter, [rule], 1, sooner) == 0
    assert await admitted(limiter, [rule], 1, T0 + interval) == 1


async def test_a_rate_stored_by_an_earlier_version_is_read_as_its_level() -> None:
    """Before the bucket, a rate's key held its theoretical arrival time: a replica of
    the new version reads it as the units it stands for (a rolling upgrade keeps them)."""
    prefix = f"rgtest:{uuid4().hex}:"
    client = redis_client()
    shared = RedisLimiter(client, prefix, close_client=False)
    rule = rate("old", 10, 60)
    try:
        await client.set(prefix + "old", f"{T0 + 30:.6f}", px=60_000)  # 30 s ahead: 5 units
        [state] = await shared.peek([rule], T0)
        assert state.remaining == 5 and state.reset_after == pytest.approx(30.0)
        assert await admitted(shared, [rule], 6, T0) == 5
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()
