"""Plain ASGI helpers for the hot path: read a bounded body, send JSON, send errors.

The inference routes are plain ASGI functions rather than a framework's
handlers: on this path a framework costs 25-80% more CPU per request
(see bench/RESULTS.md), and the helpers needed are few.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from relaygate.api.shapes import ErrorRenderer, openai_error
from relaygate.errors import (
    InvalidRequest,
    PayloadTooLarge,
    RelaygateError,
    UnsupportedMediaType,
)

__all__ = [
    "ASGIApp",
    "ClientGone",
    "DisconnectWatch",
    "Receive",
    "Scope",
    "Send",
    "decode_json_object",
    "error_body",
    "header",
    "new_request_id",
    "read_body",
    "send_bytes",
    "send_error",
    "wait_for_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = b"application/json"
_decode = msgspec.json.decode
_encode = msgspec.json.encode


class ClientGone(Exception):
    """The client closed the connection before the response was complete."""


def new_request_id() -> str:
    """A random, URL-safe request id (also sent back as X-Request-Id)."""
    return os.urandom(12).hex()


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


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body, with a message that says what is wrong with it."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        data = _decode(body)
    except msgspec.DecodeError as exc:
        problem = _json_problem(body, exc)
        raise InvalidRequest(f"The request body is not valid JSON: {problem}.") from None
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"The request body has a value JSON cannot hold: {exc}.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not a JSON {type(data).__name__}."
        )
    return data


# A ``\\uD800``-``\\uDFFF`` escape, group 1 its hex digits (whether its backslash is itself
# escaped is checked apart: a regex doing it backtracks over long runs of backslashes).
_SURROGATE = re.compile(rb"\\u([dD][89a-fA-F][0-9a-fA-F]{2})")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
_WINDOW = 16  # bytes each side of where msgspec stopped: an escape and its other half


def _json_problem(body: bytes, exc: msgspec.DecodeError) -> str:
    """What is wrong with a body msgspec refused: an unpaired surrogate escape is named
    as such (msgspec calls one at the very end "Input data was truncated").

    Only the few bytes where msgspec stopped are searched, so a large body costs nothing."""
    text = str(exc)
    if "surrogate" in text and (at := _AT_BYTE.search(text)) is not None:
        stop = int(at.group(1))
    elif "truncated" in text:
        stop = len(body)
    else:
        return text
    where = _lone_surrogate(body, max(stop - _WINDOW, 0), min(stop + _WINDOW, len(body)))
    if where is None:
        return text
    escape = body[where : where + 6].decode("ascii")
    line = body.count(b"\n", 0, where) + 1
    column = where - (body.rfind(b"\n", 0, where) + 1) + 1
    return (
        f"a string holds the escape {escape}, an unpaired UTF-16 surrogate (byte {where}, "
        f"line {line}, column {column}); a surrogate escape must be a high one "
        "(\\ud800-\\udbff) followed at once by a low one (\\udc00-\\udfff)"
    )


def _lone_surrogate(body: bytes, start: int = 0, end: int | None = None) -> int | None:
    """The offset of the first surrogate escape in ``body[start:end]`` that is not half of
    a high-low pair (its other half may lie just outside)."""
    pending: int | None = None  # a high surrogate's offset, waiting for its low half
    for match in _SURROGATE.finditer(body, start, len(body) if end is None else end):
        at = match.start()
        if not _is_escape(body, at):
            continue
        if int(match.group(1), 16) <= 0xDBFF:  # high
            if pending is not None:
                return pending
            pending = at
        elif pending is not None and at == pending + 6:  # the low half of the pair
            pending = None
        elif pending is None and _pending_high(body, at):
            continue  # the window began between the two halves of a pair
        else:
            return at if pending is None else pending
    return pending


def _pending_high(body: bytes, at: int) -> bool:
    """Whether a high surrogate escape ends at ``at``."""
    high = _SURROGATE.fullmatch(body, max(at - 6, 0), at)
    return high is not None and int(high.group(1), 16) <= 0xDBFF and _is_escape(body, at - 6)


def _is_escape(body: bytes, at: int) -> bool:
    """Whether the backslash at ``at`` starts an escape (an even run of backslashes before)."""
    before = body[:at]
    return (len(before) - len(before.rstrip(b"\\"))) % 2 == 0


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


def error_body(error: RelaygateError) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return openai_error(error)[0]


async def send_error(
    send: Send, error: RelaygateError, request_id: str, render: ErrorRenderer = openai_error
) -> None:
    """An error answer in the shape ``render`` gives (see api/shapes.py)."""
    body, content_type = render(error)
    await send_bytes(send, error.status, body, request_id, content_type, error.headers())


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone (after the body has been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class DisconnectWatch:
    """Cancels the current task the moment the client goes away.

    The upstream call is then abandoned at once (its connection closed), so an
    abandoned generation does not keep a GPU busy. One small task per request;
    ``close()`` must be called as soon as the response is complete, before
    anything else is awaited (after that, ``receive()`` also reports a
    disconnect).
    """

    __slots__ = ("_task", "_watcher", "client_gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.client_gone = False
        self._watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        self._watcher.add_done_callback(self._gone)

    def _gone(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            self.client_gone = True
            self._task.cancel()

    def close(self) -> None:
        self._watcher.remove_done_callback(self._gone)
        self._watcher.cancel()

    def absorb(self) -> bool:
        """After a CancelledError: True (and the cancellation undone) if the client left."""
        if self.client_gone:
            self._task.uncancel()
        return self.client_gone
