"""Plain ASGI plumbing for the hot path: read a bounded body, send a response,
notice a client that left.

The inference routes are plain ASGI functions rather than a framework's
handlers: on this path a framework costs 25-80% more CPU per request
(see bench/RESULTS.md), and the helpers needed are few. This module knows no
API's wire format; the pipeline and every inbound API use it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from relaygate.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "ASGIApp",
    "ClientGone",
    "DisconnectWatch",
    "Receive",
    "Scope",
    "Send",
    "header",
    "new_request_id",
    "read_body",
    "send_bytes",
    "wait_for_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = b"application/json"


class ClientGone(Exception):
    """The client closed the connection before the response was complete."""


def new_request_id() -> str:
    """A unique, URL-safe request id (also sent back as X-Request-Id): 32 hex digits,
    the time in milliseconds (48 bits) then 80 random bits, as in a UUIDv7.

    Ids made later sort after earlier ones, so the rows keyed by them (usage records,
    stored responses ``resp_<id>``) are added at the end of their indexes, where the
    pages are already in memory. Random ids scatter every insert over the whole index:
    on SQLite that cost twice the CPU per row and grew with the table (issues 11, 15).
    """
    return (time.time_ns() // 1_000_000).to_bytes(6, "big").hex() + os.urandom(10).hex()


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(
    scope: Scope, receive: Receive, limit: int, *, json_type_required: bool = True
) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes before reading them.

    ``json_type_required=False`` accepts any Content-Type (Ollama's API does: its
    documented ``curl -d`` examples send a form type); the body must be JSON anyway.
    """
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(limit)
        except ValueError:
            raise InvalidRequest("Content-Length is not a number.") from None
    if json_type_required:
        _check_content_type(header(scope, b"content-type"))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _check_content_type(value: bytes | None) -> None:
    if value is None:
        return  # curl -d without -H sends a form type; no header at all is accepted
    media = value.split(b";", 1)[0].strip().lower()
    if media == JSON_TYPE or media.endswith(b"+json"):
        return
    shown = media.decode("latin-1")[:100]
    raise UnsupportedMediaType(
        f"Content-Type must be application/json, not {shown!r}. "
        'Send the header "Content-Type: application/json".'
    )


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes = JSON_TYPE,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone (after the body has been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


WATCH_AFTER = 0.005  # seconds into the call before a request's client is watched


class DisconnectWatch:
    """Cancels the current task the moment the client goes away.

    The upstream call is then abandoned at once (its connection closed), so an
    abandoned generation does not keep a GPU busy. Watching takes a small task per
    request, started only once the call has run ``WATCH_AFTER`` seconds: a faster
    answer (most that do not wait for a model) costs a timer instead, and a client that
    left before then is noticed at that moment. ``close()`` must be called as soon as
    the response is complete, before anything else is awaited (after that,
    ``receive()`` also reports a disconnect).
    """

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "client_gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self.client_gone = False
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = task.get_loop().call_later(
            WATCH_AFTER, self._watch
        )

    def _watch(self) -> None:
        self._timer = None
        self._watcher = self._task.get_loop().create_task(wait_for_disconnect(self._receive))
        self._watcher.add_done_callback(self._gone)

    def _gone(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            self.client_gone = True
            self._task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.remove_done_callback(self._gone)
            watcher.cancel()

    def absorb(self) -> bool:
        """After a CancelledError: True (and the cancellation undone) if the client left."""
        if self.client_gone:
            self._task.uncancel()
        return self.client_gone
