"""JSON request bodies and OpenAI's error shape, for the inbound APIs.

The ASGI plumbing they share with the pipeline (reading a bounded body, sending
a response) is in :mod:`relaygate.asgi`.
"""

from __future__ import annotations

from typing import Any

import msgspec

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
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"The request body has a value JSON cannot hold: {exc}.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not a JSON {type(data).__name__}."
        )
    return data


def error_body(error: RelaygateError) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return _encode(
        {
            "error": {
                "message": error.message,
                "type": error.type,
                "param": error.param,
                "code": error.code,
            }
        }
    )


async def send_error(send: Send, error: RelaygateError, request_id: str) -> None:
    await send_bytes(send, error.status, error_body(error), request_id, extra=error.headers())
