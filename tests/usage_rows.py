"""Reading the usage records a gateway wrote, for tests that count them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.store.engine import create_engine
from relaygate.store.tables import usage_records

__all__ = ["records_by_request", "usage_rows"]


async def usage_rows(engine: AsyncEngine, expected: int, seconds: float = 5.0) -> Sequence[Any]:
    """The usage rows, oldest first, once ``expected`` of them are written (or ``seconds``
    passed: the caller's count then fails). For a gateway still running."""
    query = sa.select(usage_records).order_by(usage_records.c.created_at)
    for _ in range(int(seconds / 0.05)):
        async with engine.connect() as conn:
            found = (await conn.execute(query)).all()
        if len(found) >= expected:
            return found
        await asyncio.sleep(0.05)
    return found


async def records_by_request(database_url: str) -> dict[str, Any]:
    """Every usage row in the database, by request id; for a gateway that has shut down,
    whose writer drained its outbox on the way out (nothing is still to come)."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(usage_records))).all()
    finally:
        await engine.dispose()
    by_id = {row.request_id: row for row in rows}
    assert len(by_id) == len(rows)
    return by_id
