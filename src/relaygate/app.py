"""The composition root: builds the app's state in the lifespan and routes requests.

Everything a request needs (router, provider pools, metrics) lives on one
:class:`AppState` built at start and closed at shutdown; nothing is a module
global. The hot routes are plain ASGI functions looked up in a dict.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from relaygate import __version__
from relaygate.api.admin import build_admin_app
from relaygate.api.anthropic_format import AnthropicCountTokens, AnthropicFormat
from relaygate.api.byok import PREFIX as BYOK_PREFIX
from relaygate.api.byok import build_byok_app
from relaygate.api.cors import CORS
from relaygate.api.http import send_error
from relaygate.api.ollama import OllamaChatFormat, OllamaGenerateFormat, OllamaTags
from relaygate.api.ollama_embed import OllamaEmbeddingsFormat, OllamaEmbedFormat
from relaygate.api.ollama_meta import OllamaMeta
from relaygate.api.openai import OpenAIFormat, OpenAIModels
from relaygate.api.openapi import DocsAPI, Operation, task_operation
from relaygate.api.ops import OpsAPI, readiness
from relaygate.api.responses_api import RESPONSE_PREFIX, ResponsesFormat, StoredResponses
from relaygate.api.seed import GenerateFormat, SeedChatFormat
from relaygate.api.shapes import error_renderer_for, internal_error, is_ollama_path
from relaygate.api.task_templates import SHIPPED, TaskFormat
from relaygate.api.tasks import TasksAPI
from relaygate.api.ui import UI_PATH, WebUI
from relaygate.asgi import Receive, Scope, Send, new_request_id
from relaygate.errors import ConfigError, MethodNotAllowed, NotFound
from relaygate.observability.logging import configure_logging
from relaygate.observability.ops_listener import Heartbeat
from relaygate.pipeline import Pipeline
from relaygate.settings import Settings, load_settings
from relaygate.state import AppState, close_state, open_state
from relaygate.tunnel.hub import CONNECT_PATH

__all__ = ["AppState", "Gateway", "create_app"]

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
# Key management (not the hot path) is a Starlette app: /admin/*, seed 001's
# /auth/create-key, seed 003's /api/keys, and /usage/requests/{id} (one usage record).
ADMIN_PREFIXES = ("/admin/", "/admin", "/auth/", "/api/keys", "/usage/")
MODEL_ROUTE = "/v1/models/{model}"
# With ops.listen set, these answer only on the operations listener (ops_listener.py).
OPS_ONLY = frozenset(("/metrics", "/ready"))
RESPONSE_ROUTE = "/v1/responses/{response_id}"
UI_ROUTE = UI_PATH + "/{path}"  # the web UI's files and client routes
UI_PREFIX = UI_PATH + "/"
GC_YOUNG_THRESHOLD = 10_000  # net new container objects between young collections (700)


class Gateway:
    """The ASGI application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: AppState | None = None
        self.log = logging.getLogger("relaygate")
        self._routes: dict[str, dict[str, Handler]] = {}
        self._model_route: dict[str, Handler] = {}
        self._response_route: dict[str, Handler] = {}
        self._ui_route: dict[str, Handler] = {}
        self._admin: Handler | None = None
        self._byok: Handler | None = None  # /api/ai/*: users' own provider keys (BYOK)
        # Old URLs (settings.paths): empty and None when unset, so routing pays one check.
        self._aliases: dict[str, str] = dict(settings.paths.aliases)
        self._mount = settings.paths.prefix + "/" if settings.paths.prefix else None
        # The one place requests enter: CORS (when origins are configured) covers every route.
        self._cors = CORS(settings.cors, self._serve) if settings.cors.allow_origins else None
        ops = settings.ops.address
        # The port of the ops listener (set by server.py when it was bound to port 0).
        self.ops_port: int | None = ops[1] if ops else None
        # This worker's heartbeat, for the ops listener (only when there is one).
        self.heartbeat: Heartbeat | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                if self._cors is None:
                    await self._route(scope)(scope, receive, send)
                else:
                    await self._cors(scope, receive, send)
            except Exception:
                await self._escaped(scope, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The one WebSocket route: dial-out nodes connecting (tunnel/hub.py)."""
        if self.state is None or scope["path"] != CONNECT_PATH:
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            await self.state.hub.serve(scope, receive, send)
        except Exception:
            self.log.exception("node connection failed")

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._route(scope)(scope, receive, send)

    def _route(self, scope: Scope) -> Handler:
        path: str = scope["path"]
        if self._aliases or self._mount:
            path = self._resolve(scope, path)
        if self.ops_port is not None and path in OPS_ONLY:
            return _not_found
        methods = self._routes.get(path)
        if methods is None and path.startswith("/v1/models/"):
            methods = self._model_route
        if methods is None and path.startswith(RESPONSE_PREFIX):
            methods = self._response_route
        if methods is None and path.startswith(UI_PREFIX):
            methods = self._ui_route
        if methods is None:
            if self._admin is not None and path.startswith(ADMIN_PREFIXES):
                return self._admin
            if self._byok is not None and path.startswith(BYOK_PREFIX):
                return self._byok
            return _not_found
        handler = methods.get(scope["method"])
        if handler is None:
            return _method_not_allowed(sorted(methods))
        return handler

    def _resolve(self, scope: Scope, path: str) -> str:
        """The one place an old URL becomes a served path (settings.paths): an exact alias
        first, else the mount prefix stripped. The scope's path is rewritten, so the target
        route (and its error shape, chosen by path) sees only its own path."""
        target = self._aliases.get(path)
        if target is None and self._mount is not None and path.startswith(self._mount):
            target = path[len(self._mount) - 1 :]
        if target is None:
            return path
        scope["path"] = target
        return target

    def _check_paths(self) -> None:
        """Every alias names a served path and hides none (checked once routes exist)."""
        for alias, target in self._aliases.items():
            problem = None
            if alias in self._routes:
                problem = f"{alias} is itself a served route; an alias would hide it"
            elif not self._serves(target):
                problem = f"{target} is not a route this gateway serves"
            if problem:
                raise ConfigError(f"paths.aliases[{alias!r}]: {problem}")

    def _serves(self, path: str) -> bool:
        return (
            path in self._routes
            or path.startswith(("/v1/models/", RESPONSE_PREFIX, UI_PREFIX, BYOK_PREFIX))
            or path.startswith(ADMIN_PREFIXES)
        )

    def served_routes(self) -> dict[str, list[str]]:
        """Every route this gateway answers, as path template -> methods (once started).

        Read from the routing tables themselves, so the OpenAPI document and its tests
        cannot miss a route. The old URLs of ``settings.paths`` (aliases, a mount prefix)
        are not listed: they are this deployment's copies of listed routes.
        """
        table = {path: sorted(methods) for path, methods in self._routes.items()}
        if self._model_route:
            table[MODEL_ROUTE] = sorted(self._model_route)
        if self._response_route:
            table[RESPONSE_ROUTE] = sorted(self._response_route)
        if self._ui_route:
            table.pop(UI_PREFIX, None)  # "/ui/" is the template's empty path
            table[UI_ROUTE] = sorted(self._ui_route)
        for app in (self._admin, self._byok):
            for route in getattr(app, "routes", ()):
                methods = getattr(route, "methods", None) or ()
                table[route.path] = sorted(set(methods) - {"HEAD"})
        return table

    async def _escaped(self, scope: Scope, send: Send) -> None:
        """Whatever a handler let escape: logged, and a 500 in the path's error shape
        (never the server's plain-text one) unless the response had already started."""
        request_id = new_request_id()
        self.log.exception("unexpected error serving %s (%s)", scope["path"], request_id)
        try:
            await send_error(
                send, internal_error(request_id), request_id, error_renderer_for(scope["path"])
            )
        except Exception:  # the response had started: the server closes the connection
            self.log.debug("response already started; %s cut short", request_id)

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
        # Each inference route is the one pipeline, given its API's wire format.
        pipeline, openai = Pipeline(state), OpenAIFormat()
        models, ops, tasks = OpenAIModels(state), OpsAPI(state), TasksAPI(state)
        tags, meta = OllamaTags(state), OllamaMeta(state)
        ui = WebUI(mount=self.settings.paths.prefix or "", oidc=self.settings.ui.oidc)
        root = ui.root_handler(meta.root)
        self._routes = {
            "/v1/chat/completions": {"POST": pipeline.route(openai, "chat")},
            "/v1/completions": {"POST": pipeline.route(openai, "completion")},
            "/v1/embeddings": {"POST": pipeline.route(openai, "embedding")},
            "/v1/models": {"GET": models.models},
            "/v1/responses": {"POST": pipeline.route(ResponsesFormat(state), "chat")},
            "/health": {"GET": ops.health},
            "/ready": {"GET": ops.ready},
            "/metrics": {"GET": ops.metrics},
            "/usage": {"GET": tasks.usage},
            "/api/stats": {"GET": tasks.stats},
            "/ai/models": {"GET": tasks.models},
            "/ai/generate": {"POST": pipeline.route(GenerateFormat(router.models), "chat")},
            "/chat": {"POST": pipeline.route(SeedChatFormat(), "chat")},
            "/api/chat": {"POST": pipeline.route(OllamaChatFormat(), "chat")},
            "/api/generate": {"POST": pipeline.route(OllamaGenerateFormat(), "chat")},
            "/api/tags": {"GET": tags.tags},
            "/api/models": {"GET": tags.tags},
            "/v1/messages": {"POST": pipeline.route(AnthropicFormat(), "chat")},
            "/v1/messages/count_tokens": {"POST": AnthropicCountTokens(state)},
            "/api/embed": {"POST": pipeline.route(OllamaEmbedFormat(), "embedding")},
            "/api/embeddings": {"POST": pipeline.route(OllamaEmbeddingsFormat(), "embedding")},
            "/api/show": {"POST": meta.show},
            "/api/ps": {"GET": meta.ps},
            "/api/version": {"GET": meta.version},
            # Ollama's liveness probe; a browser is sent to the web UI.
            "/": {"GET": root, "HEAD": root},
            **ui.routes(),
        }
        described = self._task_routes(pipeline)
        self._routes.update(DocsAPI(self.served_routes, described).routes())  # /openapi.json
        self._model_route = {"GET": models.model}
        stored = StoredResponses(state)
        self._response_route = {"GET": stored.get, "DELETE": stored.delete}
        self._ui_route = {"GET": ui.serve}
        self._admin = build_admin_app(state)
        self._byok = build_byok_app(state)
        try:
            self._check_paths()
        except ConfigError:
            self.state = None
            await close_state(state)
            raise
        self._beat(state)
        # Everything built so far lives as long as the process: move it out of the
        # collector's way, so collections on the request path have less to scan.
        gc.collect()
        gc.freeze()
        # A young collection every 700 net new objects runs ~100 times a second at
        # saturation (32 requests in flight hold more than that), promotes objects of
        # requests still in flight and so triggers full collections: ~4% of the CPU and
        # pauses of tens of ms (issue 15). Requests leave few cycles, so a larger first
        # threshold makes collections rare and frees the same garbage.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.log.info(
            "relaygate %s serving %d models: %s",
            __version__, len(router.models), ", ".join(router.models) or "(none)",
        )  # fmt: skip

    def _task_routes(self, pipeline: Pipeline) -> dict[tuple[str, str], Operation]:
        """The task templates (shipped and declared, less the disabled) as routes; a
        webhook template only with a secret. Their OpenAPI descriptions, by route."""
        assert self.state is not None
        tasks, models = self.settings.tasks, self.state.router.models
        described: dict[tuple[str, str], Operation] = {}
        for name, template in tasks.served(SHIPPED).items():
            if template.auth == "webhook" and not tasks.webhook.secret:
                continue  # off: the platform's caller could not be told from anyone
            if template.path in self._routes or template.path.startswith(ADMIN_PREFIXES):
                raise ConfigError(
                    f"tasks.templates.{name}.path: {template.path} is already a relaygate route"
                )
            fmt = TaskFormat(template, models, tasks.webhook)
            self._routes[template.path] = {"POST": pipeline.route(fmt, "chat")}
            described[("POST", template.path)] = task_operation(name, template)
        return described

    async def shutdown(self) -> None:
        if self.state is None:
            return
        if self.heartbeat is not None:
            self.heartbeat.stop()
        await close_state(self.state)

    def _beat(self, state: AppState) -> None:
        """With an operations listener: this worker's loop ticks and readiness, for it."""
        if self.settings.ops.address is None or state.loop_lag is None:
            return
        self.heartbeat = Heartbeat(state.metrics.registry, partial(readiness, state))
        state.loop_lag.on_tick.append(self.heartbeat.tick)
        self.heartbeat.tick()


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if is_ollama_path(path):
        where = (
            "The Ollama API is /api/chat, /api/generate, /api/embed, /api/embeddings, "
            "/api/tags, /api/show, /api/ps and /api/version."
        )
    elif path.startswith("/v1/messages"):
        where = (
            "The Anthropic Messages API is POST /v1/messages and POST /v1/messages/count_tokens."
        )
    else:
        where = (
            "The OpenAI-compatible API is under /v1 (chat/completions, completions, "
            "embeddings, models)."
        )
    error = NotFound(f"Unknown endpoint {scope['method']} {path}. {where}")
    await send_error(send, error, new_request_id(), error_renderer_for(path))


def _method_not_allowed(allowed: list[str]) -> Handler:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        error = MethodNotAllowed(
            f"Method {scope['method']} is not allowed on {path}; use {', '.join(allowed)}.",
            allow=tuple(allowed),
        )
        await send_error(send, error, new_request_id(), error_renderer_for(path))

    return handler


def create_app(settings: Settings | None = None) -> Gateway:
    """The ASGI app; without settings they are loaded from the file and environment."""
    if settings is None:
        settings = load_settings()
        configure_logging(settings)
    return Gateway(settings)
