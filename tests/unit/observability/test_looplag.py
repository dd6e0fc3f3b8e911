"""relaygate_event_loop_lag_seconds: the overshoot of a periodic sleep, worst of a window.

A fake clock and sleep make the overshoots known, so nothing here depends on how busy
the machine running the tests is.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from relaygate.observability.looplag import LAG_METRIC, LoopLag


class FakeLoop:
    """A clock that a sleep advances by what was asked plus the next scripted lag."""

    def __init__(self, lags: list[float]) -> None:
        self.now = 100.0
        self.lags = list(lags)
        self.woken = asyncio.Event()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if not self.lags:
            self.woken.set()
            await asyncio.Event().wait()  # script done: park until cancelled
        self.now += seconds + self.lags.pop(0)
        await asyncio.sleep(0)


def _gauge(registry: CollectorRegistry) -> float:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(LAG_METRIC + " "):
            return float(line.split()[1])
    raise AssertionError(f"{LAG_METRIC} not exposed")


async def test_gauge_shows_the_worst_overshoot_of_the_window() -> None:
    # interval 0.5 s, window 2 s: the last 4 samples count.
    fake = FakeLoop([0.001, 0.25, 0.002, 0.003, 0.004, 0.005, 0.0])
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval=0.5, window=2.0, clock=fake.time, sleep=fake.sleep)
    lag.start()
    await asyncio.wait_for(fake.woken.wait(), 5)
    # The 0.25 s stall was the 2nd of 7 samples: it has left the 4-sample window.
    assert lag.current == pytest.approx(0.005)
    assert _gauge(registry) == pytest.approx(0.005)
    await lag.aclose()


async def test_a_stall_stays_visible_until_it_leaves_the_window() -> None:
    fake = FakeLoop([0.0, 0.3, 0.0])
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval=0.5, window=2.0, clock=fake.time, sleep=fake.sleep)
    lag.start()
    await asyncio.wait_for(fake.woken.wait(), 5)
    assert _gauge(registry) == pytest.approx(0.3)
    await lag.aclose()
    await lag.aclose()  # closing twice is harmless


@given(st.lists(st.floats(min_value=-1.0, max_value=10.0), min_size=1, max_size=40))
def test_record_keeps_the_max_of_the_last_window_never_negative(samples: list[float]) -> None:
    lag = LoopLag(CollectorRegistry(), interval=0.5, window=3.0)
    for sample in samples:
        lag.record(sample)
    assert lag.current == max(0.0, *samples[-6:])


def test_nonsense_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        LoopLag(CollectorRegistry(), interval=0)
    with pytest.raises(ValueError, match="window"):
        LoopLag(CollectorRegistry(), interval=1.0, window=0.5)
