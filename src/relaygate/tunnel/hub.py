"""The gateway's side of dial-out nodes: agents connect here, requests go out through them.

An agent opens a WebSocket to ``/nodes/connect`` with its node token in the
``Authorization`` header (never the URL). The hub checks the token's hash in
the database, takes the agent's Hello (name, server kind, models, loaded
models, capacity) and keeps the connection as a :class:`NodeLink` until it
closes, misses its heartbeats, or its token is revoked: then every request in
flight on it is failed at once (see :class:`Exchange`), never left to hang.

Revocation reaches every replica: the revoking process cuts its own links,
publishes the token id on the ``nodes`` channel when Redis is configured, and
every hub also re-checks its links' tokens in the database each
``revocation_poll`` seconds (for a CLI revocation without Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from relaygate.asgi import Receive, Scope, Send, header
from relaygate.settings import NodesConfig
from relaygate.store.nodes import NodeToken, NodeTokenStore
from relaygate.tunnel.protocol import (
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

__all__ = ["CONNECT_PATH", "Answer", "Exchange", "Hub", "Lost", "NodeLink"]

CONNECT_PATH = "/nodes/connect"
HELLO_TIMEOUT = 10.0


class Lost(msgspec.Struct, frozen=True):
    """Put in an exchange's queue when its node's connection is gone."""

    reason: str


Answer = Head | Body | End | Failed | Lost


@dataclass(slots=True, eq=False)
class Exchange:
    """One request in flight over a link: the answer frames arrive in ``answers``."""

    id: int
    link: NodeLink
    answers: asyncio.Queue[Answer] = field(default_factory=asyncio.Queue)
    done: bool = False

    async def next(self) -> Answer:
        return await self.answers.get()

    async def close(self) -> None:
        """The caller is finished with it: an unfinished request is cancelled at the node."""
        self.link.exchanges.pop(self.id, None)
        if not self.done:
            self.done = True
            await self.link.send(Cancel(self.id))


@dataclass(slots=True, eq=False)
class NodeLink:
    """One connected node: what it registered, and its requests in flight."""

    name: str
    token_id: str
    kind: ServerKind
    models: list[str]
    loaded: list[str]
    capacity: int
    version: str
    _send: Send = field(repr=False)
    connected_at: float = field(default_factory=time.time)
    last_beat: float = field(default_factory=time.monotonic)
    queued: int = 0  # at the node, waiting for its capacity (its last heartbeat)
    exchanges: dict[int, Exchange] = field(default_factory=dict)
    closed: bool = False
    _next_id: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def in_flight(self) -> int:
        return len(self.exchanges)

    async def send(self, frame: Frame) -> None:
        """Send a frame; a link that is gone swallows it (its exchanges already failed)."""
        if self.closed:
            return
        data = encode(frame)
        try:
            async with self._lock:
                await self._send({"type": "websocket.send", "bytes": data})
        except (OSError, RuntimeError):  # the socket closed under us
            self.fail_all("the connection closed")

    async def open(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> Exchange:
        """Start one request on this node; its answer arrives in the exchange."""
        self._next_id += 1
        exchange = Exchange(self._next_id, self)
        self.exchanges[exchange.id] = exchange
        if self.closed:
            exchange.answers.put_nowait(Lost("the node is disconnected"))
        else:
            await self.send(Request(exchange.id, method, path, headers, body))
        return exchange

    def deliver(self, frame: Head | Body | End | Failed) -> None:
        exchange = self.exchanges.get(frame.id)
        if exchange is None:
            return  # cancelled here already
        if isinstance(frame, End | Failed):
            exchange.done = True
            self.exchanges.pop(frame.id, None)
        exchange.answers.put_nowait(frame)

    async def close_socket(self, why: str) -> None:
        """Say goodbye and close the WebSocket (best effort: it may be gone already)."""
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.send", "bytes": encode(Goodbye(why))})  # type: ignore[arg-type]
        with contextlib.suppress(Exception):
            code = 1008 if why == "revoked" else 1001
            await self._send({"type": "websocket.close", "code": code})

    def fail_all(self, reason: str) -> None:
        """The connection is gone: every request on it learns so now."""
        self.closed = True
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            exchange.done = True
            exchange.answers.put_nowait(Lost(reason))

    def view(self) -> dict[str, object]:
        """What the admin views show of a connected node (no token, no address)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "models": list(self.models),
            "loaded": list(self.loaded),
            "capacity": self.capacity,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "agent_version": self.version,
            "connected_at": self.connected_at,
        }


Listener = Callable[[], None]


class Hub:
    """Every node connected to this worker, by name."""

    def __init__(
        self,
        tokens: NodeTokenStore,
        config: NodesConfig,
        log: logging.Logger,
    ) -> None:
        self.tokens = tokens
        self.config = config
        self.log = log
        self.links: dict[str, NodeLink] = {}
        self.listeners: list[Listener] = []  # called when nodes or their models change
        self.publish: Callable[[str], object] | None = None  # tells other replicas (Redis)
        self._monitor: asyncio.Task[None] | None = None
        self._sockets: dict[NodeLink, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def link(self, name: str) -> NodeLink | None:
        link = self.links.get(name)
        return None if link is None or link.closed else link

    def start(self) -> None:
        self._monitor = asyncio.ensure_future(self._watch())

    async def aclose(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for link in list(self.links.values()):
            await self._cut(link, "shutdown", "the gateway is shutting down")

    # revocation

    async def revoked(self, token_id: str) -> None:
        """A token was revoked here: cut its node off, and tell the other replicas."""
        self.on_revoked(token_id)
        if self.publish is not None:
            result = self.publish(token_id)
            if asyncio.iscoroutine(result):
                await result

    def on_revoked(self, token_id: str) -> None:
        """A token was revoked (here or elsewhere): its node's connection ends now."""
        for link in list(self.links.values()):
            if link.token_id == token_id:
                self._drop(link, "its token was revoked")  # its requests fail over now
                task = asyncio.ensure_future(self._cut(link, "revoked", "its token was revoked"))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _cut(self, link: NodeLink, why: str, reason: str) -> None:
        self.log.warning("node %s disconnected: %s", link.name, reason)
        self._drop(link, reason)
        await link.close_socket(why)
        event = self._sockets.get(link)
        if event is not None:
            event.set()

    def _drop(self, link: NodeLink, reason: str) -> None:
        link.fail_all(reason)
        if self.links.get(link.name) is link:
            del self.links[link.name]
            self._changed()

    def _changed(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                self.log.exception("node listener failed")

    async def _watch(self) -> None:
        """Heartbeat deadlines, and revocations made where no message reached us."""
        every = min(self.config.revocation_poll, self.config.heartbeat_interval)
        last_poll = time.monotonic()
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for link in list(self.links.values()):
                if now - link.last_beat > self.config.heartbeat_timeout:
                    await self._cut(link, "shutdown", "no heartbeat in time")
            if self.links and now - last_poll >= self.config.revocation_poll:
                last_poll = now
                try:
                    gone = await self.tokens.revoked_among(
                        link.token_id for link in self.links.values()
                    )
                except Exception as exc:  # the database is down: keep serving, retry
                    self.log.warning("node token check failed: %s", type(exc).__name__)
                    continue
                for token_id in gone:
                    self.on_revoked(token_id)

    # the WebSocket

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One agent's connection, from handshake to close."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            token = await self._authenticate(scope)
        except Exception as exc:  # the token store failed: a retry may succeed, no refusal
            self.log.warning("node token check failed: %s", type(exc).__name__)
            await _deny(scope, send, 503, "The token store could not answer; retry shortly.")
            return
        if token is None:
            await _deny(scope, send, 401, "A valid node token is required (Authorization: Bearer).")
            return
        subprotocols = scope.get("subprotocols") or []
        if PROTOCOL not in subprotocols:
            await _deny(scope, send, 400, f"The node must speak the {PROTOCOL} subprotocol.")
            return
        await send({"type": "websocket.accept", "subprotocol": PROTOCOL})
        link = await self._hello(token, receive, send)
        if link is None:
            return
        closed = asyncio.Event()
        self._sockets[link] = closed
        try:
            await self._receive_loop(link, receive, closed)
        finally:
            self._sockets.pop(link, None)
            self._drop(link, "the connection closed")

    async def _authenticate(self, scope: Scope) -> NodeToken | None:
        value = header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, secret = value.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        return await self.tokens.check(secret.strip())

    async def _hello(self, token: NodeToken, receive: Receive, send: Send) -> NodeLink | None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                frame = await _next_frame(receive)
        except TimeoutError:
            frame = None
        if not isinstance(frame, Hello):
            await send({"type": "websocket.close", "code": 1002, "reason": "expected hello"})
            return None
        if frame.name is not None and frame.name != token.name:
            reason = f"this token is node {token.name!r}'s, not {frame.name[:64]!r}'s"
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return None
        link = NodeLink(
            name=token.name,
            token_id=token.id,
            kind=frame.kind,
            models=list(frame.models),
            loaded=list(frame.loaded),
            capacity=max(1, frame.capacity),
            version=frame.version[:64],
            _send=send,
        )
        previous = self.links.get(link.name)
        if previous is not None:  # the newest connection wins (the old one is likely dead)
            await self._cut(previous, "replaced", "another connection took its name")
        self.links[link.name] = link
        await link.send(Welcome(link.name, self.config.heartbeat_interval))
        self.log.info(
            "node %s connected: %s server, %d models", link.name, link.kind, len(link.models)
        )
        self._changed()
        return link

    async def _receive_loop(self, link: NodeLink, receive: Receive, closed: asyncio.Event) -> None:
        while not closed.is_set():
            frame = await _next_frame(receive)
            if frame is None:
                return
            if isinstance(frame, Head | Body | End | Failed):
                link.deliver(frame)
            elif isinstance(frame, Heartbeat):
                link.last_beat = time.monotonic()
                link.queued = frame.queued
                if frame.models != link.models or frame.loaded != link.loaded:
                    link.models, link.loaded = list(frame.models), list(frame.loaded)
                    self._changed()


async def _next_frame(receive: Receive) -> Frame | Hello | None:
    """The next frame, None when the connection closed; a frame that does not decode
    is skipped (logged by the caller's view: it fails only its own request)."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        if data is None:
            continue
        try:
            return decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue


async def _deny(scope: Scope, send: Send, status: int, message: str) -> None:
    """Refuse the handshake with an HTTP answer (or a plain close where the server
    cannot send one). A node agent stops on 401 and retries anything else."""
    kind = {401: "authentication_error", 503: "service_unavailable"}.get(status, "invalid_request")
    body = msgspec.json.encode({"error": {"message": message, "type": kind}})
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
