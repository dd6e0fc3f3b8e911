"""Operations routes: /health (liveness), /ready (readiness), /metrics (Prometheus)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from relaygate.api.http import send_error
from relaygate.asgi import Receive, Scope, Send, new_request_id, send_bytes
from relaygate.errors import PermissionDenied, RelaygateError
from relaygate.observability.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from relaygate.state import AppState

__all__ = ["OpsAPI", "readiness"]

_HEALTH = b'{"status":"ok"}'


class OpsAPI:
    """Cheap liveness, a readiness report of every deployment, and metrics."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, _HEALTH, new_request_id())

    async def ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 when at least one model has a deployment that can be tried, else 503."""
        if not await self._allowed(scope, send):
            return
        now = time.monotonic()
        models = {}
        serving = 0
        router = self.state.router
        for model in router.models.values():
            deployments = [
                {
                    "name": d.name,
                    "provider": d.provider_name,
                    "state": router.state_of(d, now),
                    "consecutive_failures": d.health.failures,
                    **_error_class(d.health.last_error_kind),
                }
                for d in model.deployments
            ]
            ok = router.servable(model, now)
            serving += ok
            models[model.name] = {"ready": ok, "deployments": deployments}
        ready = _ready(serving, self.state)
        body = {
            "status": "ready" if ready else "unavailable",
            "draining": self.state.draining,
            "models_ready": serving,
            "models": models,
        }
        await send_bytes(send, 200 if ready else 503, msgspec.json.encode(body), new_request_id())

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self._allowed(scope, send):
            return
        self.state.observe_nodes()  # this worker's pool nodes, as of now
        body = self.state.metrics.render()
        await send_bytes(
            send, 200, body, new_request_id(), content_type=CONTENT_TYPE_LATEST.encode()
        )

    async def _allowed(self, scope: Scope, send: Send) -> bool:
        """``ops.access: admin``: only an admin key may read /ready and /metrics."""
        if self.state.settings.ops.access == "open":
            return True
        try:
            principal = await self.state.auth.authenticate(scope)
            if not principal.is_admin:
                raise PermissionDenied(f"{scope['path']} needs an admin key (ops.access: admin).")
        except RelaygateError as exc:
            await send_error(send, exc, new_request_id())
            return False
        return True


def readiness(state: AppState) -> tuple[bool, int]:
    """Whether this worker is ready, and how many models it can serve: what /ready says,
    without the per-deployment detail (the operations listener's heartbeat publishes it)."""
    now = time.monotonic()
    router = state.router
    serving = sum(router.servable(model, now) for model in router.models.values())
    return _ready(serving, state), serving


def _ready(serving: int, state: AppState) -> bool:
    return serving > 0 and not state.draining


def _error_class(kind: str) -> dict[str, str]:
    """A bounded class only (timeout_connect, status_5xx, ...): /ready needs no key, so
    upstream text, which can carry prompts and keys, never appears here."""
    return {"last_error_class": kind} if kind else {}
