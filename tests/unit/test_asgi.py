"""DisconnectWatch: the client leaving cancels the request's task; a fast answer costs no task.
Request ids: unique, and in time order."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from relaygate.asgi import WATCH_AFTER, DisconnectWatch, new_request_id


class Client:
    """An ASGI ``receive`` that reports a disconnect once ``leave()`` is called."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.watched = asyncio.Event()  # receive() was called: the watch has started
        self.receives = 0

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        self.watched.set()
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_a_client_that_leaves_early_cancels_the_call() -> None:
    """Gone before the watch starts: noticed when it starts, the call cancelled and the
    cancellation absorbed as the client's."""
    client = Client()
    client.leave()
    outcome: list[str] = []

    async def request() -> None:
        watch = DisconnectWatch(client.receive)
        try:
            await asyncio.sleep(60)  # an upstream call that would take a minute
            outcome.append("finished")
        except asyncio.CancelledError:
            outcome.append("left" if watch.absorb() else "cancelled")
        finally:
            watch.close()

    await asyncio.wait_for(asyncio.ensure_future(request()), 10)
    assert outcome == ["left"]


async def test_a_client_that_leaves_mid_call_cancels_it() -> None:
    client = Client()
    outcome: list[str] = []

    async def request() -> None:
        watch = DisconnectWatch(client.receive)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            outcome.append("left" if watch.absorb() else "cancelled")
        finally:
            watch.close()

    task = asyncio.ensure_future(request())
    await asyncio.wait_for(client.watched.wait(), 10)
    client.leave()
    await asyncio.wait_for(task, 10)
    assert outcome == ["left"]


async def test_an_answer_done_before_the_watch_starts_never_reads_receive() -> None:
    client = Client()
    watch = DisconnectWatch(client.receive)
    watch.close()
    await asyncio.sleep(WATCH_AFTER * 4)
    assert client.receives == 0
    assert not watch.absorb()


def test_request_ids_are_unique_hex_and_sort_by_time() -> None:
    """32 lowercase hex digits, the millisecond clock first: every id made in a later
    millisecond sorts after every earlier one (keys added at an index's end), and none
    repeats."""
    before = time.time_ns() // 1_000_000
    first = [new_request_id() for _ in range(2000)]
    time.sleep(0.002)  # the next ids are made in a later millisecond
    later = [new_request_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    ids = first + later
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert all(before <= int(i[:12], 16) <= after for i in ids)
    assert max(first) < min(later)
