"""The HTTP server: uvicorn with httptools, and the bounds a public server needs.

uvicorn bounds none of these by itself; one protocol class does, per connection
(settings: the ``http`` section):

* the request head: at most ``max_header_bytes`` (request line and headers, as
  received) and ``max_headers`` header lines, else 431 and the connection closed;
* time: ``header_timeout`` from the connection's start (or a request's first
  byte) to the end of its headers, ``body_timeout`` from there to the end of the
  body, else 408 (when no answer has started) and the connection closed; a new
  connection that sends nothing is closed silently; between requests, uvicorn's
  keep-alive timeout (``keep_alive_timeout``) applies;
* a body still arriving when its answer is complete (413, or a 401 sent before
  the body was read) is never drained: the connection closes;
* ``max_connections`` per worker: one more connection is answered 503 with
  ``Retry-After: 1`` at once, and closed;
* ``max_in_flight`` per worker (when set): a request arriving while that many are
  being served is answered 503 with ``Retry-After: 1`` once its headers are in, before
  any route runs or its body is read, and its connection closed (load shedding);
  the operational routes (``NEVER_SHED``) are always served.

uvicorn writes a response's head as soon as it is started and its body apart: two
writes, two TCP segments for every small answer. The protocol holds the head until the
body's first bytes (or the end of the event loop's turn) and writes them together.

``relaygate serve`` and the tests both build their server here, listening on the
main address; when ``ops.listen`` is set, the operations listener
(observability/ops_listener.py) answers /health, /ready and /metrics from a thread of
this process, or with several workers, of the supervising one.
"""

from __future__ import annotations

import asyncio
import http
import os
import socket
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from relaygate.api.shapes import error_renderer_for
from relaygate.asgi import ASGIApp, new_request_id
from relaygate.errors import (
    ConfigError,
    HeadersTooLarge,
    InvalidRequest,
    Overloaded,
    RelaygateError,
    RequestTimeout,
    TooManyConnections,
)
from relaygate.observability.logging import uses_own_handlers
from relaygate.observability.ops_listener import InProcess, OpsListener, Supervised, Verdicts
from relaygate.settings import HttpConfig, Settings
from relaygate.usage.dedicated import DedicatedWriter
from relaygate.usage.election import elects_writer

__all__ = [
    "GuardedHttpProtocol",
    "Server",
    "ServerConfig",
    "bind",
    "build_server",
    "protocol_error_body",
    "serve",
    "server_config",
]

STARTUP_FAILURE = 3
# Health checks and scrapes keep answering while requests are shed: a load balancer must
# not take an overloaded worker for a dead one.
NEVER_SHED = frozenset((b"/health", b"/ready", b"/metrics"))
_IDLE, _HEAD, _BODY = 0, 1, 2  # which timer runs: none, the head's, the body's


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; carries the answer."""

    def __init__(self, error: RelaygateError) -> None:
        self.error = error


def protocol_error_body(path: str | None, error: RelaygateError) -> bytes:
    """The error in the shape of the API that ``path`` belongs to (OpenAI's when unknown).

    The one place that maps a path to an error shape for errors raised before any
    route runs.
    """
    return error_renderer_for(path or "/")(error)[0]


def _answer(error: RelaygateError, path: str | None) -> bytes:
    """A complete response that closes the connection."""
    body = protocol_error_body(path, error)
    lines = [
        f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}\r\n".encode(),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-request-id: " + new_request_id().encode() + b"\r\n",
        b"connection: close\r\n",
    ]
    lines += [name + b": " + value + b"\r\n" for name, value in error.headers()]
    return b"".join(lines) + b"\r\n" + body


def _path(url: bytes | None) -> str | None:
    if not url:
        return None
    return url.split(b"?", 1)[0].decode("latin-1")


class _HeadWithBody:
    """What one request's cycle writes to: the connection's transport, except that its
    first write (the response head) waits for the next (the body) to go out in one
    write, or for the end of this turn of the event loop, whichever comes first.
    Bytes always leave in the order they were written."""

    __slots__ = ("_armed", "_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._armed = True
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.transport.write(held + data)
        elif self._armed:
            self._armed = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded in head size, time and connections.

    It relies on uvicorn's parser callbacks (``on_headers_complete``,
    ``on_message_complete``), ``on_response_complete``, ``self.parser``,
    ``self.headers``, ``self.cycle`` and ``self.url``; a unit test fails when one
    disappears (pyproject pins uvicorn to a tested range). Nothing is added per
    header: the head's bytes are counted per read, its lines once it is complete.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: HttpConfig = getattr(config, "http_limits", None) or HttpConfig()
        self.limits = limits
        self._head_limit = limits.max_header_bytes
        # Bytes the current head may still take; None past the head (in the body). It
        # tells the phase too: None in a body, below the limit in a head, else idle.
        self._head_left: int | None = limits.max_header_bytes
        self._timer: asyncio.TimerHandle | None = None
        self._timer_phase = _IDLE
        self._over_cap = False
        self._upgraded = False  # handed to the WebSocket protocol: no more timers here
        self.url = b""

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            self._over_cap = True
            self.transport = transport
            error = TooManyConnections(
                "Too many open connections to this server; retry in a second."
            )
            transport.write(_answer(error, None))
            transport.close()
            return
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.limits.header_timeout, self._timed_out)
        self._timer_phase = _HEAD  # the first request's head must arrive in time

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._over_cap:
            self.parser = None  # type: ignore[assignment]
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, never more than the head may still take; then set the timer
        for the phase the request is in."""
        if self._over_cap:
            return
        left = self._head_left
        if left is None or len(data) <= left:
            if left is not None:
                self._head_left = left - len(data)
            self._feed(data)
        elif not self._feed_up_to_limit(data):
            return
        if self.transport.is_closing() or self._upgraded:
            return
        left = self._head_left
        phase = _BODY if left is None else _HEAD if left < self._head_limit else _IDLE
        if phase != self._timer_phase:
            self._retime(phase)

    def _feed_up_to_limit(self, data: bytes) -> bool:
        """Feed ``data`` whose size crosses the head's limit; False once refused."""
        while True:
            left = self._head_left
            if left is None or len(data) <= left:
                if left is not None:
                    self._head_left = left - len(data)
                self._feed(data)
                return True
            self._head_left = 0
            self._feed(data[:left])
            if self.transport.is_closing():
                return False
            if self._head_left == 0:  # the head is still incomplete at its limit
                self._close_with(self._too_large("bytes"))
                return False
            data = data[left:]

    def _feed(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._close_with(exc.__context__.error)
                return
            raise
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():  # a WebSocket: only dial-out nodes (/nodes/connect)
                self._cancel_timer()
                self._upgraded = True
                self.handle_websocket_upgrade()
            # any other upgrade was passed on as a plain request
        except httptools.HttpParserError:
            self._close_with(InvalidRequest("Invalid HTTP request received."))

    def _retime(self, phase: int) -> None:
        self._cancel_timer()
        self._timer_phase = phase
        if phase != _IDLE:  # between requests, uvicorn's keep-alive timer runs
            limits = self.limits
            seconds = limits.body_timeout if phase == _BODY else limits.header_timeout
            self._timer = self.loop.call_later(seconds, self._timed_out)

    # parser callbacks

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.limits.max_headers:
            raise _Refused(self._too_large("headers"))
        cap = self.limits.max_in_flight
        if cap is not None and len(self.tasks) >= cap and self._sheddable():
            raise _Refused(
                Overloaded("This server is busy with other requests; retry in a second.")
            )
        self._head_left = None
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:  # a request (not an upgrade) begins
            cycle.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def _sheddable(self) -> bool:
        return self.url.split(b"?", 1)[0] not in NEVER_SHED

    def on_message_complete(self) -> None:
        self._head_left = self._head_limit
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._head_left is None and self.cycle.response_complete:
            # The answer is out and its request body is still coming: don't drain it.
            self._flush_held()
            self.transport.close()
        super().on_response_complete()

    def _flush_held(self) -> None:
        """Write what the current cycle holds (a head) before the protocol itself writes
        to or closes the connection."""
        writer: object = self.cycle.transport if self.cycle is not None else None
        if isinstance(writer, _HeadWithBody):
            writer.flush()

    # limits

    def _too_large(self, what: str) -> HeadersTooLarge:
        if what == "headers":
            limit = f"{self.limits.max_headers} header lines"
        else:
            limit = f"{self.limits.max_header_bytes} bytes of request line and headers"
        return HeadersTooLarge(f"The request headers are too large: the limit is {limit}.")

    def _timed_out(self) -> None:
        self._timer = None
        self._timer_phase = _IDLE
        if self.transport.is_closing():
            return
        left = self._head_left
        if left is not None and left >= self._head_limit:  # no request begun: just close
            self.transport.close()
            return
        if left is None:
            what, seconds = "body", self.limits.body_timeout
        else:
            what, seconds = "headers", self.limits.header_timeout
        self._close_with(
            RequestTimeout(f"The request {what} did not arrive within {seconds:g} seconds.")
        )

    def _close_with(self, error: RelaygateError) -> None:
        """Answer ``error`` unless an answer has started, then close the connection."""
        self._cancel_timer()
        if self.transport.is_closing():
            return
        self._flush_held()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_answer(error, _path(self.url)))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() reports a disconnect
            cycle.message_event.set()
        self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_phase = _IDLE


class Server(uvicorn.Server):
    """uvicorn's Server; with one worker, it says "Uvicorn running on ..." once it
    listens (uvicorn is silent when given its sockets, as relaygate always does), and
    closes its operations listener, when it has one, once it has stopped."""

    ops_listener: OpsListener | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets)
        finally:
            if self.ops_listener is not None:
                await asyncio.to_thread(self.ops_listener.close)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets and self.started and self.config.workers == 1:
            self._log_started_message(sockets[:1])


class ServerConfig(uvicorn.Config):
    """uvicorn's Config, carrying the ``http`` limits to every connection's protocol."""

    def __init__(self, app: ASGIApp | str, *, limits: HttpConfig, **options: Any) -> None:
        super().__init__(app, http=GuardedHttpProtocol, **options)
        self.http_limits = limits


def server_config(settings: Settings, app: ASGIApp | str, **overrides: Any) -> ServerConfig:
    """The uvicorn configuration relaygate runs under."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        # WebSocket only for dial-out nodes (/nodes/connect, tunnel/hub.py)
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_body_bytes + 1024 * 1024,
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        # relaygate reads X-Forwarded-For itself, only from auth.trusted_proxies;
        # uvicorn's own handling would trust 127.0.0.1 and rewrite the client address.
        "proxy_headers": False,
        "timeout_keep_alive": settings.http.keep_alive_timeout,
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
        "log_level": settings.log_level,
        "backlog": 4096,
    }
    if uses_own_handlers(settings):  # uvicorn's lines through relaygate's (JSON) handler
        options["log_config"] = None
    options.update(overrides)
    return ServerConfig(app, limits=settings.http, **options)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket that worker processes can inherit."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def build_server(
    settings: Settings, app: ASGIApp, **overrides: Any
) -> tuple[Server, list[socket.socket]]:
    """An in-process server and its bound sockets; its operations listener, when
    ``ops.listen`` is set, already answers (and closes when the server stops)."""
    sockets = [bind(settings.host, settings.port)]
    server = Server(server_config(settings, app, **overrides))
    server.ops_listener = _in_process_ops(settings, app)
    return server, sockets


def _in_process_ops(settings: Settings, app: ASGIApp | str) -> OpsListener | None:
    """One worker: the listener reads this process's heartbeat and metrics."""
    if settings.ops.address is None:
        return None

    def render() -> bytes | None:
        state = getattr(app, "state", None)
        return None if state is None else bytes(state.metrics.render())

    verdicts = InProcess(
        settings.ops.stall_seconds, lambda: getattr(app, "heartbeat", None), render, os.getpid()
    )
    return _start_ops(settings, app, verdicts)


def _start_ops(settings: Settings, app: ASGIApp | str, verdicts: Verdicts) -> OpsListener:
    address = settings.ops.address
    assert address is not None
    host, port = address[0] or settings.host, address[1]
    try:
        listener = OpsListener((host, port), verdicts)
    except OSError as exc:
        raise ConfigError(
            f"ops.listen: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    if hasattr(app, "ops_port"):  # port 0: the app learns the port it was given
        app.ops_port = listener.port
    listener.start()
    return listener


def serve(settings: Settings, app: ASGIApp | str) -> None:
    """``relaygate serve``: one worker in this process, or ``settings.workers`` processes
    (``app`` is then the import string of the app factory)."""
    config = server_config(settings, app, workers=settings.workers, factory=isinstance(app, str))
    # One worker: uvicorn says "running" once it listens; several: at bind, as it does.
    main = config.bind_socket() if settings.workers > 1 else bind(config.host, config.port)
    server = Server(config)
    ops = None
    # on SQLite: usage written by a process of its own (usage/dedicated.py), started first
    writer = DedicatedWriter(settings) if elects_writer(settings) else None
    try:
        if writer is not None and not writer.start():
            writer = None
        if settings.workers > 1:
            supervisor = Multiprocess(config, sockets=[main])
            ops = _supervised_ops(settings, app, supervisor)
            supervisor.run()
        else:
            ops = server.ops_listener = _in_process_ops(settings, app)
            server.run(sockets=[main])
    except KeyboardInterrupt:
        pass
    finally:
        if ops is not None:
            ops.close()
        main.close()
        if writer is not None:  # after the workers, whose last records it writes
            writer.stop()
    if settings.workers == 1 and not server.started:
        raise SystemExit(STARTUP_FAILURE)


def _supervised_ops(
    settings: Settings, app: ASGIApp | str, supervisor: Multiprocess
) -> OpsListener | None:
    """Several workers: the supervisor's listener reads their heartbeats and metrics
    from prometheus-client's multiprocess directory (the CLI made one)."""
    if settings.ops.address is None:
        return None
    directory = settings.prometheus_multiproc_dir
    if directory is None:
        raise ConfigError("ops.listen: several workers need PROMETHEUS_MULTIPROC_DIR")

    def alive() -> list[int]:
        return [
            p.pid for p in list(supervisor.processes) if p.pid is not None and p.process.is_alive()
        ]

    verdicts = Supervised(settings.ops.stall_seconds, settings.workers, directory, alive)
    return _start_ops(settings, app, verdicts)
