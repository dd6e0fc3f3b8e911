"""Which schema a database has, read without importing Alembic (the server never needs it),
and the migration run apart, in a process that exits, when the schema is not this version's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from relaygate.store.engine import create_engine, ensure_sqlite_folder

__all__ = ["SCHEMA_REVISION", "MigrationFailed", "current_revision", "migrate_apart"]

# The newest migration in store/migrations/versions; a test checks the two agree.
SCHEMA_REVISION = "0007"


async def current_revision(url: str) -> str | None:
    """The database's Alembic revision, None when it has never been migrated."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            try:
                found = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
            except SQLAlchemyError:
                return None  # no alembic_version table: never migrated
            return None if found is None else str(found)
    finally:
        await engine.dispose()


class MigrationFailed(Exception):
    """The migration process could not bring the database to this version's schema."""


def migrate_apart(url: str) -> bool:
    """Bring the database at ``url`` to :data:`SCHEMA_REVISION`; True when it migrated.

    A database already there is only read (one query). Otherwise Alembic runs in a
    spawned process that exits when done: Alembic with Mako and Pygments would add 11 MiB
    to the RSS of the process that serves (measured in bench/RESULTS.md, section 6), and
    a module once imported is never given back. Blocking: call it outside the event loop.
    """
    ensure_sqlite_folder(url)
    if asyncio.run(current_revision(url)) == SCHEMA_REVISION:
        return False
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as the workers
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        failure = pool.submit(_upgrade, url).result()
    if failure:
        raise MigrationFailed(failure)
    return True


def _upgrade(url: str) -> str | None:
    """In the migration process: None, or what went wrong in one line (an exception of
    Alembic or a driver may not survive pickling back to the parent)."""
    from relaygate.store.migrate import upgrade

    try:
        upgrade(url)
    except Exception as exc:  # every failure is reported to the parent, in one line
        lines = str(exc).splitlines()
        return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
    return None
