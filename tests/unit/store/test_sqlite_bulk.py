"""SQLite's batch inserts (store/sqlite_bulk.py) store exactly what SQLAlchemy's own
insert stores: for generated rows of every column type the tables use (text of any
characters, NUL included, None, booleans, integers, floats of any magnitude, UTC
datetimes, dates, binary values of any bytes), the tables read back equal, value by value
and type by type, whatever the batch's length and however it is cut into statements."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate import slices
from relaygate.store import sqlite_bulk
from relaygate.store.engine import create_engine
from relaygate.store.sqlite_bulk import RowsInsert, Writer, datetime_text
from relaygate.store.tables import stored_responses, usage_daily, usage_records

pytestmark = pytest.mark.skipif(
    not sqlite_bulk.usable(sa.create_engine("sqlite://").dialect),
    reason="this SQLite has no JSON functions (older than 3.38)",
)

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
maybe_text = st.none() | text
floats = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(-(2**31), 2**31 - 1)
moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
json_bytes = st.recursive(
    st.none() | st.booleans() | floats | ints | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
).map(msgspec.json.encode)


def _row(table: sa.Table, draw: st.DrawFn, key: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in table.columns:
        kind = column.type
        if column.primary_key and isinstance(kind, sa.String):
            value: Any = f"{key:06d}-{draw(text)}"
        elif isinstance(kind, sa.String):
            value = draw(text if not column.nullable else maybe_text)
        elif isinstance(kind, sa.Boolean):
            value = draw(st.booleans())
        elif isinstance(kind, sa.Integer):
            value = draw(ints)
        elif isinstance(kind, sa.Float):
            value = draw(floats if not column.nullable else st.none() | floats)
        elif isinstance(kind, sa.DateTime):
            value = draw(moments if not column.nullable else st.none() | moments)
        elif isinstance(kind, sa.Date):
            value = date(2026, 1, 1) if column.primary_key else draw(st.dates())
        elif isinstance(kind, sa.LargeBinary):  # what is stored (JSON), or any bytes at all
            value = draw(json_bytes | st.binary(max_size=40))
        else:  # a column type this test does not know: it must learn it
            raise AssertionError(f"{table.name}.{column.name}: {kind!r}")
        row[column.name] = value
    return row


@st.composite
def rows_of(draw: st.DrawFn, table: sa.Table) -> list[dict[str, Any]]:
    return [_row(table, draw, i) for i in range(draw(st.integers(1, 12)))]


@pytest.fixture
async def engines(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[list[AsyncEngine]]:
    """Three migrated SQLite databases: one written by SQLAlchemy, one by the bulk insert
    through SQLAlchemy's connection, one by the bulk insert through a :class:`Writer`."""
    made = []
    for name in ("generic", "bulk", "writer"):
        path = tmp_path / f"{name}.db"
        shutil.copyfile(sqlite_template, path)
        made.append(create_engine(f"sqlite+aiosqlite:///{path}"))
    yield made
    for engine in made:
        await engine.dispose()


async def _contents(engine: AsyncEngine, table: sa.Table) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        found = await conn.execute(sa.select(table).order_by(*table.primary_key.columns))
        return [tuple(row) for row in found]


@pytest.mark.parametrize("table", [usage_records, usage_daily, stored_responses], ids=str)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_the_bulk_insert_stores_what_sqlalchemy_stores(
    engines: list[AsyncEngine], table: sa.Table, data: st.DataObject
) -> None:
    rows = data.draw(rows_of(table))
    size = data.draw(st.sampled_from([1, 3, slices.SQL_ROWS, None]), "rows a statement")
    generic, bulk, by_writer = engines
    for engine in engines:  # empty, even after an example that failed
        async with engine.begin() as conn:
            await conn.execute(sa.delete(table))
    async with generic.begin() as conn:
        await conn.execute(sa.insert(table), rows)
    insert = RowsInsert(table, bulk.dialect)
    async with bulk.begin() as conn:
        assert await insert.run(conn, rows) == []
    writer = Writer.for_engine(by_writer)
    assert writer is not None
    assert await writer.call(lambda db: insert.insert(db, rows, size)) == []
    await writer.aclose()
    want = await _contents(generic, table)
    for got in (await _contents(bulk, table), await _contents(by_writer, table)):
        assert got == want
        assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in want]


def _statement_rows(sql: str) -> int:
    return sql.count("(?")


@settings(max_examples=60)
@given(data=st.data(), size=st.integers(1, 40) | st.none(), limit=st.integers(20, 2_000))
def test_a_batch_in_parts_is_the_batch(data: st.DataObject, size: int | None, limit: int) -> None:
    """The parts a batch is inserted in hold its rows' values, in order, each once; each
    part's row count is a power of two, at most ``size`` and within SQLite's limit on a
    statement's parameters; its statement has that many rows of parameters."""
    table = data.draw(st.sampled_from([usage_records, stored_responses]))
    rows = data.draw(rows_of(table)) * data.draw(st.integers(1, 30), "repeated")
    with mock.patch.object(sqlite_bulk, "variable_limit", lambda: limit):
        insert = RowsInsert(table, sa.create_engine("sqlite://").dialect)
    width = len(table.columns)
    assert insert.max_rows * width <= limit
    parts = list(insert.parts(rows, size))
    assert [v for p in parts for v in p.params] == insert.values(rows)
    assert sum(p.rows for p in parts) == len(rows)
    for p in parts:
        assert p.rows & (p.rows - 1) == 0 and p.rows <= min(size or limit, insert.max_rows)
        assert len(p.params) == p.rows * width and _statement_rows(p.sql) == p.rows
    # a few statements' texts serve every length of batch: one per power of two
    assert len({p.sql for p in parts}) <= (len(rows)).bit_length()
    # a pause that waits for the GIL: the next parts are larger, still bounded (slices.py)
    with (
        mock.patch.object(slices, "_yield", lambda: time.sleep(0.002)),
        mock.patch.object(slices, "contended_s", lambda: 0.001),
    ):
        paced = list(insert.parts(rows, size, slices.Pacer()))
    assert [v for p in paced for v in p.params] == insert.values(rows)
    larger = (size or limit) * slices.CONTENDED_SCALE
    assert all(
        p.rows <= min(size or limit if i == 0 else larger, insert.max_rows)
        for i, p in enumerate(paced)
    )


async def test_a_batch_beyond_one_statements_parameters_is_stored(
    engines: list[AsyncEngine],
) -> None:
    """More rows than one statement may take (SQLite's limit on parameters, made small
    here) go in several statements, all of them stored."""
    _, _, engine = engines
    with mock.patch.object(sqlite_bulk, "variable_limit", lambda: 100):
        insert = RowsInsert(stored_responses, engine.dialect)
    assert insert.max_rows == 8  # 10 columns: 8 rows of parameters at most
    row = {c.name: None for c in stored_responses.columns} | {
        "owner": "t1", "model": "m", "created_at": datetime(2026, 11, 30),
        "input_items": b"[]", "response": b"{}",
    }  # fmt: skip
    rows = [{**row, "id": f"resp_{i}"} for i in range(77)]
    writer = Writer.for_engine(engine)
    assert writer is not None
    await writer.call(lambda db: insert.insert(db, rows, None))
    await writer.aclose()
    async with engine.connect() as conn:
        ids = (await conn.execute(sa.select(stored_responses.c.id))).scalars().all()
    assert sorted(ids) == sorted(r["id"] for r in rows)


async def test_returning_gives_the_rows_inserted(engines: list[AsyncEngine]) -> None:
    """``ON CONFLICT DO NOTHING RETURNING``: a row already there is not returned, and
    what is returned reads as SQLAlchemy reads it (a DATETIME as a datetime)."""
    _, engine, _ = engines
    keys = "request_id, created_at"
    insert = RowsInsert(
        usage_records,
        engine.dialect,
        f"ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}",
        returning=["request_id", "created_at"],
    )
    row = {c.name: None for c in usage_records.columns} | {
        "request_id": "r1", "created_at": datetime(2026, 11, 30, tzinfo=UTC), "api": "openai",
        "endpoint": "/v1/chat/completions", "model": "m", "prompt_tokens": 1,
        "completion_tokens": 2, "tokens_estimated": False, "cached": False, "status": "ok",
        "http_status": 200, "duration_ms": 1.5, "cost": 0.0,
    }  # fmt: skip
    async with engine.begin() as conn:
        first = await insert.run(conn, [row])
        again = await insert.run(conn, [row, {**row, "request_id": "r2"}])
    assert first == [("r1", datetime(2026, 11, 30))]
    assert [r[0] for r in again] == ["r2"]


async def test_a_writer_raises_sqlalchemys_errors_without_the_rows(
    engines: list[AsyncEngine], tmp_path: Path
) -> None:
    """A duplicate key is SQLAlchemy's IntegrityError (the store's fallback catches it),
    nothing of the batch is kept, and neither the error nor its text holds the rows: they
    are clients' text, and errors are logged."""
    _, _, engine = engines
    writer = Writer.for_engine(engine)
    assert writer is not None
    insert = RowsInsert(stored_responses, engine.dialect)
    row = {c.name: None for c in stored_responses.columns} | {
        "id": "resp_1", "owner": "t1", "model": "m", "created_at": datetime(2026, 11, 30),
        "input_items": b"[]", "response": b'{"secret": "sk-live-do-not-log"}',
    }  # fmt: skip
    assert await writer.call(lambda db: insert.insert(db, [row])) == []
    with pytest.raises(IntegrityError) as caught:  # the duplicate in the second statement
        await writer.call(lambda db: insert.insert(db, [{**row, "id": "resp_2"}, row], 1))
    assert "sk-live" not in str(caught.value) and "sk-live" not in repr(caught.value.params)
    async with engine.connect() as conn:
        ids = (await conn.execute(sa.select(stored_responses.c.id))).scalars().all()
    assert ids == ["resp_1"]  # the batch's other row went with it
    await writer.aclose()

    def fails_after_inserting(db: sqlite3.Connection) -> None:
        insert.insert(db, [{**row, "id": "resp_3"}])
        raise AssertionError("the caller's own check failed")

    writer = Writer.for_engine(engine)
    assert writer is not None
    with pytest.raises(AssertionError):
        await writer.call(fails_after_inserting)
    async with engine.connect() as conn:
        ids = (await conn.execute(sa.select(stored_responses.c.id))).scalars().all()
    assert ids == ["resp_1"]  # rolled back
    await writer.aclose()

    unwritable = tmp_path / "missing-folder" / "relaygate.db"
    broken = Writer(str(unwritable))
    with pytest.raises(OperationalError):
        await broken.call(lambda db: insert.insert(db, [row]))
    await broken.aclose()


def test_a_writer_only_for_a_sqlite_file() -> None:
    """In memory, a connection of its own would be another database; PostgreSQL has none."""
    for url in (
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    ):
        assert Writer.for_engine(create_engine(url)) is None, url
    assert Writer.for_engine(create_engine("sqlite+aiosqlite:///data/x.db")) is not None


@given(
    moment=st.datetimes(
        timezones=st.none()
        | st.builds(
            timezone, st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23))
        )
    )
)
def test_datetimes_are_written_as_sqlalchemy_writes_them(moment: datetime) -> None:
    """The C-formatted text stands in for SQLAlchemy's SQLite DATETIME processor: the
    same text for any datetime, naive or in any time zone, years 1 to 9999."""
    dialect = sa.create_engine("sqlite://").dialect
    theirs = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert theirs is not None
    assert sqlite_bulk.bind_processor(usage_records.c.created_at, dialect) is datetime_text
    assert datetime_text(moment) == theirs(moment)
