"""The composition root: builds the app's state in the lifespan and routes requests.

Everything a request needs (router, provider pools, metrics) lives on one
:class:`AppState` built at start and closed at shutdown; nothing is a module
global. The hot routes are plain ASGI functions looked up in a dict.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relaygate import __version__
from relaygate.api.http import Receive, Scope, Send, new_request_id, send_error
from relaygate.api.openai import OpenAIAPI
from relaygate.api.ops import OpsAPI
from relaygate.errors import MethodNotAllowed, NotFound
from relaygate.observability.metrics import Metrics
from relaygate.routing.catalog import build_router, close_providers, model_entries
from relaygate.routing.router import Router
from relaygate.settings import Settings, load_settings

__all__ = ["AppState", "Gateway", "create_app"]

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(slots=True, eq=False)
class AppState:
    """What every request shares, built once in the lifespan."""

    settings: Settings
    router: Router
    metrics: Metrics
    log: logging.Logger
    models_json: bytes = b""
    model_entries: dict[str, bytes] = field(default_factory=dict)
    draining: bool = False

    @property
    def max_body(self) -> int:
        return self.settings.max_body_bytes


class Gateway:
    """The ASGI application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: AppState | None = None
        self.log = logging.getLogger("relaygate")
        self._routes: dict[str, dict[str, Handler]] = {}
        self._model_route: dict[str, Handler] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._route(scope)
            await handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def _route(self, scope: Scope) -> Handler:
        path: str = scope["path"]
        methods = self._routes.get(path)
        if methods is None and path.startswith("/v1/models/"):
            methods = self._model_route
        if methods is None:
            return _not_found
        handler = methods.get(scope["method"])
        if handler is None:
            return _method_not_allowed(sorted(methods))
        return handler

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    self.log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        settings = self.settings
        router = await build_router(settings, self.log)
        state = AppState(
            settings=settings,
            router=router,
            metrics=Metrics(settings.prometheus_multiproc_dir),
            log=self.log,
        )
        state.models_json, state.model_entries = model_entries(router)
        self.state = state
        openai, ops = OpenAIAPI(state), OpsAPI(state)
        self._routes = {
            "/v1/chat/completions": {"POST": openai.chat},
            "/v1/completions": {"POST": openai.completions},
            "/v1/embeddings": {"POST": openai.embeddings},
            "/v1/models": {"GET": openai.models},
            "/health": {"GET": ops.health},
            "/ready": {"GET": ops.ready},
            "/metrics": {"GET": ops.metrics},
        }
        self._model_route = {"GET": openai.model}
        self.log.info(
            "relaygate %s serving %d models: %s",
            __version__, len(router.models), ", ".join(router.models) or "(none)",
        )  # fmt: skip

    async def shutdown(self) -> None:
        if self.state is None:
            return
        self.state.draining = True
        await close_providers(self.state.router)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    error = NotFound(
        f"Unknown endpoint {scope['method']} {scope['path']}. The OpenAI-compatible API is "
        "under /v1 (chat/completions, completions, embeddings, models)."
    )
    await send_error(send, error, new_request_id())


def _method_not_allowed(allowed: list[str]) -> Handler:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        error = MethodNotAllowed(
            f"Method {scope['method']} is not allowed on {scope['path']}; use {', '.join(allowed)}."
        )
        await send_error(send, error, new_request_id())

    return handler


def create_app(settings: Settings | None = None) -> Gateway:
    """The ASGI app; without settings they are loaded from the file and environment."""
    if settings is None:
        from relaygate.cli import configure_logging

        settings = load_settings()
        configure_logging(settings)
    return Gateway(settings)
