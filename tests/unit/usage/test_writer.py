"""The usage writer and partitions against real SQLite and PostgreSQL databases.

Exactly once: N records give N rows and rollups that sum them; replaying the same
records (a crash between commit and ack) changes neither.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.observability.metrics import Metrics
from relaygate.store import sqlite_bulk
from relaygate.store.engine import create_engine
from relaygate.store.tables import usage_daily, usage_records
from relaygate.usage.outbox import Outbox
from relaygate.usage.partitions import (
    apply_retention,
    ensure_partitions,
    month_start,
    partition_name,
)
from relaygate.usage.record import UsageRecord
from relaygate.usage.writer import UsageWriter, record_row

LOG = logging.getLogger("relaygate.tests.writer")
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
STATUSES = ("ok", "ok", "ok", "timeout", "client_aborted", "upstream_error", "rejected")


def make_records(
    n: int, start: float | None = None, prefix: str = "req", *, two_days: bool = True
) -> list[UsageRecord]:
    """Records spread over tenants (and none), keys (and none), models, endpoints and (unless
    ``two_days`` is false) the day of ``start`` and the day before."""
    start = time.time() - 3600 if start is None else start
    return [
        UsageRecord(
            request_id=f"{prefix}_{i:06d}",
            created_at=start - (86_400 if two_days and i % 5 == 0 else 0) + i * 0.001,
            key_id=None if i % 11 == 0 else f"key_{i % 4}",
            tenant_id=None if i % 7 == 0 else f"ten_{i % 3}",
            api="openai",
            endpoint="/v1/embeddings" if i % 6 == 0 else "/v1/chat/completions",
            model=("gpt-4o-mini", "llama3.2:1b", "mock")[i % 3],
            prompt_tokens=10 + i,
            completion_tokens=i % 17,
            cached=i % 9 == 0,
            status=STATUSES[i % len(STATUSES)],  # type: ignore[arg-type]
            http_status=200,
            duration_ms=1.5 * (i % 13),
            cost=0.0001 * (i % 5),
        )
        for i in range(n)
    ]


def expected_daily(records: list[UsageRecord]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for r in records:
        day = datetime.fromtimestamp(r.created_at, UTC).date()
        key = (day, r.tenant_id or "", r.key_id or "", r.endpoint, r.model)
        acc = sums.setdefault(key, [0, 0, 0, 0.0, 0, 0, 0.0])
        acc[0] += 1
        acc[1] += r.prompt_tokens
        acc[2] += r.completion_tokens
        acc[3] += r.duration_ms
        acc[4] += int(r.cached)
        acc[5] += int(r.status != "ok")
        acc[6] += r.cost
    return {k: tuple(v) for k, v in sums.items()}


async def daily_rows(engine: AsyncEngine) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(usage_daily))).all()
    return {tuple(r[:5]): tuple(r[5:]) for r in rows}  # the key columns, then the sums


def assert_daily(got: dict[tuple[Any, ...], tuple[Any, ...]], want: dict[Any, Any]) -> None:
    assert got.keys() == want.keys()
    for key, values in want.items():
        assert got[key][:3] == values[:3], key
        assert got[key][4:6] == values[4:6], key
        assert math.isclose(got[key][3], values[3], abs_tol=1e-6), key
        assert math.isclose(got[key][6], values[6], abs_tol=1e-9), key


async def count_rows(engine: AsyncEngine, table: str = "usage_records") -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


async def wait_drained(writer: UsageWriter, seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if writer.backlog == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{writer.backlog} records still waiting after {seconds} s")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "outbox"  # apart from the SQLite database, which is in tmp_path


def spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("outbox-*.db"))


def leftovers(directory: Path) -> list[str]:
    """Every file left in the outbox directory (spool files, WAL files, anything)."""
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


class Pipeline:
    """An outbox and a writer on one directory and database, as the gateway wires them."""

    def __init__(self, directory: Path, engine: AsyncEngine, **options: Any) -> None:
        self.metrics = Metrics()
        self.outbox = Outbox(
            directory, fsync_window=0.02, max_bytes=1 << 30, log=LOG, metrics=self.metrics
        )
        settings: dict[str, Any] = {"batch_size": 64, "interval": 0.02} | options
        self.writer = UsageWriter(self.outbox, engine, log=LOG, metrics=self.metrics, **settings)

    async def __aenter__(self) -> Pipeline:
        await self.outbox.start()
        await self.writer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.writer.aclose()
        await self.outbox.aclose()

    def append(self, records: list[UsageRecord]) -> None:
        for r in records:
            self.outbox.append(r)

    def written(self) -> float | None:
        return self.metrics.registry.get_sample_value("relaygate_usage_records_written_total")


async def test_n_records_give_n_rows_and_exact_rollups(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    records = make_records(500)
    async with Pipeline(spool_dir, engine) as pipeline:  # batches of 64: several per group
        pipeline.append(records)
        await wait_drained(pipeline.writer)
        assert await count_rows(engine) == 500
        assert pipeline.written() == 500
    want = expected_daily(records)
    assert len({k[1] for k in want}) == 4 and len({k[2] for k in want}) == 5  # "" included
    assert_daily(await daily_rows(engine), want)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(usage_records).where(usage_records.c.request_id == "req_000007")
            )
        ).one()
    assert row.tenant_id is None and row.key_id == "key_3" and row.status == "ok"
    assert row.created_at.replace(tzinfo=UTC) == datetime.fromtimestamp(records[7].created_at, UTC)


async def test_replayed_records_count_once(engine: AsyncEngine, spool_dir: Path) -> None:
    records = make_records(300)
    async with Pipeline(spool_dir, engine, batch_size=2000) as pipeline:
        pipeline.append(records)
        await wait_drained(pipeline.writer)
        before = await daily_rows(engine)
        # The outbox re-fed twice: once as a whole, once twice over inside one batch.
        pipeline.append(records)
        await wait_drained(pipeline.writer)
        pipeline.append(records + records[::-1])
        await wait_drained(pipeline.writer)
        assert pipeline.written() == 300
    assert await count_rows(engine) == 300
    assert await daily_rows(engine) == before
    assert_daily(before, expected_daily(records))


async def test_new_records_twice_in_their_first_batch_count_once(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    """On SQLite the new keys come from a query of those already there, not RETURNING
    (usage/sqlite_bulk.py): a key twice among new records is still one row, added once."""
    records = make_records(200)
    async with Pipeline(spool_dir, engine, batch_size=2000) as pipeline:
        pipeline.append(records[:120] + records[60:] + records[::7])
        await wait_drained(pipeline.writer)
        assert pipeline.written() == 200
    assert await count_rows(engine) == 200
    assert_daily(await daily_rows(engine), expected_daily(records))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_through_sqlalchemys_connection_too_each_record_counts_once(
    database_url: str, spool_dir: Path
) -> None:
    """A SQLite database named by a URI (``file:...``) is written through SQLAlchemy's
    connection, with ``RETURNING``, not a thread of the writer's own: the same rows and
    rollups, replays and duplicates in a batch counted once."""
    engine = create_engine(database_url.replace(":///", ":///file:") + "?uri=true")
    assert sqlite_bulk.Writer.for_engine(engine) is None
    records = make_records(200)
    try:
        async with Pipeline(spool_dir, engine, batch_size=2000) as pipeline:
            pipeline.append(records[:120] + records[60:] + records[::7])
            await wait_drained(pipeline.writer)
            pipeline.append(records)
            await wait_drained(pipeline.writer)
            assert pipeline.written() == 200
        assert await count_rows(engine) == 200
        assert_daily(await daily_rows(engine), expected_daily(records))
    finally:
        await engine.dispose()


async def test_an_orphan_spool_is_written_once_and_deleted(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    records = make_records(120)
    crashed = Outbox(spool_dir, fsync_window=30.0, max_bytes=1 << 30, log=LOG)
    await crashed.start()
    for r in records:
        crashed.append(r)
    await crashed.aclose()  # leaves its file behind, unlocked, as a dead process would
    async with Pipeline(spool_dir, engine) as pipeline:
        pipeline.append(records[:60])  # some also arrive again through the live outbox
        await wait_drained(pipeline.writer)
        for _ in range(100):  # the drained orphan's file goes while the writer runs
            if len(spool_files(spool_dir)) == 1:
                break
            await asyncio.sleep(0.02)
        assert spool_files(spool_dir) == [pipeline.outbox.path.name]  # type: ignore[union-attr]
    assert await count_rows(engine) == 120
    assert_daily(await daily_rows(engine), expected_daily(records))
    assert leftovers(spool_dir) == []


async def test_a_nul_in_a_model_name_is_replaced_not_a_blocked_batch(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    """PostgreSQL's text holds no NUL (its insert fails, and the batch would wait in the
    outbox forever): a NUL in a record's text is written as U+FFFD, on both databases,
    and the record counted once."""
    records = make_records(40, two_days=False)
    for record in records[::3]:
        record.model = "odd\x00model"
    async with Pipeline(spool_dir, engine) as pipeline:
        pipeline.append(records)
        await wait_drained(pipeline.writer)
        pipeline.append(records)  # replayed: still once
        await wait_drained(pipeline.writer)
        assert pipeline.written() == 40
    assert await count_rows(engine) == 40
    for record in records[::3]:
        record.model = "odd\ufffdmodel"
    assert_daily(await daily_rows(engine), expected_daily(records))
    async with engine.connect() as conn:
        models = set((await conn.execute(sa.select(usage_records.c.model))).scalars())
    assert "odd\ufffdmodel" in models


async def test_aclose_drains_before_exit(engine: AsyncEngine, spool_dir: Path) -> None:
    async with Pipeline(spool_dir, engine, interval=60.0, batch_size=50) as pipeline:
        await asyncio.sleep(0.1)  # the loop has run its first pass and sleeps for a minute
        pipeline.append(make_records(400))
    assert await count_rows(engine) == 400
    assert leftovers(spool_dir) == []


async def test_values_the_schema_cannot_hold_do_not_block_the_batch(
    engine: AsyncEngine, spool_dir: Path
) -> None:
    odd = make_records(4)
    odd[3].request_id = "x" * 41  # never cut: a key must not change
    odd[0].model = "m" * 300
    odd[0].endpoint = "/v1/" + "x" * 200
    odd[1].cost = math.nan
    odd[1].ttft_ms = math.inf
    odd[2].prompt_tokens = 10**12
    async with Pipeline(spool_dir, engine) as pipeline:
        pipeline.append(odd)
        await wait_drained(pipeline.writer)
    async with engine.connect() as conn:
        rows = {r.request_id: r for r in await conn.execute(sa.select(usage_records))}
    assert sorted(rows) == ["req_000000", "req_000001", "req_000002"]
    assert any(name.endswith(".dead") for name in leftovers(spool_dir))  # kept, set aside
    assert rows["req_000000"].model == "m" * 256
    assert (rows["req_000001"].cost, rows["req_000001"].ttft_ms) == (0.0, None)
    assert rows["req_000002"].prompt_tokens == 2**31 - 1


any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
any_number = st.floats() | st.integers(-(2**62), 2**62)  # what a record can hold (accounting)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.tuples(any_text, any_text, st.none() | any_text), min_size=1, max_size=8),
    numbers=st.lists(st.tuples(any_number, any_number), min_size=8, max_size=8),
)
async def test_any_text_or_number_a_client_sends_is_written(
    engine: AsyncEngine,
    spool_dir: Path,
    texts: list[tuple[str, str, str | None]],
    numbers: list[tuple[float, float]],
) -> None:
    """Whatever text (NUL, any script, too long) and numbers (NaN, infinite, huge) a
    record holds, both databases take it: nothing waits in the outbox, nothing is lost."""
    records = make_records(len(texts), prefix=f"p{time.monotonic_ns()}", two_days=False)
    for record, (model, endpoint, ip), (cost, duration) in zip(
        records, texts, numbers, strict=False
    ):
        record.model, record.endpoint, record.client_ip = model, endpoint, ip
        record.cost, record.duration_ms = float(cost), float(duration)
        record.prompt_tokens = int(duration) if abs(duration) < 2**62 else 0
        record.completion_tokens = int(cost) if abs(cost) < 2**62 else 0
    async with Pipeline(spool_dir, engine) as pipeline:
        pipeline.append(records)
        await wait_drained(pipeline.writer)
    async with engine.connect() as conn:
        ids = set(
            (
                await conn.execute(
                    sa.select(usage_records.c.request_id).where(
                        usage_records.c.request_id.in_([r.request_id for r in records])
                    )
                )
            ).scalars()
        )
    assert ids == {r.request_id for r in records}


@given(
    texts=st.tuples(any_text, any_text, st.none() | any_text, st.none() | any_text),
    numbers=st.tuples(any_number, any_number, st.none() | st.floats()),
    counts=st.tuples(*(st.integers(-(2**62), 2**62) for _ in range(3))),
)
def test_a_row_holds_what_its_columns_take_and_fine_values_unchanged(
    texts: tuple[str, str, str | None, str | None],
    numbers: tuple[float, float, float | None],
    counts: tuple[int, int, int],
) -> None:
    """record_row's bounds, for any values: no NUL and no text beyond its column; whole
    numbers within 32 bits; durations and costs finite within ±1e12 (not a number: 0), a
    time to first token finite or unknown; and every value that was fine already, as it was."""
    (record,) = make_records(1, two_days=False)
    record.model, record.endpoint, record.client_ip, record.key_id = texts
    record.cost, record.duration_ms, record.ttft_ms = (
        float(numbers[0]), float(numbers[1]), numbers[2],
    )  # fmt: skip
    record.prompt_tokens, record.completion_tokens, record.http_status = counts
    row = record_row(record)
    for name in ("model", "endpoint", "client_ip", "key_id"):
        given_text, kept = getattr(record, name), row[name]
        if given_text is None:
            assert kept is None
            continue
        width = usage_records.c[name].type.length
        assert "\x00" not in kept and len(kept) <= width
        if "\x00" not in given_text and len(given_text) <= width:
            assert kept == given_text
    for name in ("prompt_tokens", "completion_tokens", "http_status"):
        value = getattr(record, name)
        assert -(2**31) <= row[name] <= 2**31 - 1
        assert row[name] == min(max(value, -(2**31)), 2**31 - 1)
    for name in ("cost", "duration_ms"):
        value = getattr(record, name)
        assert math.isfinite(row[name]) and abs(row[name]) <= 1e12
        assert row[name] == (min(max(value, -1e12), 1e12) if math.isfinite(value) else 0.0)
    ttft = record.ttft_ms
    if ttft is None or not math.isfinite(ttft):
        assert row["ttft_ms"] is None
    else:
        assert row["ttft_ms"] == min(max(ttft, -1e12), 1e12)


def test_record_row_converts_time_to_utc() -> None:
    moment = datetime(2026, 9, 20, 23, 59, 59, 250000, tzinfo=UTC)
    (r,) = make_records(1, start=moment.timestamp(), two_days=False)
    row = record_row(r)
    assert row["created_at"] == moment and row["created_at"].utcoffset() == timedelta(0)
    with pytest.raises((ValueError, OverflowError, OSError)):
        record_row(make_records(1, start=1e20)[0])
    assert usage_records.c.request_id.type.length == 40  # the writer's _ID_WIDTH


# Partitions (PostgreSQL) and retention.


@pytest.fixture
async def pg_engine(postgres_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"{PG_SERVER}/{postgres_database}")
    try:
        yield engine
    finally:
        await engine.dispose()


async def partitions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'usage_records'::regclass ORDER BY 1"
            )
        )
        return [name for (name,) in rows]


def months_from(moment: datetime, count: int) -> list[str]:
    start, names = month_start(moment), []
    for _ in range(count):
        names.append(partition_name(start))
        start = month_start(start + timedelta(days=32))
    return names


async def test_writer_creates_partitions_and_rows_land_in_them(
    pg_engine: AsyncEngine, spool_dir: Path
) -> None:
    now = datetime.now(UTC)
    records = make_records(50, start=month_start(now).timestamp() + 3600)
    async with Pipeline(spool_dir, pg_engine) as pipeline:
        pipeline.append(records)
        await wait_drained(pipeline.writer)
    assert await partitions(pg_engine) == sorted([*months_from(now, 3), "usage_records_default"])
    this_month = partition_name(month_start(now))
    in_month = sum(1 for r in records if r.created_at >= month_start(now).timestamp())
    assert await count_rows(pg_engine, this_month) == in_month
    assert await count_rows(pg_engine, "usage_records_default") == 50 - in_month  # last month
    assert await ensure_partitions(pg_engine, now) == []  # idempotent


async def test_a_new_partition_takes_its_rows_from_the_default(pg_engine: AsyncEngine) -> None:
    later = month_start(datetime.now(UTC) + timedelta(days=6 * 31))
    rows = [record_row(r) for r in make_records(30, start=later.timestamp() + 60, two_days=False)]
    async with pg_engine.begin() as conn:
        await conn.execute(sa.insert(usage_records), rows)
    assert await count_rows(pg_engine, "usage_records_default") == 30

    created = await ensure_partitions(pg_engine, later)
    assert created == months_from(later, 3)
    assert await count_rows(pg_engine, "usage_records_default") == 0
    assert await count_rows(pg_engine, partition_name(later)) == 30
    assert await count_rows(pg_engine) == 30
    async with pg_engine.connect() as conn:
        indexes = await conn.scalar(
            sa.text("SELECT count(*) FROM pg_indexes WHERE tablename = :t"),
            {"t": partition_name(later)},
        )
    assert indexes == 3  # the key and both lookups, as on every partition
    # The key still refuses a duplicate in the moved partition.
    async with pg_engine.begin() as conn:
        with pytest.raises(sa.exc.IntegrityError):
            await conn.execute(sa.insert(usage_records), rows[:1])


async def test_retention_drops_old_months_and_old_rows(pg_engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    old = month_start(now - timedelta(days=400))
    await ensure_partitions(pg_engine, old)
    await ensure_partitions(pg_engine, now)
    old_rows = [
        record_row(r)
        for r in make_records(20, start=old.timestamp() + 60, prefix="old", two_days=False)
    ]
    stray = [
        record_row(r) for r in make_records(5, start=old.timestamp() - 86_400 * 40, prefix="stray")
    ]
    new_rows = [record_row(r) for r in make_records(10, start=now.timestamp() - 60, prefix="new")]
    async with pg_engine.begin() as conn:
        await conn.execute(sa.insert(usage_records), old_rows + stray + new_rows)

    removed = await apply_retention(pg_engine, days=90, now=now)
    assert removed.dropped == months_from(old, 3)
    assert removed.deleted_rows == 5  # the strays, from the default partition
    assert not set(months_from(old, 3)) & set(await partitions(pg_engine))
    assert await count_rows(pg_engine) == 10


async def test_retention_on_sqlite_deletes_old_rows(tmp_path: Path, sqlite_template: Path) -> None:
    database = tmp_path / "relaygate.db"
    shutil.copyfile(sqlite_template, database)
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        now = datetime.now(UTC)
        rows = [
            *(
                record_row(r)
                for r in make_records(7, start=(now - timedelta(days=40)).timestamp(), prefix="old")
            ),
            *(
                record_row(r)
                for r in make_records(4, start=(now - timedelta(days=1)).timestamp(), prefix="new")
            ),
        ]
        async with engine.begin() as conn:
            await conn.execute(sa.insert(usage_records), rows)
        removed = await apply_retention(engine, days=30, now=now)
        assert removed.dropped == [] and removed.deleted_rows == 7
        assert await count_rows(engine) == 4
        assert await ensure_partitions(engine, now) == []  # PostgreSQL only
    finally:
        await engine.dispose()
