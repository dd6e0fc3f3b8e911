"""An OpenAI chat stream as Anthropic's stream events, one chunk at a time.

Anthropic's sequence: ``message_start`` (then a ``ping``), for each content
block a ``content_block_start``, its ``content_block_delta`` events
(``text_delta``, or ``input_json_delta`` with a tool call's argument
fragments) and a ``content_block_stop``; then ``message_delta`` (stop reason,
output tokens) and ``message_stop``. OpenAI sends its usage in a last chunk
with no choices, so input tokens are 0 in ``message_start`` unless already
known, and both counts are in ``message_delta`` (which Anthropic's clients read
as the final, cumulative figures). Cached chunks replay through the same code:
chunks are read, never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relaygate.api.anthropic import error_event, message_id_from, sse, stop_reason, usage
from relaygate.api.canonical import read_delta
from relaygate.errors import RelaygateError
from relaygate.schema.requests import Call

__all__ = ["AnthropicStream"]

JSON = dict[str, Any]


@dataclass(slots=True)
class _PendingTool:
    """A tool call seen before its name: its block cannot start without one."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class AnthropicStream:
    """Turns one request's OpenAI chat chunks into Anthropic SSE events.

    ``event(chunk)`` for each chunk, then ``end()`` once the stream is complete,
    or ``error_event(error)`` if it failed after it started.
    """

    def __init__(
        self,
        model: str,
        message_id: str,
        *,
        input_tokens: int = 0,
        stop_sequences: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.message_id = message_id
        self.input_tokens = input_tokens
        self.stop_sequences = tuple(stop_sequences)
        self._started = False
        self._blocks = 0  # content blocks started so far: the next one's index
        self._open: tuple[str, int] | None = None  # ("text" | "tool", index) of the open block
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> content block index
        self._pending: dict[int, _PendingTool] = {}
        self._finish: Any = None
        self._matched: Any = None  # vLLM's stop_reason: the stop string that matched
        self._usage: JSON | None = None

    @classmethod
    def of(cls, call: Call) -> AnthropicStream:
        """The stream of a request that ``anthropic.parse`` made, kept on ``call.wire``."""
        stream = call.wire.get("anthropic_stream")
        if not isinstance(stream, cls):
            stream = cls(
                call.model,
                message_id_from(call.request_id),
                stop_sequences=call.wire.get("stop_sequences", ()),
            )
            call.wire["anthropic_stream"] = stream
        return stream

    def event(self, chunk: JSON) -> bytes:
        """The events one OpenAI chunk calls for (often one, sometimes none)."""
        events: list[JSON] = []
        delta = read_delta(chunk)
        if delta.usage is not None:
            self._usage = delta.usage
        if not self._started:
            events += self._start()
        if delta.text:
            events += self._text(delta.text)
        for call in delta.tool_calls:
            events += self._tool(call)
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
            self._matched = delta.choice.get("stop_reason")
        return b"".join(sse(e) for e in events)

    def end(self) -> bytes:
        """What closes a complete stream: open blocks, ``message_delta``, ``message_stop``."""
        events = [] if self._started else self._start()
        for index in sorted(self._pending):
            events += self._start_tool(index, self._pending.pop(index))
        events += self._close()
        reason, sequence = stop_reason(
            self._finish, self._matched, self.stop_sequences, used_tools=bool(self._tools)
        )
        counts = usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": counts,
            }
        )
        events.append({"type": "message_stop"})
        return b"".join(sse(e) for e in events)

    def error_event(self, error: RelaygateError) -> bytes:
        """The ``error`` event that ends a stream that failed after it started."""
        return error_event(error)

    def _start(self) -> list[JSON]:
        self._started = True
        if self._usage is not None:
            self.input_tokens = usage(self._usage)["input_tokens"] or self.input_tokens
        message: JSON = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _text(self, text: str) -> list[JSON]:
        events: list[JSON] = []
        if self._open is None or self._open[0] != "text":
            events += self._close()
            events += self._begin("text", {"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "text_delta", "text": text}
        events.append({"type": "content_block_delta", "index": self._open[1], "delta": delta})
        return events

    def _tool(self, call: JSON) -> list[JSON]:
        index = call.get("index")
        index = index if isinstance(index, int) else 0
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        if index in self._tools:
            return _json_delta(self._tools[index], arguments)
        pending = self._pending.setdefault(index, _PendingTool())
        if isinstance(call.get("id"), str):
            pending.id = call["id"]
        if isinstance(function.get("name"), str):
            pending.name = function["name"]
        pending.arguments.append(arguments)
        if not pending.name:
            return []
        return self._start_tool(index, self._pending.pop(index))

    def _start_tool(self, index: int, tool: _PendingTool) -> list[JSON]:
        events = self._close()
        block = {
            "type": "tool_use",
            "id": tool.id or f"toolu_{self.message_id.removeprefix('msg_')}_{index}",
            "name": tool.name,
            "input": {},
        }
        events += self._begin("tool", block)
        self._tools[index] = self._blocks - 1
        return events + _json_delta(self._blocks - 1, "".join(tool.arguments))

    def _begin(self, kind: str, block: JSON) -> list[JSON]:
        index = self._blocks
        self._blocks += 1
        self._open = (kind, index)
        return [{"type": "content_block_start", "index": index, "content_block": block}]

    def _close(self) -> list[JSON]:
        if self._open is None:
            return []
        index = self._open[1]
        self._open = None
        return [{"type": "content_block_stop", "index": index}]


def _json_delta(index: int, fragment: str) -> list[JSON]:
    if not fragment:
        return []
    delta = {"type": "input_json_delta", "partial_json": fragment}
    return [{"type": "content_block_delta", "index": index, "delta": delta}]
