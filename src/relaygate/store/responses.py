"""Stored Responses API answers (``store: true``), per tenant, kept for a retention period.

A row holds one response: the Response object (for ``GET /v1/responses/{id}``; its
``output`` holds the response's output items), the input items its request added (with
the output, the turn that ``previous_response_id`` continues), and the id of the
response it continued. The output is stored once, inside the Response object (migration
0007 dropped the copy in a column of its own, and an index no query read: together a
fifth of the CPU each stored answer's write took).
Every read is scoped to an owner (``responses.owner``: the caller's tenant, or
its subject when it has none): another owner's row, or an expired one, is not
there. Items are stored as JSON bytes (msgspec), not a JSON column, so what
comes back is exactly what was stored, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.store import sqlite_bulk
from relaygate.store.sqlite_bulk import RowsInsert
from relaygate.store.tables import stored_responses

__all__ = ["MAX_CHAIN", "ResponseRecord", "ResponseStore"]

JSON = dict[str, Any]
# The most stored responses one request's history is read from: a longer conversation
# keeps its newest turns (bounds the reads, and the prompt, of a runaway agent loop).
MAX_CHAIN = 100
_encode = msgspec.json.encode
_decode = msgspec.json.decode


# Not frozen: never changed once made, and a frozen dataclass's __init__ took 3.9 µs of
# the event loop against 1.2 µs for each answer stored (bench/RESULTS.md, section 10)
@dataclass(slots=True)
class ResponseRecord:
    id: str
    owner: str  # who may read it: the tenant's id, or the caller's subject without one
    tenant_id: str | None
    key_id: str | None
    model: str
    created_at: datetime
    expires_at: datetime | None  # None: kept until deleted
    previous_response_id: str | None
    input_items: list[JSON]
    # the Response object; its ``output`` is the response's output items. A dict as read
    # back; as just made, the Struct the Responses API renders (it encodes to the same JSON)
    response: JSON | msgspec.Struct
    # ``response`` as JSON when it is at hand (encoded once: for the row, for GET)
    encoded: bytes | None = field(default=None, compare=False, repr=False)


class ResponseStore:
    """The ``responses`` table. Times are UTC; reads never see expired rows."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite: a batch in a few statements (store/sqlite_bulk.py), not a row at a
        # time, written by a connection of its own in one hand-over to its thread
        self._bulk = (
            RowsInsert(stored_responses, engine.dialect)
            if sqlite_bulk.usable(engine.dialect)
            else None
        )
        self._writer = sqlite_bulk.Writer.for_engine(engine) if self._bulk else None

    async def aclose(self, drain_timeout: float | None = None) -> None:
        """Close what the store opened beside the engine (which its owner disposes of),
        waiting at most ``drain_timeout`` seconds for a batch being written."""
        if self._writer is not None:
            await self._writer.aclose(drain_timeout)

    async def save(self, record: ResponseRecord) -> None:
        """Store one response (saving the same id again for the same owner replaces it)."""
        row = _row(record)
        async with self.engine.begin() as conn:
            try:
                async with conn.begin_nested():
                    await conn.execute(sa.insert(stored_responses).values(row))
            except IntegrityError:
                await conn.execute(
                    sa.update(stored_responses)
                    .where(stored_responses.c.id == record.id)
                    .where(stored_responses.c.owner == record.owner)
                    .values(row)
                )

    async def save_many(self, records: Sequence[ResponseRecord]) -> None:
        """Store several responses in one transaction (ids are new as a rule; if one is
        not, each is saved on its own, replacing the one stored)."""
        if not records:
            return
        rows = [_row(r) for r in records]
        try:
            if self._writer is not None and (bulk := self._bulk) is not None:
                # As many rows a statement as it takes, not slices (slices.py): parts of
                # two or three answers cost storing's p50 at c=1 ~0.05 ms more
                # (bench/RESULTS.md, section 10)
                await self._writer.call(lambda db: bulk.insert(db, rows, None))
                return
            async with self.engine.begin() as conn:
                if self._bulk is None:
                    await conn.execute(sa.insert(stored_responses), rows)
                else:
                    await self._bulk.run(conn, rows)
        except IntegrityError:
            for record in records:
                await self.save(record)

    async def get(
        self, response_id: str, owner: str, now: datetime | None = None
    ) -> ResponseRecord | None:
        """The owner's response, None when it has none by that id (or it expired)."""
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    sa.select(stored_responses).where(
                        *_visible(response_id, owner, now or _utcnow())
                    )
                )
            ).first()
        return None if found is None else _record(found._mapping)

    async def delete(self, response_id: str, owner: str) -> bool:
        """Delete the owner's response; False when it had none by that id."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(stored_responses).where(
                    stored_responses.c.id == response_id,
                    stored_responses.c.owner == owner,
                )
            )
        return bool(result.rowcount)

    async def chain(
        self,
        response_id: str,
        owner: str,
        *,
        limit: int = MAX_CHAIN,
        now: datetime | None = None,
    ) -> list[JSON] | None:
        """The conversation up to and including ``response_id``, oldest item first.

        Each stored response gives its input items, then its output items; links
        are followed through ``previous_response_id`` up to ``limit`` responses (the
        oldest are left out beyond that) and stop at one deleted or expired. None
        when ``response_id`` itself is not the owner's.
        """
        now = now or _utcnow()
        turns: list[list[JSON]] = []
        seen: set[str] = set()
        next_id: str | None = response_id
        columns = (
            stored_responses.c.previous_response_id,
            stored_responses.c.input_items,
            stored_responses.c.response,
        )
        async with self.engine.connect() as conn:
            while next_id is not None and next_id not in seen and len(turns) < limit:
                seen.add(next_id)
                row = (
                    await conn.execute(sa.select(*columns).where(*_visible(next_id, owner, now)))
                ).first()
                if row is None:
                    break
                turns.append(_decode(row.input_items) + _output(row.response))
                next_id = row.previous_response_id
        if not turns:
            return None
        return [item for turn in reversed(turns) for item in turn]

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete every expired response; how many went."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(stored_responses).where(
                    stored_responses.c.expires_at.is_not(None),
                    stored_responses.c.expires_at <= (now or _utcnow()),
                )
            )
        return int(result.rowcount or 0)


def _row(record: ResponseRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "owner": record.owner,
        "tenant_id": record.tenant_id,
        "key_id": record.key_id,
        "model": record.model,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "previous_response_id": record.previous_response_id,
        "input_items": _encode(record.input_items),
        "response": record.encoded or _encode(record.response),
    }


class _Output(msgspec.Struct):
    """Only the ``output`` of a stored Response object: msgspec skips the rest unread."""

    output: list[JSON] | None = None


_decode_output = msgspec.json.Decoder(_Output).decode


def _output(response: bytes) -> list[JSON]:
    return _decode_output(response).output or []


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _visible(response_id: str, owner: str, now: datetime) -> list[Any]:
    return [
        stored_responses.c.id == response_id,
        stored_responses.c.owner == owner,
        sa.or_(stored_responses.c.expires_at.is_(None), stored_responses.c.expires_at > now),
    ]


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time here is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _record(row: Any) -> ResponseRecord:
    created = _aware(row["created_at"])
    assert created is not None
    return ResponseRecord(
        id=row["id"],
        owner=row["owner"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        model=row["model"],
        created_at=created,
        expires_at=_aware(row["expires_at"]),
        previous_response_id=row["previous_response_id"],
        input_items=_decode(row["input_items"]),
        response=_decode(row["response"]),
        encoded=row["response"],
    )
