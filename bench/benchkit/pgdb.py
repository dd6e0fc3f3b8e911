"""Fresh PostgreSQL databases for gateway runs (section 14), made and dropped with asyncpg.

RELAYGATE_BENCH_POSTGRES_URL names the server (default postgresql://postgres@127.0.0.1:5432,
the one `make services` starts); each gateway start gets a new database there, dropped at
the end of the section.
"""

from __future__ import annotations

import asyncio
import os
import uuid

from .common import BenchError

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432"


def server_url() -> str:
    return (os.environ.get("RELAYGATE_BENCH_POSTGRES_URL") or DEFAULT_URL).rstrip("/")


async def _execute(database: str, sql: str) -> object:
    import asyncpg  # the gateway's dependency, in the same venv

    try:
        conn = await asyncpg.connect(f"{server_url()}/{database}", timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(
            f"PostgreSQL at {server_url()} is needed (make services, or set "
            f"RELAYGATE_BENCH_POSTGRES_URL): {exc}"
        ) from exc
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def fresh(label: str) -> str:
    """A new, empty database; its SQLAlchemy URL (the gateway migrates it at start)."""
    name = f"rgbench_{label}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_execute("postgres", f'CREATE DATABASE "{name}"'))
    return f"postgresql+asyncpg://{server_url().split('://', 1)[1]}/{name}"


def drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def count_rows(url: str, table: str) -> int:
    name = url.rsplit("/", 1)[1]
    return int(asyncio.run(_execute(name, f"SELECT count(*) FROM {table}")))  # type: ignore[call-overload]
