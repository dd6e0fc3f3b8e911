"""The frames a node agent and the gateway exchange over one WebSocket.

One binary WebSocket message is one frame: a msgspec Struct encoded as a
MessagePack array whose first element is the frame's tag. Many requests share
the connection at once; each request frame carries an ``id`` the gateway chose,
and every answer frame names the same ``id``.

    agent -> gateway                      gateway -> agent
    ----------------                      ----------------
    Hello (once, first)                   Welcome (once, the answer to Hello)
    Heartbeat (every interval)            Request (an HTTP request for the local server)
    Head    (status and headers)          Cancel  (the caller went away: stop it)
    Body    (a piece of the body)         Goodbye (revoked or replaced: do not come back
    End     (the body is complete)                 with this token / connection)
    Failed  (the request failed at the node)

The agent forwards only paths under its local server's API (see ``ALLOWED_PATHS``):
the gateway cannot make a node fetch an arbitrary URL.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
    "ALLOWED_PATHS",
    "PROTOCOL",
    "TOKEN_HEADER",
    "Body",
    "Cancel",
    "End",
    "Failed",
    "FailureKind",
    "Frame",
    "Goodbye",
    "Head",
    "Heartbeat",
    "Hello",
    "Request",
    "ServerKind",
    "Welcome",
    "decode",
    "encode",
]

PROTOCOL = "relaygate-node.v1"  # the WebSocket subprotocol both sides speak
TOKEN_HEADER = "Authorization"  # "Bearer <node token>"; never in the URL
ServerKind = Literal["ollama", "openai"]
FailureKind = Literal["connect", "timeout", "protocol", "refused", "busy"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Names = Annotated[list[Annotated[str, msgspec.Meta(max_length=300)]], msgspec.Meta(max_length=4096)]
Headers = list[tuple[str, str]]

# Paths (relative to the local server's base URL) a gateway may ask a node for.
ALLOWED_PATHS: dict[str, frozenset[str]] = {
    "ollama": frozenset(
        ("/api/chat", "/api/generate", "/api/embed", "/api/show", "/api/ps", "/api/tags")
    ),
    "openai": frozenset(("/chat/completions", "/completions", "/embeddings", "/models")),
}


class _Frame(msgspec.Struct, array_like=True, tag_field="t"):
    pass


class Hello(_Frame, tag="hello"):
    """The agent registers: who it is and what its local server serves."""

    name: str | None  # the name the operator gave (--name); must match the token's
    kind: ServerKind
    models: Names
    loaded: Names
    capacity: int  # requests the agent runs at once; more wait in its queue
    version: str


class Welcome(_Frame, tag="welcome"):
    """The gateway accepted the node: its name, and how often to send heartbeats."""

    name: str
    heartbeat_interval: float


class Heartbeat(_Frame, tag="beat"):
    """Still here, with what the local server has now (models come and go)."""

    models: Names
    loaded: Names
    in_flight: int
    queued: int


class Request(_Frame, tag="req"):
    id: int
    method: str
    path: str
    headers: Headers
    body: bytes


class Cancel(_Frame, tag="cancel"):
    id: int


class Head(_Frame, tag="head"):
    id: int
    status: int
    reason: str
    headers: Headers


class Body(_Frame, tag="body"):
    id: int
    data: bytes


class End(_Frame, tag="end"):
    id: int


class Failed(_Frame, tag="fail"):
    """The request failed at the node, before or while its answer came."""

    id: int
    kind: FailureKind
    message: str


class Goodbye(_Frame, tag="bye"):
    """The gateway closes the connection for good: ``revoked`` (do not retry with this
    token) or ``replaced`` (another connection took this node's name)."""

    reason: Literal["revoked", "replaced", "shutdown"]


Frame = Hello | Welcome | Heartbeat | Request | Cancel | Head | Body | End | Failed | Goodbye

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode(data: bytes) -> Frame:
    """One frame; raises msgspec.ValidationError / DecodeError on anything else."""
    return _decoder.decode(data)
