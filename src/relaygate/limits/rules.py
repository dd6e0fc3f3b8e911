"""From tiers to rules, and from rule states to what the client is told.

:func:`rules_for` turns a request's subject (an API key, a user), its tier, the
key's own overrides, its tenant, model and endpoint into the list of
:class:`Rule` the limiter checks in one call. Keys put the limit first and the
subject last, and escape ``:`` in model, endpoint and tenant names, so no two
subjects, models or tenants can ever share a counter.

:func:`rate_limit_headers` and :func:`describe_denial` render states as the
``X-RateLimit-*`` headers and the 429 message.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec

from relaygate.errors import RateLimited
from relaygate.limits.base import Decision, Rule, RuleKind, RuleState
from relaygate.settings import LimitSet, TierConfig

__all__ = [
    "DEFAULT_LEASE_TIMEOUT",
    "Period",
    "RulePlan",
    "describe_denial",
    "effective",
    "month_period",
    "needs_settling",
    "rate_limit_headers",
    "rate_limited",
    "rules_for",
]

DEFAULT_LEASE_TIMEOUT = 900.0  # seconds a concurrency slot is held if never released
_LIMIT_FIELDS = tuple(f.name for f in msgspec.structs.fields(LimitSet))


@dataclass(frozen=True, slots=True)
class Period:
    """One billing month: from ``start`` (inclusive) to ``end`` (exclusive), in UTC.

    ``label`` (``YYYY-MM`` of the month the period starts in, part of the quota keys)
    and ``ends_at`` (``end`` in epoch seconds) are made once with the period, which
    every request asks for (:func:`month_period`)."""

    start: datetime
    end: datetime
    label: str = field(init=False)
    ends_at: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.start.year:04d}-{self.start.month:02d}")
        object.__setattr__(self, "ends_at", self.end.timestamp())


def month_period(now: float, reset_day: int = 1) -> Period:
    """The month that contains ``now``, starting on ``reset_day`` (1..28) at 00:00 UTC.

    Every request asks (its monthly rules, the quota primer); the answer changes once a
    month, so the last one is kept, with its bounds in seconds, and given while ``now``
    is within them."""
    last = _LAST_PERIOD.get(reset_day)
    if last is not None and last[0] <= now < last[1]:
        return last[2]
    period = _month_period(now, reset_day)
    _LAST_PERIOD[reset_day] = (period.start.timestamp(), period.ends_at, period)
    return period


_LAST_PERIOD: dict[int, tuple[float, float, Period]] = {}  # reset day -> (start, end, period)


def _month_period(now: float, reset_day: int) -> Period:
    if not 1 <= reset_day <= 28:
        raise ValueError(f"reset_day must be 1..28, not {reset_day}")
    # Whole seconds: fromtimestamp rounds to the nearest microsecond, which would put the
    # last half microsecond of a month in the next one; months start on a whole second.
    today = datetime.fromtimestamp(math.floor(now), UTC)
    year, month = today.year, today.month
    if today.day < reset_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    start = datetime(year, month, reset_day, tzinfo=UTC)
    end_year, end_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return Period(start, datetime(end_year, end_month, reset_day, tzinfo=UTC))


def effective(tier: TierConfig, overrides: LimitSet | None) -> LimitSet:
    """The tier's numbers, each replaced by the key's own where the key sets one."""
    values = {name: getattr(tier, name) for name in _LIMIT_FIELDS}
    if overrides is not None:
        for name in _LIMIT_FIELDS:
            if (value := getattr(overrides, name)) is not None:
                values[name] = value
    return LimitSet(**values)


def rules_for(
    subject: str,
    limits: LimitSet,
    tier: TierConfig,
    *,
    model: str | None = None,
    endpoint: str | None = None,
    tenant: str | None = None,
    tenant_limits: LimitSet | None = None,
    reserve_tokens: int = 0,
    reserve_micros: int = 0,
    now: float | None = None,
    month_reset_day: int = 1,
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
) -> list[Rule]:
    """Every rule one request is checked against: the subject's, then its model's, endpoint's
    and tenant's, each longest period first.

    ``limits`` is the subject's :func:`effective` set; ``tier`` adds its stricter
    per-model and per-endpoint limits; ``tenant_limits`` (with ``tenant``) are
    shared by every key of the tenant. ``reserve_tokens`` is what token limits
    reserve at admission (settle charges the real count).
    """
    now = time.time() if now is None else now
    plan = RulePlan(
        subject, limits, tier, month_period(now, month_reset_day),
        model=model, endpoint=endpoint, tenant=tenant, tenant_limits=tenant_limits,
        lease_timeout=lease_timeout,
    )  # fmt: skip
    return plan.rules(now, reserve_tokens, reserve_micros)


# Field, key code, kind, window (quotas run to the period end; leases to their timeout).
_SPECS: tuple[tuple[str, str, RuleKind, float], ...] = (
    ("requests_per_month", "rpmo", "quota", 0.0),
    ("tokens_per_month", "tpmo", "quota", 0.0),
    ("requests_per_hour", "rph", "rate", 3600.0),
    ("requests_per_minute", "rpm", "rate", 60.0),
    ("tokens_per_minute", "tpm", "rate", 60.0),
    ("max_concurrent", "conc", "concurrency", 0.0),
    ("budget_per_month", "usdmo", "quota", 0.0),  # counted in micro-dollars
)
MICROS = 1_000_000
_ONE, _TOKENS, _MONEY = 0, 1, 2  # what a rule's cost counts


class _Part(NamedTuple):
    """One rule of a plan, but for what each request gives it."""

    key: str
    kind: RuleKind
    limit: int
    window: float  # a quota's is the time left in the month, given per request
    counts: int  # _ONE, _TOKENS or _MONEY
    name: str


class RulePlan:
    """The rules of one caller, model and endpoint in one month, but for what each request
    gives them: the time left in the month (a quota's window) and what it reserves (token
    and money limits' cost). Made once, reused by every request that fits it (admission.py
    keeps them): a rule that depends on neither is made once too, and requests share it.

    ``quotas``, ``money`` and ``settles`` say whether any rule is a monthly quota, a money
    budget, or needs settling (a lease, a token or money reservation)."""

    __slots__ = ("_fixed", "_parts", "ends_at", "money", "period", "quotas", "settles")

    def __init__(
        self,
        subject: str,
        limits: LimitSet,
        tier: TierConfig,
        period: Period,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        tenant: str | None = None,
        tenant_limits: LimitSet | None = None,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
    ) -> None:
        self.period = period
        self.ends_at = period.ends_at
        month = period.label
        parts = _parts(limits, subject, "", "", month, lease_timeout)
        if model is not None and model in tier.models:
            scope, suffix = f"m={_escape(model)}:", f" for model {model}"
            parts += _parts(tier.models[model], subject, scope, suffix, month, lease_timeout)
        if endpoint is not None and endpoint in tier.endpoints:
            scope, suffix = f"e={_escape(endpoint)}:", f" for endpoint {endpoint}"
            parts += _parts(tier.endpoints[endpoint], subject, scope, suffix, month, lease_timeout)
        if tenant is not None and tenant_limits is not None:
            parts += _parts(
                tenant_limits, _escape(tenant), "t:", " for tenant", month, lease_timeout
            )
        self._parts = tuple(parts)
        # a rule whose window and cost no request changes is made here, once
        self._fixed = tuple(
            Rule(p.key, p.kind, p.limit, p.window, 1, p.name)
            if p.kind != "quota" and p.counts == _ONE
            else None
            for p in parts
        )
        self.quotas = any(p.kind == "quota" for p in parts)
        self.money = any(p.counts == _MONEY for p in parts)
        self.settles = any(needs_settling(p.kind, p.name) for p in parts)

    def rules(self, now: float, tokens: int = 0, micros: int = 0) -> list[Rule]:
        """The rules of a request at ``now`` (within the plan's month) that reserves
        ``tokens`` and ``micros`` (micro-dollars)."""
        rules = []
        until_month_end = max(self.ends_at - now, 1.0)
        for part, fixed in zip(self._parts, self._fixed, strict=True):
            if fixed is not None:
                rules.append(fixed)
                continue
            cost = 1 if part.counts == _ONE else tokens if part.counts == _TOKENS else micros
            window = until_month_end if part.kind == "quota" else part.window
            rules.append(Rule(part.key, part.kind, part.limit, window, cost, part.name))
        return rules


def needs_settling(kind: RuleKind, name: str) -> bool:
    """Whether a rule has work at settlement: a lease is released, a token or money
    reservation replaced by the real figure; a request count stays as it is."""
    return kind == "concurrency" or name.startswith(("tokens_", "budget_"))


def _parts(
    limits: LimitSet, subject: str, scope: str, suffix: str, month: str, lease_timeout: float
) -> list[_Part]:
    """``limits`` as rules keyed ``<scope><code>:<subject>`` and named ``<field><suffix>``
    (a quota's code holds its month)."""
    parts = []
    for name, code, kind, window in _SPECS:
        value: float | None = getattr(limits, name)
        if value is None:
            continue
        if name == "budget_per_month":
            limit, counts = round(value * MICROS), _MONEY
        else:
            limit, counts = int(value), _TOKENS if name.startswith("tokens_") else _ONE
        if kind == "quota":
            code = f"{code}/{month}"
        elif kind == "concurrency":
            window = lease_timeout
        parts.append(_Part(f"{scope}{code}:{subject}", kind, limit, window, counts, name + suffix))
    return parts


def _escape(part: str) -> str:
    """Make a name safe to sit between ``:`` separators in a key."""
    return part.replace("%", "%25").replace(":", "%3A")


def _is_request_rule(rule: Rule) -> bool:
    return rule.name.startswith("requests_")


def _is_token_rule(rule: Rule) -> bool:
    return rule.name.startswith("tokens_")


def rate_limit_headers(
    states: list[RuleState], refused: RuleState | None = None
) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-Limit/Remaining/Reset`` for one request or token rule.

    On a 429 that rule is ``refused``, the one the message names and ``Retry-After``
    is computed from. Otherwise it is the most constraining request rule: the least
    remaining wins (the later reset on a tie); token rules are used only when no
    request rule applies, and concurrency and money never. ``Reset`` is the seconds
    until the rule is back to its full limit, which for a rate (GCRA, refilling
    continuously) is later than the moment one more request fits (``Retry-After``).
    """
    if refused is not None and (_is_request_rule(refused.rule) or _is_token_rule(refused.rule)):
        return _headers(refused)
    candidates = [s for s in states if _is_request_rule(s.rule)]
    candidates = candidates or [s for s in states if _is_token_rule(s.rule)]
    if not candidates:
        return []
    return _headers(min(candidates, key=lambda s: (s.remaining, -s.reset_after)))


def _headers(state: RuleState) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit", str(state.rule.limit).encode()),
        (b"x-ratelimit-remaining", str(state.remaining).encode()),
        (b"x-ratelimit-reset", str(math.ceil(state.reset_after)).encode()),
    ]


def describe_denial(state: RuleState, now: float | None = None) -> str:
    """The 429 message: which limit, how big, and when the request would fit again."""
    rule = state.rule
    field, _, qualifier = rule.name.partition(" for ")
    whose = _whose(qualifier)
    if rule.kind == "concurrency":
        return (
            f"Concurrency limit exceeded: {field} ({rule.limit}) {whose}; wait for a "
            f"request in flight to finish and retry in {_seconds(state.retry_after)} s."
        )
    if field == "budget_per_month":
        return _budget_denial(state, whose, now)
    if rule.cost > rule.limit:
        unit = "tokens" if _is_token_rule(rule) else "units"
        return (
            f"Request too large for the limit: it reserves {rule.cost} {unit}, more than "
            f"{field} ({rule.limit}) {whose} allows; lower max_tokens."
        )
    at = (time.time() if now is None else now) + state.retry_after
    stamp = datetime.fromtimestamp(math.ceil(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if rule.kind == "quota":  # a quota resets all at once: the wait is the reset
        return (
            f"Quota exceeded: {field} ({rule.limit}) {whose}; "
            f"resets in {_seconds(state.retry_after)} s at {stamp}."
        )
    # A rate refills continuously: one more request fits long before it is full again.
    return (
        f"Rate limit exceeded: {field} ({rule.limit}) {whose}; "
        f"retry in {_seconds(state.retry_after)} s, at {stamp}."
    )


def rate_limited(decision: Decision, now: float | None = None) -> RateLimited:
    """The 429 for a refused decision, named after the rule that keeps it out longest
    (every rule must have room at once, so that wait is the one that matters).

    ``Retry-After`` and the message say when this request would be admitted; the
    ``X-RateLimit-*`` headers describe that same rule."""
    waiting = [s for s in decision.states if s.retry_after > 0]
    state = max(waiting, key=lambda s: s.retry_after, default=decision.denied)
    if state is None:
        raise ValueError("rate_limited() needs a refused decision")
    return RateLimited(
        describe_denial(state, now),
        # Whole seconds, rounded up: a client that waits this long is admitted.
        retry_after=_seconds(state.retry_after),
        rate_headers=rate_limit_headers(decision.states, refused=state),
    )


def _budget_denial(state: RuleState, whose: str, now: float | None) -> str:
    rule = state.rule
    budget, left = rule.limit / MICROS, state.remaining / MICROS
    at = (time.time() if now is None else now) + state.retry_after
    stamp = datetime.fromtimestamp(math.ceil(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"Budget exceeded: budget_per_month ({_dollars(budget)}) {whose}; {_dollars(left)} "
        f"left, this request may cost up to {_dollars(rule.cost / MICROS)} "
        f"(lower max_tokens); resets at {stamp}."
    )


def _dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.6f}"


def _whose(qualifier: str) -> str:
    if not qualifier:
        return "for this key"
    if qualifier == "tenant":
        return "for this tenant"
    return f"for {qualifier} on this key"


def _seconds(seconds: float) -> int:
    return max(math.ceil(seconds), 1)
