"""Admission: the pipeline's ``admit`` and ``settle`` stages.

For each request, the rules that apply to its caller (tier numbers, the key's
overrides, stricter limits for the model or endpoint, the tenant's limits) are
checked and consumed in one call to the limiter: one Redis round trip with the
Redis backend. Token limits reserve ``max_tokens`` plus an estimate of the
prompt, and ``settle`` charges the count of the request's usage record when it is done.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relaygate.auth.principal import Principal
from relaygate.errors import PermissionDenied
from relaygate.limits.base import Lease, Limiter, Rule, RuleState
from relaygate.limits.quotas import QuotaPrimer
from relaygate.limits.rules import (
    MICROS,
    RulePlan,
    effective,
    month_period,
    needs_settling,
    rate_limit_headers,
    rate_limited,
    rules_for,
)
from relaygate.settings import LimitSet, Settings, TierConfig
from relaygate.usage.accounting import Pricing, priced

__all__ = ["Admission", "Admitted"]

_MAX_PLANS = 4096  # callers x models x endpoints in use at once: cleared when exceeded
DEFAULT_COMPLETION_RESERVE = 1024  # tokens reserved when the request names no max_tokens
BYTES_PER_TOKEN = 4  # a cheap, generous estimate of prompt tokens from the body size


@dataclass(slots=True)
class Admitted:
    """What an admitted request carries to settlement."""

    lease: Lease | None
    headers: list[tuple[bytes, bytes]]
    reserved_tokens: int
    model: str = ""
    settles: bool = True  # a rule holds a lease or a reservation: settle has work to do


class Admission:
    """Checks and consumes limits for each request; shared by every request."""

    def __init__(
        self, settings: Settings, limiter: Limiter, primer: QuotaPrimer | None = None
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.primer = primer
        virtual = {entry.name: entry.models for entry in settings.model_router}
        self.pricing = Pricing(settings.usage, settings.models, virtual)
        self._effective: dict[tuple[str, LimitSet | None], LimitSet] = {}
        # (caller, model, endpoint) -> its rule plan, with the principal it was made for
        self._plans: dict[tuple[int, str, str], tuple[Principal, RulePlan]] = {}

    def _tier(self, name: str | None) -> TierConfig:
        tier = self.settings.tiers.get(name or "")
        if tier is None:
            raise PermissionDenied(
                f"This credential's tier {name!r} is not configured on this gateway; "
                "ask an administrator to fix the key's tier."
            )
        return tier

    def _limits(self, principal: Principal, tier: TierConfig) -> LimitSet:
        key = (principal.tier, principal.limits)
        limits = self._effective.get(key)
        if limits is None:
            limits = self._effective[key] = effective(tier, principal.limits)
        return limits

    def rules(
        self,
        principal: Principal,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        reserve_tokens: int = 0,
        reserve_micros: int = 0,
    ) -> list[Rule]:
        tier = self._tier(principal.tier)
        tenant_limits = None
        if principal.tenant_id and principal.tenant_tier:
            tenant_limits = self._tier(principal.tenant_tier)
        return rules_for(
            principal.subject,
            self._limits(principal, tier),
            tier,
            model=model,
            endpoint=endpoint,
            tenant=principal.tenant_id,
            tenant_limits=tenant_limits,
            reserve_tokens=reserve_tokens,
            reserve_micros=reserve_micros,
            month_reset_day=self.settings.limits.month_reset_day,
        )

    async def admit(
        self,
        principal: Principal,
        request_id: str,
        *,
        model: str,
        endpoint: str,
        body_size: int,
        max_output_tokens: int | None,
        own_key: bool = False,
    ) -> Admitted:
        """Consume every applicable limit, or raise RateLimited naming the one that is full.

        ``own_key``: the caller's own provider key serves the request (BYOK): it costs the
        operator nothing, so money budgets neither refuse nor count it; every other
        limit (requests, tokens, concurrency) still applies.
        """
        now = time.time()
        plan = self._plan(principal, model, endpoint, now)
        prompt = body_size // BYTES_PER_TOKEN
        completion = max_output_tokens or DEFAULT_COMPLETION_RESERVE
        reserved = prompt + completion
        micros = 0
        if plan.money and not own_key:  # the worst case of a priced model; settle charges
            micros = round(priced(self.pricing.ceiling(model), prompt, completion) * MICROS)
        rules, settles = plan.rules(now, reserved, micros), plan.settles
        if own_key and plan.money:
            rules = [rule for rule in rules if not rule.name.startswith("budget_")]
            settles = any(needs_settling(rule.kind, rule.name) for rule in rules)
        if not rules:
            return Admitted(None, [], 0, model, settles=False)
        if self.primer is not None and plan.quotas:
            await self.primer.prime(rules, principal.key_id, principal.tenant_id, plan.period.start)
        decision = await self.limiter.acquire(rules, request_id)
        if not decision.allowed:
            raise rate_limited(decision)
        headers = rate_limit_headers(decision.states)
        return Admitted(decision.lease, headers, reserved, model, settles=settles)

    def _plan(self, principal: Principal, model: str, endpoint: str, now: float) -> RulePlan:
        """The caller's rules for ``model`` and ``endpoint`` this month, made once. Kept by
        the principal's identity (an API key's is the same object on every request), with
        the principal itself: while it is kept, no other object can have its id."""
        period = month_period(now, self.settings.limits.month_reset_day)
        key = (id(principal), model, endpoint)
        found = self._plans.get(key)
        if found is not None and found[1].period is period:
            return found[1]
        tier = self._tier(principal.tier)
        tenant_limits = None
        if principal.tenant_id and principal.tenant_tier:
            tenant_limits = self._tier(principal.tenant_tier)
        plan = RulePlan(
            principal.subject, self._limits(principal, tier), tier, period,
            model=model, endpoint=endpoint, tenant=principal.tenant_id,
            tenant_limits=tenant_limits,
        )  # fmt: skip
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[key] = (principal, plan)
        return plan

    async def settle(
        self,
        admitted: Admitted,
        usage: Mapping[str, Any] | None,
        provider: str | None = None,
        deployment: str | None = None,
    ) -> None:
        """Release leases; charge token and money rules the figures of ``usage`` (the
        pipeline gives its usage record's; without any, the reservation stands)."""
        lease = admitted.lease
        if lease is None or lease.settled:
            return
        if not admitted.settles:
            lease.settled = True  # request counts only: no second round trip
            return
        actual: dict[str, int] | None = None
        prompt = usage.get("prompt_tokens") if usage else None
        completion = usage.get("completion_tokens") if usage else None
        if isinstance(prompt, int) and isinstance(completion, int):
            cost = self.pricing.cost(
                admitted.model, provider, deployment, prompt, completion, usage
            )
            actual = {}
            for rule in lease.rules:
                if rule.name.startswith("tokens_"):
                    actual[rule.key] = prompt + completion
                elif rule.name.startswith("budget_"):
                    actual[rule.key] = round(cost * MICROS)
        await self.limiter.settle(lease, actual)

    async def report(self, principal: Principal) -> dict[str, Any]:
        """GET /usage: seed 001's figures for the hourly window, plus month and tokens."""
        states = await self.limiter.peek(self.rules(principal))
        by_name = {s.rule.name: s for s in states}
        hourly = by_name.get("requests_per_hour")
        body: dict[str, Any] = {"tier": principal.tier}
        body.update(_figures("requests", hourly))
        for name, state in by_name.items():
            body[name] = _figures("", state)
        return body


def _figures(prefix: str, state: RuleState | None) -> dict[str, Any]:
    lead = f"{prefix}_" if prefix else ""
    if state is None:
        return {
            f"{lead}used": 0, f"{lead}limit": None, f"{lead}remaining": None,
            "window_reset": None,
        }  # fmt: skip
    rule = state.rule
    used: float = max(rule.limit - state.remaining, 0)
    limit: float = rule.limit
    remaining: float = state.remaining
    if rule.name.startswith("budget_"):  # kept in micro-dollars, shown in dollars
        used, limit, remaining = used / MICROS, limit / MICROS, remaining / MICROS
    reset = datetime.fromtimestamp(time.time() + state.reset_after, UTC)
    return {
        f"{lead}used": used,
        f"{lead}limit": limit,
        f"{lead}remaining": remaining,
        "window_reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
