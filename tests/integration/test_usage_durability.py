"""Usage records survive a database outage, a shutdown during one, and kill -9.

PostgreSQL is reached through a TCP proxy the test cuts and restores; the
crash is a real child process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.observability.metrics import Metrics
from relaygate.store.engine import create_engine
from relaygate.usage.outbox import Outbox
from relaygate.usage.record import UsageRecord
from relaygate.usage.writer import UsageWriter
from tests.fakes.tcp_proxy import TcpProxy
from tests.unit.usage.test_outbox import run_child

LOG = logging.getLogger("relaygate.tests.durability")
PG_HOST, PG_PORT = "127.0.0.1", 5432


def make_records(n: int, prefix: str) -> list[UsageRecord]:
    now = time.time()
    common = {"key_id": "key_a", "tenant_id": "ten_a", "api": "openai", "model": "mock"}
    return [
        UsageRecord(
            request_id=f"{prefix}_{i:06d}",
            created_at=now + i * 1e-4,
            endpoint="/v1/chat/completions",
            prompt_tokens=3,
            completion_tokens=5,
            **common,  # type: ignore[arg-type]
        )
        for i in range(n)
    ]


def pg_url(database: str, port: int = PG_PORT) -> str:
    return f"postgresql+asyncpg://postgres@{PG_HOST}:{port}/{database}"


def spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("outbox-*.db"))


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text("SELECT count(*) FROM usage_records")) or 0)


async def rows_reach(engine: AsyncEngine, n: int, seconds: float) -> None:
    """Wait until usage_records holds ``n`` rows; fails (no progress) after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if await count_rows(engine) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{await count_rows(engine)} of {n} rows after {seconds} s")


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(PG_HOST, PG_PORT)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def direct(postgres_database: str) -> AsyncIterator[AsyncEngine]:
    """The test's own view of the database, bypassing the proxy."""
    engine = create_engine(pg_url(postgres_database))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def proxied(postgres_database: str, proxy: TcpProxy) -> AsyncIterator[AsyncEngine]:
    """The gateway's engine, through the proxy."""
    engine = create_engine(pg_url(postgres_database, proxy.port))
    try:
        yield engine
    finally:
        await engine.dispose()


def pipeline(directory: Path, engine: AsyncEngine, metrics: Metrics) -> tuple[Outbox, UsageWriter]:
    outbox = Outbox(directory, fsync_window=0.05, max_bytes=1 << 30, log=LOG, metrics=metrics)
    writer = UsageWriter(outbox, engine, batch_size=500, interval=0.05, log=LOG, metrics=metrics)
    return outbox, writer


async def test_database_outage_spools_then_replays_everything(
    tmp_path: Path, proxy: TcpProxy, proxied: AsyncEngine, direct: AsyncEngine
) -> None:
    metrics = Metrics()
    outbox, writer = pipeline(tmp_path, proxied, metrics)
    await outbox.start()
    await writer.start()
    try:
        outbox.append(make_records(1, "warm")[0])
        await rows_reach(direct, 1, seconds=30)

        await proxy.cut()
        records = make_records(1000, "outage")
        for r in records:
            outbox.append(r)
        await outbox.flush()
        for _ in range(1000):  # let the writer fail against the cut database at least once
            if metrics.registry.get_sample_value("relaygate_usage_write_errors_total"):
                break
            await asyncio.sleep(0.02)
        assert metrics.registry.get_sample_value("relaygate_usage_write_errors_total")
        assert (outbox.backlog, outbox.durable) == (1000, 1000)  # all on disk, none lost
        assert metrics.registry.get_sample_value("relaygate_usage_outbox_backlog") == 1000
        assert await count_rows(direct) == 1

        await proxy.restore()
        await rows_reach(direct, 1001, seconds=30)
        assert await count_rows(direct) == 1001
        assert metrics.registry.get_sample_value("relaygate_usage_records_written_total") == 1001
    finally:
        await writer.aclose(drain_timeout=2)
        await outbox.aclose()
    assert spool_files(tmp_path) == []


async def test_shutdown_during_outage_keeps_records_for_the_next_start(
    tmp_path: Path, proxy: TcpProxy, proxied: AsyncEngine, direct: AsyncEngine
) -> None:
    outbox, writer = pipeline(tmp_path, proxied, Metrics())
    await outbox.start()
    await writer.start()
    await proxy.cut()
    for r in make_records(300, "late"):
        outbox.append(r)
    await writer.aclose(drain_timeout=0.5)  # SIGTERM while the database is away
    await outbox.aclose()
    assert len(spool_files(tmp_path)) == 1  # durable, waiting for the next process

    await proxy.restore()
    outbox, writer = pipeline(tmp_path, proxied, Metrics())
    await outbox.start()
    await writer.start()  # adopts the previous process's file
    try:
        await rows_reach(direct, 300, seconds=30)
    finally:
        await writer.aclose()
        await outbox.aclose()
    assert await count_rows(direct) == 300
    assert spool_files(tmp_path) == []


async def test_kill_9_loses_at_most_the_fsync_window(tmp_path: Path, direct: AsyncEngine) -> None:
    """A worker appending every millisecond is SIGKILLed; the next process adopts its
    spool file and writes it to PostgreSQL. Lost: what the last fsync window held."""
    window = 0.2
    appended, times = await run_child(tmp_path, "kill", window, kill_after=1500)
    (orphan,) = spool_files(tmp_path)
    outbox, writer = pipeline(tmp_path, direct, Metrics())
    await outbox.start()
    await writer.start()  # adopts the dead child's file
    try:
        for _ in range(200):
            if writer.backlog == 0:
                break
            await asyncio.sleep(0.05)
        assert writer.backlog == 0
    finally:
        await writer.aclose()
        await outbox.aclose()
    async with direct.connect() as conn:
        ids = list(await conn.scalars(sa.text("SELECT request_id FROM usage_records ORDER BY 1")))
    written = len(ids)
    assert ids == [f"r{i:08d}" for i in range(written)]  # every record up to the last window
    lost, span = appended - written, times[appended - 1] - times[written - 1]
    print(
        f"\nkill -9: appended {appended}, in PostgreSQL {written}, lost {lost} "
        f"({span * 1000:.0f} ms of appends; fsync_window {window * 1000:.0f} ms)"
    )
    assert 0 < written <= appended
    assert span <= 2 * window + 0.1  # the window being filled + the one being committed
    assert orphan not in spool_files(tmp_path)  # drained and deleted
