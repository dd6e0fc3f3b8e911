"""Admin usage routes: GET /admin/usage (filters, grouping, top consumers, cache hit
rate and this worker's cache figures), GET /admin/usage/latency (percentiles over
time), GET /admin/usage/export.csv, and the cache itself: GET /admin/cache (figures)
and DELETE /admin/cache (all, or by model or tenant). Also GET
/usage/requests/{request_id}: one request's record, for the key that made it (the web
UI's playground shows each reply's cost from it). Mounted in the admin app
(api/admin.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, get_args

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from relaygate.auth.principal import Principal
from relaygate.digits import whole_number
from relaygate.errors import InvalidRequest, NotFound
from relaygate.store.identity import resolve_tenant
from relaygate.usage.analytics import (
    Filters,
    GroupBy,
    export_csv,
    latency_percentiles,
    one_record,
    report,
    top_consumers,
)

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = ["UsageAdminAPI", "parse_moment"]

_RELATIVE = re.compile(r"^(\d{1,5})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_GROUPS: tuple[str, ...] = get_args(GroupBy)
_JSON = "application/json"
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)  # the latest time a filter can name


def parse_moment(value: str, param: str) -> datetime:
    """An ISO time (UTC when it has no zone) or a time ago: ``90m``, ``24h``, ``7d``, ``2w``."""
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = int(match.group(1)), _UNITS[match.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{param} must be an ISO time (2026-11-01T00:00:00Z) or a duration ago "
            f"(7d, 24h, 30m), not {value!r}.",
            param=param,
        ) from None
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(
            f"{param} {value!r} is outside the years 1 to 9999 in UTC.", param=param
        ) from None
    if moment > _LATEST:  # the day after it must still be a date
        raise InvalidRequest(
            f"{param} {value!r} is beyond {_LATEST:%Y-%m-%d} (UTC); leave it out for no bound.",
            param=param,
        )
    return moment


def filters_from(request: Request, extra: tuple[str, ...] = ("group_by", "top")) -> Filters:
    query = request.query_params
    for name in query:
        if name not in ("tenant", "tenant_id", "key", "key_id", "model", "endpoint", "from",
                        "since", "to", "until", *extra):  # fmt: skip
            raise InvalidRequest(f"Unknown query parameter {name!r}.", param=name)
    since = query.get("from") or query.get("since")
    until = query.get("to") or query.get("until")
    return Filters(
        tenant_id=query.get("tenant") or query.get("tenant_id"),
        key_id=query.get("key") or query.get("key_id"),
        model=query.get("model"),
        endpoint=query.get("endpoint"),
        since=parse_moment(since, "from") if since else None,
        until=parse_moment(until, "to") if until else None,
    )


class UsageAdminAPI:
    """Handlers for the admin usage routes (admin role checked by the admin app)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def usage(self, request: Request, principal: Principal) -> Response:
        filters = filters_from(request)
        group_by = request.query_params.get("group_by", "day")
        if group_by not in _GROUPS:
            raise InvalidRequest(
                f"group_by must be one of {', '.join(_GROUPS)}, not {group_by!r}.",
                param="group_by",
            )
        engine = self.state.engine
        rows = await report(engine, filters, group_by)  # type: ignore[arg-type]
        body: dict[str, Any] = {
            "group_by": group_by,
            "data": rows,
            "totals": _totals(rows),
            "top_tenants": await top_consumers(engine, filters, "tenant", _top(request)),
            "top_keys": await top_consumers(engine, filters, "key", _top(request)),
            "top_models": await top_consumers(engine, filters, "model", _top(request)),
            "cache": self.state.cache.stats(),
        }
        return Response(msgspec.json.encode(body), media_type="application/json")

    async def latency(self, request: Request, principal: Principal) -> Response:
        """GET /admin/usage/latency: duration and time-to-first-token percentiles of
        answered requests, per hour (the default) or day (``bucket``)."""
        filters = filters_from(request, ("bucket",))
        bucket = request.query_params.get("bucket", "hour")
        if bucket not in ("hour", "day"):
            raise InvalidRequest(f"bucket must be hour or day, not {bucket!r}.", param="bucket")
        if filters.since is None:
            raise InvalidRequest(
                "from is required: the percentiles are read from the range's records.",
                param="from",
            )
        rows = await latency_percentiles(self.state.engine, filters, bucket)  # type: ignore[arg-type]
        body = {"bucket": bucket, "data": rows}
        return Response(msgspec.json.encode(body), media_type=_JSON)

    async def request_record(self, request: Request, principal: Principal) -> Response:
        """GET /usage/requests/{request_id}: the record of one request the caller's key
        made (an admin may read any). Written a moment after the answer ends: until
        then, and for anyone else's request, a 404."""
        request_id = request.path_params["request_id"]
        if len(request_id) > 40:
            raise InvalidRequest("request_id is at most 40 characters.", param="request_id")
        record = await one_record(self.state.engine, request_id)
        if record is None or not (principal.is_admin or record["key_id"] == principal.key_id):
            raise NotFound(
                f"No usage record {request_id!r} for this key (yet: records are written "
                "a moment after the answer ends)."
            )
        record.pop("client_ip", None)
        return Response(msgspec.json.encode(record), media_type=_JSON)

    async def cache_stats(self, request: Request, principal: Principal) -> Response:
        """This worker's cache figures; /metrics has every worker's."""
        return Response(msgspec.json.encode(self.state.cache.stats()), media_type=_JSON)

    async def cache_clear(self, request: Request, principal: Principal) -> Response:
        """DELETE /admin/cache[?model=NAME][&tenant=ID]: drop entries in every tier."""
        query = request.query_params
        for name in query:
            if name not in ("model", "tenant", "tenant_id"):
                raise InvalidRequest(f"Unknown query parameter {name!r}.", param=name)
        model = query.get("model")  # not checked: a model removed from the config may have entries
        tenant_ref = query.get("tenant") or query.get("tenant_id")
        tenant = None
        if tenant_ref is not None:
            tenant = (await resolve_tenant(self.state.identity, tenant_ref)).id
        removed = await self.state.cache.invalidate(model=model, tenant=tenant)
        self.state.log.info(
            "cache cleared by %s (model=%s, tenant=%s): %s", principal.subject, model, tenant,
            removed,
        )  # fmt: skip
        body = {"cleared": True, "model": model, "tenant": tenant, "removed": removed}
        return Response(msgspec.json.encode(body), media_type=_JSON)

    async def export(self, request: Request, principal: Principal) -> Response:
        filters = filters_from(request)
        return StreamingResponse(
            export_csv(self.state.engine, filters),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="relaygate-usage.csv"'},
        )


def _top(request: Request) -> int:
    top = whole_number(request.query_params.get("top", "10"), max_digits=4)
    if top is None or not 1 <= top <= 1000:
        raise InvalidRequest("top must be a whole number from 1 to 1000.", param="top")
    return top


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(r["requests"] for r in rows)
    cached = sum(r["cached_requests"] for r in rows)
    return {
        "requests": requests,
        "total_tokens": sum(r["total_tokens"] for r in rows),
        "cached_requests": cached,
        "cache_hit_rate": round(cached / requests, 4) if requests else None,
        "errors": sum(r["errors"] for r in rows),
        "cost": round(sum(r["cost"] for r in rows), 6),
    }
