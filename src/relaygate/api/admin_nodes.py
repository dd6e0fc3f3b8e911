"""Admin view of model nodes: GET /admin/nodes (admin keys only).

Each pool's nodes: where they are (scheme, host and port only), the models they
have and have loaded, requests in flight and queued, the time-to-first-token
EWMA, the state (``healthy``, ``down``, ``ejected``, ``unknown``) and why; then the
dial-out nodes connected to this worker that are in no pool (``pool`` null). With
Redis, discovery and ejections are shared by every replica; in-flight and queue
figures are the answering worker's. Mounted in the admin app (api/admin.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relaygate.auth.principal import Principal
from relaygate.routing.discovery import DialOutMember

if TYPE_CHECKING:
    from relaygate.routing.pools import Node, Pool
    from relaygate.state import AppState
    from relaygate.tunnel.hub import NodeLink

__all__ = ["NodesAdminAPI"]


class NodesAdminAPI:
    """Handler for GET /admin/nodes (the admin app checks the admin role)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def nodes(self, request: Request, principal: Principal) -> Response:
        now = time.monotonic()
        pools = self.state.router.pools
        data = [_node(pool, node, now) for pool in pools.values() for node in pool.nodes]
        pooled = {d["node"] for d in data if d["dial_out"]}
        hub = self.state.hub
        data += [_link(link) for name, link in hub.links.items() if name not in pooled]
        body = {"object": "list", "data": data, "pools": [_pool(p) for p in pools.values()]}
        return Response(msgspec.json.encode(body), media_type="application/json")


def _pool(pool: Pool) -> dict[str, Any]:
    config = pool.config
    return {
        "pool": pool.name,
        "provider": config.provider,
        "balance": config.balance,
        "nodes": len(pool.nodes),
        "ejected": pool.ejected(),
        "max_ejection_percent": config.ejection.max_ejection_percent,
    }


def _link(link: NodeLink) -> dict[str, Any]:
    """A dial-out node connected to this worker and in no pool (served on its own)."""
    return {
        "pool": None,
        "node": link.name,
        "dial_out": True,
        "address": f"dial-out:{link.name}",
        "state": "healthy" if not link.closed else "down",
        "reason": None,
        "models": sorted(link.models),
        "loaded": sorted(link.loaded),
        "in_flight": link.in_flight,
        "queued": link.queued,
        "max_concurrency": link.capacity,
        "max_queue": None,
        "ttft_ewma_ms": None,
        "consecutive_failures": 0,
        "ejections": 0,
        "ejected_for_s": None,
        "last_error_class": None,
        "last_error": None,
        "last_probe_at": datetime.fromtimestamp(link.connected_at, UTC).isoformat(),
    }


def _node(pool: Pool, node: Node, now: float) -> dict[str, Any]:
    health = node.health
    ejected_for = max(0.0, health.cooldown_until - now) if node.state == "ejected" else None
    at = node.probed_at
    return {
        "pool": pool.name,
        "node": node.name,
        "dial_out": isinstance(node.member, DialOutMember),
        "address": node.member.address,
        "state": node.state,
        "reason": node.reason or None,
        "models": sorted(node.models),
        "loaded": sorted(node.loaded),
        "in_flight": node.in_flight,
        "queued": node.queued,
        "max_concurrency": node.max_concurrency,
        "max_queue": node.max_queue,
        "ttft_ewma_ms": round(node.ewma_ttft * 1000, 3) if node.ewma_ttft is not None else None,
        "consecutive_failures": health.failures,
        "ejections": health.ejections,
        "ejected_for_s": round(ejected_for, 3) if ejected_for is not None else None,
        "last_error_class": health.last_error_kind or None,
        "last_error": health.last_error or None,  # scrubbed when it was recorded
        "last_probe_at": datetime.fromtimestamp(at, UTC).isoformat() if at else None,
    }
