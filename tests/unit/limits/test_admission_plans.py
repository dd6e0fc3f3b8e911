"""Admission keeps each caller's rule plan between requests: whatever the callers, models,
endpoints, reservations and months, the limiter is given exactly the rules rules_for
says, and settlement is skipped only when no rule has anything to settle."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.auth.principal import Principal
from relaygate.limits import admission as admission_module
from relaygate.limits.admission import BYTES_PER_TOKEN, DEFAULT_COMPLETION_RESERVE, Admission
from relaygate.limits.base import Decision, Lease, Rule, RuleState
from relaygate.limits.memory import MemoryLimiter
from relaygate.limits.rules import MICROS, effective, rules_for
from relaygate.settings import LimitSet, load_settings
from relaygate.usage.accounting import priced

MODELS = ("gpt-4o-mini", "local")
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
UPSTREAM = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
_BIG = st.one_of(st.none(), st.integers(10**9, 10**12))  # set or not, never reached


def _limits() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "requests_per_month": _BIG,
            "tokens_per_month": _BIG,
            "requests_per_hour": _BIG,
            "requests_per_minute": _BIG,
            "tokens_per_minute": _BIG,
            "max_concurrent": _BIG,
            "budget_per_month": st.one_of(st.none(), st.floats(10**6, 10**9)),
        },
    )


def _set_only(limits: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in limits.items() if v is not None}


_TIER = st.builds(
    lambda limits, models, endpoints: {**limits, "models": models, "endpoints": endpoints},
    _limits().map(_set_only),
    st.dictionaries(st.sampled_from(MODELS), _limits().map(_set_only), max_size=2),
    st.dictionaries(st.sampled_from(ENDPOINTS), _limits().map(_set_only), max_size=2),
)
_REQUEST = st.tuples(
    st.integers(0, 3),  # which caller
    st.sampled_from(MODELS),
    st.sampled_from(ENDPOINTS),
    st.integers(0, 10**6),  # body size
    st.one_of(st.none(), st.integers(1, 10**5)),  # max output tokens
    st.booleans(),  # the caller's own provider key (BYOK)
    st.sampled_from([0.0, 86_400.0, 40 * 86_400.0]),  # later in the month, or the next
)


class Recording:
    """A memory limiter that remembers the rules of each call."""

    def __init__(self) -> None:
        self.inner = MemoryLimiter()
        self.seen: list[list[Rule]] = []

    async def acquire(
        self, rules: Sequence[Rule], request_id: str, now: float | None = None
    ) -> Decision:
        self.seen.append(list(rules))
        return await self.inner.acquire(rules, request_id, now)

    async def settle(
        self, lease: Lease, actual: Mapping[str, int] | None = None, now: float | None = None
    ) -> None:
        await self.inner.settle(lease, actual, now)

    async def peek(self, rules: Sequence[Rule], now: float | None = None) -> list[RuleState]:
        return await self.inner.peek(rules, now)

    async def aclose(self) -> None:
        return None


def _needs_settling(rule: Rule) -> bool:
    return rule.kind == "concurrency" or rule.name.startswith(("tokens_", "budget_"))


@settings(max_examples=60, deadline=None)
@given(
    tiers=st.lists(_TIER, min_size=2, max_size=2),
    overrides=st.lists(_limits(), min_size=4, max_size=4),
    requests=st.lists(_REQUEST, min_size=1, max_size=12),
)
def test_the_limiter_gets_the_rules_rules_for_says_on_every_request(
    tiers: list[dict[str, Any]],
    overrides: list[dict[str, Any]],
    requests: list[tuple[int, str, str, int, int | None, bool, float]],
) -> None:
    gateway = load_settings(
        environ={},
        overrides={
            "discover_ollama": [],
            "models": [{"name": name, "deployments": [UPSTREAM]} for name in MODELS],
            "tiers": {"a": tiers[0], "b": tiers[1]},
        },
    )
    limiter = Recording()
    admission = Admission(gateway, limiter)

    # callers 0-1: one principal object each, asked again and again (plans kept);
    # callers 2-3: an equal but new object on every request (as a JWT's is)
    def principal(who: int) -> Principal:
        own = _set_only(overrides[who])
        return Principal(
            subject=f"key:k{who % 2}",
            kind="key",
            role="user",
            tier="ab"[who % 2],
            key_id=f"k{who % 2}",
            tenant_id="t1" if who % 2 else None,
            tenant_tier="a" if who % 2 else None,
            limits=LimitSet(**own) if own else None,
        )

    kept = [principal(0), principal(1)]
    start = datetime(2026, 11, 3, 12, tzinfo=UTC).timestamp()

    async def run() -> None:
        for n, (who, model, endpoint, size, max_tokens, own_key, later) in enumerate(requests):
            caller = kept[who] if who < 2 else principal(who)
            now = start + later
            limiter.seen.clear()
            with mock.patch.object(admission_module.time, "time", return_value=now):
                admitted = await admission.admit(
                    caller, f"r{n}", model=model, endpoint=endpoint, body_size=size,
                    max_output_tokens=max_tokens, own_key=own_key,
                )  # fmt: skip
            prompt = size // BYTES_PER_TOKEN
            completion = max_tokens or DEFAULT_COMPLETION_RESERVE
            micros = round(priced(admission.pricing.ceiling(model), prompt, completion) * MICROS)
            tier = gateway.tiers[caller.tier]
            expected = rules_for(
                caller.subject, effective(tier, caller.limits), tier,
                model=model, endpoint=endpoint, tenant=caller.tenant_id,
                tenant_limits=gateway.tiers[caller.tenant_tier] if caller.tenant_tier else None,
                reserve_tokens=prompt + completion, reserve_micros=0 if own_key else micros,
                now=now, month_reset_day=gateway.limits.month_reset_day,
            )  # fmt: skip
            if own_key:
                expected = [r for r in expected if not r.name.startswith("budget_")]
            assert limiter.seen == ([expected] if expected else [])
            assert admitted.settles == any(_needs_settling(r) for r in expected)
            await admission.settle(admitted, {"prompt_tokens": 1, "completion_tokens": 1})

    asyncio.run(run())


def test_a_kept_plan_moves_to_the_next_month_with_the_clock() -> None:
    """The same caller, model and endpoint in November, then in December: December's
    quota counts under December's key, to December's end."""
    gateway = load_settings(
        environ={},
        overrides={
            "discover_ollama": [],
            "models": [{"name": "local", "deployments": [UPSTREAM]}],
            "tiers": {"a": {"requests_per_month": 10, "requests_per_hour": 5}},
        },
    )
    limiter = Recording()
    admission = Admission(gateway, limiter)
    caller = Principal(subject="key:k", kind="key", role="user", tier="a", key_id="k")
    november = datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp()

    async def ask(now: float) -> Rule:
        with mock.patch.object(admission_module.time, "time", return_value=now):
            admitted = await admission.admit(
                caller, "r", model="local", endpoint="/v1/chat/completions",
                body_size=100, max_output_tokens=10,
            )  # fmt: skip
        await admission.settle(admitted, None)
        return limiter.seen[-1][0]

    async def run() -> tuple[Rule, Rule]:
        return await ask(november), await ask(november + 120)

    before, after = asyncio.run(run())
    assert (before.key, after.key) == ("rpmo/2026-11:key:k", "rpmo/2026-12:key:k")
    assert before.window == 60.0
    assert after.window == datetime(2027, 1, 1, tzinfo=UTC).timestamp() - (november + 120)
