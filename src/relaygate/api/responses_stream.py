"""An OpenAI chat stream as the Responses API's typed stream events, one chunk at a time.

The sequence: ``response.created`` and ``response.in_progress``; for text, a
message item (``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` events, then ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``); for each tool
call a ``function_call`` item (``response.output_item.added``,
``response.function_call_arguments.delta`` events, then
``response.function_call_arguments.done`` and ``response.output_item.done``);
last ``response.completed`` (or ``response.incomplete`` when the answer was cut
short) with the whole Response and its usage, which OpenAI upstreams send in a
last chunk with no choices. Every event has a ``sequence_number`` from 0.

A message item is closed when a tool call starts (text after it opens a new
one); tool calls stay open until the end, since their argument fragments may
come interleaved. Cached chunks replay through the same code: chunks are read,
never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relaygate.api.canonical import read_delta
from relaygate.api.responses import (
    Pending,
    call_id,
    function_item,
    message_item,
    pending,
    response_object,
    sse,
    status_of,
    usage,
)
from relaygate.errors import RelaygateError
from relaygate.schema.requests import Call

__all__ = ["ResponsesStream"]

JSON = dict[str, Any]


@dataclass(slots=True)
class _Tool:
    """A tool call: pending until its name is known, then an output item."""

    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    output_index: int = -1  # -1 while it has not started


class ResponsesStream:
    """Turns one request's OpenAI chat chunks into Responses SSE events.

    ``event(chunk)`` for each chunk, then ``end()`` once the stream is complete,
    or ``error_event(error)`` if it failed after it started. After ``end()``
    the Response object is on the call's ``Pending`` (for ``responses.record``).
    """

    def __init__(self, state: Pending, model: str) -> None:
        self.state = state
        self.model = model
        self._rid = state.response_id.removeprefix("resp_")
        self._sequence = 0
        self._started = False
        self._output: list[JSON] = []  # output items so far, by output index
        self._text: tuple[int, list[str]] | None = None  # the open message: index, text
        self._tools: dict[int, _Tool] = {}  # by OpenAI tool call index
        self._call_ids: set[str] = set()
        self._finish: Any = None
        self._usage: JSON | None = None

    @classmethod
    def of(cls, call: Call) -> ResponsesStream:
        """The stream of a request that ``responses.parse`` made, kept on ``call.wire``."""
        stream = call.wire.get("responses_stream")
        if not isinstance(stream, cls):
            stream = cls(pending(call), call.model)
            call.wire["responses_stream"] = stream
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
            events += self._add_text(delta.text)
        for call in delta.tool_calls:
            events += self._tool(call)
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
        return self._sse(events)

    def end(self) -> bytes:
        """What closes a complete stream: open items, then ``response.completed``."""
        events = [] if self._started else self._start()
        status, details = status_of(self._finish)
        for index in sorted(self._tools):
            if self._tools[index].output_index < 0:
                events += self._start_tool(index, self._tools[index])
        cut = len(self._output) - 1 if status == "incomplete" else -1  # the item cut short
        if self._text is not None:
            events += self._close_text("incomplete" if self._text[0] == cut else "completed")
        for index in sorted(self._tools):
            tool = self._tools[index]
            events += self._close_tool(
                tool, "incomplete" if tool.output_index == cut else "completed"
            )
        response = response_object(
            self.state, self.model, status, list(self._output), usage(self._usage), details
        )
        self.state.response = response
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append({"type": kind, "response": response})
        return self._sse(events)

    def error_event(self, error: RelaygateError) -> bytes:
        """``error``, then ``response.failed``: what ends a stream that failed after it started."""
        events: list[JSON] = [] if self._started else self._start()
        events.append(
            {
                "type": "error",
                "code": error.code or error.type,
                "message": error.message,
                "param": error.param,
            }
        )
        failed = {"code": "server_error", "message": error.message}
        response = response_object(
            self.state, self.model, "failed", list(self._output), usage(self._usage), None, failed
        )
        events.append({"type": "response.failed", "response": response})
        return self._sse(events)

    # -- events --------------------------------------------------------------

    def _sse(self, events: list[JSON]) -> bytes:
        out = []
        for event in events:
            event["sequence_number"] = self._sequence
            self._sequence += 1
            out.append(sse(event))
        return b"".join(out)

    def _start(self) -> list[JSON]:
        self._started = True
        response = response_object(self.state, self.model, "in_progress", [], None)
        return [
            {"type": "response.created", "response": response},
            {"type": "response.in_progress", "response": response},
        ]

    def _add_text(self, text: str) -> list[JSON]:
        events: list[JSON] = []
        if self._text is None:
            index = len(self._output)
            item = message_item(f"msg_{self._rid}_{index}", "", "in_progress")
            item["content"] = []
            self._output.append(item)
            self._text = (index, [])
            part = {"type": "output_text", "text": "", "annotations": []}
            events += [
                {"type": "response.output_item.added", "output_index": index, "item": item},
                {
                    "type": "response.content_part.added",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": part,
                },
            ]
        index, parts = self._text
        parts.append(text)
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": self._output[index]["id"],
                "output_index": index,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            }
        )
        return events

    def _close_text(self, status: str) -> list[JSON]:
        if self._text is None:
            return []
        index, parts = self._text
        self._text = None
        item_id = self._output[index]["id"]
        item = message_item(item_id, "".join(parts), status)
        self._output[index] = item
        part = item["content"][0]
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        return [
            {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []},
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]

    def _tool(self, call: JSON) -> list[JSON]:
        index = call.get("index")
        index = index if isinstance(index, int) else 0
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        tool = self._tools.setdefault(index, _Tool())
        if tool.output_index >= 0:
            tool.arguments.append(arguments)
            return self._arguments_delta(tool, arguments)
        if isinstance(call.get("id"), str) and call["id"]:
            tool.call_id = call["id"]
        if isinstance(function.get("name"), str):
            tool.name = function["name"]
        tool.arguments.append(arguments)
        if not tool.name:
            return []
        return self._start_tool(index, tool)

    def _start_tool(self, index: int, tool: _Tool) -> list[JSON]:
        events = self._close_text("completed")
        tool.output_index = len(self._output)
        tool.call_id = call_id(tool.call_id or None, self._rid, index, self._call_ids)
        item = function_item(f"fc_{self._rid}_{tool.output_index}", tool.call_id, tool.name, "")
        item["status"] = "in_progress"
        self._output.append(item)
        events.append(
            {"type": "response.output_item.added", "output_index": tool.output_index, "item": item}
        )
        return events + self._arguments_delta(tool, "".join(tool.arguments))

    def _arguments_delta(self, tool: _Tool, fragment: str) -> list[JSON]:
        if not fragment:
            return []
        return [
            {
                "type": "response.function_call_arguments.delta",
                "item_id": self._output[tool.output_index]["id"],
                "output_index": tool.output_index,
                "delta": fragment,
            }
        ]

    def _close_tool(self, tool: _Tool, status: str) -> list[JSON]:
        item_id = self._output[tool.output_index]["id"]
        arguments = "".join(tool.arguments)
        item = function_item(item_id, tool.call_id, tool.name, arguments, status)
        self._output[tool.output_index] = item
        return [
            {
                "type": "response.function_call_arguments.done",
                "item_id": item_id,
                "output_index": tool.output_index,
                "name": tool.name,
                "arguments": arguments,
            },
            {"type": "response.output_item.done", "output_index": tool.output_index, "item": item},
        ]
