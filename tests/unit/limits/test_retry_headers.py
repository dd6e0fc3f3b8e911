"""On a 429, Retry-After says when the request is admitted and X-RateLimit-* describe the
rule the message names, Reset being when that rule is back to its full limit."""

from __future__ import annotations

import copy
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.rules import rate_limited, rules_for
from relaygate.settings import LimitSet, TierConfig

NOW = 1_795_000_000.0  # mid-month, so the month quota's window is long
MESSAGE = re.compile(r"^(?:Rate limit|Quota) exceeded: (\w+) \((\d+)\)")


def limits_strategy() -> st.SearchStrategy[LimitSet]:
    return st.builds(
        LimitSet,
        requests_per_minute=st.none() | st.integers(1, 7),
        requests_per_hour=st.none() | st.integers(1, 40),
        requests_per_month=st.none() | st.integers(1, 30),
    ).filter(lambda s: any((s.requests_per_minute, s.requests_per_hour, s.requests_per_month)))


@settings(max_examples=150, deadline=None)
@given(
    limits=limits_strategy(),
    gaps=st.lists(st.integers(0, 40) | st.floats(0, 40, allow_nan=False), min_size=1, max_size=60),
)
async def test_retry_after_admits_and_reset_restores_the_named_rule(
    limits: LimitSet, gaps: list[float]
) -> None:
    limiter = MemoryLimiter()
    rules = rules_for("k:key_1", limits, TierConfig(), now=NOW)
    now = NOW
    for i, gap in enumerate(gaps):
        now += gap
        decision = await limiter.acquire(rules, f"r{i}", now=now)
        if decision.allowed:
            continue
        error = rate_limited(decision, now=now)
        headers = dict(error.headers())
        retry_after = int(headers[b"retry-after"])
        limit = int(headers[b"x-ratelimit-limit"])
        reset = int(headers[b"x-ratelimit-reset"])
        named = MESSAGE.match(error.message)
        assert named is not None, error.message
        rule = next(r for r in rules if r.name == named.group(1))
        # The headers describe the rule the message names, and agree with it.
        assert limit == rule.limit == int(named.group(2))
        assert headers[b"x-ratelimit-remaining"] == b"0"
        assert f"in {retry_after} s" in error.message
        assert 1 <= retry_after <= reset
        # Retry-After: waiting that long gets the request in; a second less does not.
        # (Peeks go to copies: a peek into the future drops state that is reset by then.)
        later = await copy.deepcopy(limiter).peek(rules, now=now + retry_after)
        assert all(s.retry_after == 0 for s in later)
        exact = max(s.retry_after for s in decision.states)
        if retry_after - 1 < exact - 1e-3:
            sooner = await copy.deepcopy(limiter).peek(rules, now=now + retry_after - 1)
            assert any(s.retry_after > 0 for s in sooner)
        # X-RateLimit-Reset: the named rule is back to its full limit then.
        (restored,) = await copy.deepcopy(limiter).peek([rule], now=now + reset)
        assert restored.remaining == rule.limit


async def test_the_documented_example() -> None:
    """docs/auth-and-limits.md: 100 requests an hour, all spent at once."""
    limiter = MemoryLimiter()
    rules = rules_for("k:key_1", LimitSet(requests_per_hour=100), TierConfig(), now=NOW)
    for i in range(100):
        assert (await limiter.acquire(rules, f"r{i}", now=NOW)).allowed
    decision = await limiter.acquire(rules, "r100", now=NOW)
    headers = dict(rate_limited(decision, now=NOW).headers())
    assert headers == {
        b"retry-after": b"36",
        b"x-ratelimit-limit": b"100",
        b"x-ratelimit-remaining": b"0",
        b"x-ratelimit-reset": b"3600",
    }
