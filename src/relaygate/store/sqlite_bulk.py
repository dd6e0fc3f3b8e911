"""SQLite: many rows in one statement whose text never changes, unpacked by SQLite itself.

SQLAlchemy renders a batch as ``INSERT ... VALUES (...), (...)`` and binds and converts
every parameter of every row in Python, on the event loop: ~17 µs a usage record, so a
100-row batch held the loop ~1.7 ms, and a request at concurrency 1 waited behind it
(issue 15's p99). Here a batch travels as one parameter, a JSON array of rows that
msgspec encodes in C, and SQLite unpacks it with ``json_each``: one fixed statement
(prepared once per connection by the sqlite3 module's cache), its rows converted and
inserted by SQLite in the driver's thread.

The values are those SQLAlchemy would bind: its own bind processors give a DATETIME's or
a DATE's text and a boolean's 0/1, so SQLAlchemy reads the rows back as it reads its own.
A binary column travels as the text of its bytes (the JSON stored in them) and is cast
back to a BLOB. Floats round-trip exactly (JSON's shortest form, parsed by SQLite to the
same double). SQLite's JSON functions end a text at a NUL character, so a batch with one
(or with bytes that are not UTF-8) is not sent this way: ``run()`` returns None and the
caller inserts it with SQLAlchemy's statement (tests/unit/store/test_sqlite_bulk.py
checks, on generated rows, that both store the same values).

``usable()``: SQLite's JSON functions and ``->>`` are built in from 3.38; with an older
library the callers keep SQLAlchemy's statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["JsonRowsInsert", "usable"]

_MIN_VERSION = (3, 38)  # json_each and ->> built in
_encode = msgspec.json.encode
# A NUL as JSON writes it; also found in an escaped backslash before "u0000", which then
# takes the slower path for nothing.
_NUL = b"\\u0000"


def usable(dialect: Dialect) -> bool:
    """Whether ``dialect`` is SQLite with the JSON functions this module's statements use."""
    return dialect.name == "sqlite" and sqlite3.sqlite_version_info >= _MIN_VERSION


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


class JsonRowsInsert:
    """``INSERT INTO table (columns) SELECT ... FROM json_each(:rows) WHERE true <tail>``.

    ``tail`` is what follows the rows (``ON CONFLICT ...``, ``RETURNING ...``); SQLite
    needs the ``WHERE`` for an upsert after a ``SELECT``. ``returning`` names the columns
    of a ``RETURNING`` in ``tail``: ``run()`` gives them as SQLAlchemy reads them.
    """

    def __init__(
        self,
        table: sa.Table,
        dialect: Dialect,
        tail: str = "",
        returning: Sequence[str] = (),
    ) -> None:
        self.columns = tuple(c.name for c in table.columns)
        values: list[str] = []
        convert: list[Callable[[Any], Any] | None] = []
        for i, column in enumerate(table.columns):
            binary = isinstance(column.type, sa.LargeBinary)
            values.append(f"CAST(value->>{i} AS BLOB)" if binary else f"value->>{i}")
            convert.append(
                _text if binary else column.type.dialect_impl(dialect).bind_processor(dialect)
            )
        self._convert = tuple(convert)
        sql = sa.text(
            f"INSERT INTO {table.name} ({', '.join(self.columns)}) "
            f"SELECT {', '.join(values)} FROM json_each(:rows) WHERE true {tail}".rstrip()
        )
        self.statement = sql.columns(*(table.c[name] for name in returning)) if returning else sql

    def payload(self, rows: Iterable[Mapping[str, Any]]) -> str | None:
        """The rows as one JSON array of arrays, each value as SQLAlchemy would bind it;
        None when a value cannot travel exactly (a NUL character, bytes not UTF-8)."""
        pairs = tuple(zip(self.columns, self._convert, strict=True))
        try:
            rows_json = _encode(
                [[row[k] if fn is None else fn(row[k]) for k, fn in pairs] for row in rows]
            )
        except UnicodeError:
            return None
        return None if _NUL in rows_json else rows_json.decode()

    async def run(
        self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]
    ) -> Sequence[tuple[Any, ...]] | None:
        """Insert ``rows`` in ``conn``'s transaction and give what ``RETURNING`` gave (no
        rows without one); None, inserting nothing, when ``payload()`` cannot carry them."""
        payload = self.payload(rows)
        if payload is None:
            return None
        result = await conn.execute(self.statement, {"rows": payload})
        return [tuple(row) for row in result] if result.returns_rows else ()
