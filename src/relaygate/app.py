"""The composition root: builds the app's state in the lifespan and routes requests.

Everything a request needs (router, provider pools, metrics) lives on one
:class:`AppState` built at start and closed at shutdown; nothing is a module
global. The hot routes are plain ASGI functions looked up in a dict.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable

from relaygate import __version__
from relaygate.api.admin import build_admin_app
from relaygate.api.http import Receive, Scope, Send, new_request_id, send_error
from relaygate.api.ollama import OllamaChatAPI, OllamaGenerateAPI, OllamaTags
from relaygate.api.openai import OpenAIAPI
from relaygate.api.ops import OpsAPI
from relaygate.api.seed import GenerateAPI, SeedChatAPI
from relaygate.api.tasks import TasksAPI
from relaygate.errors import MethodNotAllowed, NotFound
from relaygate.settings import Settings, load_settings
from relaygate.state import AppState, close_state, open_state

__all__ = ["AppState", "Gateway", "create_app"]

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
# Key management (not the hot path) is a Starlette app: /admin/*, seed 001's
# /auth/create-key and seed 003's /api/keys.
ADMIN_PREFIXES = ("/admin/", "/admin", "/auth/", "/api/keys")
# With ops.listen set, these answer only on that address, which serves nothing else.
OPS_ONLY = frozenset(("/metrics", "/ready"))
OPS_LISTENER_PATHS = OPS_ONLY | {"/health"}


class Gateway:
    """The ASGI application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: AppState | None = None
        self.log = logging.getLogger("relaygate")
        self._routes: dict[str, dict[str, Handler]] = {}
        self._model_route: dict[str, Handler] = {}
        self._admin: Handler | None = None
        ops = settings.ops.address
        # The port of the ops listener (set by server.py when it was bound to port 0).
        self.ops_port: int | None = ops[1] if ops else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._route(scope)
            await handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def _route(self, scope: Scope) -> Handler:
        path: str = scope["path"]
        if self.ops_port is not None and self._misplaced(scope, path):
            return _not_found
        methods = self._routes.get(path)
        if methods is None and path.startswith("/v1/models/"):
            methods = self._model_route
        if methods is None:
            if self._admin is not None and path.startswith(ADMIN_PREFIXES):
                return self._admin
            return _not_found
        handler = methods.get(scope["method"])
        if handler is None:
            return _method_not_allowed(sorted(methods))
        return handler

    def _misplaced(self, scope: Scope, path: str) -> bool:
        """An ops route on the main port, or anything else on the ops listener."""
        server = scope.get("server")
        if server is not None and server[1] == self.ops_port:
            return path not in OPS_LISTENER_PATHS
        return path in OPS_ONLY

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
        state = await open_state(self.settings, self.log)
        router = state.router
        self.state = state
        openai, ops, tasks = OpenAIAPI(state), OpsAPI(state), TasksAPI(state)
        generate, seed_chat = GenerateAPI(state), SeedChatAPI(state)
        ollama_chat, ollama_generate = OllamaChatAPI(state), OllamaGenerateAPI(state)
        self._routes = {
            "/v1/chat/completions": {"POST": openai.chat},
            "/v1/completions": {"POST": openai.completions},
            "/v1/embeddings": {"POST": openai.embeddings},
            "/v1/models": {"GET": openai.models},
            "/health": {"GET": ops.health},
            "/ready": {"GET": ops.ready},
            "/metrics": {"GET": ops.metrics},
            "/usage": {"GET": tasks.usage},
            "/api/stats": {"GET": tasks.stats},
            "/ai/generate": {"POST": generate.chat},
            "/chat": {"POST": seed_chat.chat},
            "/api/chat": {"POST": ollama_chat.chat},
            "/api/generate": {"POST": ollama_generate.chat},
            "/api/tags": {"GET": OllamaTags(openai).tags},
        }
        self._model_route = {"GET": openai.model}
        self._admin = build_admin_app(state)
        # Everything built so far lives as long as the process: move it out of the
        # collector's way, so collections on the request path have less to scan.
        gc.collect()
        gc.freeze()
        self.log.info(
            "relaygate %s serving %d models: %s",
            __version__, len(router.models), ", ".join(router.models) or "(none)",
        )  # fmt: skip

    async def shutdown(self) -> None:
        if self.state is None:
            return
        await close_state(self.state)


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
