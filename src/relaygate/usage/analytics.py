"""Usage queries: per-key statistics, grouped reports, top consumers, CSV export.

Daily and per-dimension figures come from the ``usage_daily`` rollups, which
the writer maintains as records arrive; only hourly grouping and the CSV export
read ``usage_records`` itself, within the requested time range.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relaygate.store.tables import usage_daily, usage_records

__all__ = [
    "Filters",
    "GroupBy",
    "export_csv",
    "key_stats",
    "latency_percentiles",
    "one_record",
    "report",
    "top_consumers",
]

GroupBy = Literal["hour", "day", "model", "key", "tenant", "endpoint"]
_DAILY = usage_daily.c
_RAW = usage_records.c
_CSV_COLUMNS = [c.name for c in usage_records.columns]


@dataclass(frozen=True, slots=True)
class Filters:
    tenant_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    endpoint: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _sums(table: Any) -> list[Any]:
    """Aggregates shared by every report, over usage_daily's columns."""
    return [
        sa.func.sum(table.request_count).label("requests"),
        sa.func.sum(table.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(table.completion_tokens).label("completion_tokens"),
        sa.func.sum(table.duration_ms_sum).label("duration_ms_sum"),
        sa.func.sum(table.cached_requests).label("cached_requests"),
        sa.func.sum(table.error_requests).label("error_requests"),
        sa.func.sum(table.cost).label("cost"),
    ]


def _figures(row: Any) -> dict[str, Any]:
    requests = int(row.requests or 0)
    prompt, completion = int(row.prompt_tokens or 0), int(row.completion_tokens or 0)
    return {
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "average_response_time_ms": round((row.duration_ms_sum or 0) / requests, 2)
        if requests
        else None,
        "cached_requests": int(row.cached_requests or 0),
        "cache_hit_rate": round(int(row.cached_requests or 0) / requests, 4) if requests else None,
        "errors": int(row.error_requests or 0),
        "cost": round(float(row.cost or 0.0), 6),
    }


def _daily_where(filters: Filters) -> list[Any]:
    where = []
    if filters.tenant_id is not None:
        where.append(_DAILY.tenant_id == filters.tenant_id)
    if filters.key_id is not None:
        where.append(_DAILY.key_id == filters.key_id)
    if filters.model is not None:
        where.append(_DAILY.model == filters.model)
    if filters.endpoint is not None:
        where.append(_DAILY.endpoint == filters.endpoint)
    if filters.since is not None:
        where.append(_DAILY.day >= filters.since.astimezone(UTC).date())
    if filters.until is not None:
        where.append(_DAILY.day < _day_after(filters.until))
    return where


def _day_after(moment: datetime) -> date:
    """The first whole day not in a range ending at ``moment`` (exclusive)."""
    moment = moment.astimezone(UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.date() if moment == midnight else moment.date() + timedelta(days=1)


async def key_stats(engine: AsyncEngine, key_id: str) -> dict[str, Any]:
    """GET /api/stats: one key's totals and its figures by model (seed 003)."""
    query = sa.select(_DAILY.model, *_sums(_DAILY)).where(_DAILY.key_id == key_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.group_by(_DAILY.model))).all()
        total = (await conn.execute(sa.select(*_sums(_DAILY)).where(_DAILY.key_id == key_id))).one()
    return {
        "key_id": key_id,
        **_figures(total),
        "by_model": {row.model: _figures(row) for row in rows},
    }


async def report(engine: AsyncEngine, filters: Filters, group_by: GroupBy) -> list[dict[str, Any]]:
    """Figures grouped by one dimension, oldest or largest first."""
    if group_by == "hour":
        return await _hourly(engine, filters)
    column = {
        "day": _DAILY.day, "model": _DAILY.model, "key": _DAILY.key_id,
        "tenant": _DAILY.tenant_id, "endpoint": _DAILY.endpoint,
    }[group_by]  # fmt: skip
    query = sa.select(column.label("group"), *_sums(_DAILY)).where(*_daily_where(filters))
    query = query.group_by(column)
    query = query.order_by(column) if group_by == "day" else query.order_by(sa.desc("requests"))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [{group_by: _label(row.group), **_figures(row)} for row in rows]


def _label(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    return value if value != "" else None


async def _hourly(engine: AsyncEngine, filters: Filters) -> list[dict[str, Any]]:
    hour = _hour_bucket(engine.dialect.name)
    query = sa.select(
        hour.label("group"),
        sa.func.count().label("requests"),
        sa.func.sum(_RAW.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(_RAW.completion_tokens).label("completion_tokens"),
        sa.func.sum(_RAW.duration_ms).label("duration_ms_sum"),
        sa.func.sum(sa.case((_RAW.cached, 1), else_=0)).label("cached_requests"),
        sa.func.sum(sa.case((_RAW.status != "ok", 1), else_=0)).label("error_requests"),
        sa.func.sum(_RAW.cost).label("cost"),
    ).where(*_raw_where(filters))
    async with engine.connect() as conn:
        rows = (await conn.execute(query.group_by(hour).order_by(hour))).all()
    return [{"hour": _hour_label(row.group), **_figures(row)} for row in rows]


def _hour_bucket(dialect: str, unit: Literal["hour", "day"] = "hour") -> Any:
    if dialect == "postgresql":
        return sa.func.date_trunc(unit, sa.func.timezone("UTC", _RAW.created_at))
    pattern = "%Y-%m-%dT%H:00:00" if unit == "hour" else "%Y-%m-%dT00:00:00"
    return sa.func.strftime(pattern, _RAW.created_at)


def _hour_label(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:00:00Z")
    return f"{value}Z"


def _raw_where(filters: Filters) -> list[Any]:
    where = []
    for column, value in (
        (_RAW.tenant_id, filters.tenant_id),
        (_RAW.key_id, filters.key_id),
        (_RAW.model, filters.model),
        (_RAW.endpoint, filters.endpoint),
    ):
        if value is not None:
            where.append(column == value)
    if filters.since is not None:
        where.append(_RAW.created_at >= filters.since)
    if filters.until is not None:
        where.append(_RAW.created_at < filters.until)
    return where


async def top_consumers(
    engine: AsyncEngine,
    filters: Filters,
    by: Literal["tenant", "key", "model"] = "tenant",
    limit: int = 10,
) -> list[dict[str, Any]]:
    rows = await report(engine, filters, by)
    return rows[:limit]


PERCENTILES = (50, 90, 99)


async def latency_percentiles(
    engine: AsyncEngine, filters: Filters, unit: Literal["hour", "day"]
) -> list[dict[str, Any]]:
    """The p50, p90 and p99 of answered requests' durations (and of their time to first
    token), per hour or day, computed in the database: the answer is one row per bucket
    however many records the range holds. The daily rollups keep sums, not
    distributions, so this reads the range's records, as hourly grouping does."""
    bucket = _hour_bucket(engine.dialect.name, unit).label("bucket")
    where = [*_raw_where(filters), _RAW.status == "ok"]
    columns: list[Any] = []
    for name, column in (("duration", _RAW.duration_ms), ("ttft", _RAW.ttft_ms)):
        # Each row's rank among its bucket's records by this figure, and how many there
        # are: the nearest-rank percentile is the row whose rank is ceil(p * n / 100).
        ranked = (
            sa.select(
                bucket,
                column.label("value"),
                sa.func.row_number().over(partition_by=bucket, order_by=column).label("rank"),
                sa.func.count().over(partition_by=bucket).label("n"),
            )
            .where(*where, column.is_not(None))
            .subquery()
        )
        picks = [
            sa.func.max(
                sa.case((ranked.c.rank == (ranked.c.n * p + 99) // 100, ranked.c.value))
            ).label(f"{name}_p{p}")
            for p in PERCENTILES
        ]
        query = sa.select(ranked.c.bucket, sa.func.max(ranked.c.n).label("n"), *picks)
        columns.append(query.group_by(ranked.c.bucket))
    by_bucket: dict[str, dict[str, Any]] = {}
    async with engine.connect() as conn:
        for name, query in zip(("duration", "ttft"), columns, strict=True):
            for row in (await conn.execute(query)).all():
                label = _hour_label(row.bucket)
                entry = by_bucket.setdefault(label, {unit: label, "requests": 0})
                if name == "duration":
                    entry["requests"] = int(row.n)
                entry[f"{name}_count"] = int(row.n)
                for p in PERCENTILES:
                    value = getattr(row, f"{name}_p{p}")
                    entry[f"{name}_p{p}_ms"] = None if value is None else round(float(value), 1)
    empty = {f"{n}_p{p}_ms": None for n in ("duration", "ttft") for p in PERCENTILES}
    return [{**empty, "ttft_count": 0, **by_bucket[label]} for label in sorted(by_bucket)]


async def one_record(engine: AsyncEngine, request_id: str) -> dict[str, Any] | None:
    """One request's usage record, by its id (the X-Request-Id the client got)."""
    query = sa.select(usage_records).where(_RAW.request_id == request_id).limit(1)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return {name: _csv_value(value) for name, value in row._mapping.items()}


async def export_csv(engine: AsyncEngine, filters: Filters) -> AsyncIterator[bytes]:
    """Every record in the range as CSV, streamed in chunks (the range may be large)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_CSV_COLUMNS)
    query = sa.select(usage_records).where(*_raw_where(filters)).order_by(_RAW.created_at)
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=1000))
        async for row in result:
            writer.writerow([_csv_value(value) for value in row])
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue().encode()


def _csv_value(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    return value
