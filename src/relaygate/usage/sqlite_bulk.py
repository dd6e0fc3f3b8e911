"""SQLite: a usage batch in a few statements of fixed texts (store/sqlite_bulk.py).

The counterpart of pg_bulk.py: the records insert (``ON CONFLICT DO NOTHING``) and the
usage_daily upsert each take many rows' values bound at once, the records in parts of
``slices.SQL_ROWS`` rows. In the writer's thread, which of a part's rows are already
stored comes from one query before its insert, not from ``RETURNING``: sqlite3 steps once
a returned row, and releases the GIL at each step, which costs a switch interval (5 ms)
each while the event loop is busy (slices.py). The writer's event-loop CPU per record
fell from ~17 µs (SQLAlchemy's generic batch insert) to ~2 µs (a 15,000-row batch held
the loop 26 ms), and a 100-row batch no longer holds it for milliseconds; one worker
serves ~10% more requests a second (bench/RESULTS.md, section 2's A/B). ``write()``
runs the statements, and the commit, in one hand-over to a
:class:`~relaygate.store.sqlite_bulk.Writer`'s thread, where SQLAlchemy's async engine
took about seven.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from relaygate import slices
from relaygate.store.sqlite_bulk import RowsInsert, Writer
from relaygate.store.tables import usage_daily, usage_records

__all__ = ["SqliteStatements"]

Key = tuple[Any, Any]  # (request_id, created_at)
_INDICES = msgspec.json.Decoder(list[int]).decode
# the usage_daily increments for the keys inserted, or for the rows inserted
Rollups = Callable[[list[Key]], list[dict[str, Any]]]
Rollup = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class SqliteStatements:
    """The usage_records insert and the usage_daily upsert, fixed statements each."""

    def __init__(self, sums: tuple[str, ...], dialect: Dialect) -> None:
        names = [c.name for c in usage_records.primary_key.columns]
        if names != ["request_id", "created_at"]:
            raise AssertionError(f"usage_records' key is {names}")
        keys = ", ".join(names)
        self._records = RowsInsert(
            usage_records,
            dialect,
            f"ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}",
            returning=names,
        )
        self._records_new = RowsInsert(usage_records, dialect, f"ON CONFLICT ({keys}) DO NOTHING")
        self._key_at = [self._records_new.columns.index(name) for name in names]
        self._width = len(self._records_new.columns)
        self._stored_sql: dict[int, str] = {}
        daily_keys = ", ".join(c.name for c in usage_daily.primary_key.columns)
        added = ", ".join(f"{s} = usage_daily.{s} + excluded.{s}" for s in sums)
        self._daily = RowsInsert(
            usage_daily, dialect, f"ON CONFLICT ({daily_keys}) DO UPDATE SET {added}"
        )

    def _stored(self, rows: int) -> str:
        """The query for which of ``rows`` keys are stored already: their places in the
        part, as one row of JSON (each key one search of the primary key's index)."""
        found = self._stored_sql.get(rows)
        if found is None:
            keys = ", ".join(f"({i}, ?, ?)" for i in range(rows))
            found = self._stored_sql[rows] = (
                f"WITH k(i, request_id, created_at) AS (VALUES {keys}) "
                "SELECT json_group_array(k.i) FROM k WHERE EXISTS (SELECT 1 FROM "
                "usage_records AS u WHERE u.request_id = k.request_id "
                "AND u.created_at = k.created_at)"
            )
        return found

    async def write(self, writer: Writer, rows: list[dict[str, Any]], rollup: Rollup) -> int:
        """Insert ``rows`` not already there, then the usage_daily increments ``rollup``
        gives for exactly those; through ``writer`` (store/sqlite_bulk.py): the statements
        and the commit in one hand-over to its thread, the records in parts of a few rows,
        yielding between them (slices.py), ``rollup`` run there too (it reads only
        ``rows``, which the caller leaves alone while it waits). How many were new."""

        def work(db: sqlite3.Connection) -> int:
            if not db.in_transaction:  # the queries and the inserts see the same rows
                db.execute("BEGIN IMMEDIATE")
            fresh: list[dict[str, Any]] = []
            start = 0
            (request_id, created_at), width = self._key_at, self._width
            for part in self._records_new.parts(rows, slices.SQL_ROWS, slices.Pacer()):
                ids = part.params[request_id::width]
                times = part.params[created_at::width]
                keys: list[Any] = [None] * (2 * part.rows)
                keys[0::2], keys[1::2] = ids, times
                (stored,) = db.execute(self._stored(part.rows), keys).fetchone()
                db.execute(part.sql, part.params)
                # new: not stored before the part, and (a key twice in it is stored once)
                # not seen earlier in it
                seen = {(ids[i], times[i]) for i in _INDICES(stored)}
                for i, key in enumerate(zip(ids, times, strict=True)):
                    if key not in seen:
                        seen.add(key)
                        fresh.append(rows[start + i])
                start += part.rows
            for part in self._daily.parts(rollup(fresh), None):
                db.execute(part.sql, part.params)
            return len(fresh)

        return await writer.call(work)

    async def insert(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], rollups: Rollups
    ) -> None:
        """Insert ``rows``, then the usage_daily increments ``rollups`` gives for the keys
        that were new; in ``conn``'s transaction (the writer commits both or neither)."""
        inserted = await self._records.run(conn, rows)
        daily = rollups([(row[0], row[1]) for row in inserted])
        if daily:
            await self._daily.run(conn, daily)
