"""Monthly quotas that survive a restart: counters primed from the usage records.

The memory limiter forgets everything when the process ends, so on the first use
of a key's monthly quota in this process, the month's use so far is read from
the daily rollups (one query per key and month) and consumed up front. With
Redis, counters outlive gateway restarts and are shared, so they are not primed
(priming from two replicas at once would count twice); keep Redis persistent.

Figures from the rollups lag by at most the outbox's write delay (well under a
second), and requests that failed after admission are not counted back: the
primed figure errs on the client's side.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.limits.base import Limiter, Rule
from relaygate.limits.rules import MICROS
from relaygate.store.tables import usage_daily

__all__ = ["QuotaPrimer"]

_DAILY = usage_daily.c
# A tier's per-model and per-endpoint rules are named "<limit> for model <name>" and
# "<limit> for endpoint <path>" (limits/rules.py): only that model's or path's use counts.
_SCOPES = ((" for model ", _DAILY.model), (" for endpoint ", _DAILY.endpoint))


def _scope(name: str) -> list[sa.ColumnElement[bool]]:
    """The rollup rows a quota rule counts, beyond its subject and month."""
    for marker, column in _SCOPES:
        _, found, value = name.partition(marker)
        if found:
            return [column == value]
    return []


class QuotaPrimer:
    """Primes each monthly quota rule once per process from the usage rollups."""

    def __init__(self, engine: AsyncEngine, limiter: Limiter, log: logging.Logger) -> None:
        self.engine = engine
        self.limiter = limiter
        self.log = log
        self._primed: set[str] = set()

    async def prime(
        self, rules: list[Rule], key_id: str | None, tenant_id: str | None, since: datetime
    ) -> None:
        todo = [r for r in rules if r.kind == "quota" and r.key not in self._primed]
        for rule in todo:
            self._primed.add(rule.key)
            whose = tenant_id if rule.name.endswith(" for tenant") else key_id
            if whose is None:
                continue
            try:
                used = await self._used(rule, whose, tenant=whose == tenant_id, since=since)
            except (SQLAlchemyError, OSError, TimeoutError):
                self.log.warning("could not read this month's usage for %s", rule.name)
                self._primed.discard(rule.key)  # try again on the next request
                continue
            if used > 0:
                seed = Rule(rule.key, "quota", rule.limit, rule.window, min(used, rule.limit))
                await self.limiter.acquire([seed], f"prime:{rule.key}")

    async def _used(self, rule: Rule, whose: str, *, tenant: bool, since: datetime) -> int:
        field = rule.name.split(" ", 1)[0]
        column = _DAILY.tenant_id if tenant else _DAILY.key_id
        measure = {
            "requests_per_month": sa.func.sum(_DAILY.request_count - _DAILY.error_requests),
            "tokens_per_month": sa.func.sum(_DAILY.prompt_tokens + _DAILY.completion_tokens),
            "budget_per_month": sa.func.sum(_DAILY.cost),
        }.get(field)
        if measure is None:
            return 0
        query = sa.select(measure).where(
            column == whose, _DAILY.day >= since.astimezone(UTC).date(), *_scope(rule.name)
        )
        async with self.engine.connect() as conn:
            value = await conn.scalar(query)
        if field == "budget_per_month":
            return round(float(value or 0) * MICROS)
        return int(value or 0)
