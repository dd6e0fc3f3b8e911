"""What happens when the shared limit store fails: refuse, or limit in-process.

Every call to the primary (Redis) is bounded by ``timeout``. When it times out or
errors, ``fail_closed`` refuses the request (503 :class:`LimiterUnavailable`);
otherwise the in-process :class:`MemoryLimiter` answers, so each process still
enforces the limits on its own share of traffic: degraded, never unlimited.
While degraded the primary is tried at most once per ``retry_interval`` rather
than on every request, so a dead store does not add ``timeout`` to each one.

A lease is settled where it was granted. Settles of primary leases that cannot
reach the primary are kept (up to ``max_pending``) and replayed once it answers
again (a few after each successful call), so concurrency slots held across an
outage are not stuck until their leases expire. (A settle that timed out may have
reached Redis all the same; its replay then refunds tokens twice, a small error in
the client's favour.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from relaygate.errors import LimiterUnavailable
from relaygate.limits.base import Decision, Lease, Limiter, Rule, RuleState
from relaygate.limits.memory import MemoryLimiter

__all__ = ["DegradedLease", "FallbackLimiter"]

_FAILURES = (TimeoutError, RedisError, OSError)
_REPLAY_BATCH = 16  # pending settles replayed after each successful primary call
_UNAVAILABLE = (
    "The rate limit store is unreachable, so this request cannot be checked against its "
    "limits. Retry in a few seconds."
)


@dataclass(slots=True)
class DegradedLease(Lease):
    """A lease granted by the in-process fallback; it is settled there."""


_Pending = tuple[Lease, Mapping[str, int] | None, float | None]


class FallbackLimiter:
    """A primary limiter with a bounded wait, and a policy for when it fails."""

    def __init__(
        self,
        primary: Limiter,
        fallback: MemoryLimiter,
        *,
        fail_closed: bool,
        timeout: float,
        on_degraded: Callable[[bool], None],
        retry_interval: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._fail_closed = fail_closed
        self._timeout = timeout
        self._on_degraded = on_degraded
        self._retry_interval = retry_interval
        self._degraded = False
        self._next_try = 0.0
        # when the primary last failed: only a call started after it says it is back
        self._failed_at = -math.inf
        self._pending: deque[_Pending] = deque(maxlen=max_pending)

    @property
    def degraded(self) -> bool:
        """Whether the primary failed last time it was tried."""
        return self._degraded

    async def acquire(
        self, rules: Sequence[Rule], request_id: str, now: float | None = None
    ) -> Decision:
        """Ask the primary; when it fails, refuse (fail closed) or ask the fallback."""
        if self._should_try():
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    decision = await self._primary.acquire(rules, request_id, now)
            except _FAILURES:
                self._failed()
            else:
                self._answered(started)
                await self._replay()
                return decision
        self._refuse_if_closed()
        decision = await self._fallback.acquire(rules, request_id, now)
        if decision.lease is not None:
            decision.lease = DegradedLease(decision.lease.request_id, decision.lease.rules)
        return decision

    async def settle(
        self, lease: Lease, actual: Mapping[str, int] | None = None, now: float | None = None
    ) -> None:
        """Settle where the lease was granted; keep primary settles that fail for later."""
        if isinstance(lease, DegradedLease):
            await self._fallback.settle(lease, actual, now)
            return
        if lease.settled:
            return
        if not self._should_try() or not await self._settle_primary(lease, actual, now):
            self._pending.append((lease, actual, now))
            return
        await self._replay()

    async def peek(self, rules: Sequence[Rule], now: float | None = None) -> list[RuleState]:
        """Where each rule stands, from the primary or, when it fails, the fallback."""
        if self._should_try():
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    states = await self._primary.peek(rules, now)
            except _FAILURES:
                self._failed()
            else:
                self._answered(started)
                return states
        self._refuse_if_closed()
        return await self._fallback.peek(rules, now)

    async def aclose(self) -> None:
        """Close both limiters."""
        try:
            await self._primary.aclose()
        finally:
            await self._fallback.aclose()

    async def _settle_primary(
        self, lease: Lease, actual: Mapping[str, int] | None, now: float | None
    ) -> bool:
        """Settle on the primary; False (and degraded) when it cannot be reached."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                await self._primary.settle(lease, actual, now)
        except _FAILURES:
            self._failed()
            return False
        self._answered(started)
        return True

    async def _replay(self) -> None:
        """Settle, on the primary, a few of the leases it could not settle while down."""
        for _ in range(_REPLAY_BATCH):
            if not self._pending:  # others replaying at the same time may have emptied it
                return
            pending = self._pending.popleft()
            if not await self._settle_primary(*pending):
                self._pending.appendleft(pending)
                return

    def _should_try(self) -> bool:
        """Healthy: always. Degraded: once per ``retry_interval``, by whichever call comes."""
        if not self._degraded:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self._retry_interval
        return True

    def _failed(self) -> None:
        self._failed_at = time.monotonic()
        self._next_try = self._failed_at + self._retry_interval
        if not self._degraded:
            self._degraded = True
            self._on_degraded(True)

    def _answered(self, started: float) -> None:
        """A call that began at ``started`` succeeded. One already in flight when the
        primary failed says nothing of it now: with many requests in flight (a burst of
        new connections at start, say), each such answer flipped the state back and the
        next timeout flipped it again, 20-odd times a worker in a second."""
        if self._degraded and started > self._failed_at:
            self._degraded = False
            self._on_degraded(False)

    def _refuse_if_closed(self) -> None:
        if self._fail_closed:
            raise LimiterUnavailable(_UNAVAILABLE)
