"""SQLite: many rows in one statement of a fixed text, their values bound by the driver in C.

SQLAlchemy renders a batch as ``INSERT ... VALUES (...), (...)`` and binds and converts
every parameter of every row in Python, on the event loop: ~17 µs a usage record, so a
100-row batch held the loop ~1.7 ms, and a request at concurrency 1 waited behind it
(issue 15's p99). Here a batch goes through a sqlite3 connection in a thread of its own
(:class:`Writer`): the rows' values, converted as SQLAlchemy's bind processors would,
are one flat list that the sqlite3 module binds in C to ``INSERT ... VALUES (?, ...),
(?, ...)`` with a row count that is a power of two (16 rows: statements for 16, 8, 4, 2
and 1 rows, each prepared once per connection and then kept by sqlite3's statement
cache). ``insert()`` cuts a batch into parts of a few rows, one statement each, the
thread yielding between them (slices.py), so a big batch is not one burst of CPU.

The values are those SQLAlchemy would bind: its own bind processors give a DATETIME's or
a DATE's text and a boolean's 0/1, so SQLAlchemy reads the rows back as it reads its own
(tests/unit/store/test_sqlite_bulk.py checks, on generated rows, that both store the same
values, type by type).

Why bound values and not ``executemany``: the driver's thread holds the GIL while it
binds a row and releases it for each step, so 120 rows are 120 hand-overs of the GIL
between it and the event loop, and at saturation each costs a switch interval (5 ms,
slices.py). One statement for many rows binds them all in one hold of the GIL and
inserts them all in one step with it released.

Why not one JSON parameter unpacked by SQLite (``json_each``, and ``value->>i`` for each
column), as before: SQLite 3.40 renders a row's JSON text again and parses it again for
every column it reads, after msgspec has encoded the rows. Instructions per row
(callgrind, 3,000 usage records in 500-record batches; 2,800 stored responses in
140-answer batches), the whole write (conversion, statements, rollups, commit): a usage
record 253k with JSON, 90k bound; a stored response 114k, 64k (bench/RESULTS.md,
section 14).

``usable()``: the callers' queries use SQLite's JSON functions (``json_group_array``),
built in from 3.38; with an older library they keep SQLAlchemy's statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaygate import slices
from relaygate.store.engine import sqlite_pragmas

__all__ = [
    "Part", "RowsInsert", "Writer", "bind_processor", "datetime_text", "usable", "variable_limit",
]  # fmt: skip

T = TypeVar("T")
_MIN_VERSION = (3, 38)  # the JSON functions built in


class Part(NamedTuple):
    """Rows of a batch as one statement: how many, the statement, its parameters."""

    rows: int
    sql: str
    params: list[Any]


def usable(dialect: Dialect) -> bool:
    """Whether ``dialect`` is SQLite with the JSON functions the callers' queries use."""
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
    """What SQLAlchemy does to ``column``'s values before binding them, or a faster
    equivalent: for a DATETIME in SQLite's default format, :func:`datetime_text` (the C
    isoformat); for a BOOLEAN that is never NULL, ``int``; for binary values, nothing
    (sqlite3 binds ``bytes`` as the BLOB it binds SQLAlchemy's ``memoryview`` of them as).
    The sqlite3 module binds ``int``, ``float`` and ``str`` directly, but looks anything
    else up in its adapters first (~0.25 µs a value: ``True``, ``None``, ``bytes``)."""
    convert = column.type.dialect_impl(dialect).bind_processor(dialect)
    if convert is None:
        return None
    kind = column.type
    if isinstance(kind, sa.DateTime) and all(
        convert(probe) == datetime_text(probe) for probe in _PROBES
    ):
        return datetime_text
    if isinstance(kind, sa.Boolean) and not column.nullable and _as_int(convert):
        return int
    if isinstance(kind, sa.LargeBinary) and bytes(convert(b"\x00\xff")) == b"\x00\xff":
        return None
    return convert


def _as_int(convert: Callable[[Any], Any]) -> bool:
    return [convert(True), convert(False)] == [1, 0]


@functools.cache
def variable_limit() -> int:
    """How many parameters one statement may have with this SQLite library (32,766 by
    default since 3.32; builds may set another)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        return db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


class RowsInsert:
    """``INSERT INTO table (columns) VALUES (?, ...), ... <tail>`` for any number of rows.

    ``tail`` is what follows the rows (``ON CONFLICT ...``, ``RETURNING ...``).
    ``returning`` names the columns of a ``RETURNING`` in ``tail``: ``run()`` gives them
    as SQLAlchemy reads them.
    """

    def __init__(
        self,
        table: sa.Table,
        dialect: Dialect,
        tail: str = "",
        returning: Sequence[str] = (),
    ) -> None:
        self.table = table.name
        self.columns = tuple(c.name for c in table.columns)
        self._pairs = tuple(
            (column.name, bind_processor(column, dialect)) for column in table.columns
        )
        self._tail = f" {tail}" if tail else ""
        self._row = f"({', '.join('?' * len(self.columns))})"
        self._sql: dict[int, str] = {}
        # rows in one statement at most: a power of two within SQLite's parameters
        self.max_rows = _floor2(variable_limit() // len(self.columns))
        # what SQLAlchemy does to a returned column's value as the driver gives it
        self._readers = [
            table.c[name].type.dialect_impl(dialect).result_processor(dialect, None)
            for name in returning
        ]

    def sql(self, rows: int) -> str:
        """The statement for ``rows`` rows (kept: the callers ask for a few counts only)."""
        found = self._sql.get(rows)
        if found is None:
            found = self._sql[rows] = (
                f"INSERT INTO {self.table} ({', '.join(self.columns)}) "
                f"VALUES {', '.join([self._row] * rows)}{self._tail}"
            )
        return found

    def values(self, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
        """The rows' values, row after row, each as SQLAlchemy would bind it."""
        pairs = self._pairs
        return [row[k] if fn is None else fn(row[k]) for row in rows for k, fn in pairs]

    def parts(
        self,
        rows: Sequence[Mapping[str, Any]],
        size: int | None = slices.SQL_ROWS,
        pacer: slices.Pacer | None = None,
    ) -> Iterator[Part]:
        """The rows in order as statements of at most ``size`` rows (None: as many as one
        statement takes), each a power of two, so that a batch of any length needs only a
        few statements' texts; each converted when it is asked for. With a ``pacer``, it
        pauses after each part is taken, and once the GIL is in demand the parts grow
        ``CONTENDED_SCALE``-fold, without pauses (slices.py)."""
        if size is not None and size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        start = 0
        while start < len(rows):
            if start and pacer is not None:
                pacer.pause()
            cap = self.max_rows if size is None else size
            if pacer is not None and pacer.contended:
                cap *= slices.CONTENDED_SCALE
            count = _floor2(min(len(rows) - start, cap, self.max_rows))
            taken = rows[start : start + count]
            yield Part(count, self.sql(count), self.values(taken))
            start += count

    def insert(
        self,
        db: sqlite3.Connection,
        rows: Sequence[Mapping[str, Any]],
        size: int | None = slices.SQL_ROWS,
    ) -> list[tuple[Any, ...]]:
        """Insert ``rows`` with ``db`` (a sqlite3 connection, in its transaction), one
        statement for each of :meth:`parts`, each converted after the thread yields
        (slices.py: larger parts once the GIL is in demand); what ``RETURNING`` gave, as
        sqlite3 reads it."""
        found: list[tuple[Any, ...]] = []
        for part in self.parts(rows, size, slices.Pacer()):
            found += db.execute(part.sql, part.params).fetchall()
        return found

    async def run(
        self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...]]:
        """Insert ``rows`` in ``conn``'s transaction and give what ``RETURNING`` gave (no
        rows without one), read as SQLAlchemy reads those columns."""
        found: list[tuple[Any, ...]] = []
        for part in self.parts(rows, None):
            result = await conn.exec_driver_sql(part.sql, tuple(part.params))
            if result.returns_rows:
                found += [tuple(row) for row in result]
        readers = self._readers
        if not any(readers):
            return found
        return [
            tuple(v if fn is None else fn(v) for v, fn in zip(row, readers, strict=True))
            for row in found
        ]


def _floor2(n: int) -> int:
    """The largest power of two not above ``n`` (at least 1)."""
    return 1 << (max(n, 1).bit_length() - 1)


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
