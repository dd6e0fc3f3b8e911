"""SQLite: many rows in one statement whose text never changes, unpacked by SQLite itself.

SQLAlchemy renders a batch as ``INSERT ... VALUES (...), (...)`` and binds and converts
every parameter of every row in Python, on the event loop: ~17 µs a usage record, so a
100-row batch held the loop ~1.7 ms, and a request at concurrency 1 waited behind it
(issue 15's p99). Here a batch travels as one parameter, a JSON array of rows that
msgspec encodes in C, and SQLite unpacks it with ``json_each``: one fixed statement
(prepared once per connection by the sqlite3 module's cache), its rows converted and
inserted by SQLite in the driver's thread. Through a :class:`Writer`, ``insert()`` cuts
a batch into parts of a few kilobytes, one statement each, the thread yielding between them
(slices.py), so a big batch is not one burst of CPU.

The values are those SQLAlchemy would bind: its own bind processors give a DATETIME's or
a DATE's text and a boolean's 0/1, so SQLAlchemy reads the rows back as it reads its own.
A binary column's bytes travel in a second parameter, one BLOB of all the part's bytes
end to end, and the row holds where its bytes start in it and how many there are
(``substr`` cuts them out): no text is made of them, escaped into the JSON and parsed
back by SQLite. For a stored response (a Response object of ~1 kB), instructions per
row in the writer's thread (callgrind): encoding 68.2k → 57.6k, the whole insert
168.8k → 127.5k (bench/RESULTS.md, section 10). Floats round-trip exactly (JSON's
shortest form, parsed by SQLite to the same double). SQLite's JSON functions end a text
at a NUL character, so a batch with one in a text value (or text that is not UTF-8) is
not sent this way: ``run()`` returns None and the caller inserts it with SQLAlchemy's
statement (tests/unit/store/test_sqlite_bulk.py checks, on generated rows, that both
store the same values).

``usable()``: SQLite's JSON functions and ``->>`` are built in from 3.38; with an older
library the callers keep SQLAlchemy's statements.

Why one statement and not ``executemany`` with the rows bound by the sqlite3 module: the
driver's thread holds the GIL while it binds a row, so 120 rows are 120 hand-overs of
the GIL between it and the event loop. For stored responses, executemany took less CPU
(per row, 41-44 → 30-31 µs on the loop and 42-44 → 27-28 µs in the driver's thread) but
in the same-hour bench the stored /v1/responses run was slower at c=1, its gap over
Chat Completions +29% and +32% against +18% and +21% with this statement; one statement
holds the GIL for one bind, and SQLite inserts every row with it released.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaygate import slices
from relaygate.store.engine import sqlite_pragmas

__all__ = [
    "JsonRowsInsert", "Params", "Unsendable", "Writer", "bind_processor", "datetime_text",
    "usable",
]  # fmt: skip

T = TypeVar("T")
# A statement's parameters: ``rows``, the JSON array, and ``blob``, the binary columns' bytes
Params = dict[str, str | bytes]
_MIN_VERSION = (3, 38)  # json_each and ->> built in
_encode = msgspec.json.encode
# A NUL as JSON writes it; also found in an escaped backslash before "u0000", which then
# takes the slower path for nothing.
_NUL = b"\\u0000"


def usable(dialect: Dialect) -> bool:
    """Whether ``dialect`` is SQLite with the JSON functions this module's statements use."""
    return dialect.name == "sqlite" and sqlite3.sqlite_version_info >= _MIN_VERSION


def datetime_text(value: datetime | None) -> str | None:
    """A datetime as SQLAlchemy's SQLite DATETIME writes it by default (its fields as they
    are, any time zone left out, always six digits of microseconds), by the C isoformat:
    about a third of the time of SQLAlchemy's Python formatting."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


# Datetimes on which datetime_text must agree with a column's own processor to stand in
# for it: the extremes, no microseconds, and times in and out of UTC.
_PROBES = (
    datetime(1, 1, 1),
    datetime(9999, 12, 31, 23, 59, 59, 999999),
    datetime(2026, 11, 30, 11, 0, 0, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5))),
)


def bind_processor(column: sa.Column[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to ``column``'s values before binding them; for a DATETIME in
    SQLite's default format, :func:`datetime_text`, which gives the same text faster."""
    convert = column.type.dialect_impl(dialect).bind_processor(dialect)
    if (
        convert is not None
        and isinstance(column.type, sa.DateTime)
        and all(convert(probe) == datetime_text(probe) for probe in _PROBES)
    ):
        return datetime_text
    return convert


class Unsendable(ValueError):
    """A row holds a value that cannot travel as JSON to SQLite exactly (a NUL character,
    text that is not UTF-8): the caller inserts the batch with SQLAlchemy's statement."""


def _checked(values: list[Any]) -> bytes:
    """One row as JSON; :class:`Unsendable` when it cannot travel exactly."""
    try:
        encoded = _encode(values)
    except UnicodeError:
        raise Unsendable("a value that is not UTF-8") from None
    if _NUL in encoded:
        raise Unsendable("a NUL character")
    return encoded


def _params(rows: list[bytes], blob: list[bytes] | None) -> Params:
    params: Params = {"rows": (b"[" + b",".join(rows) + b"]").decode()}
    if blob is not None:
        params["blob"] = b"".join(blob)
    return params


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
        binary: list[int] = []
        for i, column in enumerate(table.columns):
            if isinstance(column.type, sa.LargeBinary):
                # the row holds its start in ``blob`` (1-based) and, after the columns, its
                # length; substr() of no bytes is NULL, so an empty value is x'' here
                length = f"value->>{len(self.columns) + len(binary)}"
                values.append(
                    f"CASE {length} WHEN 0 THEN x'' ELSE substr(:blob, value->>{i}, {length}) END"
                )
                binary.append(i)
                convert.append(None)
            else:
                values.append(f"value->>{i}")
                convert.append(bind_processor(column, dialect))
        self._convert = tuple(convert)
        self._binary = tuple(binary)
        # the SQL as sqlite3 takes it too (named parameters), for :class:`Writer`
        self.sql = (
            f"INSERT INTO {table.name} ({', '.join(self.columns)}) "
            f"SELECT {', '.join(values)} FROM json_each(:rows) WHERE true {tail}".rstrip()
        )
        sql = sa.text(self.sql)
        self.statement = sql.columns(*(table.c[name] for name in returning)) if returning else sql

    def payload(self, rows: Iterable[Mapping[str, Any]]) -> Params | None:
        """The statement's parameters for all the rows: ``rows``, one JSON array of
        arrays, each value as SQLAlchemy would bind it, and ``blob``, the binary columns'
        bytes, when the table has any; None when a value cannot travel exactly (a NUL
        character, text that is not UTF-8)."""
        try:
            return next(self.parts(rows, None), None) or _params([], [] if self._binary else None)
        except Unsendable:
            return None

    def parts(
        self,
        rows: Iterable[Mapping[str, Any]],
        budget: int | None = slices.JSON_BYTES,
        pacer: slices.Pacer | None = None,
    ) -> Iterator[Params]:
        """The rows as :meth:`payload` gives them, in parts of about ``budget`` bytes (one
        row at least each; None: all in one), each encoded when it is asked for;
        :class:`Unsendable` at the first value that cannot travel exactly. With a
        ``pacer``, it pauses after each part is taken, and once the GIL is in demand the
        parts grow ``CONTENDED_SCALE``-fold, without pauses (slices.py)."""
        pairs = tuple(zip(self.columns, self._convert, strict=True))
        binary = self._binary
        part: list[bytes] = []
        blob: list[bytes] = []  # the part's binary values, end to end
        size = at = 0  # the part's bytes; where the next binary value starts in ``blob``
        for row in rows:
            values = [row[k] if fn is None else fn(row[k]) for k, fn in pairs]
            base, held = at, len(blob)
            for i in binary:  # its start (1-based) in place, its length after the columns
                value = values[i]
                if value is None:
                    values.append(None)
                else:
                    blob.append(value)
                    values[i] = at + 1
                    values.append(len(value))
                    at += len(value)
            encoded = _checked(values)
            extra = at - base  # its binary values' bytes
            if part and budget is not None and size + len(encoded) + extra > budget:
                yield _params(part, blob[:held] if binary else None)
                del blob[:held]
                part, size, at = [], 0, extra
                if base and blob:  # its values start the next part's blob
                    for i in binary:
                        if values[i] is not None:
                            values[i] -= base
                    encoded = _checked(values)
                if pacer is not None:
                    was = pacer.contended
                    pacer.pause()
                    if pacer.contended and not was:
                        budget *= slices.CONTENDED_SCALE
            part.append(encoded)
            size += len(encoded) + 1 + extra
        if part:
            yield _params(part, blob if binary else None)

    def insert(
        self,
        db: sqlite3.Connection,
        rows: Iterable[Mapping[str, Any]],
        budget: int | None = slices.JSON_BYTES,
    ) -> list[tuple[Any, ...]]:
        """Insert ``rows`` with ``db`` (a sqlite3 connection, in its transaction), one
        statement for each of :meth:`parts`, each part encoded after the thread yields
        (slices.py: larger parts once the GIL is in demand); what ``RETURNING``
        gave, as sqlite3 reads it. :class:`Unsendable` when a value cannot travel this
        way: the caller's transaction, which may hold some of the parts, is to be rolled
        back (:meth:`Writer.call` does)."""
        found: list[tuple[Any, ...]] = []
        for params in self.parts(rows, budget, slices.Pacer()):
            found += db.execute(self.sql, params).fetchall()
        return found

    async def run(
        self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]
    ) -> Sequence[tuple[Any, ...]] | None:
        """Insert ``rows`` in ``conn``'s transaction and give what ``RETURNING`` gave (no
        rows without one); None, inserting nothing, when ``payload()`` cannot carry them."""
        params = self.payload(rows)
        if params is None:
            return None
        result = await conn.execute(self.statement, params)
        return [tuple(row) for row in result] if result.returns_rows else ()


class Writer:
    """Batches written through a sqlite3 connection of their own, in a thread of their own:
    one hand-over to that thread per batch (the statement and the commit run there).

    Through SQLAlchemy's async engine a batch costs five hand-overs to aiosqlite's thread
    (checking the connection out, a cursor, the statement, the commit, the pool's reset),
    each a wake-up of that thread and then of the event loop: ~1 ms of event-loop CPU a
    batch on the 2-core bench machine against ~0.17 ms here, and 70-82 → 34-36 µs per row
    for 40-row batches of stored responses. The connection is opened in the thread on
    first use, with the engine's pragmas (WAL, so SQLAlchemy's connections read what was
    committed here at once).

    Errors are SQLAlchemy's, as the engine would raise them (``IntegrityError`` for a
    duplicate key, ``OperationalError`` for a locked or unwritable file), without the
    parameters: a batch holds clients' text, and errors are logged.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relaygate-sqlite")

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> Writer | None:
        """A writer to ``engine``'s SQLite file; None for another database, or one in
        memory (a connection of its own would be another, empty database)."""
        url = engine.url
        if not usable(engine.dialect) or not url.database or url.database == ":memory:":
            return None
        if url.query.get("mode") == "memory" or url.database.startswith("file:"):
            return None
        return cls(url.database)

    async def call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in the writer's thread, in a transaction committed after it
        (rolled back if it raises). ``work`` runs off the event loop: it must not touch
        what the loop's tasks change meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._call, work)

    async def aclose(self, drain_timeout: float | None = None) -> None:
        """Close the connection once any batch being written is done, waiting at most
        ``drain_timeout`` seconds for that (the connection is closed after it all the same)."""
        closed = self._thread.submit(self._close)
        self._thread.shutdown(wait=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(closed), drain_timeout)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = None
        try:
            db = self._db or self._connect()
            done = work(db)
            db.commit()
            return done
        except BaseException as exc:
            if db is not None and db.in_transaction:
                db.rollback()
            if isinstance(exc, sqlite3.Error):  # as the engine raises it; rows left out
                raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=15, check_same_thread=False)
        try:
            sqlite_pragmas(db)
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        return db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
