"""SQLite's batch inserts (store/sqlite_bulk.py) store exactly what SQLAlchemy's own
insert stores: for generated rows of every column type the tables use (text of any
characters, None, booleans, integers, floats of any magnitude, UTC datetimes, dates,
binary JSON), the two tables read back equal, value by value and type by type. A batch
the JSON path cannot carry (a NUL) is refused, for the caller's generic insert."""

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
from relaygate.store.sqlite_bulk import JsonRowsInsert, Unsendable, Writer, datetime_text
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


def _cannot_travel(rows: list[dict[str, Any]]) -> bool:
    """A NUL character (or the text of one escaped) in a text value, which the JSON path
    does not carry; binary values travel as they are, whatever their bytes."""
    marks = ("\x00", "\\u0000")
    for row in rows:
        for value in row.values():
            if isinstance(value, str) and any(m in value for m in marks):
                return True
    return False


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
    budget = data.draw(st.sampled_from([1, 300, slices.JSON_BYTES, None]), "slice budget")
    generic, bulk, by_writer = engines
    for engine in engines:  # empty, even after an example that failed
        async with engine.begin() as conn:
            await conn.execute(sa.delete(table))
    async with generic.begin() as conn:
        await conn.execute(sa.insert(table), rows)
    insert = JsonRowsInsert(table, bulk.dialect)
    async with bulk.begin() as conn:
        if await insert.run(conn, rows) is None:
            assert _cannot_travel(rows)  # only then: the caller inserts them as SQLAlchemy does
            await conn.execute(sa.insert(table), rows)
    writer = Writer.for_engine(by_writer)
    assert writer is not None
    try:
        await writer.call(lambda db: insert.insert(db, rows, budget))
    except Unsendable:
        assert _cannot_travel(rows)  # the parts before it were rolled back
        async with by_writer.begin() as conn:
            await conn.execute(sa.insert(table), rows)
    await writer.aclose()
    want = await _contents(generic, table)
    for got in (await _contents(bulk, table), await _contents(by_writer, table)):
        assert got == want
        assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in want]


def _rows_in(insert: JsonRowsInsert, params: sqlite_bulk.Params) -> list[list[Any]]:
    """A part's rows as the statement reads them: each binary value cut from ``blob``."""
    rows = msgspec.json.decode(params["rows"])
    binary = [i for i, c in enumerate(insert.columns) if c in ("input_items", "response")]
    blob = params.get("blob", b"")
    assert isinstance(blob, bytes)
    found = []
    for row in rows:
        values, lengths = row[: len(insert.columns)], row[len(insert.columns) :]
        assert len(lengths) == len(binary)
        for i, length in zip(binary, lengths, strict=True):
            if values[i] is not None:
                values[i] = blob[values[i] - 1 : values[i] - 1 + length]
        found.append(values)
    return found


def _size(params: sqlite_bulk.Params) -> int:
    return sum(len(v if isinstance(v, bytes) else v.encode()) for v in params.values())


@settings(max_examples=60)
@given(data=st.data(), budget=st.integers(1, 2_000))
def test_a_batch_in_parts_is_the_batch(data: st.DataObject, budget: int) -> None:
    """The parts a batch is inserted in hold its rows, in order, each once; a part holds
    more than one row only within ``budget`` bytes."""
    table = data.draw(st.sampled_from([usage_records, stored_responses]))
    rows = data.draw(rows_of(table))
    insert = JsonRowsInsert(table, sa.create_engine("sqlite://").dialect)
    whole = insert.payload(rows)
    try:
        parts = list(insert.parts(rows, budget))
    except Unsendable:
        assert whole is None and _cannot_travel(rows)
        return
    assert whole is not None
    rows_whole = _rows_in(insert, whole)
    assert [r for p in parts for r in _rows_in(insert, p)] == rows_whole
    # every binary value is in its part's blob, and nothing else is
    for p in parts:
        held = [v for r in _rows_in(insert, p) for v in r if isinstance(v, bytes)]
        assert b"".join(held) == p.get("blob", b"")
    assert all(_size(p) <= budget + 2 or len(_rows_in(insert, p)) == 1 for p in parts)
    # a pause that waits for the GIL: the next parts are larger, still bounded (slices.py)
    with (
        mock.patch.object(slices, "_yield", lambda: time.sleep(0.002)),
        mock.patch.object(slices, "contended_s", lambda: 0.001),
    ):
        paced = list(insert.parts(rows, budget, slices.Pacer()))
    assert [r for p in paced for r in _rows_in(insert, p)] == rows_whole
    larger = budget * slices.CONTENDED_SCALE
    assert all(
        _size(p) <= (budget if i == 0 else larger) + 2 or len(_rows_in(insert, p)) == 1
        for i, p in enumerate(paced)
    )


async def test_returning_gives_the_rows_inserted(engines: list[AsyncEngine]) -> None:
    """``ON CONFLICT DO NOTHING RETURNING``: a row already there is not returned."""
    _, engine, _ = engines
    keys = "request_id, created_at"
    insert = JsonRowsInsert(
        usage_records, engine.dialect, f"ON CONFLICT ({keys}) DO NOTHING RETURNING request_id"
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
    assert [r[0] for r in first] == ["r1"]
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
    insert = JsonRowsInsert(stored_responses, engine.dialect)
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

    nul = {**row, "id": "resp_5", "model": "a\x00b"}

    def fails_after_inserting(db: sqlite3.Connection) -> None:
        params = insert.payload([{**row, "id": "resp_3"}])
        assert params is not None
        db.execute(insert.sql, params)
        raise AssertionError("the caller's own check failed")

    writer = Writer.for_engine(engine)
    assert writer is not None
    with pytest.raises(AssertionError):
        await writer.call(fails_after_inserting)
    async with engine.connect() as conn:
        ids = (await conn.execute(sa.select(stored_responses.c.id))).scalars().all()
    assert ids == ["resp_1"]  # rolled back
    await writer.aclose()

    writer = Writer.for_engine(engine)
    assert writer is not None
    with pytest.raises(Unsendable):  # in the second part, after the first was inserted
        await writer.call(lambda db: insert.insert(db, [{**row, "id": "r4"}, nul], 1))
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
