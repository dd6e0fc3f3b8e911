"""The limiter contract: one atomic, all-or-nothing check of several rules.

A request is admitted only if every rule that applies to it (the key's
requests per hour, its tenant's, tokens per minute, concurrent requests, ...)
has room; then each rule's cost is consumed in one step, or none is. Backends:
``memory`` (one process) and ``redis`` (every worker and replica, one round
trip per call). One contract test suite runs against both.

Rule kinds:

* ``rate``: at most ``limit`` units in any ``window`` seconds, enforced with
  GCRA (a burst of ``limit`` allowed, then the rate refills continuously).
* ``quota``: at most ``limit`` units in a calendar period (a month); the
  period is part of ``key``, and ``window`` is the seconds until it ends.
* ``concurrency``: at most ``limit`` leases held at once; a lease is released
  by ``settle`` or expires after ``window`` seconds (a crashed worker cannot
  leak slots for ever).

Token limits reserve ``cost`` (the request's ``max_tokens`` or an estimate)
at admission; ``settle`` then charges the real count, refunding the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import msgspec

__all__ = ["Decision", "Lease", "Limiter", "Rule", "RuleState"]

RuleKind = Literal["rate", "quota", "concurrency"]


class Rule(msgspec.Struct, frozen=True):
    """One limit that applies to a request.

    A frozen Struct rather than a frozen dataclass: several are made for every request,
    and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` a field) cost ten
    times as much."""

    key: str  # unique per subject and limit, e.g. "k:<key id>:rph"; backends add their prefix
    kind: RuleKind
    limit: int  # units per window, or leases at once
    window: float  # seconds (see the module docstring for each kind)
    cost: int = 1  # units this request takes (1 request, or N reserved tokens)
    name: str = ""  # what the client is told, e.g. "requests_per_hour"


class RuleState(msgspec.Struct, frozen=True):
    """Where one rule stands after a decision (or a peek); one a rule a request."""

    rule: Rule
    remaining: int  # units still available now (after this request, if it was admitted)
    reset_after: float  # seconds until the rule is back to its full limit
    retry_after: float  # seconds until this request's cost would fit (0 when it fits now)


@dataclass(slots=True)
class Lease:
    """What an admitted request holds: settled once, when the response is done."""

    request_id: str
    rules: tuple[Rule, ...]
    settled: bool = False


@dataclass(slots=True)
class Decision:
    """The outcome of ``acquire``."""

    allowed: bool
    states: list[RuleState] = field(default_factory=list)
    denied: RuleState | None = None  # the first rule that had no room
    lease: Lease | None = None  # set when allowed


class Limiter(Protocol):
    """A limit store. Every method is safe to call concurrently from many processes."""

    async def acquire(
        self, rules: Sequence[Rule], request_id: str, now: float | None = None
    ) -> Decision:
        """Consume every rule's cost if all fit; otherwise consume nothing."""

    async def settle(
        self, lease: Lease, actual: Mapping[str, int] | None = None, now: float | None = None
    ) -> None:
        """Release concurrency leases; for rules named in ``actual`` (by key), replace the
        reserved cost by the actual figure (refund or extra charge). Idempotent."""

    async def peek(self, rules: Sequence[Rule], now: float | None = None) -> list[RuleState]:
        """Where each rule stands, consuming nothing (for GET /usage and headers)."""

    async def aclose(self) -> None:
        """Release connections."""
