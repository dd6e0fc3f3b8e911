"""The in-process limiter: exact within one process, all-or-nothing, bounded memory.

A call checks every rule and then consumes every cost without awaiting in
between, so it is atomic under asyncio. Rates use GCRA (see :class:`_Rate`),
quotas a counter that expires ``window`` seconds after its first use, and
concurrency a table of leases that expire on their own.

Memory stays bounded: state that is back to its full limit is dropped when it is
next seen, once a second a sweep looks at up to 1,000 of the least recently used
entries, and at most ``max_keys`` keys are tracked (the least recently used is
evicted), so a flood of new keys costs some of them their history rather than the
process its memory.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from relaygate.limits.base import Decision, Lease, Rule, RuleKind, RuleState

__all__ = ["CONCURRENCY_RETRY", "SLACK", "MemoryLimiter"]

# seconds: a timestamp's own float error (1.8e9 s since 1970 holds 2.4e-7 s steps), so a
# request at exactly its time fits though the caller's clock rounded it (redis.py's
# script uses the same)
SLACK = 1e-6
CONCURRENCY_RETRY = 1.0  # leases end with their request: tell clients to retry soon
_SWEEP_EVERY = 1.0  # seconds
_SWEEP_SIZE = 1_000  # entries looked at per sweep: ~0.2 ms


class _Slot(Protocol):
    """The state of one rule key."""

    def available(self, rule: Rule, now: float) -> int:
        """Units that fit now; negative when the rule is over (after an extra charge)."""

    def need(self, rule: Rule) -> int:
        """Units this request takes from the rule."""

    def take(self, rule: Rule, request_id: str, now: float) -> None:
        """Consume the request's cost."""

    def settle(self, rule: Rule, request_id: str, delta: int, now: float) -> None:
        """Release a lease, or charge ``delta`` more units (negative: refund)."""

    def state(self, rule: Rule, now: float, fits: bool) -> RuleState:
        """Where the rule stands now."""

    def is_reset(self, now: float) -> bool:
        """Whether the rule is back to its full limit (the state can be dropped)."""


class _Rate:
    """GCRA as a leaky bucket with room for ``limit`` units: it held ``level`` units at
    ``at`` and drains limit / window units a second, so a cost c fits when the level now
    plus c is at most ``limit``. Integer costs add exactly and the time elapsed is one
    exact subtraction, so a burst of ``limit`` always fits, and a unit comes back no more
    than ``SLACK`` s before its time. (The usual form, a theoretical arrival time moved by
    window / limit a unit, sums steps on an epoch timestamp and loses up to 1.2e-7 s a
    step: 26 of a burst of 27 a minute fitted, and one request an hour came in 3.6 ms
    early.)"""

    __slots__ = ("at", "empty", "level")

    def __init__(self, now: float) -> None:
        self.level = 0.0
        self.at = now
        self.empty = now  # when the bucket has drained

    def _level(self, rule: Rule, now: float) -> float:
        elapsed = now - self.at  # exact: two timestamps of one magnitude
        if elapsed <= 0.0:
            return self.level
        level = self.level - elapsed * rule.limit / rule.window
        return level if level > 0.0 else 0.0

    def available(self, rule: Rule, now: float) -> int:
        if rule.limit <= 0:
            return 0
        return math.floor(rule.limit - self._level(rule, now) + _slack(rule.limit, rule.window))

    def need(self, rule: Rule) -> int:
        return rule.cost

    def take(self, rule: Rule, request_id: str, now: float) -> None:
        if rule.limit > 0 and rule.cost:
            self._fill(rule, self._level(rule, now) + rule.cost, now)

    def settle(self, rule: Rule, request_id: str, delta: int, now: float) -> None:
        if delta and rule.limit > 0:
            self._fill(rule, max(self._level(rule, now) + delta, 0.0), now)

    def _fill(self, rule: Rule, level: float, now: float) -> None:
        if now > self.at:
            self.at = now
        self.level = level
        self.empty = self.at + level * rule.window / rule.limit

    def state(self, rule: Rule, now: float, fits: bool) -> RuleState:
        limit = rule.limit
        if limit <= 0:
            return RuleState(rule, 0, 0.0, 0.0 if fits else rule.window)
        level = self._level(rule, now)
        per_unit = rule.window / limit
        ahead = self.at - now  # > 0 only for a clock set back
        reset = level * per_unit + (ahead if ahead > 0.0 else 0.0)
        # room for the cost: the time to drain all but limit - cost units (never past reset)
        retry = 0.0 if fits else max(reset - (limit - rule.cost) * per_unit, 0.0)
        remaining = math.floor(limit - level + _slack(limit, rule.window))
        return RuleState(rule, _clamp(remaining, limit), reset, retry)

    def is_reset(self, now: float) -> bool:
        return self.empty <= now


def _slack(limit: int, window: float) -> float:
    """Units a rate lets in early: float error only, ``SLACK`` s of its rule's time."""
    return limit * (SLACK / window + 1e-12)


class _Quota:
    """A counter that starts on first use and expires ``window`` seconds later."""

    __slots__ = ("count", "expires")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.expires = now

    def available(self, rule: Rule, now: float) -> int:
        return rule.limit - self.count

    def need(self, rule: Rule) -> int:
        return rule.cost

    def take(self, rule: Rule, request_id: str, now: float) -> None:
        if self.count == 0:
            self.expires = now + rule.window
        self.count += rule.cost

    def settle(self, rule: Rule, request_id: str, delta: int, now: float) -> None:
        if self.expires > now:
            self.count = max(self.count + delta, 0)

    def state(self, rule: Rule, now: float, fits: bool) -> RuleState:
        reset = self.expires - now if self.count > 0 else 0.0
        retry = 0.0 if fits else (reset if self.count > 0 else rule.window)
        return RuleState(rule, _clamp(self.available(rule, now), rule.limit), reset, retry)

    def is_reset(self, now: float) -> bool:
        return self.count <= 0 or self.expires <= now


class _Leases:
    """Request ids holding a slot, each with the time its lease expires."""

    __slots__ = ("holders",)

    def __init__(self, now: float) -> None:
        self.holders: dict[str, float] = {}

    def available(self, rule: Rule, now: float) -> int:
        return rule.limit - len(self.holders)

    def need(self, rule: Rule) -> int:
        return 1

    def take(self, rule: Rule, request_id: str, now: float) -> None:
        self.holders[request_id] = now + rule.window

    def settle(self, rule: Rule, request_id: str, delta: int, now: float) -> None:
        self.holders.pop(request_id, None)

    def state(self, rule: Rule, now: float, fits: bool) -> RuleState:
        holders = self.holders.values()
        reset = max(holders) - now if holders else 0.0
        if fits:
            retry = 0.0
        else:
            retry = min(min(holders) - now, CONCURRENCY_RETRY) if holders else rule.window
        return RuleState(rule, _clamp(self.available(rule, now), rule.limit), reset, retry)

    def is_reset(self, now: float) -> bool:
        if any(expiry <= now for expiry in self.holders.values()):
            self.holders = {rid: exp for rid, exp in self.holders.items() if exp > now}
        return not self.holders


_KINDS: dict[RuleKind, Callable[[float], _Slot]] = {
    "rate": _Rate,
    "quota": _Quota,
    "concurrency": _Leases,
}


class MemoryLimiter:
    """Limits for one process (and the fallback when the shared store is down)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        """How many rule keys hold state (for tests and metrics)."""
        return len(self._slots)

    async def acquire(
        self, rules: Sequence[Rule], request_id: str, now: float | None = None
    ) -> Decision:
        """Consume every rule's cost if all fit; otherwise consume nothing."""
        now = self._clock() if now is None else now
        if not self._next_sweep - _SWEEP_EVERY <= now < self._next_sweep:
            self._sweep(now)
        # one pass, not a comprehension per step: this runs on every request
        slots: list[_Slot] = []
        fits: list[bool] = []
        for rule in rules:
            slot = self._find(rule, now) or _KINDS[rule.kind](now)
            slots.append(slot)
            fits.append(slot.need(rule) <= slot.available(rule, now))
        allowed = all(fits)
        if allowed:
            for slot, rule in zip(slots, rules, strict=True):
                slot.take(rule, request_id, now)
                self._store(rule.key, slot)
        states = [s.state(r, now, f) for s, r, f in zip(slots, rules, fits, strict=True)]
        if allowed:
            return Decision(True, states, lease=Lease(request_id, tuple(rules)))
        return Decision(False, states, denied=states[fits.index(False)])

    async def settle(
        self, lease: Lease, actual: Mapping[str, int] | None = None, now: float | None = None
    ) -> None:
        """Release the lease's slots and charge actual costs in place of reserved ones."""
        if lease.settled:
            return
        lease.settled = True
        now = self._clock() if now is None else now
        actual = actual or {}
        for rule in lease.rules:
            slot = self._slots.get(rule.key)
            if slot is None:
                continue
            delta = actual[rule.key] - rule.cost if rule.key in actual else 0
            slot.settle(rule, lease.request_id, delta, now)
            if slot.is_reset(now):
                del self._slots[rule.key]

    async def peek(self, rules: Sequence[Rule], now: float | None = None) -> list[RuleState]:
        """Where each rule stands, consuming nothing."""
        now = self._clock() if now is None else now
        states = []
        for rule in rules:
            slot = self._find(rule, now) or _KINDS[rule.kind](now)
            states.append(slot.state(rule, now, slot.need(rule) <= slot.available(rule, now)))
        return states

    async def aclose(self) -> None:
        """Nothing to release; the state is dropped with the object."""

    def _find(self, rule: Rule, now: float) -> _Slot | None:
        """The rule's live state, dropping it when it is back to the full limit."""
        slot = self._slots.get(rule.key)
        if slot is not None and slot.is_reset(now):
            del self._slots[rule.key]
            return None
        return slot

    def _store(self, key: str, slot: _Slot) -> None:
        """Keep ``slot`` as the most recently used; evict the least recently used past the cap."""
        if key in self._slots:
            self._slots.move_to_end(key)
            return
        self._slots[key] = slot
        if len(self._slots) > self._max_keys:
            self._slots.popitem(last=False)

    def _sweep(self, now: float) -> None:
        """Drop the oldest entries that are reset; move live ones to the back of the line."""
        self._next_sweep = now + _SWEEP_EVERY
        for _ in range(min(_SWEEP_SIZE, len(self._slots))):
            key, slot = self._slots.popitem(last=False)
            if not slot.is_reset(now):
                self._slots[key] = slot


def _clamp(units: int, limit: int) -> int:
    return min(max(units, 0), max(limit, 0))
