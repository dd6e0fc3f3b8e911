"""SQLite: a usage batch in two statements whose text never changes (store/sqlite_bulk.py).

The counterpart of pg_bulk.py: the records insert (``ON CONFLICT DO NOTHING RETURNING``
the keys inserted) and the usage_daily upsert each take rows as one JSON parameter (the
records in parts of a few kilobytes, slices.py). In the writer's thread a part's new
keys come from one query before its insert, not from ``RETURNING``: sqlite3 steps once a
returned row, and releases the GIL at each step, which costs a switch interval (5 ms)
each while the event loop is busy (slices.py). The writer's event-loop CPU per record
fell from ~17 µs (SQLAlchemy's generic batch insert) to ~2 µs (a 15,000-row batch held
the loop 26 ms), and a 100-row batch no longer holds it for milliseconds; one worker
serves ~10% more requests a second (bench/RESULTS.md, section 2's A/B). ``write()``
runs both, and the commit, in one hand-over to a
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
from relaygate.store.sqlite_bulk import JsonRowsInsert, Unsendable, Writer
from relaygate.store.tables import usage_daily, usage_records

__all__ = ["SqliteStatements"]

Key = tuple[Any, Any]  # (request_id, created_at)
_KEYS = msgspec.json.Decoder(list[tuple[str, str]]).decode
Rollups = Callable[[list[Key]], list[dict[str, Any]]]


class SqliteStatements:
    """The usage_records insert and the usage_daily upsert, one fixed statement each."""

    def __init__(self, sums: tuple[str, ...], dialect: Dialect) -> None:
        names = [c.name for c in usage_records.primary_key.columns]
        if names != ["request_id", "created_at"]:
            raise AssertionError(f"usage_records' key is {names}")
        keys = ", ".join(names)
        self._records = JsonRowsInsert(
            usage_records,
            dialect,
            f"ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}",
            returning=names,
        )
        # The writer's thread, for each part of the rows: the keys of the part not there
        # yet (one row of JSON; each key one search of the primary key's index), then the
        # part's insert. A key twice in the batch is there for its second part already.
        self._records_new = JsonRowsInsert(
            usage_records, dialect, f"ON CONFLICT ({keys}) DO NOTHING"
        )
        pos = [self._records_new.columns.index(name) for name in names]
        new_key = f"k.value->>{pos[0]}, k.value->>{pos[1]}"
        self._new_keys = (
            f"SELECT json_group_array(json_array({new_key})) FROM json_each(:rows) AS k"
            f" WHERE NOT EXISTS (SELECT 1 FROM usage_records AS u WHERE"
            f" u.request_id = k.value->>{pos[0]} AND u.created_at = k.value->>{pos[1]})"
        )
        daily_keys = ", ".join(c.name for c in usage_daily.primary_key.columns)
        added = ", ".join(f"{s} = usage_daily.{s} + excluded.{s}" for s in sums)
        self._daily = JsonRowsInsert(
            usage_daily, dialect, f"ON CONFLICT ({daily_keys}) DO UPDATE SET {added}"
        )
        # sqlite3 returns created_at as its text; SQLAlchemy's own reading of it
        at = usage_records.c.created_at.type.dialect_impl(dialect)
        self._read_at = at.result_processor(dialect, None)

    async def write(self, writer: Writer, rows: list[dict[str, Any]], rollups: Rollups) -> bool:
        """As :meth:`insert`, through ``writer`` (store/sqlite_bulk.py): the rows encoded,
        both statements and the commit in one hand-over to its thread, the records in
        slices of a few kilobytes, yielding between them (slices.py), ``rollups`` run
        there too (it reads only ``rows``, which the caller leaves alone while it waits).
        False, having written nothing, when a value cannot travel this way."""

        def work(db: sqlite3.Connection) -> None:
            if not db.in_transaction:  # the queries and the inserts see the same rows
                db.execute("BEGIN IMMEDIATE")
            found: list[tuple[str, str]] = []
            for part in self._records_new.parts(rows, slices.JSON_BYTES, slices.Pacer()):
                (new,) = db.execute(self._new_keys, part).fetchone()
                found += _KEYS(new)
                db.execute(self._records_new.sql, part)
            # a key new twice in one part is listed twice; rollups counts each row once
            daily = rollups([self._key(row) for row in found])
            if daily:
                payload = self._daily.payload(daily)
                if payload is None:
                    raise AssertionError("usage_daily rows the records insert could carry")
                db.execute(self._daily.sql, payload)

        try:
            await writer.call(work)
        except Unsendable:
            return False
        return True

    def _key(self, row: tuple[Any, ...]) -> Key:
        """A returned (request_id, created_at) as SQLAlchemy reads them (a datetime)."""
        request_id, created_at = row
        return request_id, self._read_at(created_at) if self._read_at else created_at

    async def insert(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], rollups: Rollups
    ) -> bool:
        """Insert ``rows``, then the usage_daily increments ``rollups`` gives for the keys
        that were new; in ``conn``'s transaction (the writer commits both or neither).
        False, having written nothing, when a value cannot travel this way (a NUL in a
        model name): the writer then uses SQLAlchemy's statements for the batch."""
        inserted = await self._records.run(conn, rows)
        if inserted is None:
            return False
        daily = rollups([(row[0], row[1]) for row in inserted])
        # the rollups hold no client text but the model and endpoint, already sent above
        if daily and await self._daily.run(conn, daily) is None:
            raise AssertionError("usage_daily rows the records insert could carry")
        return True
