"""The usage writer: moves records from the outbox into the database, each exactly once.

A background loop takes a batch from the outbox (and from any adopted orphan
spool files), inserts it into ``usage_records`` with ``ON CONFLICT DO NOTHING
RETURNING``, adds only the rows actually inserted to the ``usage_daily`` rollups
in the same transaction, commits, and only then acknowledges the batch in the
outbox. A replayed record (a crash between commit and ack, an orphan adopted
twice) therefore never counts twice. If the database fails, the batch stays in
the outbox and the loop backs off (0.5 s doubling to 30 s); nothing is dropped.

With a ``WriterLock`` (``usage.elect_writer``, by default with SQLite), only the process that holds
it writes: the others hand their spool files over every ``HAND_OFF_EVERY`` seconds, and
the writer adopts them every ``_SHARED_SCAN_EVERY`` (see ``election.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaygate.errors import ConfigError
from relaygate.observability.metrics import Metrics
from relaygate.store import sqlite_bulk
from relaygate.store.tables import usage_daily, usage_records
from relaygate.usage.election import WriterLock
from relaygate.usage.outbox import Outbox
from relaygate.usage.partitions import apply_retention, ensure_partitions
from relaygate.usage.pg_bulk import BulkStatements
from relaygate.usage.record import UsageRecord
from relaygate.usage.sqlite_bulk import SqliteStatements

__all__ = ["UsageWriter", "daily_rollups", "record_row"]

_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0
_LOG_EVERY = 60.0  # seconds between repeated "still failing" warnings
_MAINTAIN_EVERY, _MAINTAIN_RETRY = 86_400.0, 60.0
_ORPHAN_SCAN_EVERY = 60.0
_SHARED_SCAN_EVERY = 0.5  # the elected writer looks for handed-over files this often
HAND_OFF_EVERY = 1.0  # a process that is not the writer hands its file over this often
_CATCH_UP = 50  # the largest turn, in batch_size units, when the writer is far behind
_MAX_TURN = 100_000  # ...and in records, whatever batch_size: a turn's memory is bounded
_AGE_EVERY = 1.0  # seconds between outbox age updates while the writer waits
# Records made into rows between two turns of the event loop: ~0.2 ms of it (slices.py)
_LOOP_SLICE = 32
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_INTS = ("prompt_tokens", "completion_tokens", "http_status")
_FLOATS = ("duration_ms", "cost")
# The largest duration (ms) or cost (USD) a row holds: far beyond any real one, and small
# enough that the daily sums of billions of rows stay finite (PostgreSQL refuses a sum
# that overflows, and the batch would wait in the outbox for ever).
_FLOAT_MAX = 1e12
# Column widths: PostgreSQL would refuse the whole batch over one long model name. The key
# is never cut (two ids could become one): a record whose id does not fit is set aside.
_WIDTHS = {
    c.name: c.type.length
    for c in usage_records.columns
    if isinstance(c.type, sa.String) and c.type.length and c.name != "request_id"
}
_WIDTH_ITEMS = tuple(_WIDTHS.items())
_ID_WIDTH = 40  # usage_records.request_id is VARCHAR(40)
_SUMS = (
    "request_count", "prompt_tokens", "completion_tokens", "duration_ms_sum",
    "cached_requests", "error_requests", "cost",
)  # fmt: skip
_DAILY_KEY = ("day", "tenant_id", "key_id", "endpoint", "model")

DailyKey = tuple[date, str, str, str, str]


class UsageWriter:
    """Drains an outbox (and adopted orphans) into the database in the background.

    ``start()`` after the outbox has started; ``aclose()`` before the outbox closes.
    """

    def __init__(
        self,
        outbox: Outbox,
        engine: AsyncEngine,
        *,
        batch_size: int,
        interval: float,
        log: logging.Logger,
        metrics: Metrics | None = None,
        retention_days: int | None = None,
        lock: WriterLock | None = None,
    ) -> None:
        self._outbox = outbox
        self._lock = lock  # None: this process writes its own records, elected or not
        self._engine = engine
        self._batch_size = batch_size
        self._interval = interval
        self._log = log
        self._metrics = metrics
        self._retention_days = retention_days
        if engine.dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
            raise ConfigError(
                f"usage accounting needs SQLite 3.35 or newer (INSERT ... RETURNING); this "
                f"Python has {sqlite3.sqlite_version}: use PostgreSQL or a newer Python build"
            )
        self._insert_records, self._upsert_daily = _statements(engine.dialect.name)
        # Fixed statements taking the whole batch: PostgreSQL one array a column
        # (usage/pg_bulk.py), SQLite many rows bound at once (usage/sqlite_bulk.py)
        self._bulk: BulkStatements | SqliteStatements | None = None
        if engine.dialect.name == "postgresql":
            self._bulk = BulkStatements(_SUMS)
        elif sqlite_bulk.usable(engine.dialect):
            self._bulk = SqliteStatements(_SUMS, engine.dialect)
        # SQLite: a batch in one hand-over to a connection of its own (store/sqlite_bulk.py)
        self._sqlite = sqlite_bulk.Writer.for_engine(engine) if self._bulk else None
        self._orphans: list[Outbox] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._failure_logged_at = -_LOG_EVERY
        self._next_maintenance = 0.0
        self._next_orphan_scan = 0.0
        self._next_hand_off = 0.0

    @property
    def elected(self) -> bool:
        """Whether this process writes to the database (always, without a lock)."""
        return self._lock is None or self._lock.held

    @property
    def backlog(self) -> int:
        """Records waiting, in this process's outbox and in adopted orphan files."""
        return self._outbox.backlog + sum(o.backlog for o in self._orphans)

    async def start(self) -> None:
        """Stand for election; adopt orphaned spool files; then write in the background."""
        self._next_hand_off = time.monotonic() + HAND_OFF_EVERY
        if await self._elect():
            await self._scan_orphans()
        self._task = asyncio.create_task(self._loop(), name="relaygate-usage-writer")

    async def aclose(self, drain_timeout: float = 10.0) -> None:
        """Flush the outbox and write what the database accepts within ``drain_timeout``.

        Whatever is left stays durable in the spool files for the next start.
        """
        deadline = time.monotonic() + drain_timeout
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass  # cancelled mid-batch: the batch was not acked, it will be replayed
            except Exception:
                self._log.exception("usage writer loop failed")
        await self._outbox.flush()
        if await self._last_writer(deadline):
            await self._scan_orphans(announce=False)
            await self._drain(deadline)
        left = self.backlog
        for orphan in self._orphans:
            await orphan.aclose()
        self._orphans = []
        if self._lock is not None:
            self._lock.release()
        if self._sqlite is not None:
            await self._sqlite.aclose(max(0.0, deadline - time.monotonic()))
        if left and self.elected:
            self._log.warning(
                "%d usage records not written before shutdown; they stay in %s for the next start",
                left, self._outbox.directory,
            )  # fmt: skip

    async def _elect(self) -> bool:
        """Whether this process is (or has just become) the writer."""
        if self._lock is None or self._lock.held:
            return True
        try:
            won = await asyncio.to_thread(self._lock.try_acquire)
        except OSError as exc:
            self._log.error("cannot take the usage writer lock %s: %s", self._lock.path, exc)
            return False
        if won:
            self._log.info("this process writes usage records for %s", self._outbox.directory)
            self._next_orphan_scan = 0.0
        return won

    async def _last_writer(self, deadline: float) -> bool:
        """Shutting down: True if this process is to write what is left. The writer is.
        Another process hands its last file over and waits (until ``deadline``) for the
        writer to drain it; if the writer stops first, this process is elected instead
        (all processes stopping together: the last one writes what the others left)."""
        if await self._elect():
            return True
        try:
            handed = await self._outbox.hand_off()
        except Exception:
            self._log.exception("cannot hand the usage outbox over to the writer")
            return False
        while handed is not None and await asyncio.to_thread(handed.exists):
            if await self._elect():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return False

    async def _hand_off(self) -> None:
        """Not the writer: hand the spool file over once a second (when it holds records)."""
        now = time.monotonic()
        if now < self._next_hand_off or not self._outbox.durable:
            return
        self._next_hand_off = now + HAND_OFF_EVERY
        try:
            await self._outbox.hand_off()
        except Exception:  # the records stay in the file; the next try hands it over
            self._log.exception("cannot hand the usage outbox over to the writer")

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            self._report_age()
            if not await self._elect():
                await self._hand_off()
                await self._pause(self._interval)
                continue
            await self._maintain()
            try:
                full = await self._write_some()
            except Exception as exc:  # any failure: keep the records, back off, retry
                await self._pause(self._failed(exc))
                continue
            self._succeeded()
            if not full:
                await self._pause(self._interval)

    async def _drain(self, deadline: float) -> None:
        """Write until every source is empty or the deadline passes (shutdown)."""
        while any(source.durable for source in self._sources()) or await self._late_files():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._write_some(), remaining)
            except Exception as exc:
                if time.monotonic() >= deadline:
                    return
                delay = self._failed(exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            else:
                self._succeeded()

    async def _late_files(self) -> bool:
        """Files handed over since the last scan (other processes stopping too)."""
        if self._lock is None:
            return False
        await self._scan_orphans(announce=False)
        return any(source.durable for source in self._orphans)

    def _sources(self) -> list[Outbox]:
        return [*self._orphans, self._outbox]  # orphans first: their records are older

    async def _write_some(self) -> bool:
        """One batch from the sources that have records, all in one transaction; True if
        any source's part was full (more may be waiting).

        The writer shares the event loop with requests and each of its steps waits for a
        turn of it, so at saturation its rate is rows per turn: the sources are read
        together, written in one transaction and acknowledged together, whatever their
        number (the elected writer drains every worker's files). When far behind, a
        source gives all that waits, up to ``_CATCH_UP`` batches (``_MAX_TURN`` records)
        in all: a turn costs the same few switch intervals of the GIL whatever its size
        while the loop is busy (slices.py), so the writer's rate grows with its backlog,
        and the rows are made ``_LOOP_SLICE`` at a time between turns of the loop.
        """
        limits: list[tuple[Outbox, int]] = []
        room = max(self._batch_size, min(_CATCH_UP * self._batch_size, _MAX_TURN))
        for source in self._sources():
            if source.durable and room > 0:
                limit = min(room, max(self._batch_size, source.durable))
                limits.append((source, limit))
                room -= limit
        batches = await asyncio.gather(*(source.take(limit) for source, limit in limits))
        parts = [(source, batch) for (source, _), batch in zip(limits, batches, strict=True)]
        await self._deliver([(source, batch) for source, batch in parts if batch])
        await self._release_drained_orphans()
        return any(len(batch) >= self._batch_size for _, batch in parts)

    async def _deliver(self, parts: list[tuple[Outbox, list[tuple[int, UsageRecord]]]]) -> None:
        """Insert the batches and their rollups in one transaction, then ack each."""
        rows: list[dict[str, Any]] = []
        acks: list[tuple[Outbox, list[int]]] = []
        for source, batch in parts:
            ids: list[int] = []
            invalid: list[int] = []
            for n, (row_id, record) in enumerate(batch, 1):
                if n % _LOOP_SLICE == 0:  # let requests' steps run (slices.py)
                    await asyncio.sleep(0)
                try:
                    rows.append(record_row(record))
                    ids.append(row_id)
                except (ValueError, OverflowError, OSError):  # e.g. a timestamp out of range
                    invalid.append(row_id)
            if invalid:
                self._log.error("%d usage records are invalid and were set aside", len(invalid))
                await source.quarantine(invalid, "invalid")
            acks.append((source, ids))
        if not rows:
            return
        started = time.perf_counter()
        try:
            inserted = await self._write_rows(rows)
        except BaseException:
            self._observe_write(False, started)
            raise
        self._observe_write(True, started)
        # Counted once committed (the rows are in the database), before the acks' await:
        # a reader who sees the rows sees them counted.
        if self._metrics is not None:
            self._metrics.usage_written.inc(inserted)
        await asyncio.gather(*(source.ack(ids) for source, ids in acks if ids))

    async def _write_rows(self, rows: list[dict[str, Any]]) -> int:
        """Insert the rows not already there and add exactly those to usage_daily, in one
        transaction; how many were new."""
        if self._sqlite is not None and isinstance(self._bulk, SqliteStatements):
            return await self._bulk.write(self._sqlite, rows, daily_rollups)
        async with self._engine.begin() as conn:
            return await self._insert(conn, rows)

    async def _insert(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> int:
        """Insert the rows not already there; add exactly those to usage_daily."""
        fresh: list[dict[str, Any]] = []
        rollups = _rollups(rows, fresh)
        if self._bulk is not None:
            await self._bulk.insert(conn, rows, rollups)
            return len(fresh)
        result = await conn.execute(self._insert_records, rows)
        daily = rollups([(request_id, at) for request_id, at in result])
        if daily:
            await conn.execute(self._upsert_daily, daily)
        return len(fresh)

    def _observe_write(self, ok: bool, started: float) -> None:
        if self._metrics is not None:
            self._metrics.usage_write(ok, time.perf_counter() - started)

    def oldest_age(self) -> float:
        """Seconds the oldest record waiting (here or in an adopted orphan) has waited."""
        now = time.time()
        return max(source.oldest_age(now) for source in self._sources())

    def _report_age(self) -> None:
        if self._metrics is not None:
            self._metrics.outbox_age.set(self.oldest_age())

    async def _release_drained_orphans(self) -> None:
        for orphan in [o for o in self._orphans if o.backlog == 0]:
            self._orphans.remove(orphan)
            await orphan.aclose()

    async def _maintain(self) -> None:
        now = time.monotonic()
        if now >= self._next_orphan_scan:  # handed-over files are routine: not announced
            await self._scan_orphans(announce=self._lock is None)
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + _MAINTAIN_RETRY
        try:
            created = await ensure_partitions(self._engine, log=self._log)
            if created:
                self._log.info("created usage partitions %s", ", ".join(created))
            if self._retention_days is not None:
                removed = await apply_retention(self._engine, self._retention_days)
                if removed.dropped or removed.deleted_rows:
                    self._log.info("usage retention: dropped %s, deleted %d rows", *removed)
        except Exception as exc:
            self._log.warning("usage partition maintenance failed (%s); retrying", _brief(exc))
            return
        self._next_maintenance = now + _MAINTAIN_EVERY

    async def _scan_orphans(self, *, announce: bool = True) -> None:
        every = _ORPHAN_SCAN_EVERY if self._lock is None else _SHARED_SCAN_EVERY
        self._next_orphan_scan = time.monotonic() + every
        try:
            held = [o.path for o in self._orphans if o.path is not None]
            self._orphans += await self._outbox.adopt_orphans(held, announce=announce)
        except OSError as exc:
            self._log.error("cannot scan %s for orphaned outboxes: %s", self._outbox.directory, exc)

    def _failed(self, exc: BaseException) -> float:
        """Count and (not too often) log a failed attempt; return the back-off delay."""
        self._failures += 1
        if self._metrics is not None:
            self._metrics.usage_write_errors.inc()
        delay: float = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2.0 ** min(self._failures - 1, 16))
        now = time.monotonic()
        if self._failures == 1 or now - self._failure_logged_at >= _LOG_EVERY:
            self._failure_logged_at = now
            self._log.warning(
                "usage records not written (%s); %d wait in the outbox; attempt %d, retrying "
                "in %.1f s", _brief(exc), self.backlog, self._failures, delay,
            )  # fmt: skip
        return delay

    def _succeeded(self) -> None:
        if self._failures:
            self._log.warning(
                "usage records are being written again after %d failed attempts", self._failures
            )
            self._failures = 0

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` (or until stopping), the outbox age gauge kept fresh meanwhile:
        during a database outage it is what says how old the waiting records are."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(left, _AGE_EVERY))
            self._report_age()


def record_row(record: UsageRecord) -> dict[str, Any]:
    """The usage_records row for ``record``: timestamps as UTC datetimes, strings cut to
    their column's width and any NUL in them replaced (U+FFFD), out-of-range numbers
    clamped (one bad value must not block a batch forever). Raises
    ValueError/OverflowError for an impossible timestamp or
    a request id that is empty or too long for the key."""
    if not 0 < len(record.request_id) <= _ID_WIDTH:
        raise ValueError(f"request_id of {len(record.request_id)} characters")
    row = msgspec.structs.asdict(record)
    row["created_at"] = datetime.fromtimestamp(record.created_at, UTC)
    # Each check is a comparison first: a value that is fine (nearly all) costs no call.
    for name, width in _WIDTH_ITEMS:
        value = row[name]
        if value is None:
            continue
        if "\x00" in value:  # PostgreSQL's text cannot hold a NUL: the row would never go in
            value = row[name] = value.replace("\x00", "\ufffd")
        if len(value) > width:
            row[name] = value[:width]
    for name in _INTS:
        if not _INT_MIN <= row[name] <= _INT_MAX:
            row[name] = max(_INT_MIN, min(_INT_MAX, row[name]))
    for name in (*_FLOATS, "ttft_ms"):
        value = row[name]
        if value is None or -_FLOAT_MAX <= value <= _FLOAT_MAX:  # NaN and inf are not
            continue
        if math.isfinite(value):
            row[name] = max(-_FLOAT_MAX, min(_FLOAT_MAX, value))
        else:  # a duration or cost that is not a number counts as none; a ttft is unknown
            row[name] = None if name == "ttft_ms" else 0.0
    return row


def _rollups(
    rows: list[dict[str, Any]], fresh: list[dict[str, Any]]
) -> Callable[[list[tuple[Any, Any]]], list[dict[str, Any]]]:
    """Given the keys the database inserted: the usage_daily increments for those rows of
    ``rows`` (each added to ``fresh``)."""

    def rollups(inserted: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        fresh.extend(_fresh(rows, inserted))
        return daily_rollups(fresh) if fresh else []

    return rollups


def _fresh(rows: list[dict[str, Any]], inserted: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """The rows whose (request_id, created_at) the database says it inserted, each once
    (a record twice in one batch counts once)."""
    keys = {(request_id, _naive_utc(at)) for request_id, at in inserted}
    fresh: list[dict[str, Any]] = []
    for row in rows:
        key = (row["request_id"], _naive_utc(row["created_at"]))
        if key in keys:
            keys.discard(key)
            fresh.append(row)
    return fresh


def daily_rollups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """usage_daily increments for ``rows``: one per (day, tenant, key, endpoint, model),
    in key order (so concurrent writers lock rollup rows in the same order)."""
    sums: dict[DailyKey, dict[str, Any]] = {}
    for row in rows:
        key = (
            row["created_at"].date(), row["tenant_id"] or "", row["key_id"] or "",
            row["endpoint"], row["model"],
        )  # fmt: skip
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = {
                **dict(zip(_DAILY_KEY, key, strict=True)),
                "request_count": 0, "prompt_tokens": 0, "completion_tokens": 0,
                "duration_ms_sum": 0.0, "cached_requests": 0, "error_requests": 0, "cost": 0.0,
            }  # fmt: skip
        acc["request_count"] += 1
        acc["prompt_tokens"] += row["prompt_tokens"]
        acc["completion_tokens"] += row["completion_tokens"]
        acc["duration_ms_sum"] += row["duration_ms"]
        acc["cached_requests"] += 1 if row["cached"] else 0
        acc["error_requests"] += 1 if row["status"] != "ok" else 0
        acc["cost"] += row["cost"]
    return [sums[key] for key in sorted(sums)]


def _statements(dialect: str) -> tuple[sa.Insert, sa.Insert]:
    """The idempotent record insert and the rollup upsert, in ``dialect``'s syntax."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    records = (
        insert(usage_records)
        .on_conflict_do_nothing(index_elements=["request_id", "created_at"])
        .returning(usage_records.c.request_id, usage_records.c.created_at)
    )
    daily = insert(usage_daily)
    upsert = daily.on_conflict_do_update(
        index_elements=list(_DAILY_KEY),
        set_={name: usage_daily.c[name] + daily.excluded[name] for name in _SUMS},
    )
    return records, upsert


def _naive_utc(moment: datetime) -> datetime:
    """Compare timestamps whatever the driver returns (SQLite gives naive UTC)."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _brief(exc: BaseException) -> str:
    """The error without SQL text or bound parameters (they can be megabytes)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {text[:300]}"
