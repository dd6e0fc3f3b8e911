"""Scripting types and the shared in-process server machinery for the fake upstreams.

A fake upstream is a real aiohttp server bound to 127.0.0.1 on a random port, running in the
test's own event loop. Each inference request consumes one :class:`Script` from a FIFO queue
(or uses ``default`` when the queue is empty); the script decides how the answer misbehaves.

Counting conventions shared by both fakes (deterministic so tests can assert sums):

* a "token" is a whitespace-separated word (``len(text.split())``);
* prompt tokens are the words of every message's text content (chat) or of the prompt;
* completion tokens are the words of the reply plus, for tool calls, the words of each call's
  name and JSON-encoded arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiohttp import web

# A stream frame is either ready bytes or built lazily at send time (e.g. the Ollama final
# line, whose durations depend on when it is sent).
Frame = bytes | Callable[[], bytes]

_POLL_INTERVAL = 0.02  # seconds between "is the client still there?" checks while stalled
_CLOSE_GRACE = 2.0  # seconds close() waits for in-flight handlers after aborting them


@dataclass
class Script:
    """How the fake answers ONE inference request."""

    status: int = 200
    """Non-200: an error body in the upstream's own error shape, with this status."""
    error_message: str = "upstream failure"
    retry_after: str | None = None
    """Sent as the ``Retry-After`` header (use with status=429/503)."""
    first_byte_delay: float = 0.0
    """Seconds to wait before sending the response status line and headers."""
    chunk_delay: float = 0.0
    """Seconds between consecutive stream frames."""
    content: str | None = None
    """Reply text. Default: ``"Echo: " + last user message`` (or the prompt)."""
    chunks: int | None = None
    """Split the content into this many stream chunks (default: one chunk per word)."""
    stall_after: int | None = None
    """Streaming: after N content chunks stop sending and hang until the client goes away
    (or the fake is closed). The OpenAI role preamble chunk is not counted."""
    reset_after: int | None = None
    """Streaming: after N content chunks abort the TCP connection (RST)."""
    malformed: bool = False
    """Non-stream: 200 with truncated JSON. Stream: a garbage line in the middle."""
    usage: bool = True
    """Include token usage (OpenAI ``usage``; Ollama ``prompt_eval_count``/``eval_count``)."""
    finish_reason: str = "stop"
    """OpenAI ``finish_reason`` / Ollama ``done_reason``. With tool calls, the OpenAI fake
    reports the default ``"stop"`` as ``"tool_calls"``; when a max-token limit truncates the
    reply, the default ``"stop"`` becomes ``"length"``."""
    tool_calls: list[dict[str, Any]] | None = None
    """Reply with tool calls. Each item is ``{"name": ..., "arguments": dict | str}``
    (optionally ``"id"``), or an OpenAI/Ollama-shaped ``{"function": {...}}`` item."""
    # --- additions -------------------------------------------------------------------------
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (sent on success and error responses)."""
    error_type: str | None = None
    """OpenAI error ``type`` override (default derived from the status)."""
    error_code: str | None = None
    """OpenAI error ``code`` override (default derived from the status)."""
    error_after: int | None = None
    """Streaming: after N content chunks send an in-band error event and end the stream
    (status stays 200). OpenAI: ``data: {"error": {...}}`` without ``[DONE]``; Ollama: an
    ``{"error": "..."}`` line. Uses ``error_message`` / ``error_type`` / ``error_code``."""
    error_text: bool = False
    """Non-200: send ``error_message`` as a plain-text body (as proxies and crashed servers
    do) instead of the upstream's JSON error shape."""


@dataclass
class Received:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case keys
    json: Any  # parsed JSON body, or None when absent / not JSON
    raw: bytes
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: Any  # decoded arguments (normally a dict)
    arguments_json: str  # compact JSON string, as OpenAI sends it


# --------------------------------------------------------------------------------------------
# deterministic text helpers


_WORD_WITH_LEADING_SPACE = re.compile(r"\s*\S+")
_WORD = re.compile(r"\S+")


def count_words(text: str) -> int:
    return len(text.split())


def split_chunks(text: str, chunks: int | None = None) -> list[str]:
    """Split ``text`` into stream pieces that concatenate exactly back to ``text``.

    ``chunks=None``: one piece per word, leading whitespace attached ("Echo: hi" -> ["Echo:",
    " hi"]). ``chunks=n``: n pieces of (almost) equal character length.
    """
    if chunks is None:
        pieces: list[str] = _WORD_WITH_LEADING_SPACE.findall(text)
        if not pieces:
            return [text] if text else []
        pieces[-1] += text[sum(len(p) for p in pieces) :]
        return pieces
    if chunks < 1:
        raise ValueError("chunks must be >= 1")
    size, extra = divmod(len(text), chunks)
    out: list[str] = []
    pos = 0
    for i in range(chunks):
        n = size + (1 if i < extra else 0)
        out.append(text[pos : pos + n])
        pos += n
    return out


def truncate_words(text: str, max_words: int | None) -> tuple[str, bool]:
    """Cut ``text`` after ``max_words`` words; returns (text, was_truncated)."""
    if max_words is None or max_words < 0:
        return text, False
    matches = list(_WORD.finditer(text))
    if len(matches) <= max_words:
        return text, False
    if max_words == 0:
        return "", True
    return text[: matches[max_words - 1].end()], True


def message_text(content: Any) -> str:
    """Text of a chat message ``content`` (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def messages_words(messages: Sequence[Any]) -> int:
    return sum(count_words(message_text(m.get("content"))) for m in messages if isinstance(m, dict))


def last_user_text(messages: Sequence[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return message_text(m.get("content"))
    return ""


def fake_embedding(text: str, dim: int = 8) -> list[float]:
    """Deterministic unit-length vector derived from ``text`` (sha256 based)."""
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for (word,) in struct.iter_unpack(">I", digest):
            values.append(word / 0xFFFFFFFF * 2.0 - 1.0)
        counter += 1
    values = values[:dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def normalize_tool_calls(calls: Sequence[dict[str, Any]] | None) -> list[ToolCall]:
    out: list[ToolCall] = []
    for i, call in enumerate(calls or ()):
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            args_json = args
            try:
                decoded: Any = json.loads(args)
            except ValueError:
                decoded = args
        else:
            decoded = args
            args_json = json.dumps(args, separators=(",", ":"), ensure_ascii=False)
        out.append(
            ToolCall(
                id=str(call.get("id") or f"call_{i}"),
                name=str(fn["name"]),
                arguments=decoded,
                arguments_json=args_json,
            )
        )
    return out


def tool_call_words(calls: Sequence[ToolCall]) -> int:
    return sum(count_words(c.name) + count_words(c.arguments_json) for c in calls)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------
# server machinery


@dataclass
class StreamPlan:
    """Frames of one streamed answer.

    ``preamble`` is sent first and is not counted by stall_after/reset_after; ``body`` holds
    the content chunks (counted); ``tail`` ends the stream. ``garbage`` is inserted in the
    middle of ``body`` when the script is malformed.
    """

    preamble: list[Frame]
    body: list[Frame]
    tail: list[Frame]
    garbage: bytes
    error: bytes = b""  # in-band error event for Script.error_after


@dataclass(eq=False)
class Flight:
    """One in-progress inference request."""

    request: web.Request
    response: web.StreamResponse | None = None
    finished: bool = False  # the whole answer was written
    reset: bool = False  # we aborted the connection ourselves
    gone: bool = False  # already counted as a disconnect


class _ClientGone(Exception):
    pass


class FakeServer:
    """Lifecycle, script queue, request recording and the streaming engine."""

    api_prefix = ""  # appended to http://127.0.0.1:PORT to form base_url

    def __init__(
        self,
        models: Sequence[str],
        *,
        api_key: str | None = None,
        embedding_dim: int = 8,
    ) -> None:
        self.models: list[str] = list(models)
        self.api_key = api_key
        self.embedding_dim = embedding_dim
        self.default = Script()
        self.requests: list[Received] = []
        self.disconnects = 0
        self.completed_streams = 0
        self.client_gone = asyncio.Event()
        self._queue: deque[Script] = deque()
        self._flights: set[Flight] = set()
        self._drained = asyncio.Event()  # set whenever no inference request is in flight
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = False
        self._counter = 0

    # -- public API -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.api_prefix}"

    def push(self, *scripts: Script) -> None:
        """Queue scripts; each inference request consumes one (FIFO)."""
        self._queue.extend(scripts)

    @property
    def pending(self) -> int:
        """Scripts still queued."""
        return len(self._queue)

    def drop_pending(self) -> None:
        """Forget the scripts still queued (a request answered by the cache left its own)."""
        self._queue.clear()

    @property
    def in_flight(self) -> int:
        """Inference requests currently being answered."""
        return len(self._flights)

    def reset_stats(self) -> None:
        """Forget recorded requests and counters (the script queue is kept)."""
        self.requests.clear()
        self.disconnects = 0
        self.completed_streams = 0
        self.client_gone.clear()

    async def wait_disconnect(self, seconds: float = 1.0) -> None:
        """Wait until a client disconnect has been seen (raises TimeoutError)."""
        async with asyncio.timeout(seconds):
            await self.client_gone.wait()

    async def start(self, port: int = 0) -> None:
        """Listen on ``port`` (0: a free one)."""
        if self._runner is not None:
            return
        self._closing = False
        app = web.Application(middlewares=[self._make_middleware()])
        self._add_routes(app)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=_CLOSE_GRACE
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        # Release stalled / slow handlers: a fake that is closed looks like a dead upstream.
        for flight in list(self._flights):
            transport = flight.request.transport
            if transport is not None:
                transport.abort()
        if self._flights:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    await self._drained.wait()
        await runner.cleanup()

    async def restart(self) -> None:
        """Listen again on the port it had before ``close()`` (a node that came back)."""
        await self.start(self.port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- hooks for subclasses ---------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _error_response(self, status: int, message: str, script: Script | None) -> web.Response:
        raise NotImplementedError

    def _unauthorized(self, request: web.Request) -> web.Response:
        return self._error_response(401, "unauthorized", None)

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        raise exc

    # -- helpers for subclasses -------------------------------------------------------------

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    def _next_script(self) -> Script:
        return self._queue.popleft() if self._queue else self.default

    def _json_response(
        self, payload: Any, script: Script | None = None, status: int = 200
    ) -> web.Response:
        headers = dict(script.headers) if script else {}
        return web.Response(
            status=status,
            body=dumps(payload).encode(),
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )

    def _malformed_response(self, body: bytes, script: Script) -> web.Response:
        return web.Response(
            status=200, body=body, content_type="application/json", headers=dict(script.headers)
        )

    def _scripted_error(self, script: Script) -> web.Response:
        if script.error_text:
            resp = web.Response(
                status=script.status, text=script.error_message, headers=dict(script.headers)
            )
        else:
            resp = self._error_response(script.status, script.error_message, script)
        if script.retry_after is not None:
            resp.headers["Retry-After"] = script.retry_after
        return resp

    async def _inference(
        self,
        request: web.Request,
        script: Script,
        produce: Callable[[Flight], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Run one scripted answer: first-byte delay, scripted error, then ``produce``.

        A client that goes away meanwhile is counted in ``disconnects`` (aiohttp cancels the
        handler on peer close because the runner uses handler_cancellation=True).
        """
        flight = Flight(request)
        self._flights.add(flight)
        self._drained.clear()
        try:
            if script.first_byte_delay > 0:
                await asyncio.sleep(script.first_byte_delay)
            if script.status != 200:
                return self._scripted_error(script)
            return await produce(flight)
        except asyncio.CancelledError:
            self._note_gone(flight)
            raise
        finally:
            self._flights.discard(flight)
            if not self._flights:
                self._drained.set()

    async def _stream(
        self,
        flight: Flight,
        script: Script,
        plan: StreamPlan,
        content_type: str,
        extra_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        request = flight.request
        headers = {"Content-Type": content_type, **(extra_headers or {}), **script.headers}
        resp = web.StreamResponse(status=200, headers=headers)
        flight.response = resp
        first = True

        async def emit(frame: Frame) -> None:
            nonlocal first
            if not first and script.chunk_delay > 0:
                await asyncio.sleep(script.chunk_delay)
            first = False
            await resp.write(frame() if callable(frame) else frame)

        body = plan.body
        stall_at = None if script.stall_after is None else min(script.stall_after, len(body))
        reset_at = None if script.reset_after is None else min(script.reset_after, len(body))
        garbage_at = len(body) // 2 if script.malformed else None
        error_at = None if script.error_after is None else min(script.error_after, len(body))
        try:
            await resp.prepare(request)
            for frame in plan.preamble:
                await emit(frame)
            for i in range(len(body) + 1):
                if i == garbage_at:
                    await emit(plan.garbage)
                if i == reset_at:
                    self._abort(flight)
                    return resp
                if i == stall_at:
                    await self._stall(request)
                if i == error_at:
                    await emit(plan.error)
                    flight.finished = True  # ended as scripted; not a completed stream
                    await resp.write_eof()
                    return resp
                if i == len(body):
                    break
                await emit(body[i])
            for frame in plan.tail:
                await emit(frame)
            flight.finished = True
            self.completed_streams += 1
            await resp.write_eof()
        except (ConnectionError, _ClientGone):
            self._note_gone(flight)
        return resp

    async def _stall(self, request: web.Request) -> None:
        """Hang until the client goes away or the fake closes (then raise _ClientGone)."""
        while not self._closing:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(_POLL_INTERVAL)
        raise _ClientGone

    def _abort(self, flight: Flight) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0 + transport.abort())."""
        flight.reset = True
        transport = flight.request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _note_gone(self, flight: Flight) -> None:
        if flight.finished or flight.reset or flight.gone or self._closing:
            return
        flight.gone = True
        self.disconnects += 1
        self.client_gone.set()

    @staticmethod
    def _elapsed_ns(start_ns: int) -> int:
        return max(1, time.perf_counter_ns() - start_ns)

    def _check_auth(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    def _make_middleware(self) -> Any:
        @web.middleware
        async def record(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            raw = await request.read()
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
            self.requests.append(
                Received(
                    method=request.method,
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    json=body,
                    raw=raw,
                    query=dict(request.query),
                )
            )
            if not self._check_auth(request):
                return self._unauthorized(request)
            try:
                return await handler(request)
            except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
                return self._route_error(request, exc)

        return record

    @staticmethod
    async def _read_object(request: web.Request) -> dict[str, Any] | None:
        """The JSON object body, or None when the body is not a JSON object."""
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None
