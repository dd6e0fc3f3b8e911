"""FallbackLimiter (limits/fallback.py): only a call that began after the primary's last
failure says the primary is back; answers of calls already in flight do not."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import RedisError

from relaygate.limits.base import Decision, Lease, Rule
from relaygate.limits.fallback import FallbackLimiter
from relaygate.limits.memory import MemoryLimiter

RATE = Rule("rph:k:1", "rate", 1_000_000, 3600.0, 1, "requests_per_hour")


class Held(MemoryLimiter):
    """A primary whose calls each wait for their turn, then answer or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: dict[str, asyncio.Future[bool]] = {}

    async def acquire(
        self, rules: Sequence[Rule], request_id: str, now: float | None = None
    ) -> Decision:
        self.turns[request_id] = asyncio.get_running_loop().create_future()
        if not await self.turns[request_id]:
            raise RedisError("down")
        return await super().acquire(rules, request_id, now)

    async def settle(
        self, lease: Lease, actual: Mapping[str, int] | None = None, now: float | None = None
    ) -> None:
        return None


@settings(max_examples=60, deadline=None)
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=12), data=st.data())
async def test_answers_of_calls_in_flight_at_a_failure_do_not_end_it(
    outcomes: list[bool], data: st.DataObject
) -> None:
    """Calls start together and end in a drawn order, each answering or failing; then
    one more call answers. The state changes once per failure burst at most: degraded
    at the first failure, healthy again only through the last call."""
    events: list[bool] = []
    primary = Held()
    limiter = FallbackLimiter(
        primary, MemoryLimiter(), fail_closed=False, timeout=5.0,
        on_degraded=events.append, retry_interval=0.0,
    )  # fmt: skip
    calls = [asyncio.create_task(limiter.acquire([RATE], f"r{i}")) for i in range(len(outcomes))]
    await asyncio.sleep(0)
    order = data.draw(st.permutations(range(len(outcomes))))
    for i in order:
        primary.turns[f"r{i}"].set_result(outcomes[i])
        await calls[i]
    failed = not all(outcomes)
    assert events == ([True] if failed else [])
    assert limiter.degraded is failed
    later = asyncio.create_task(limiter.acquire([RATE], "later"))
    await asyncio.sleep(0)
    primary.turns["later"].set_result(True)
    await later
    assert events == ([True, False] if failed else [])
    assert not limiter.degraded
