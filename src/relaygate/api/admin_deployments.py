"""Admin view of deployment health: GET /admin/deployments (admin keys only).

The open ``/ready`` shows each deployment's state and the class of its last
error; this view adds the last error's text, scrubbed of every secret (see
relaygate/redact.py), and when it happened. Health is per worker process, so
this is the answering worker's view. Mounted in the admin app (api/admin.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relaygate.auth.principal import Principal

if TYPE_CHECKING:
    from relaygate.routing.router import Deployment
    from relaygate.state import AppState

__all__ = ["DeploymentsAdminAPI"]


class DeploymentsAdminAPI:
    """Handlers for the admin deployment routes (admin role checked by the admin app)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def deployments(self, request: Request, principal: Principal) -> Response:
        now, router = time.monotonic(), self.state.router
        models = [
            {
                "model": model.name,
                "deployments": [_deployment(d, router.state_of(d, now)) for d in model.deployments],
            }
            for model in router.models.values()
        ]
        body = {"object": "list", "data": models}
        return Response(msgspec.json.encode(body), media_type="application/json")


def _deployment(deployment: Deployment, state: str) -> dict[str, Any]:
    health = deployment.health
    at = health.last_error_at
    return {
        "name": deployment.name,
        "provider": deployment.provider_name,
        "state": state,  # a pooled one: "healthy" while a node with the model is
        "consecutive_failures": health.failures,
        "last_error_class": health.last_error_kind or None,
        "last_error": health.last_error or None,  # scrubbed when it was recorded
        "last_error_at": datetime.fromtimestamp(at, UTC).isoformat() if at else None,
    }
