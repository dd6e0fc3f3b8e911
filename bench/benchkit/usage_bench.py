"""Usage accounting figures: recording cost, writer rate into PostgreSQL and SQLite, kill -9
loss.

Run alone: ``.venv/bin/python -m bench.benchkit.usage_bench`` (prints Markdown);
``run.py --only usage`` runs it as section 8.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from relaygate.settings import UsageConfig
from relaygate.store.engine import create_engine
from relaygate.store.migrate import upgrade
from relaygate.usage.accounting import Recorder, Served
from relaygate.usage.outbox import Outbox
from relaygate.usage.record import UsageRecord
from relaygate.usage.tokens import LazyTokenizer
from relaygate.usage.writer import UsageWriter

PG = "postgresql://postgres@127.0.0.1:5432"
LOG = logging.getLogger("bench")
CHILD = """
import asyncio, logging, sys, time
from relaygate.usage.outbox import Outbox
from relaygate.usage.record import UsageRecord
async def main():
    box = Outbox(sys.argv[1], fsync_window=float(sys.argv[2]), max_bytes=10**10,
                 log=logging.getLogger("child"))
    await box.start()
    i = 0
    while True:
        box.append(UsageRecord(request_id=f"r{i:08d}", created_at=time.time(), key_id="k",
                   tenant_id="t", api="openai", endpoint="/v1/chat/completions", model="m"))
        print(i, flush=True)
        i += 1
        await asyncio.sleep(0.001)
asyncio.run(main())
"""


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        request_id=uuid.uuid4().hex[:24], created_at=time.time(), key_id="key_1",
        tenant_id="ten_1", api="openai", endpoint="/v1/chat/completions", model="m",
        provider="mock", deployment="m", prompt_tokens=9, completion_tokens=i % 50,
    )  # fmt: skip


async def recording_cost(directory: Path, n: int = 20_000) -> float:
    """Microseconds the request path spends recording: build the record, append it."""
    box = Outbox(directory, fsync_window=0.2, max_bytes=10**10, log=LOG)
    await box.start()
    recorder = Recorder(UsageConfig(), box.append, LazyTokenizer(directory / "tk", LOG))
    usage = {"prompt_tokens": 9, "completion_tokens": 12}
    rounds = []
    for _ in range(5):
        served = [Served(uuid.uuid4().hex[:24], "openai", "/v1/chat/completions") for _ in range(n)]
        for s in served:
            s.model, s.provider, s.usage, s.http_status = "m", "mock", usage, 200
        started = time.perf_counter()
        for s in served:
            recorder.record(s)
        rounds.append((time.perf_counter() - started) / n * 1e6)
        await box.flush()
    await box.aclose()
    return statistics.median(rounds)


async def writer_rate(directory: Path, batch: int, n: int = 20_000) -> float:
    """Rows per second the writer inserts into a fresh PostgreSQL database."""
    name = f"rg_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        return await _drain(url, directory / f"w{batch}", batch, n)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def sqlite_writer_rate(directory: Path, batch: int, n: int = 20_000) -> float:
    """Rows per second the writer inserts into a fresh SQLite file (its own thread and
    connection, store/sqlite_bulk.py), nothing else running."""
    url = f"sqlite+aiosqlite:///{directory / f's{batch}.db'}"
    return await _drain(url, directory / f"s{batch}", batch, n)


async def _drain(url: str, spool: Path, batch: int, n: int) -> float:
    """Rows per second a writer drains ``n`` spooled records into the database at ``url``."""
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    box = Outbox(spool, fsync_window=0.2, max_bytes=10**10, log=LOG)
    await box.start()
    for i in range(n):
        box.append(_record(i))
    await box.flush()
    writer = UsageWriter(box, engine, batch_size=batch, interval=0.05, log=LOG)
    started = time.perf_counter()
    await writer.start()
    while box.backlog:  # noqa: ASYNC110 - polling the writer's progress is the measurement
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await writer.aclose()
    await box.aclose()
    await engine.dispose()
    return n / elapsed


async def kill9_loss(directory: Path, window: float, kill_after: int = 1500) -> tuple[int, int]:
    """Append every ~1 ms in a child, SIGKILL it; (records it appended, records lost)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(directory), str(window),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    appended = 0
    while await child.stdout.readline():
        appended += 1
        if appended >= kill_after:
            child.send_signal(signal.SIGKILL)
            break
    await child.wait()
    fresh = Outbox(directory, fsync_window=window, max_bytes=10**10, log=LOG)
    await fresh.start()
    survived = 0
    for orphan in await fresh.adopt_orphans():
        survived += len(await orphan.take(10**7))
        await orphan.aclose()
    await fresh.aclose()
    return appended, appended - survived


@dataclass
class UsageFigures:
    recording_us: float
    rates: dict[int, float]  # batch size -> rows/s into PostgreSQL
    sqlite_rates: dict[int, float]  # the same into SQLite
    losses: list[tuple[int, int]]  # (appended, lost) per kill -9
    window: float = 0.2


async def measure() -> UsageFigures:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cost = await recording_cost(base / "rec")
        rates = {b: await writer_rate(base, b) for b in (100, 2000)}
        sqlite_rates = {b: await sqlite_writer_rate(base, b) for b in (100, 2000)}
        losses = [await kill9_loss(base / f"k{i}", 0.2) for i in range(3)]
    return UsageFigures(cost, rates, sqlite_rates, losses)


def table(figures: UsageFigures) -> list[str]:
    lines = [
        "| Figure | Measured |",
        "|---|---|",
        f"| Recording per request on the hot path (build the record, append) | "
        f"{figures.recording_us:.2f} µs |",
    ]
    lines += [
        f"| Writer into PostgreSQL, {b}-row batches | {rate:,.0f} rows/s |"
        for b, rate in figures.rates.items()
    ]
    lines += [
        f"| Writer into SQLite, {b}-row batches | {rate:,.0f} rows/s |"
        for b, rate in figures.sqlite_rates.items()
    ]
    lines += [
        f"| kill -9 after {appended} appends (~1 per ms), fsync window {figures.window} s | "
        f"{lost} lost |"
        for appended, lost in figures.losses
    ]
    return lines


if __name__ == "__main__":
    print("\n".join(table(asyncio.run(measure()))))
