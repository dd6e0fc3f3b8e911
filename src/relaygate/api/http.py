"""JSON request bodies and OpenAI's error shape, for the inbound APIs.

The ASGI plumbing they share with the pipeline (reading a bounded body, sending
a response) is in :mod:`relaygate.asgi`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from relaygate.api.shapes import ErrorRenderer, openai_error
from relaygate.asgi import Send, send_bytes
from relaygate.errors import InvalidRequest, RelaygateError

__all__ = ["decode_json_object", "error_body", "send_error"]

_decode = msgspec.json.decode
_encode = msgspec.json.encode


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


def error_body(error: RelaygateError) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return openai_error(error)[0]


async def send_error(
    send: Send, error: RelaygateError, request_id: str, render: ErrorRenderer = openai_error
) -> None:
    """An error answer in the shape ``render`` gives (see api/shapes.py)."""
    body, content_type = render(error)
    await send_bytes(send, error.status, body, request_id, content_type, error.headers())
