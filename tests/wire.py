"""One chat request in each inbound API's wire format, and its answer read back as sent.

The fault suite asks the same question in OpenAI's, Anthropic's and Ollama's shapes and
checks what each client would see: a status and an error body in that API's shape, or a
stream that ends normally or with that API's error event. Bytes are read as they came,
so nothing a client library would smooth over goes unseen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

__all__ = ["APIS", "PATHS", "PROMPT", "Answer", "ask", "request_body"]

JSON = dict[str, Any]
APIS = ("openai", "anthropic", "ollama")
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}
PROMPT = "tell me a story"


def request_body(api: str, model: str, stream: bool) -> JSON:
    body: JSON = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    body["stream"] = stream
    if api == "anthropic":
        body["max_tokens"] = 1024
    return body


@dataclass
class Answer:
    """What one client received: status, headers and the raw body."""

    api: str
    stream: bool
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]

    def json(self) -> JSON:
        found = json.loads(self.raw)
        assert isinstance(found, dict), self.raw
        return found

    def events(self) -> list[JSON]:
        """A stream's events, in order (OpenAI's ``[DONE]`` left out)."""
        if self.api == "ollama":
            return [json.loads(line) for line in self.raw.splitlines() if line.strip()]
        out = []
        for block in self.raw.decode().strip().split("\n\n"):
            data = [ln for ln in block.split("\n") if ln.startswith("data: ")]
            assert len(data) == 1, block
            if data[0] != "data: [DONE]":
                out.append(json.loads(data[0].removeprefix("data: ")))
        return out

    def text(self) -> str:
        """The reply's text, from a whole answer or from a stream's deltas."""
        if not self.stream:
            body = self.json()
            if self.api == "openai":
                return str(body["choices"][0]["message"]["content"])
            if self.api == "anthropic":
                return "".join(b["text"] for b in body["content"] if b["type"] == "text")
            return str(body["message"]["content"])
        parts = []
        for event in self.events():
            if self.api == "openai":
                parts += [c["delta"].get("content") or "" for c in event.get("choices", ())]
            elif self.api == "anthropic" and event["type"] == "content_block_delta":
                parts.append(event["delta"].get("text", ""))
            elif self.api == "ollama" and "message" in event:
                parts.append(event["message"].get("content", ""))
        return "".join(parts)

    def completed(self) -> bool:
        """Whether a stream ended the way a complete answer ends in its API."""
        if self.api == "openai":
            return self.raw.rstrip().endswith(b"data: [DONE]")
        last = self.events()[-1]
        if self.api == "anthropic":
            return bool(last["type"] == "message_stop")
        return last.get("done") is True

    def error(self) -> JSON:
        """The error answer's body, checked against its API's error shape; returns
        ``{"message", "type", "code"}`` (type and code None where the API has none)."""
        body = self.json()
        return _error_object(self.api, body)

    def stream_error(self) -> JSON:
        """The error event that closed a stream which had started (status 200), checked
        against its API's shape: the last event, with nothing after it and no normal end."""
        assert self.status == 200, self.status
        assert not self.completed(), "the stream ended as a complete answer"
        assert b"[DONE]" not in self.raw
        events = self.events()
        errors = [i for i, e in enumerate(events) if "error" in e]
        assert errors == [len(events) - 1], events  # exactly one, and last
        assert len(events) > 1, "the error event must follow the chunks already sent"
        return _error_object(self.api, events[-1])


def _error_object(api: str, body: JSON) -> JSON:
    assert "Traceback" not in json.dumps(body)
    if api == "ollama":
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return {"message": body["error"], "type": None, "code": None}
    if api == "anthropic":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        return {"message": body["error"]["message"], "type": body["error"]["type"], "code": None}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    return {"message": error["message"], "type": error["type"], "code": error["code"]}


async def ask(
    session: aiohttp.ClientSession, base_url: str, key: str, api: str, model: str, stream: bool
) -> Answer:
    """One chat request in ``api``'s wire format; the whole answer, as the client got it."""
    headers = {"x-api-key": key} if api == "anthropic" else {"Authorization": f"Bearer {key}"}
    async with session.post(
        base_url + PATHS[api], json=request_body(api, model, stream), headers=headers
    ) as response:
        return Answer(api, stream, response.status, response.headers, await response.read())
