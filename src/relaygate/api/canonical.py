"""Reading canonical (OpenAI-shaped) answers for the formats that re-shape them.

The Anthropic and Responses formats turn OpenAI chat completions and stream chunks
into their own events. Upstream JSON is not to be trusted to have the right types,
so these readers never raise: a missing or ill-typed value reads as empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "Delta",
    "as_dict",
    "first_choice",
    "first_item",
    "named_event",
    "read_delta",
    "text_of",
    "token_count",
]

JSON = dict[str, Any]
_encode = msgspec.json.encode


def as_dict(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def first_item(value: Any) -> JSON:
    """The first item of a list, when it is an object."""
    return as_dict(value[0]) if isinstance(value, list) and value else {}


def text_of(value: Any) -> str:
    """A message's content as text: a string, or the text of its content parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return "".join(
            p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def token_count(value: Any) -> int:
    """A token count: a positive int, else 0."""
    return value if type(value) is int and value > 0 else 0  # not a bool, not a float


def first_choice(choices: Any) -> JSON:
    """The choice with index 0 (these APIs never ask for more than one)."""
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                return choice
    return {}


def named_event(event: JSON) -> bytes:
    """One server-sent event named after its ``type``, as Anthropic's and OpenAI
    Responses' events are."""
    name = str(event["type"]).encode()
    return b"event: " + name + b"\ndata: " + _encode(event) + b"\n\n"


@dataclass(slots=True)
class Delta:
    """What one stream chunk carries for choice 0."""

    usage: JSON | None
    text: str
    tool_calls: list[JSON]
    finish_reason: Any
    choice: JSON


def read_delta(chunk: JSON) -> Delta:
    """The usage, text, tool call fragments and finish reason of one OpenAI chunk."""
    found = chunk.get("usage")
    choice = first_choice(chunk.get("choices"))
    delta = as_dict(choice.get("delta"))
    said = delta.get("content") or delta.get("refusal")  # as the non-streamed readers do
    calls = delta.get("tool_calls")
    return Delta(
        usage=found if isinstance(found, dict) and found else None,
        text=said if isinstance(said, str) else "",
        tool_calls=[c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else [],
        finish_reason=choice.get("finish_reason"),
        choice=choice,
    )
