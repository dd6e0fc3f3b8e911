"""``relaygate node``: runs beside a model server and serves it through the gateway.

The agent dials out to the gateway over one WebSocket (the machine needs no open
port), registers its node (the token's name; its local server's kind, models,
loaded models and capacity), sends a heartbeat with its current models every
interval, and forwards each request the gateway sends to its local server,
streaming the answer back as it comes; many requests share the connection.
At most ``capacity`` run at once, the rest wait in order.

When the connection is lost it reconnects with exponential backoff and full
jitter (0.5 s doubling up to 30 s, reset once connected). A token the gateway
refuses (revoked, unknown) or another agent taking the node's name ends the
agent with exit code 3: retrying would not help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from relaygate import __version__
from relaygate.net.session import upstream_session
from relaygate.tunnel.hub import CONNECT_PATH
from relaygate.tunnel.protocol import (
    ALLOWED_PATHS,
    PROTOCOL,
    Body,
    Cancel,
    End,
    Failed,
    Frame,
    Goodbye,
    Head,
    Heartbeat,
    Hello,
    Request,
    ServerKind,
    Welcome,
    decode,
    encode,
)

__all__ = ["EXIT_REFUSED", "AgentConfig", "Backoff", "NodeAgent", "connect_url"]

EXIT_REFUSED = 3
CHUNK = 256 * 1024  # the largest body piece in one frame
MAX_MESSAGE = 64 * 1024 * 1024
_HOP_BY_HOP = frozenset(
    ("connection", "content-length", "keep-alive", "transfer-encoding", "upgrade", "te")
)
log = logging.getLogger("relaygate.node")


@dataclass(slots=True)
class AgentConfig:
    """What ``relaygate node`` was told."""

    gateway: str  # the gateway's base URL (http, https, ws or wss)
    token: str = field(repr=False)
    upstream: str  # the local model server's base URL
    name: str | None = None
    kind: str = "auto"  # auto, ollama or openai
    capacity: int = 4
    connect_timeout: float = 10.0


def connect_url(gateway: str) -> str:
    """The WebSocket URL of a gateway's node route (``https://gw`` -> ``wss://gw/nodes/connect``)."""
    parts = urlsplit(gateway)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not an http(s) or ws(s) URL: {gateway!r}")
    if parts.query or parts.username or parts.password:
        raise ValueError("the gateway URL takes no query string or credentials (use --token)")
    path = parts.path.rstrip("/")
    if not path.endswith(CONNECT_PATH):
        path += CONNECT_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class Backoff:
    """Exponential backoff with full jitter: a random wait up to 0.5 s, 1 s, 2 s ... 30 s."""

    def __init__(self, first: float = 0.5, most: float = 30.0, rng: random.Random | None = None):
        self.first = first
        self.most = most
        self.attempts = 0
        self._random = rng or random.Random()

    def reset(self) -> None:
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.most, self.first * 2 ** min(self.attempts, 20))
        self.attempts += 1
        return self._random.uniform(ceiling / 2, ceiling)


class Refused(Exception):
    """The gateway will not take this node: retrying would not help."""


class NodeAgent:
    """One node's connection to the gateway, kept up until refused or stopped."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.upstream = config.upstream.rstrip("/")
        self.url = connect_url(config.gateway)
        self.kind: ServerKind | None = None if config.kind == "auto" else config.kind  # type: ignore[assignment]
        self.backoff = Backoff()
        self.connected = asyncio.Event()
        self._local: aiohttp.ClientSession | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max(1, config.capacity))
        self._running = 0

    async def run(self) -> int:
        """Serve until refused (returns EXIT_REFUSED) or cancelled."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout)
        # --capacity bounds the requests to the local server, not aiohttp's pool (100)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        async with (
            upstream_session(connector, timeout=timeout) as local,
            aiohttp.ClientSession(timeout=timeout) as gateway,
        ):
            self._local = local
            while True:
                try:
                    await self._connect_once(gateway)
                except Refused as exc:
                    log.error("the gateway refused this node: %s", exc)
                    return EXIT_REFUSED
                except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError) as exc:
                    log.warning("gateway connection failed: %s", _describe(exc))
                self.connected.clear()
                delay = self.backoff.next()
                log.info("reconnecting in %.1f s", delay)
                await asyncio.sleep(delay)

    async def _connect_once(self, gateway: aiohttp.ClientSession) -> None:
        hello = await self._hello()
        log.debug(
            "connecting to %s (%s server, %d models)", self.url, hello.kind, len(hello.models)
        )
        headers = {"Authorization": f"Bearer {self.config.token}"}
        try:
            ws = await gateway.ws_connect(
                self.url,
                headers=headers,
                protocols=(PROTOCOL,),
                heartbeat=10.0,  # a WebSocket ping; no pong within 5 s: reconnect
                max_msg_size=MAX_MESSAGE,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise Refused("HTTP 401: the node token is not valid (revoked?)") from None
            if exc.status == 403:
                raise Refused(f"HTTP 403: is {self.url} the gateway's node route?") from None
            raise
        async with ws:
            lock = asyncio.Lock()

            async def send(frame: Frame) -> None:
                async with lock:
                    await ws.send_bytes(encode(frame))

            log.debug("connected; registering")
            await send(hello)
            async with asyncio.timeout(self.config.connect_timeout):
                welcome, why = await _receive(ws)
            if not isinstance(welcome, Welcome):
                refused = isinstance(welcome, Goodbye) and welcome.reason != "shutdown"
                if refused or ws.close_code == 1008:
                    raise Refused(why)
                raise aiohttp.ClientConnectionError(why)
            log.info("connected to %s as node %s (%s server)", self.url, welcome.name, hello.kind)
            self.backoff.reset()
            self.connected.set()
            beats = asyncio.ensure_future(self._heartbeats(send, welcome.heartbeat_interval))
            try:
                await self._serve(ws, send)
            finally:
                beats.cancel()
                for task in list(self._tasks.values()):
                    task.cancel()
                self._tasks.clear()
            log.warning("connection to the gateway lost")

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, send: Sender) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            try:
                frame = decode(message.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(frame, Request):
                self._start(frame, send)
            elif isinstance(frame, Cancel):
                task = self._tasks.pop(frame.id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(frame, Goodbye):
                if frame.reason in ("revoked", "replaced"):
                    raise Refused(f"the gateway said goodbye: {frame.reason}")
                return

    def _start(self, request: Request, send: Sender) -> None:
        task = asyncio.ensure_future(self._forward(request, send))
        self._tasks[request.id] = task

        def done(_task: asyncio.Task[None]) -> None:
            if self._tasks.get(request.id) is task:
                del self._tasks[request.id]

        task.add_done_callback(done)

    # the local server

    async def _hello(self) -> Hello:
        kind = self.kind or await self._detect()
        self.kind = kind
        models, loaded = await self._models()
        return Hello(
            name=self.config.name,
            kind=kind,
            models=models,
            loaded=loaded,
            capacity=self.config.capacity,
            version=__version__,
        )

    async def _detect(self) -> ServerKind:
        """Ollama if /api/tags answers, else OpenAI-compatible if /models does."""
        for kind, path in (("ollama", "/api/tags"), ("openai", "/models")):
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                if await self._get_json(path) is not None:
                    return kind  # type: ignore[return-value]
        raise aiohttp.ClientConnectionError(
            f"no Ollama or OpenAI-compatible server answers at {self.upstream}"
        )

    async def _models(self) -> tuple[list[str], list[str]]:
        """The local server's models and the loaded ones (empty when it does not answer)."""
        models: list[str] = []
        loaded: list[str] = []
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            if self.kind == "ollama":
                tags = await self._get_json("/api/tags") or {}
                models = [str(m.get("name") or m.get("model")) for m in _items(tags, "models")]
                ps = await self._get_json("/api/ps") or {}
                loaded = [str(m.get("name") or m.get("model")) for m in _items(ps, "models")]
            else:
                body = await self._get_json("/models") or {}
                models = [str(m["id"]) for m in _items(body, "data") if "id" in m]
        return models[:4096], loaded[:4096]

    async def _get_json(self, path: str) -> dict[str, object] | None:
        assert self._local is not None
        async with asyncio.timeout(5):
            async with self._local.get(self.upstream + path) as response:
                if response.status != 200:
                    return None
                try:
                    body = msgspec.json.decode(await response.read())
                except msgspec.DecodeError:
                    return None
        return body if isinstance(body, dict) else None

    async def _heartbeats(self, send: Sender, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            models, loaded = await self._models()
            queued = max(0, len(self._tasks) - self._running)
            await send(Heartbeat(models, loaded, self._running, queued))

    async def _forward(self, request: Request, send: Sender) -> None:
        """One request to the local server, its answer streamed back in frames."""
        assert self._local is not None and self.kind is not None
        if request.path not in ALLOWED_PATHS[self.kind] or request.method not in ("GET", "POST"):
            await send(
                Failed(request.id, "refused", f"{request.method} {request.path} is not served")
            )
            return
        async with self._slots:
            self._running += 1
            try:
                await self._call(request, send)
            except (aiohttp.ClientError, OSError, asyncio.CancelledError):
                raise  # the gateway connection is gone, or the request was cancelled
            except Exception:  # never leave the gateway waiting for an answer
                log.exception("request %d failed in the agent", request.id)
                await send(Failed(request.id, "protocol", "the node agent failed"))
            finally:
                self._running -= 1

    async def _call(self, request: Request, send: Sender) -> None:
        assert self._local is not None
        headers = {k: v for k, v in request.headers if k.lower() not in _HOP_BY_HOP}
        started = False
        try:
            async with self._local.request(
                request.method, self.upstream + request.path, data=request.body or None,
                headers=headers,
            ) as response:  # fmt: skip
                kept = [
                    (str(k), v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP
                ]
                await send(Head(request.id, response.status, response.reason or "", kept))
                started = True
                async for data in response.content.iter_chunked(CHUNK):
                    await send(Body(request.id, data))
            await send(End(request.id))
        except aiohttp.ClientConnectorError:
            await send(Failed(request.id, "connect", "its local server is unreachable"))
        except TimeoutError:
            await send(Failed(request.id, "timeout", "its local server timed out"))
        except (aiohttp.ClientError, OSError) as exc:
            where = "mid-response" if started else "before answering"
            await send(
                Failed(
                    request.id, "protocol", f"its local server failed {where} ({_describe(exc)})"
                )
            )


Sender = Callable[[Frame], Awaitable[None]]


def _items(body: dict[str, object], key: str) -> list[dict[str, object]]:
    found = body.get(key)
    return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> tuple[Frame | None, str]:
    """The first frame, or None and why there was none (the close code and reason)."""
    message = await ws.receive()
    if message.type == aiohttp.WSMsgType.BINARY:
        frame = decode(message.data)
        return frame, f"goodbye: {frame.reason}" if isinstance(frame, Goodbye) else ""
    if message.type == aiohttp.WSMsgType.CLOSE:
        reason = f": {message.extra}" if message.extra else ""
        return None, f"closed with code {message.data}{reason}"
    return None, "no welcome"


def _describe(exc: BaseException) -> str:
    """An error's kind and text, without the token (never in a URL or message here)."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
