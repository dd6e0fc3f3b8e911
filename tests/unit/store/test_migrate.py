"""Migrations: the server's idea of the newest schema matches the migration folder and the
tables the code uses, on SQLite and PostgreSQL; 0007 moves stored responses' output into
the Response object and back without losing any."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from blockbuster import BlockBuster

from relaygate.store.engine import create_engine
from relaygate.store.migrate import alembic_config, head_revision, upgrade
from relaygate.store.responses import ResponseStore
from relaygate.store.schema import SCHEMA_REVISION, MigrationFailed, current_revision, migrate_apart
from relaygate.store.tables import metadata
from tests.conftest import PG_SERVER, admin_sql

T = TypeVar("T")


def test_schema_revision_is_the_newest_migration() -> None:
    assert head_revision() == SCHEMA_REVISION


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(
    request: pytest.FixtureRequest, tmp_path: Path, blockbuster: BlockBuster
) -> Iterator[str]:
    """A database of each kind with no schema at all (the async URL the server uses).
    Migrating runs Alembic's blocking file reads inside its own event loop, as
    ``relaygate db upgrade`` does before serving: not the request path blockbuster guards."""
    blockbuster.deactivate()
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"rg_migrate_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _on(url: str, work: Callable[[sa.Connection], T]) -> T:
    """Run blocking ``work`` on a connection to ``url``, in one transaction, as the server
    connects (its async engine)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def test_the_migrations_build_the_tables_the_code_uses(empty_url: str) -> None:
    """What the migrations create is what store/tables.py declares: no column, index or
    table only on one side (a column the code writes that a database lacks fails at run
    time; an index only the migrations have is written on every insert for nothing)."""
    upgrade(empty_url)
    diff = asyncio.run(_on(empty_url, _differences))
    kinds = {
        "add_table",
        "remove_table",
        "add_column",
        "remove_column",
        "add_index",
        "remove_index",
    }
    assert [d for d in diff if _kind(d) in kinds] == []


# Run in a fresh interpreter: this one has imported Alembic (the tests above use it).
_APART = """
import json, sys
from relaygate.store.schema import migrate_apart
runs = [migrate_apart(sys.argv[1]) for _ in range(2)]
held = sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "mako", "pygments"))
print(json.dumps({"migrated": runs, "held": held}))
"""


def test_serve_migrates_in_a_process_that_exits_and_never_loads_alembic(empty_url: str) -> None:
    """``relaygate serve`` migrates an empty database in a spawned process (Alembic, Mako
    and Pygments would stay in the serving process: 11 MiB of RSS), and on a database
    already at this version's schema reads one row and starts nothing."""
    result = subprocess.run(
        [sys.executable, "-c", _APART, empty_url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"migrated": [True, False], "held": []}
    assert asyncio.run(current_revision(empty_url)) == SCHEMA_REVISION


def test_a_database_from_a_newer_version_fails_the_migration_in_one_line(empty_url: str) -> None:
    """A revision this version does not know (a newer relaygate migrated the database):
    the migration process's failure reaches the caller as one line, naming the revision."""
    upgrade(empty_url)
    asyncio.run(_on(empty_url, lambda conn: conn.execute(_SET_VERSION, {"v": "9999"})))
    with pytest.raises(MigrationFailed) as failed:
        migrate_apart(empty_url)
    assert "9999" in str(failed.value) and "\n" not in str(failed.value)


_SET_VERSION = sa.text("UPDATE alembic_version SET version_num = :v")


def _differences(conn: sa.Connection) -> list[Any]:
    """Alembic's comparison of the database with store/tables.py, leaving out PostgreSQL's
    partitions of ``usage_records`` (``usage_records_<month>``, ``usage_records_default``:
    made by the migrations and the monthly partition job, not declared as tables)."""

    def include(name: str | None, kind: str, parent: dict[str, str | None]) -> bool:
        table = name if kind == "table" else parent.get("table_name")
        return not (table or "").startswith("usage_records_")

    context = MigrationContext.configure(conn, opts={"include_name": include})
    return list(compare_metadata(context, metadata))


def _kind(change: Any) -> str:
    first = change[0] if isinstance(change, list) else change
    return str(first[0])


def test_0007_keeps_the_output_and_0006_gets_it_back(empty_url: str) -> None:
    """A response stored under 0006 (output in its own column) is continued the same after
    0007; a downgrade writes each response's output back into its column."""
    upgrade(empty_url, "0006")
    output = [{"type": "message", "role": "assistant", "content": [{"text": 'é "q"'}]}]
    response = {"id": "resp_1", "object": "response", "output": output, "usage": None}
    row = {
        "id": "resp_1",
        "owner": "t1",
        "tenant_id": None,
        "key_id": None,
        "model": "m",
        "created_at": datetime(2026, 11, 30, 12, tzinfo=UTC),
        "expires_at": None,
        "previous_response_id": None,
        "input_items": msgspec.json.encode([{"role": "user", "content": "hi"}]),
        "output_items": msgspec.json.encode(output),
        "response": msgspec.json.encode(response),
    }
    types = {"created_at": sa.DateTime(timezone=True), "expires_at": sa.DateTime(timezone=True)}
    table_0006 = sa.table("responses", *(sa.column(name, types.get(name)) for name in row))
    insert = table_0006.insert().values(row)
    asyncio.run(_on(empty_url, lambda conn: conn.execute(insert, row)))

    upgrade(empty_url)
    chain = asyncio.run(_chain(empty_url, "resp_1", "t1"))
    assert chain == [{"role": "user", "content": "hi"}, *output]

    command.downgrade(alembic_config(empty_url), "0006")
    select = sa.text("SELECT output_items FROM responses")
    back = asyncio.run(_on(empty_url, lambda conn: conn.execute(select).scalar_one()))
    assert msgspec.json.decode(back) == output


async def _chain(url: str, response_id: str, owner: str) -> list[Any] | None:
    engine = create_engine(url)
    try:
        return await ResponseStore(engine).chain(response_id, owner)
    finally:
        await engine.dispose()
