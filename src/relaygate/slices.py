"""Background work in short slices, so that a request never waits long for a core.

The usage outbox's and the usage writer's threads work in bursts: a batch of a hundred
usage rows was ~2-5 ms of CPU in one SQLite statement. When a request's next step wakes
(a socket ready, the upstream's answer in) on a core where such a burst runs, it waits
for the burst to end or for the kernel to switch: a thread that has just started its
time slice keeps the core for up to ~3 ms. The gateway shares its cores with its workers,
its load balancer and often its upstream, so this wait shows in its tail latency long
before the cores are busy.

Measured on the 2-core bench machine at concurrency 1 (bench/RESULTS.md, section 1): a
thread in the gateway burning 4 ms of CPU every 45 ms (the GIL released, 9% of a core)
took the p99 from 0.94-1.06 ms to 2.0-2.6 ms; the same CPU in 0.4 ms bursts every 4.5 ms,
to 1.2-1.3 ms. So the threads cut their work into slices of well under a millisecond and
yield the core between them (``sched_yield``, the GIL released): a request's step
waiting for that core runs at the next slice's end, and when none waits the thread goes
straight on. Sleeping 0.2 ms between slices did as well for the tail but halved the
writer's rate when it catches up (20,000 records in 0.62 s before slices, 1.27 s with the
sleeps, 0.70-0.85 s with yields).

When the event loop is busy, slices cost the thread, not the requests. A thread that
releases the GIL (each yield, each SQLite statement) while the event loop's thread runs
Python waits for it back until that thread is made to let go, every switch interval
(5 ms): one worker at saturation left the usage writer 16-64 rows a second against
2,200 requests a second (an in-process load of 32 requests at ~400 µs of Python each),
and its outbox grew without end (bench/RESULTS.md, sections 14 and 16). So a yield is
timed: one that took most of a switch interval waited for the GIL to be taken from the
loop's thread, and the rest of that piece of work goes on in parts 64 times larger,
without pauses (:class:`Pacer`). The core is not what is scarce then, the GIL is, and
every statement the work is cut into costs a switch interval.

For threads only: :class:`Pacer` and ``parts()`` yield in the thread that runs them.
On the event loop, yield with ``await asyncio.sleep(0)`` instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["CONTENDED_SCALE", "SQL_ROWS", "Pacer", "contended_s", "parts"]

T = TypeVar("T")

# The core handed to whatever else is ready to run on it (where the OS has no such call,
# a zero sleep, which only releases the GIL)
_yield = getattr(os, "sched_yield", lambda: time.sleep(0))
# Usage rows in one SQLite statement (store/sqlite_bulk.py): ~1.5 million instructions
# with their conversion, 0.4-0.45 ms on the 2-core bench machine in a slow hour, where
# the 4 kB part of JSON rows it replaces (12 records) took 0.55-0.6 ms
SQL_ROWS = 16
# A yield that took longer waited for the GIL until the event loop's thread was made to
# let go of it (after the switch interval, 5 ms by default): that thread never idles, it
# is saturated. A shorter wait is a core's other thread running first, or the loop's
# thread finishing a step and going back to wait for I/O: there slices are wanted (at
# c=1 on the 2-core bench machine, a 1 ms threshold stopped them and cost the p99).
CONTENDED_FRACTION = 0.8
# Once contended, a part holds this many times more: few statements, each still far
# within SQLite's limit on one value (1 GB by default) and a bounded memory
CONTENDED_SCALE = 64


def contended_s() -> float:
    """How long a yield takes when it had to wait for the GIL to be taken from a thread
    that does not let go of it on its own."""
    return CONTENDED_FRACTION * sys.getswitchinterval()


class Pacer:
    """The pauses of one piece of work: each yields the core, until one has to wait for
    the GIL; from then on :attr:`contended` is true and pauses do nothing."""

    __slots__ = ("contended",)

    def __init__(self) -> None:
        self.contended = False

    def pause(self) -> None:
        if not self.contended:
            started = time.perf_counter()
            _yield()
            self.contended = time.perf_counter() - started > contended_s()


def parts(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive parts of at most ``size``, yielding between them; once a
    yield had to wait for the GIL, parts of ``CONTENDED_SCALE`` times ``size`` without
    pauses (:class:`Pacer`)."""
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    pacer, start = Pacer(), 0
    while start < len(items):
        if start:
            pacer.pause()
        end = start + (size * CONTENDED_SCALE if pacer.contended else size)
        yield items[start:end]
        start = end
