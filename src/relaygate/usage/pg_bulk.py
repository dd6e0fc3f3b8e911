"""PostgreSQL: a usage batch in two statements whose text never changes.

SQLAlchemy renders a batch insert as ``INSERT ... VALUES (...), (...) RETURNING`` with one
set of parameters a row, so every batch size is a new statement: parsed, planned and
prepared again, and each of its ~2,000 parameters bound one by one in Python. Here every
column travels as one array (``unnest($1::varchar(40)[], ...)``): the statement's text
is the same for any batch, asyncpg prepares it once per connection and encodes each
array in C. The writer's CPU per record on this path is a fraction of the generic one
(bench section 13, usage/writer.py).

Both statements run in one transaction on the asyncpg connection under the SQLAlchemy
one: the writer commits rows and rollups together or neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from relaygate.store.tables import usage_daily, usage_records

__all__ = ["BulkStatements"]

Key = tuple[Any, Any]  # (request_id, created_at)
Rollups = Callable[[list[Key]], list[dict[str, Any]]]


def _unnest_insert(table: sa.Table, conflict: str) -> tuple[str, tuple[str, ...]]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    names = tuple(c.name for c in table.columns)
    arrays = ", ".join(
        f"${i}::{c.type.compile(dialect=dialect)}[]" for i, c in enumerate(table.columns, 1)
    )
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) {conflict}"
    return sql, names


class BulkStatements:
    """The usage_records insert (``ON CONFLICT DO NOTHING RETURNING``) and the usage_daily
    upsert, each one fixed statement taking one array a column."""

    def __init__(self, sums: tuple[str, ...]) -> None:
        keys = ", ".join(c.name for c in usage_records.primary_key.columns)
        self._records, self._record_columns = _unnest_insert(
            usage_records, f"ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}"
        )
        daily_keys = ", ".join(c.name for c in usage_daily.primary_key.columns)
        added = ", ".join(f"{s} = usage_daily.{s} + excluded.{s}" for s in sums)
        self._daily, self._daily_columns = _unnest_insert(
            usage_daily, f"ON CONFLICT ({daily_keys}) DO UPDATE SET {added}"
        )

    async def insert(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], rollups: Rollups
    ) -> None:
        """Insert ``rows``, then the usage_daily increments ``rollups`` gives for the keys
        that were new; both in one transaction."""
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection  # asyncpg.Connection
        assert driver is not None
        async with driver.transaction():
            inserted = await driver.fetch(self._records, *_columns(rows, self._record_columns))
            keys = [(r[0], r[1]) for r in inserted]
            daily = rollups(keys)
            if daily:
                await driver.execute(self._daily, *_columns(daily, self._daily_columns))


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[list[Any]]:
    return [[row[name] for row in rows] for name in names]
