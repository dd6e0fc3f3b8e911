"""Tiers to rules, billing months, and the headers and messages a client sees."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relaygate.limits.base import Decision, Rule, RuleState
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.rules import (
    describe_denial,
    effective,
    month_period,
    rate_limit_headers,
    rate_limited,
    rules_for,
)
from relaygate.settings import LimitSet, TierConfig, default_tiers


def ts(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


NOW = ts(2026, 11, 22, 6, 39, 36)

TIER = TierConfig(
    requests_per_minute=60,
    requests_per_hour=1000,
    requests_per_month=30_000,
    tokens_per_minute=100_000,
    tokens_per_month=5_000_000,
    max_concurrent=8,
    models={"gpt-4o": LimitSet(requests_per_hour=100, tokens_per_minute=20_000)},
    endpoints={"/v1/embeddings": LimitSet(requests_per_minute=10)},
)


def by_name(rules: list[Rule]) -> dict[str, Rule]:
    return {rule.name: rule for rule in rules}


def test_effective_overrides_only_what_the_key_sets() -> None:
    tier = default_tiers()["free"]
    assert effective(tier, None) == LimitSet(requests_per_hour=100, requests_per_month=3000)
    mine = effective(tier, LimitSet(requests_per_hour=5, max_concurrent=2))
    assert mine == LimitSet(requests_per_hour=5, requests_per_month=3000, max_concurrent=2)
    assert type(mine) is LimitSet  # models/endpoints stay on the tier


def test_default_free_tier_rules() -> None:
    tier = default_tiers()["free"]
    rules = rules_for("k:abc", effective(tier, None), tier, now=NOW)
    assert [(r.name, r.kind, r.limit, r.cost) for r in rules] == [
        ("requests_per_month", "quota", 3000, 1),
        ("requests_per_hour", "rate", 100, 1),
    ]
    month, hour = rules
    assert month.key == "rpmo/2026-11:k:abc"
    assert month.window == ts(2026, 12, 1) - NOW
    assert hour.key == "rph:k:abc" and hour.window == 3600


def test_every_kind_of_limit() -> None:
    rules = by_name(rules_for("k:1", effective(TIER, None), TIER, reserve_tokens=512, now=NOW))
    assert list(rules) == [
        "requests_per_month",
        "tokens_per_month",
        "requests_per_hour",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent",
    ]
    assert rules["tokens_per_month"].kind == "quota" and rules["tokens_per_month"].cost == 512
    assert rules["tokens_per_minute"] == Rule(
        "tpm:k:1", "rate", 100_000, 60.0, 512, "tokens_per_minute"
    )
    assert rules["requests_per_minute"].window == 60 and rules["requests_per_minute"].cost == 1
    assert rules["max_concurrent"] == Rule("conc:k:1", "concurrency", 8, 900.0, 1, "max_concurrent")
    lease = rules_for("k:1", effective(TIER, None), TIER, now=NOW, lease_timeout=30)
    assert by_name(lease)["max_concurrent"].window == 30


def test_model_endpoint_and_tenant_rules_have_their_own_keys() -> None:
    tenant = LimitSet(requests_per_hour=5000)
    rules = rules_for(
        "k:1", effective(TIER, None), TIER, model="gpt-4o", endpoint="/v1/embeddings",
        tenant="acme", tenant_limits=tenant, reserve_tokens=100, now=NOW,
    )  # fmt: skip
    named = by_name(rules)
    assert named["requests_per_hour for model gpt-4o"].key == "m=gpt-4o:rph:k:1"
    assert named["requests_per_hour for model gpt-4o"].limit == 100
    assert named["tokens_per_minute for model gpt-4o"].cost == 100
    assert (
        named["requests_per_minute for endpoint /v1/embeddings"].key == "e=/v1/embeddings:rpm:k:1"
    )
    assert named["requests_per_hour for tenant"].key == "t:rph:acme"
    assert len({rule.key for rule in rules}) == len(rules)
    # another model has no extra rules; a tenant without limits adds none
    other = rules_for(
        "k:1", effective(TIER, None), TIER, model="llama3.2:1b", tenant="acme", now=NOW
    )
    assert len(other) == 6


def test_keys_cannot_collide_across_subjects_models_and_tenants() -> None:
    tier = TierConfig(requests_per_hour=1, models={"a:rph": LimitSet(requests_per_hour=1)})
    limits = effective(tier, None)
    keys = [
        *(r.key for r in rules_for("k:x", limits, tier, model="a:rph", now=NOW)),
        *(r.key for r in rules_for("k:x:m=a", limits, tier, now=NOW)),
        *(
            r.key
            for r in rules_for("rph:k:x", limits, tier, tenant="k:x", tenant_limits=limits, now=NOW)
        ),
    ]
    assert len(set(keys)) == len(keys)
    assert "m=a%3Arph:rph:k:x" in keys


def test_the_key_of_a_month_quota_changes_with_the_period() -> None:
    tier = TierConfig(requests_per_month=10)
    nov = rules_for("k:1", tier, tier, now=ts(2026, 11, 30, 23, 59, 59))[0]
    dec = rules_for("k:1", tier, tier, now=ts(2026, 12, 1))[0]
    assert nov.key == "rpmo/2026-11:k:1" and nov.window == 1.0
    assert dec.key == "rpmo/2026-12:k:1" and dec.window == ts(2027, 1, 1) - ts(2026, 12, 1)


@pytest.mark.parametrize(
    ("now", "day", "start", "end", "label"),
    [
        (ts(2026, 11, 22, 6), 1, (2026, 11, 1), (2026, 12, 1), "2026-11"),
        (ts(2026, 12, 31, 23, 59), 1, (2026, 12, 1), (2027, 1, 1), "2026-12"),
        (ts(2027, 1, 1), 1, (2027, 1, 1), (2027, 2, 1), "2027-01"),
        (ts(2026, 11, 22), 15, (2026, 11, 15), (2026, 12, 15), "2026-11"),
        (ts(2026, 11, 14, 23, 59, 59), 15, (2026, 10, 15), (2026, 11, 15), "2026-10"),
        (ts(2027, 1, 10), 15, (2026, 12, 15), (2027, 1, 15), "2026-12"),
        (ts(2026, 12, 20), 15, (2026, 12, 15), (2027, 1, 15), "2026-12"),
        (ts(2027, 2, 28), 28, (2027, 2, 28), (2027, 3, 28), "2027-02"),
        (ts(2027, 3, 1), 28, (2027, 2, 28), (2027, 3, 28), "2027-02"),
    ],
)
def test_month_period(
    now: float, day: int, start: tuple[int, ...], end: tuple[int, ...], label: str
) -> None:
    period = month_period(now, day)
    assert period.start == datetime(*start, tzinfo=UTC)  # type: ignore[misc]
    assert period.end == datetime(*end, tzinfo=UTC)  # type: ignore[misc]
    assert period.label == label


def test_month_period_rejects_days_some_months_lack() -> None:
    with pytest.raises(ValueError, match=r"1\.\.28"):
        month_period(NOW, 29)


def state(
    name: str, limit: int, remaining: int, reset: float, retry: float = 0.0, **kw: object
) -> RuleState:
    kind = kw.get("kind", "rate")
    rule = Rule(f"key:{name}", kind, limit, 3600.0, int(kw.get("cost", 1)), name)  # type: ignore[arg-type]
    return RuleState(rule, remaining, reset, retry)


def test_headers_show_the_most_constraining_request_rule() -> None:
    states = [
        state("requests_per_month", 3000, 2990, 700_000),
        state("requests_per_hour", 100, 40, 2160.2),
        state("requests_per_hour for model gpt-4o", 50, 45, 300),
        state("tokens_per_minute", 1000, 3, 59),
        state("max_concurrent", 2, 0, 900, kind="concurrency"),
    ]
    assert rate_limit_headers(states) == [
        (b"x-ratelimit-limit", b"100"),
        (b"x-ratelimit-remaining", b"40"),
        (b"x-ratelimit-reset", b"2161"),  # rounded up
    ]


def test_headers_fall_back_to_token_rules_and_prefer_the_later_reset_on_a_tie() -> None:
    tokens = [state("tokens_per_minute", 1000, 0, 30), state("tokens_per_month", 10**6, 0, 9e5)]
    assert rate_limit_headers(tokens)[0] == (b"x-ratelimit-limit", b"1000000")
    assert rate_limit_headers([state("max_concurrent", 2, 0, 9, kind="concurrency")]) == []
    assert rate_limit_headers([]) == []


def test_describe_rate_denial() -> None:
    text = describe_denial(state("requests_per_hour", 100, 0, 3600, 35.2), NOW)
    assert text == (
        "Rate limit exceeded: requests_per_hour (100) for this key; "
        "retry in 36 s, at 2026-11-22T06:40:12Z."
    )


def test_describe_quota_model_tenant_and_concurrency_denials() -> None:
    month = describe_denial(state("requests_per_month", 3000, 0, 10, 10, kind="quota"), NOW)
    assert month.startswith(
        "Quota exceeded: requests_per_month (3000) for this key; resets in 10 s"
    )
    model = describe_denial(state("requests_per_hour for model gpt-4o", 10, 0, 60, 6), NOW)
    assert "requests_per_hour (10) for model gpt-4o on this key;" in model
    tenant = describe_denial(state("requests_per_hour for tenant", 5000, 0, 60, 1), NOW)
    assert "requests_per_hour (5000) for this tenant;" in tenant
    slots = describe_denial(state("max_concurrent", 4, 0, 900, 0.2, kind="concurrency"), NOW)
    assert slots.startswith("Concurrency limit exceeded: max_concurrent (4) for this key;")
    assert "retry in 1 s" in slots and "900" not in slots


def test_describe_a_request_larger_than_its_limit() -> None:
    text = describe_denial(state("tokens_per_minute", 1000, 1000, 0, 1.0, cost=4096), NOW)
    assert "reserves 4096 tokens" in text and "tokens_per_minute (1000)" in text


async def test_rate_limited_names_the_longest_wait() -> None:
    limiter = MemoryLimiter()
    tier = TierConfig(requests_per_hour=1, requests_per_month=1)
    rules = rules_for("k:1", tier, tier, now=NOW)
    assert (await limiter.acquire(rules, "r1", NOW)).allowed
    refused = await limiter.acquire(rules, "r2", NOW + 1)
    assert isinstance(refused, Decision) and not refused.allowed
    error = rate_limited(refused, NOW + 1)
    assert error.status == 429
    assert error.retry_after == pytest.approx(ts(2026, 12, 1) - NOW - 1)
    assert error.message.startswith("Quota exceeded: requests_per_month (1) for this key;")
    assert error.message.endswith("at 2026-12-01T00:00:00Z.")
    headers = dict(error.headers())
    assert headers[b"retry-after"] == str(round(error.retry_after)).encode()
    assert headers[b"x-ratelimit-remaining"] == b"0"


def budget(limit_micros: int, remaining_micros: int, cost_micros: int, retry: float) -> RuleState:
    rule = Rule("key:usdmo", "quota", limit_micros, 3600.0, cost_micros, "budget_per_month")
    return RuleState(rule, remaining_micros, retry, retry)


def test_describe_budget_denial_in_dollars() -> None:
    text = describe_denial(budget(1_234_500_000, 1_000_000, 2_500_000, 100.0), NOW)
    assert text == (
        "Budget exceeded: budget_per_month ($1,234.50) for this key; $1.00 left, this "
        "request may cost up to $2.50 (lower max_tokens); resets at 2026-11-22T06:41:16Z."
    )
    small = describe_denial(budget(500_000, 1_500_000, 250, 1.0), NOW)
    assert "($0.500000) for this key; $1.50 left" in small and "up to $0.000250 " in small


def test_denial_times_are_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        rate = describe_denial(state("requests_per_hour", 100, 0, 3600, 35.2), NOW)
        spend = describe_denial(budget(5_000_000, 0, 10, 35.2), NOW)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert rate.endswith("at 2026-11-22T06:40:12Z.")
    assert spend.endswith("resets at 2026-11-22T06:40:12Z.")


def test_a_request_larger_than_a_request_limit_is_in_units() -> None:
    text = describe_denial(state("requests_per_hour", 1, 1, 0, 1.0, cost=2), NOW)
    assert text == (
        "Request too large for the limit: it reserves 2 units, more than "
        "requests_per_hour (1) for this key allows; lower max_tokens."
    )


def test_rate_limited_names_the_rule_that_waits_longest_or_the_denied_one() -> None:
    minute = state("requests_per_minute", 10, 0, 60, 0.5)
    slots = state("max_concurrent", 1, 0, 900, 0.0, kind="concurrency")
    waiting = rate_limited(Decision(False, [slots, minute], denied=slots), NOW)
    assert waiting.message.startswith("Rate limit exceeded: requests_per_minute (10)")
    assert waiting.retry_after == 1  # 0.5 s, rounded up: Retry-After never says come back early
    # no rule has a wait: the denied rule is named
    free = state("requests_per_hour", 10, 5, 60, 0.0)
    only = rate_limited(Decision(False, [free, slots], denied=slots), NOW)
    assert only.message.startswith("Concurrency limit exceeded: max_concurrent (1)")
    with pytest.raises(ValueError, match=r"^rate_limited\(\) needs a refused decision$"):
        rate_limited(Decision(True, [free]), NOW)


def test_names_are_escaped_so_percent_and_colon_cannot_collide() -> None:
    tier = TierConfig(
        models={name: LimitSet(requests_per_hour=1) for name in ("a:b", "a%3Ab", "a%b")}
    )
    keys = {
        name: rules_for("k:x", effective(tier, None), tier, model=name, now=NOW)[-1].key
        for name in ("a:b", "a%3Ab", "a%b")
    }
    assert keys == {
        "a:b": "m=a%3Ab:rph:k:x",
        "a%3Ab": "m=a%253Ab:rph:k:x",
        "a%b": "m=a%25b:rph:k:x",
    }


def test_without_reservations_token_and_budget_rules_reserve_nothing() -> None:
    tier = TierConfig(tokens_per_minute=100, budget_per_month=5.0)
    rules = by_name(rules_for("k:1", tier, tier, now=NOW))
    assert rules["tokens_per_minute"].cost == 0
    assert rules["budget_per_month"].cost == 0
    assert rules["budget_per_month"].limit == 5_000_000  # micro-dollars


def test_month_quotas_follow_the_configured_reset_day() -> None:
    tier = TierConfig(requests_per_month=10)
    [quota] = rules_for("k:1", tier, tier, now=NOW, month_reset_day=15)
    assert quota.key == "rpmo/2026-11:k:1"
    assert quota.window == ts(2026, 12, 15) - NOW  # to the next 15th, not to the 1st
    [before] = rules_for("k:1", tier, tier, now=ts(2026, 11, 14, 23), month_reset_day=15)
    assert before.key == "rpmo/2026-10:k:1"


def test_model_and_endpoint_rules_add_to_the_subjects_own() -> None:
    tier = TierConfig(
        requests_per_hour=100,
        models={"gpt-4o": LimitSet(requests_per_minute=5)},
        endpoints={"/v1/embeddings": LimitSet(requests_per_month=7, tokens_per_minute=50)},
    )
    rules = by_name(
        rules_for(
            "k:1", effective(tier, None), tier, model="gpt-4o", endpoint="/v1/embeddings",
            reserve_tokens=12, now=NOW,
        )
    )  # fmt: skip
    assert set(rules) == {
        "requests_per_hour",
        "requests_per_minute for model gpt-4o",
        "requests_per_month for endpoint /v1/embeddings",
        "tokens_per_minute for endpoint /v1/embeddings",
    }
    assert rules["tokens_per_minute for endpoint /v1/embeddings"].cost == 12
    assert rules["requests_per_month for endpoint /v1/embeddings"].key == (
        "e=/v1/embeddings:rpmo/2026-11:k:1"
    )


def test_month_period_defaults_to_the_first_and_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    assert month_period(ts(2026, 11, 1, 12)).start == datetime(2026, 11, 1, tzinfo=UTC)
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # already December there
    time.tzset()
    try:
        period = month_period(ts(2026, 11, 30, 20))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert period.label == "2026-11" and period.end == datetime(2026, 12, 1, tzinfo=UTC)


def _month_of(now: float, day: int) -> tuple[datetime, datetime]:
    """The billing month that holds ``now``, worked out from scratch: of the months that
    start on ``day`` around ``now``'s date, the one whose bounds, compared as timestamps,
    hold it (the date alone can be a month late: fromtimestamp rounds to the microsecond)."""
    moment = datetime.fromtimestamp(now, UTC)
    starts = []
    for back in range(-1, 3):
        year, month = moment.year, moment.month - back
        while month < 1:
            year, month = year - 1, month + 12
        while month > 12:
            year, month = year + 1, month - 12
        starts.append(datetime(year, month, day, tzinfo=UTC))
    starts.sort()
    for start, end in itertools.pairwise(starts):
        if start.timestamp() <= now < end.timestamp():
            return start, end
    raise AssertionError(f"no month holds {now}")


@given(
    asks=st.lists(
        st.tuples(st.floats(0, 4_102_444_800), st.integers(1, 28)), min_size=1, max_size=30
    )
)
@example(asks=[(2051222399.9999995, 1)])  # half a microsecond before 2035-01: in December
def test_the_kept_month_is_the_month_that_holds_now(asks: list[tuple[float, int]]) -> None:
    """month_period keeps its last answer per reset day: for any sequence of times (back
    and forth across month ends) and days, it gives the month that holds ``now``."""
    for now, day in asks:
        period = month_period(now, day)
        assert (period.start, period.end) == _month_of(now, day)
        assert period.start.timestamp() <= now < period.end.timestamp()


_NUMBERS = st.one_of(st.none(), st.integers(0, 10**12))
_SETS = st.builds(
    LimitSet,
    requests_per_month=_NUMBERS,
    tokens_per_month=_NUMBERS,
    requests_per_hour=_NUMBERS,
    requests_per_minute=_NUMBERS,
    tokens_per_minute=_NUMBERS,
    max_concurrent=_NUMBERS,
    budget_per_month=st.one_of(st.none(), st.floats(0, 10**6, allow_nan=False)),
)
_CODES = {
    "requests_per_month": "rpmo",
    "tokens_per_month": "tpmo",
    "requests_per_hour": "rph",
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "max_concurrent": "conc",
    "budget_per_month": "usdmo",
}


@given(sets=st.lists(_SETS, min_size=1, max_size=8), tokens=st.integers(0, 10**6))
def test_each_set_gives_the_rules_its_fields_say_every_time(
    sets: list[LimitSet], tokens: int
) -> None:
    """rules_for keeps what a set's fields give (which are set, their limits) between
    requests: whatever sets come and go, and however often each is asked, every rule is
    the one its set's own fields say, with this request's reservation."""
    for limits in [*sets, *reversed(sets)]:
        rules = rules_for("key:k", limits, TIER, reserve_tokens=tokens, reserve_micros=7, now=NOW)
        expected = {
            name: value
            for name, value in msgspec.structs.asdict(limits).items()
            if name in _CODES and value is not None
        }
        assert sorted(r.name for r in rules) == sorted(expected)
        for rule in rules:
            value = expected[rule.name]
            assert rule.limit == (
                round(value * 1_000_000) if rule.name.startswith("budget") else value
            )
            assert rule.key.startswith(_CODES[rule.name])
            assert rule.cost == (
                tokens
                if rule.name.startswith("tokens_")
                else 7
                if rule.name.startswith("budget")
                else 1
            )
