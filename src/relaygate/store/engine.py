"""The async engine: SQLite (embedded, WAL) by default, PostgreSQL via asyncpg to scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["create_engine", "ensure_sqlite_folder", "is_sqlite", "safe_url", "sqlite_pragmas"]


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def safe_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def ensure_sqlite_folder(url: str) -> None:
    """Create the SQLite file's folder (blocking: call it before the event loop runs)."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str) -> AsyncEngine:
    """An engine for ``url``; SQLite gets WAL mode. Migrations create the folder first."""
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 15})
        event.listen(engine.sync_engine, "connect", lambda conn, _record: sqlite_pragmas(conn))
        return engine
    return create_async_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": 10},
    )  # fmt: skip


def sqlite_pragmas(connection: Any) -> None:
    """What every connection to the SQLite database sets (a DB-API connection, sqlite3's or
    aiosqlite's adapter): WAL, NORMAL sync, foreign keys, 15 s of waiting for a writer."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()
