"""Which schema a database has, read without importing Alembic (the server never needs it)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from relaygate.store.engine import create_engine

__all__ = ["SCHEMA_REVISION", "current_revision"]

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
