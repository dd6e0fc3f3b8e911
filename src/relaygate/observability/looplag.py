"""Event-loop lag: how late the worker's event loop wakes a task that asked to sleep.

A task sleeps ``interval`` seconds in a loop and measures how much later than asked it
woke up. That overshoot is the time the loop spent on something else it could not
interrupt (a long callback, a blocking call, a collection by the garbage collector): every
request waiting on that loop waited as long. The gauge
``relaygate_event_loop_lag_seconds`` shows the largest overshoot of the last ``window``
seconds, so a stall between two scrapes is not lost (livemax over a worker's processes in
multiprocess mode: the worst live worker).

It costs one wake-up per ``interval`` (0.5 s by default), nothing per request. Each
wake-up also calls ``on_tick`` (the operations listener's heartbeat, ops_listener.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["LoopLag"]

LAG_METRIC = "relaygate_event_loop_lag_seconds"


class LoopLag:
    """Measures the running loop's lag in a task of its own (``start`` / ``aclose``).

    ``clock`` and ``sleep`` are the loop's (``loop.time``, ``asyncio.sleep``) unless given:
    the tests pass a fake pair to produce known overshoots.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval: float = 0.5,
        window: float = 5.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("interval must be > 0 and window >= interval")
        self.interval = interval
        self.gauge = Gauge(
            LAG_METRIC,
            "Largest delay of the event loop over the last few seconds: how much later than "
            "asked a sleeping task woke up.",
            registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self._recent: deque[float] = deque(maxlen=max(1, round(window / interval)))
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._task: asyncio.Task[None] | None = None
        self.on_tick: list[Callable[[], None]] = []  # called on the loop after each sample

    @property
    def current(self) -> float:
        """The largest lag of the window (seconds); 0.0 before the first sample."""
        return max(self._recent, default=0.0)

    def record(self, lag: float) -> None:
        """One sample: the overshoot of one sleep (negative values, clock jitter, count as 0)."""
        self._recent.append(max(0.0, lag))
        self.gauge.set(self.current)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        clock = self._clock or asyncio.get_running_loop().time
        while True:
            before = clock()
            await self._sleep(self.interval)
            self.record(clock() - before - self.interval)
            for listener in self.on_tick:
                listener()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
