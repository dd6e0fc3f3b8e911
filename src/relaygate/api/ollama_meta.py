"""The inbound Ollama API's server and model information: POST /api/show, GET /api/ps,
GET /api/version, and GET / and HEAD / ("Ollama is running").

Ollama's clients and apps (Open WebUI among them) probe ``/``, read the version,
list running models and show each model before they chat; with these routes
they can use relaygate as their Ollama server.

* ``/api/show`` and ``/api/ps`` need a key, as ``/api/tags`` does: they name the
  models the caller may use. For a model served by an Ollama deployment the node
  itself answers (``/api/show`` with the deployment's upstream model; every node's
  ``/api/ps``, asked concurrently), within :data:`NODE_TIMEOUT` seconds, and the
  upstream names in its answer become the public ones. Any other model is shown
  from what the gateway knows (``details`` it cannot know are empty strings) and is
  not listed by ``/api/ps``: the gateway cannot tell whether a remote model is
  loaded, and a made-up entry would show as using memory that is not this node's.
* ``/api/version`` and ``/`` need no key: they disclose nothing of the gateway's
  configuration, and Ollama answers them without one. The version is
  :data:`OLLAMA_VERSION`: clients compare it to minimums, so it names the Ollama
  release whose API relaygate implements, not relaygate's own version.

Errors are Ollama's ``{"error": "..."}``; an unknown model is a 404
``model 'x' not found``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from relaygate.api.http import decode_json_object
from relaygate.api.parsing import invalid_request
from relaygate.asgi import ClientGone, Receive, Scope, Send, new_request_id, read_body, send_bytes
from relaygate.errors import (
    InvalidRequest,
    NotFound,
    RelaygateError,
    UpstreamError,
    UpstreamTimeout,
)
from relaygate.providers.ollama import OllamaProvider
from relaygate.routing.pools import NodeProvider
from relaygate.schema.requests import ModelName, ollama_tagged

if TYPE_CHECKING:
    from relaygate.routing.router import Deployment, Model
    from relaygate.state import AppState

__all__ = [
    "NODE_TIMEOUT",
    "OLLAMA_VERSION",
    "OllamaMeta",
    "ShowRequest",
    "ollama_error",
    "public_modelfile",
]

JSON = dict[str, Any]
T = TypeVar("T")
_encode = msgspec.json.encode
# Tools (0.3), /api/embed (0.3) and structured outputs (0.5) are in relaygate's Ollama API;
# `think` (0.9) is not: a client that gates a feature on the version sees what it can use.
OLLAMA_VERSION = "0.6.8"
NODE_TIMEOUT = 5.0  # seconds for one node's /api/show or /api/ps, connecting included
_RUNNING = b"Ollama is running"
_TEXT = b"text/plain; charset=utf-8"
_PS_FIELDS = ("size", "digest", "details", "expires_at", "size_vram", "context_length")
_NO_DETAILS: JSON = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": [],
    "parameter_size": "",
    "quantization_level": "",
}


class ShowRequest(msgspec.Struct, kw_only=True):
    """POST /api/show: ``model`` (or ``name``, as older clients send it)."""

    model: ModelName | None = None
    name: ModelName | None = None
    verbose: bool = False


class OllamaMeta:
    """The routes above, bound to the app's state."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def root(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET / and HEAD / (uvicorn sends no body for HEAD)."""
        await send_bytes(send, 200, _RUNNING, new_request_id(), content_type=_TEXT)

    async def version(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = _encode({"version": OLLAMA_VERSION})
        await send_bytes(send, 200, body, new_request_id())

    async def show(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(send, self._show(scope, receive))

    async def ps(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(send, self._ps(scope))

    async def _answer(self, send: Send, work: Awaitable[JSON]) -> None:
        """``work``'s answer as JSON, or its error in Ollama's shape (never a bare 500)."""
        request_id = new_request_id()
        try:
            answer = await work
        except RelaygateError as exc:
            await send_bytes(send, exc.status, ollama_error(exc), request_id, extra=exc.headers())
            return
        except ClientGone:
            return
        except Exception:
            self.state.log.exception("unexpected error serving request %s", request_id)
            text = f"Internal error; the gateway's log has details under {request_id}."
            error = RelaygateError(text)
            await send_bytes(send, error.status, ollama_error(error), request_id)
            return
        await send_bytes(send, 200, _encode(answer), request_id)

    async def _show(self, scope: Scope, receive: Receive) -> JSON:
        state = self.state
        principal = await state.auth.authenticate(scope)
        raw = await read_body(scope, receive, state.max_body, json_type_required=False)
        request = _show_request(raw)
        name = request.model or request.name or ""
        model = next((m for m in state.models_for(principal) if m.name == name), None)
        if model is None:
            raise NotFound(f"model '{name}' not found")
        now = time.monotonic()
        return await _show(model, _ollama_nodes(state, model, now), request.verbose)

    async def _ps(self, scope: Scope) -> JSON:
        principal = await self.state.auth.authenticate(scope)
        now, state = time.monotonic(), self.state
        nodes = _nodes([(m, _ollama_nodes(state, m, now)) for m in state.models_for(principal)])
        answers = await asyncio.gather(*(self._running(d) for d, _ in nodes))
        listed = [
            {"name": public, "model": public, **{k: entry[k] for k in _PS_FIELDS if k in entry}}
            for (_, names), running in zip(nodes, answers, strict=True)
            for entry in running
            for public in names.get(ollama_tagged(_entry_name(entry)), ())
        ]
        return {"models": listed}

    async def _running(self, deployment: Deployment) -> list[JSON]:
        """One node's running models; a node that fails is left out (and logged)."""
        provider = _ollama(deployment)
        assert provider is not None
        try:
            return await _bounded(deployment, provider.running(deployment), "/api/ps")
        except UpstreamError as exc:
            self.state.log.info("/api/ps: skipping a node (%s): %s", exc.kind, exc.message)
            return []


def ollama_error(error: RelaygateError) -> bytes:
    """Ollama's error shape: ``{"error": "..."}``."""
    return _encode({"error": error.message})


def _show_request(raw: bytes) -> ShowRequest:
    try:
        request = msgspec.convert(decode_json_object(raw), ShowRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    if request.model is None and request.name is None:
        raise InvalidRequest("model is required", param="model")
    return request


def _ollama(deployment: Deployment) -> OllamaProvider | None:
    """The Ollama adapter a deployment calls (a pool node's, behind its slots), if any."""
    provider = deployment.provider
    if isinstance(provider, NodeProvider):
        provider = provider.inner
    return provider if isinstance(provider, OllamaProvider) else None


def _ollama_nodes(state: AppState, model: Model, now: float) -> list[Deployment]:
    """The Ollama servers behind ``model``, healthy first: its own deployments, and for
    a deployment on a pool, each node that has the model now."""
    found = state.router.reachable(model, now)
    found += [d for d in model.deployments if d.pool is None and d not in found]
    found.sort(key=lambda d: not d.health.available(now))
    return [d for d in found if _ollama(d) is not None]


async def _show(model: Model, nodes: list[Deployment], verbose: bool) -> JSON:
    """The node's answer for an Ollama-served model (healthy nodes first), else the
    gateway's own; the last node's error when every node failed."""
    if not nodes:
        return _known(model)
    last: UpstreamError | None = None
    for deployment in nodes:
        provider = _ollama(deployment)
        assert provider is not None
        try:
            reply = await _bounded(deployment, provider.show(deployment, verbose), "/api/show")
        except UpstreamError as exc:
            last = exc
            continue
        return _renamed(reply, deployment.upstream_model, model.name)
    assert last is not None
    raise last


async def _bounded(deployment: Deployment, call: Awaitable[T], path: str) -> T:
    """A node's answer within NODE_TIMEOUT seconds, else UpstreamTimeout."""
    try:
        async with asyncio.timeout(NODE_TIMEOUT):
            return await call
    except TimeoutError:
        raise UpstreamTimeout(
            f"Deployment {deployment.name!r} did not answer {path} within {NODE_TIMEOUT:g} s.",
            deployment=deployment.name,
        ) from None


def _known(model: Model) -> JSON:
    """What the gateway knows of a model no Ollama node serves."""
    capabilities = ["completion"]
    if all(d.provider_name == "mock" for d in model.deployments):
        capabilities.append("embedding")  # the development model embeds too
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": dict(_NO_DETAILS),
        "model_info": {},
        "capabilities": capabilities,
        "modified_at": _timestamp(model.created),
    }


def _renamed(reply: JSON, upstream: str, public: str) -> JSON:
    """A node's /api/show answer with the upstream model's name replaced by the public one."""
    out = dict(reply)
    modelfile = out.get("modelfile")
    if isinstance(modelfile, str):
        out["modelfile"] = public_modelfile(modelfile, upstream, public)
    for key in ("model", "name"):
        if key in out:
            out[key] = public
    out.setdefault("model_info", {})  # clients (ollama-python) require the field
    return out


def public_modelfile(modelfile: str, upstream: str, public: str) -> str:
    """``modelfile`` with its ``# FROM <upstream model>`` line (what Ollama writes there to
    rebuild the model, ``name:latest`` included) naming the public model instead; nothing
    else changes (the blob path, other text that happens to contain the name)."""
    if upstream == public or not upstream:
        return modelfile
    names = sorted({upstream, ollama_tagged(upstream)}, key=len, reverse=True)
    pattern = "|".join(re.escape(n) for n in names)
    line = re.compile(rf"^(#[ \t]*FROM[ \t]+)(?:{pattern})[ \t]*$", re.MULTILINE)
    return line.sub(lambda m: m.group(1) + public, modelfile)  # the name as is, never a template


def _nodes(
    models: list[tuple[Model, list[Deployment]]],
) -> list[tuple[Deployment, dict[str, list[str]]]]:
    """Each Ollama node the models use, once: a deployment to ask it through, and its
    (canonical) upstream model names -> the public names that reach them."""
    found: dict[str, tuple[Deployment, dict[str, list[str]]]] = {}
    for model, deployments in models:
        for deployment in deployments:
            provider = _ollama(deployment)
            if provider is None:
                continue
            _, names = found.setdefault(provider.base_url, (deployment, {}))
            public = names.setdefault(ollama_tagged(deployment.upstream_model), [])
            if model.name not in public:
                public.append(model.name)
    return list(found.values())


def _entry_name(entry: JSON) -> str:
    name = entry.get("model") or entry.get("name")
    return name if isinstance(name, str) else ""


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
