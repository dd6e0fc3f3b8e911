"""ResponseKeeper: saves off the request path, never lost silently; the periodic purge."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from relaygate.store.engine import create_engine
from relaygate.store.responses import ResponseRecord, ResponseStore
from relaygate.store.responses_keeper import ResponseKeeper
from relaygate.store.tables import stored_responses
from tests.unit.store.test_responses_store import make

LOG = logging.getLogger("relaygate.test.keeper")


@pytest.fixture
async def store(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[ResponseStore]:
    path = tmp_path / "relaygate.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        yield ResponseStore(engine)
    finally:
        await engine.dispose()


async def test_a_read_right_after_the_answer_waits_for_its_save(store: ResponseStore) -> None:
    keeper = ResponseKeeper(store, LOG)
    keeper.start()
    keeper.save(make("resp_1", expires=None))
    keeper.save(make("resp_2", "ten_b", expires=None))
    await keeper.saved("resp_1", "ten_a")  # what prepare and GET do first
    assert (found := await store.get("resp_1", "ten_a")) is not None and found.id == "resp_1"
    await keeper.saved("resp_unknown", "ten_a")  # nothing running: returns at once
    await keeper.aclose(drain_timeout=5)  # drains the save still running
    assert await store.get("resp_2", "ten_b") is not None


async def test_a_failed_save_is_logged_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database without the table (as good as down): the answer was already sent, so
    the failure is a warning that names the response."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    keeper = ResponseKeeper(ResponseStore(engine), LOG, purge_every=3600)
    keeper.start()
    try:
        keeper.save(make("resp_lost"))
        await keeper.saved("resp_lost", "ten_a")  # does not raise
        await keeper.aclose(drain_timeout=5)
    finally:
        await engine.dispose()
    (warning,) = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    assert warning.startswith("1 responses were not stored (OperationalError)")
    assert warning.endswith(": resp_lost") and warning.count("resp_lost") == 1


async def test_expired_responses_are_purged_periodically(
    store: ResponseStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    past = datetime.now(UTC) - timedelta(days=1)
    await store.save(make("resp_old", expires=past))
    await store.save(make("resp_kept", expires=None))
    keeper = ResponseKeeper(store, LOG, purge_every=0.01)
    keeper.start()
    try:
        for _ in range(200):
            if "purged 1 expired stored responses" in caplog.text:
                break
            await asyncio.sleep(0.01)
    finally:
        await keeper.aclose(drain_timeout=5)
    assert "purged 1 expired stored responses" in caplog.text
    async with store.engine.connect() as conn:
        ids = (await conn.execute(sa.select(stored_responses.c.id))).scalars().all()
    assert ids == ["resp_kept"]


async def test_a_failing_purge_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    keeper = ResponseKeeper(ResponseStore(engine), LOG, purge_every=0.01)
    keeper.start()
    try:
        for _ in range(200):
            if caplog.text.count("purging expired responses failed") >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await keeper.aclose(drain_timeout=5)
        await engine.dispose()
    assert caplog.text.count("purging expired responses failed (OperationalError)") >= 2


class CountingStore(ResponseStore):
    """The real store, counting its transactions of saves."""

    batches: list[int]

    async def save_many(self, records: Sequence[ResponseRecord]) -> None:
        self.batches.append(len(records))
        await super().save_many(records)


async def test_saves_close_together_are_one_transaction(store: ResponseStore) -> None:
    counting = CountingStore(store.engine)
    counting.batches = []
    keeper = ResponseKeeper(counting, LOG, batch_window=0.05, purge_every=3600)
    keeper.start()
    for n in range(5):
        keeper.save(make(f"resp_{n}", expires=None))
    await keeper.saved("resp_4", "ten_a")
    keeper.save(make("resp_1", expires=None))  # the same id again: replaced, not an error
    await keeper.aclose(drain_timeout=5)  # writes what is still waiting
    assert counting.batches == [5, 1]
    for n in range(5):
        assert await store.get(f"resp_{n}", "ten_a") is not None


async def test_a_reader_waiting_for_a_save_has_the_batch_written_at_once(
    store: ResponseStore,
) -> None:
    """An agent's tool loop continues a response within milliseconds: asking for a save
    still waiting writes the batch then, not when the window ends (here, an hour)."""
    counting = CountingStore(store.engine)
    counting.batches = []
    keeper = ResponseKeeper(counting, LOG, batch_window=3600, purge_every=3600)
    keeper.start()
    keeper.save(make("resp_1", expires=None))
    keeper.save(make("resp_2", expires=None))
    await asyncio.wait_for(keeper.saved("resp_2", "ten_a"), timeout=10)
    assert counting.batches == [2]
    assert await store.get("resp_1", "ten_a") is not None
    keeper.save(make("resp_3", expires=None))  # the next batch waits for its window again
    await asyncio.sleep(0.05)
    assert counting.batches == [2]
    await keeper.aclose(drain_timeout=5)
    assert counting.batches == [2, 1]


async def test_a_keeper_not_running_refuses_saves_out_loud(
    store: ResponseStore, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = ResponseKeeper(store, LOG)
    keeper.save(make("resp_early"))
    await keeper.saved("resp_early", "ten_a")  # nothing waits forever
    assert "response resp_early was not stored: the keeper is not running" in caplog.text
    assert await store.get("resp_early", "ten_a") is None


class GatedStore(ResponseStore):
    """Writes a batch only once ``gate`` is open: a write that is still running."""

    gate: asyncio.Event
    writing: asyncio.Event  # set once a batch is being written
    batches: list[list[str]]

    async def save_many(self, records: Sequence[ResponseRecord]) -> None:
        self.batches.append([r.id for r in records])
        self.writing.set()
        await self.gate.wait()
        await super().save_many(records)


async def test_a_response_saved_again_is_read_once_the_later_save_is_written(
    store: ResponseStore,
) -> None:
    """Saves share one wait a batch; a response saved again while its first save is being
    written is waited for until the later save is written, never found in its first."""
    gated = GatedStore(store.engine)
    gated.gate, gated.writing, gated.batches = asyncio.Event(), asyncio.Event(), []
    keeper = ResponseKeeper(gated, LOG, batch_window=3600, purge_every=3600)
    keeper.start()
    keeper.save(make("resp_1", answer="first", expires=None))
    keeper.save(make("resp_2", answer="other", expires=None))
    first = asyncio.create_task(keeper.saved("resp_1", "ten_a"))  # written now: held at the gate
    await asyncio.wait_for(gated.writing.wait(), timeout=10)
    keeper.save(make("resp_1", answer="second", expires=None))  # again, in the next batch
    later = asyncio.create_task(keeper.saved("resp_1", "ten_a"))
    other = asyncio.create_task(keeper.saved("resp_2", "ten_a"))
    await asyncio.sleep(0.01)
    assert not (first.done() or later.done() or other.done())
    gated.gate.set()
    await asyncio.wait_for(asyncio.gather(first, later, other), timeout=10)
    assert gated.batches == [["resp_1", "resp_2"], ["resp_1"]]
    found = await store.get("resp_1", "ten_a")
    assert found is not None and found.response["output"][0]["content"][0]["text"] == "second"
    await keeper.aclose(drain_timeout=5)
