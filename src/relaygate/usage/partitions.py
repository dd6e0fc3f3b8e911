"""Monthly partitions of ``usage_records`` (PostgreSQL) and retention (both backends).

On PostgreSQL ``usage_records`` is partitioned by range of ``created_at`` with a
DEFAULT partition (migration 0002). The writer creates the current month's
partition and the next two ahead, so the default normally stays empty. If rows
did land in the default for a month (the writer was down at a month's start),
creating that month's partition moves them: PostgreSQL refuses a new partition
whose range has rows in the default.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaygate.store.tables import usage_records

__all__ = [
    "Retention",
    "apply_retention",
    "ensure_partitions",
    "month_start",
    "partition_name",
]

_PARENT = "usage_records"
_DEFAULT = "usage_records_default"
_NAME = re.compile(r"^usage_records_(\d{4})_(\d{2})$")
_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"  # never queue the writers behind us for long


class Retention(NamedTuple):
    """What ``apply_retention`` removed."""

    dropped: list[str]  # whole monthly partitions (PostgreSQL)
    deleted_rows: int  # rows deleted one by one (the default partition, or SQLite)


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of ``moment``'s month."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(start: datetime, months: int) -> datetime:
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    return f"{_PARENT}_{start.year:04d}_{start.month:02d}"


async def ensure_partitions(
    engine: AsyncEngine,
    now: datetime | None = None,
    *,
    months_ahead: int = 2,
    log: logging.Logger | None = None,
) -> list[str]:
    """Create the partitions for ``now``'s month and ``months_ahead`` more, if missing.

    Returns the names created. A no-op on SQLite. Safe to run from several processes.
    """
    if engine.dialect.name != "postgresql":
        return []
    first = month_start(now or datetime.now(UTC))
    wanted = [add_months(first, i) for i in range(months_ahead + 1)]
    async with engine.connect() as conn:
        existing = await _partitions(conn)
    created: list[str] = []
    for start in wanted:
        name = partition_name(start)
        if name in existing:
            continue
        async with engine.begin() as conn:
            await conn.execute(sa.text(_LOCK_TIMEOUT))
            await conn.execute(sa.text(f"LOCK TABLE {_PARENT} IN ACCESS EXCLUSIVE MODE"))
            if name in await _partitions(conn):  # another process was first
                continue
            moved = await _create_partition(conn, name, start, add_months(start, 1))
        created.append(name)
        if moved and log is not None:
            log.warning(
                "moved %d usage records from %s into the new partition %s", moved, _DEFAULT, name
            )
    return created


async def apply_retention(engine: AsyncEngine, days: int, now: datetime | None = None) -> Retention:
    """Remove usage records older than ``days``.

    PostgreSQL drops every monthly partition that ends before the cutoff and deletes
    older rows from the default partition; SQLite deletes the older rows.
    ``usage_daily`` rollups are kept.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    if engine.dialect.name != "postgresql":
        async with engine.begin() as conn:
            result = await conn.execute(
                sa.delete(usage_records).where(usage_records.c.created_at < cutoff)
            )
        return Retention([], result.rowcount)
    dropped: list[str] = []
    async with engine.connect() as conn:
        existing = await _partitions(conn)
    for name in sorted(existing):
        match = _NAME.match(name)
        start = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC) if match else None
        if start is None or add_months(start, 1) > cutoff:
            continue
        async with engine.begin() as conn:
            await conn.execute(sa.text(_LOCK_TIMEOUT))
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        dropped.append(name)
    async with engine.begin() as conn:
        result = await conn.execute(
            sa.text(f"DELETE FROM {_DEFAULT} WHERE created_at < :cutoff"), {"cutoff": cutoff}
        )
    return Retention(dropped, result.rowcount)


async def _partitions(conn: AsyncConnection) -> set[str]:
    """Names of the monthly partitions attached to usage_records."""
    rows = await conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": _PARENT},
    )
    return {name for (name,) in rows if _NAME.match(name)}


async def _create_partition(
    conn: AsyncConnection, name: str, start: datetime, end: datetime
) -> int:
    """Create partition ``name`` for [start, end), moving any rows the default holds for it.

    Returns how many rows were moved.
    """
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    in_range = f"created_at >= '{start.isoformat()}' AND created_at < '{end.isoformat()}'"
    stray = await conn.scalar(sa.text(f"SELECT count(*) FROM {_DEFAULT} WHERE {in_range}"))
    if not stray:
        create = f"CREATE TABLE {name} PARTITION OF {_PARENT} FOR VALUES {bounds}"
        await conn.execute(sa.text(create))
        return 0
    # Build the month as a plain table, move its rows out of the default, then attach it
    # (ATTACH creates the parent's indexes on it). The parent is locked throughout.
    await conn.execute(
        sa.text(f"CREATE TABLE {name} (LIKE {_PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    await conn.execute(
        sa.text(
            f"WITH moved AS (DELETE FROM {_DEFAULT} WHERE {in_range} RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved"
        )
    )
    attach = f"ALTER TABLE {_PARENT} ATTACH PARTITION {name} FOR VALUES {bounds}"
    await conn.execute(sa.text(attach))
    return int(stray)
