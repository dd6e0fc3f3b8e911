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

__all__ = ["CONCURRENCY_RETRY", "EPSILON", "MemoryLimiter"]

EPSILON = 1e-6  # units: absorbs float error in GCRA sums (3 x 0.1 s must fit in 0.3 s)
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
    """GCRA with a burst of ``limit``: each unit moves the theoretical arrival time
    (``tat``) by e = window / limit, and a cost c fits when max(tat, now) + c·e ≤ now + window.
    """

    __slots__ = ("tat",)

    def __init__(self, now: float) -> None:
        self.tat = now

    def available(self, rule: Rule, now: float) -> int:
        if rule.limit <= 0:
            return 0
        used = max(self.tat, now) - now
        return math.floor((rule.window - used) * rule.limit / rule.window + EPSILON)

    def need(self, rule: Rule) -> int:
        return rule.cost

    def take(self, rule: Rule, request_id: str, now: float) -> None:
        if rule.limit > 0:
            self.tat = max(self.tat, now) + rule.cost * rule.window / rule.limit

    def settle(self, rule: Rule, request_id: str, delta: int, now: float) -> None:
        if delta and rule.limit > 0:
            self.tat = max(max(self.tat, now) + delta * rule.window / rule.limit, now)

    def state(self, rule: Rule, now: float, fits: bool) -> RuleState:
        base = max(self.tat, now)
        if fits:
            retry = 0.0
        elif rule.limit <= 0:
            retry = rule.window
        else:
            retry = base + rule.cost * rule.window / rule.limit - rule.window - now
        remaining = _clamp(self.available(rule, now), rule.limit)
        return RuleState(rule, remaining, base - now, max(retry, 0.0))

    def is_reset(self, now: float) -> bool:
        return self.tat <= now


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
