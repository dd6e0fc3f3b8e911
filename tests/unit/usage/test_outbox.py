"""The outbox: buffered appends, fsynced windows, take/ack, orphan adoption, crash loss.

Crashes are real: a child process appends and then dies by ``os._exit`` (no
aclose) or by SIGKILL, and a fresh outbox adopts what it left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.observability.metrics import Metrics
from relaygate.usage.outbox import Outbox, _Spool, _spool_files
from relaygate.usage.record import UsageRecord

LOG = logging.getLogger("relaygate.tests.outbox")
WINDOW = 0.05


def record(i: int, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": f"req_{i:08d}", "created_at": 1_790_000_000.0 + i, "key_id": f"key_{i % 3}",
        "tenant_id": "ten_a", "api": "openai", "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini", "prompt_tokens": i, "completion_tokens": 2 * i,
    }  # fmt: skip
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


def make_outbox(directory: Path, metrics: Metrics | None = None, **options: object) -> Outbox:
    settings: dict[str, object] = {"fsync_window": WINDOW, "max_bytes": 1 << 30, "log": LOG}
    settings.update(options)
    return Outbox(directory, metrics=metrics, **settings)  # type: ignore[arg-type]


def backlog_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("relaygate_usage_outbox_backlog")


def spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_append_flush_take_ack(tmp_path: Path) -> None:
    metrics = Metrics()
    outbox = make_outbox(tmp_path, metrics, fsync_window=30.0)  # only explicit flushes
    await outbox.start()
    try:
        for i in range(10):
            outbox.append(record(i))
        assert (outbox.backlog, outbox.durable) == (10, 0)
        assert await outbox.take(100) == []  # nothing durable yet

        await outbox.flush()
        assert (outbox.backlog, outbox.durable) == (10, 10)
        assert backlog_gauge(metrics) == 10

        first = await outbox.take(4)
        assert [r for _, r in first] == [record(i) for i in range(4)]
        assert [i for i, _ in first] == sorted(i for i, _ in first)
        assert await outbox.take(4) == first  # not acked: handed out again

        await outbox.ack([i for i, _ in first])
        assert outbox.backlog == 6
        assert backlog_gauge(metrics) == 6
        rest = await outbox.take(100)
        assert [r.request_id for _, r in rest] == [f"req_{i:08d}" for i in range(4, 10)]
        await outbox.ack([i for i, _ in rest])
        await outbox.ack([i for i, _ in rest])  # acking twice deletes nothing new
        assert outbox.backlog == 0
        assert backlog_gauge(metrics) == 0
    finally:
        await outbox.aclose()
    assert spool_files(tmp_path) == []  # drained: the file is gone


async def test_the_flusher_commits_appends_on_its_own(tmp_path: Path) -> None:
    outbox = make_outbox(tmp_path)
    await outbox.start()
    try:
        for i in range(100):
            outbox.append(record(i))
        for _ in range(200):  # normally one window; up to 40 on a loaded disk
            if outbox.durable == 100:
                break
            await asyncio.sleep(WINDOW / 5)
        assert outbox.durable == 100
    finally:
        await outbox.aclose()


async def test_aclose_keeps_records_for_the_next_process(tmp_path: Path) -> None:
    metrics = Metrics()
    first = make_outbox(tmp_path, metrics, fsync_window=30.0)
    await first.start()
    for i in range(50):
        first.append(record(i))
    await first.aclose()  # never flushed by the window: aclose commits the buffer
    assert backlog_gauge(metrics) == 0
    (left,) = spool_files(tmp_path)
    assert left.startswith("outbox-") and left.endswith(".db")

    second = make_outbox(tmp_path, metrics)
    await second.start()
    try:
        (orphan,) = await second.adopt_orphans()
        assert orphan.path == tmp_path / left
        assert orphan.backlog == 50
        assert backlog_gauge(metrics) == 50
        taken = await orphan.take(1000)
        assert [r for _, r in taken] == [record(i) for i in range(50)]
        await orphan.ack([i for i, _ in taken])
        await orphan.aclose()
        assert backlog_gauge(metrics) == 0
        assert left not in spool_files(tmp_path)  # drained and deleted
        assert await second.adopt_orphans() == []
    finally:
        await second.aclose()


async def test_flock_excludes_a_second_owner(tmp_path: Path) -> None:
    alive = make_outbox(tmp_path)
    await alive.start()
    other = make_outbox(tmp_path)
    await other.start()
    try:
        alive.append(record(1))
        await alive.flush()
        assert alive.path is not None
        assert await other.adopt_orphans() == []  # its owner lives: not an orphan
        fd = os.open(alive.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

        await alive.aclose()  # one record left: the file stays, unlocked
        (adopted,) = await other.adopt_orphans()
        third = make_outbox(tmp_path)
        await third.start()
        try:
            assert await third.adopt_orphans() == []  # already adopted by `other`
        finally:
            await third.aclose()
        await adopted.aclose()
    finally:
        await other.aclose()
        await alive.aclose()


async def test_append_never_raises_on_a_bad_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = make_outbox(tmp_path)
    await outbox.start()
    try:
        outbox.append(record(1, client_ip=object()))  # not encodable
        outbox.append(record(2))
        assert outbox.backlog == 1
        assert "req_00000001 could not be encoded" in caplog.text
    finally:
        await outbox.aclose()


async def test_disk_full_keeps_records_and_logs_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = make_outbox(tmp_path, fsync_window=30.0)
    await outbox.start()
    try:
        outbox.append(record(0))
        await outbox.flush()
        # A real SQLITE_FULL ("database or disk is full"): cap the file at its current size.
        spool = outbox._spool
        assert spool is not None
        pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
        await asyncio.to_thread(spool._db.execute, f"PRAGMA max_page_count={pages}")
        for i in range(1, 2001):
            outbox.append(record(i, model="m" * 200))
        await outbox.flush()
        assert any(r.levelno == logging.ERROR for r in caplog.records)
        assert "cannot write the usage outbox" in caplog.text
        assert (outbox.backlog, outbox.durable) == (2001, 1)  # held in memory, not lost
        outbox.append(record(2001))  # the request path still works

        await asyncio.to_thread(spool._db.execute, "PRAGMA max_page_count=1073741823")
        await outbox.flush()
        assert (outbox.backlog, outbox.durable) == (2002, 2002)
        ids = sorted(r.request_id for _, r in await outbox.take(5000))
        assert ids == [f"req_{i:08d}" for i in range(2002)]
    finally:
        await outbox.aclose()


async def test_over_max_bytes_warns_once_and_keeps_accepting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = make_outbox(tmp_path, fsync_window=30.0, max_bytes=4096)
    await outbox.start()
    try:
        for batch in range(3):
            for i in range(200):
                outbox.append(record(batch * 1000 + i))
            await outbox.flush()
        warnings = [r for r in caplog.records if "over max_outbox_bytes" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert outbox.durable == 600
    finally:
        await outbox.aclose()


async def test_undecodable_rows_are_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = make_outbox(tmp_path, fsync_window=30.0)
    await outbox.start()
    outbox.append(record(1))
    outbox._buffer.append(b"\x93not a record")  # a row from an incompatible version
    outbox.append(record(2))
    await outbox.flush()
    taken = await outbox.take(10)
    assert [r.request_id for _, r in taken] == ["req_00000001", "req_00000002"]
    assert "could not be decoded" in caplog.text
    await outbox.ack([i for i, _ in taken])
    assert outbox.backlog == 0
    path = outbox.path
    assert path is not None
    await outbox.aclose()
    # Kept for an operator, under a name the orphan scan ignores.
    assert spool_files(tmp_path) == [path.name + ".dead"]


async def test_append_only_buffers_and_one_flush_commits_all(tmp_path: Path) -> None:
    """The hot path does no I/O: appends are buffered, one flush makes them all durable.

    (What an append costs in time is measured by ``make bench``, not asserted here.)
    """
    outbox = make_outbox(tmp_path, fsync_window=30.0)
    await outbox.start()
    records = [
        record(i, client_ip="203.0.113.7", deployment="openai/gpt-4o-mini") for i in range(5_000)
    ]
    try:
        for r in records:
            outbox.append(r)
        assert (outbox.backlog, outbox.durable) == (5_000, 0)  # nothing written per append
        await outbox.flush()
        assert (outbox.backlog, outbox.durable) == (5_000, 5_000)
    finally:
        await outbox.aclose()


# Crashes, in a child process.

CHILD = """
import asyncio, logging, os, sys, time
from relaygate.usage.outbox import Outbox, _Spool, _spool_files
from relaygate.usage.record import UsageRecord

async def main(directory, mode, window):
    outbox = Outbox(directory, fsync_window=window, max_bytes=1 << 40, log=logging.getLogger("child"))
    await outbox.start()
    seq = 0

    def add():
        nonlocal seq
        now = time.time()
        outbox.append(UsageRecord(
            request_id=f"r{seq:08d}", created_at=now, key_id="k", tenant_id="t", api="openai",
            endpoint="/v1/chat/completions", model="m", prompt_tokens=seq))
        sys.stdout.write(f"{seq} {now!r}\\n")
        sys.stdout.flush()
        seq += 1

    if mode == "exit":  # crash without aclose: what the flusher committed survives
        for _ in range(200):
            add()
        while outbox.durable < 200:  # committed by the flusher, not by a flush() call
            await asyncio.sleep(window)
        for _ in range(7):
            add()
        os._exit(0)
    while True:  # one record per millisecond until SIGKILL
        add()
        await asyncio.sleep(0.001)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


@dataclass
class CrashReport:
    appended: int  # records the child reported appending (it may have appended one more)
    survived: list[UsageRecord]  # what a fresh outbox found, in order
    times: dict[int, float]  # created_at of each reported record, by sequence number
    window: float

    @property
    def lost(self) -> int:
        return self.appended - len(self.survived)

    @property
    def lost_span(self) -> float:
        """Seconds between the last surviving record and the last appended one."""
        last = len(self.survived) - 1
        return self.times[self.appended - 1] - (self.times[last] if last >= 0 else 0.0)

    def summary(self) -> str:
        return (
            f"appended {self.appended}, survived {len(self.survived)}, lost {self.lost} "
            f"({self.lost_span * 1000:.0f} ms of appends; fsync_window {self.window * 1000:.0f} ms)"
        )


async def run_child(
    directory: Path, mode: str, window: float, kill_after: int = 0
) -> tuple[int, dict[int, float]]:
    """Run the appender child; in "kill" mode SIGKILL it once it reports ``kill_after``
    appends. Returns how many it reported appending, and each one's created_at."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(directory), mode, str(window),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    times: dict[int, float] = {}

    def parse(line: str) -> None:
        seq, _, moment = line.partition(" ")
        if moment.endswith("\n"):  # a line cut by the kill is ignored
            times[int(seq)] = float(moment)

    while line := await child.stdout.readline():
        parse(line.decode())
        if mode == "kill" and len(times) >= kill_after:
            child.send_signal(signal.SIGKILL)
            break
    rest = await child.stdout.read()
    await child.wait()
    for line in rest.decode().splitlines(keepends=True):
        parse(line)
    assert list(times) == list(range(len(times)))
    return len(times), times


async def crash_child(
    directory: Path, mode: str, window: float, kill_after: int = 0
) -> CrashReport:
    appended, times = await run_child(directory, mode, window, kill_after)
    return CrashReport(appended, await adopt_all(directory), times, window)


async def adopt_all(directory: Path) -> list[UsageRecord]:
    """What a new process finds in the crashed one's spool file."""
    fresh = make_outbox(directory)
    await fresh.start()
    try:
        (orphan,) = await fresh.adopt_orphans()
        taken = await orphan.take(1_000_000)
        await orphan.aclose()
    finally:
        await fresh.aclose()
    return [r for _, r in taken]


async def test_crash_without_aclose_loses_only_the_unflushed_window(tmp_path: Path) -> None:
    report = await crash_child(tmp_path, "exit", window=0.05)
    assert report.appended == 207
    assert [r.request_id for r in report.survived] == [f"r{i:08d}" for i in range(200)]
    assert report.lost == 7  # appended after the last window, never committed


async def test_sigkill_loses_at_most_one_fsync_window(tmp_path: Path) -> None:
    window = 0.1
    report = await crash_child(tmp_path, "kill", window=window, kill_after=600)
    print(f"\nSIGKILL: {report.summary()}")
    survived = [r.request_id for r in report.survived]
    assert survived == [f"r{i:08d}" for i in range(len(survived))]  # a prefix, no holes
    assert len(survived) >= 1
    # At most the window being collected plus the one being committed when killed.
    assert report.lost_span <= 2 * window + 0.1


async def test_hand_off_gives_the_file_to_whoever_adopts_it(tmp_path: Path) -> None:
    """A process that is not the writer closes its file (unlocking it) and goes on in a
    new one; another outbox adopts the closed file with exactly its records."""
    metrics = Metrics()
    worker = make_outbox(tmp_path, metrics, fsync_window=30.0)
    writer = make_outbox(tmp_path, fsync_window=30.0)
    await worker.start()
    await writer.start()
    try:
        assert await worker.hand_off() is None  # nothing durable: nothing handed over
        for i in range(5):
            worker.append(record(i))
        await worker.flush()
        first = worker.path
        worker.append(record(5))  # buffered during the hand-off: stays with the worker
        handed = await worker.hand_off()
        assert handed == first and worker.path not in (None, first)
        assert (worker.backlog, backlog_gauge(metrics)) == (1, 1)

        (adopted,) = await writer.adopt_orphans()
        assert adopted.path == handed
        assert [r for _, r in await adopted.take(100)] == [record(i) for i in range(5)]
        await worker.flush()
        assert [r for _, r in await worker.take(100)] == [record(5)]
        assert await writer.adopt_orphans([handed]) == []  # the worker's new file is locked
        await adopted.ack([i for i, _ in await adopted.take(100)])
        await adopted.aclose()
        assert not handed.exists()  # drained and deleted by its adopter
    finally:
        await worker.aclose()
        await writer.aclose()


# (operation, argument): append a record that waited this many seconds more than the last,
# flush, take up to n, ack what was taken
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.floats(0, 100)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("take"), st.integers(1, 5)),
        st.tuples(st.just("ack"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=25, deadline=None)
@given(operations=OPERATIONS, started=st.floats(1e9, 2e9), duration=st.floats(0, 600))
async def test_the_outbox_age_is_never_younger_than_the_oldest_waiting_record(
    tmp_path_factory: pytest.TempPathFactory,
    operations: list[tuple[str, float]],
    started: float,
    duration: float,
) -> None:
    """Whatever the order of appends, flushes, takes and acks: 0 when nothing waits, never
    less than the oldest waiting record's wait, and exact once the writer has taken it.
    A record waits from when it is appended: its request's start plus its duration."""
    outbox = make_outbox(tmp_path_factory.mktemp("age"), fsync_window=30.0)
    await outbox.start()
    try:
        waiting: dict[str, float] = {}  # request id -> appended at
        taken: list[int] = []
        taken_ids: list[str] = []
        appended = started + duration
        now = appended + 10_000
        for i, (operation, argument) in enumerate(operations):
            if operation == "append":
                appended += argument  # requests end (and are appended) in this order
                made = record(i, created_at=appended - duration, duration_ms=duration * 1000)
                outbox.append(made)
                waiting[made.request_id] = appended
            elif operation == "flush":
                await outbox.flush()
            elif operation == "take":
                rows = await outbox.take(int(argument))
                taken, taken_ids = [r[0] for r in rows], [r[1].request_id for r in rows]
            else:
                await outbox.ack(taken)
                for request_id in taken_ids:
                    waiting.pop(request_id)
                taken, taken_ids = [], []
            age = outbox.oldest_age(now)
            if not waiting:
                assert age == 0
                continue
            truth = now - min(waiting.values())
            assert age >= truth - 1e-6
            if operation == "take" and taken:
                assert age == pytest.approx(truth, abs=1e-6)
    finally:
        await outbox.aclose()


@given(lost=st.integers(min_value=0, max_value=4))
def test_a_spool_deleted_by_another_scan_before_it_is_locked_is_made_again(
    tmp_path_factory: pytest.TempPathFactory, lost: int
) -> None:
    """Between creating its file and locking it, a process can lose the file to another
    process's orphan scan (it looks abandoned: unlocked, half-created). The name is given
    up and a new one made, instead of failing the worker's start (FileNotFoundError)."""
    directory = tmp_path_factory.mktemp("spool")
    real_flock = fcntl.flock
    raced = 0

    def scan_first(fd: int, operation: int) -> None:
        nonlocal raced
        if raced < lost and operation & fcntl.LOCK_EX:  # the other process's scan wins
            raced += 1
            _spool_files(directory)
        real_flock(fd, operation)

    with mock.patch("relaygate.usage.outbox.fcntl.flock", scan_first):
        spool = _Spool.create(directory)
    try:
        assert raced == lost and spool.path.exists()
        assert not list(directory.glob(".*.new"))  # no half-made file left behind
        assert _spool_files(directory) == [spool.path]
    finally:
        spool.close()


@settings(max_examples=60, deadline=None)
@given(
    blobs=st.lists(st.binary(max_size=300), max_size=300),
    gone=st.sets(st.integers(0, 299)),
    contended=st.booleans(),
    limit=st.integers(1, 400),
)
def test_the_spool_gives_back_every_blob_as_it_was(
    tmp_path_factory: pytest.TempPathFactory,
    blobs: list[bytes],
    gone: set[int],
    contended: bool,
    limit: int,
) -> None:
    """Blobs travel a part at a time, concatenated and cut by SQLite, and come back in
    hex (outbox.py): any bytes (NUL, empty, not UTF-8) come back the same, in order,
    whether the parts are sliced or, the GIL in demand, the rest goes in one (slices.py)."""
    directory = tmp_path_factory.mktemp("spool")
    spool = _Spool.create(directory)
    slow = contextlib.ExitStack()
    slow.enter_context(mock.patch("relaygate.slices._yield", lambda: time.sleep(0.002)))
    slow.enter_context(mock.patch("relaygate.slices.contended_s", lambda: 0.001))
    try:
        with slow if contended else contextlib.nullcontext():
            spool.append(blobs)
            taken, buried = spool.take(limit, lambda data: data)  # type: ignore[arg-type,return-value]
            assert buried == 0
            assert [blob for _, blob in taken] == blobs[:limit]
            ids = [row_id for row_id, _ in taken]
            assert ids == sorted(ids)
            dropped = [row_id for i, (row_id, _) in enumerate(taken) if i in gone]
            assert spool.delete(dropped) == len(dropped)
            left, _ = spool.take(10**6, lambda data: data)  # type: ignore[arg-type,return-value]
        kept = [blob for i, blob in enumerate(blobs) if i >= limit or i not in gone]
        assert [blob for _, blob in left] == kept
        assert spool.count == len(kept)
    finally:
        spool.close()
