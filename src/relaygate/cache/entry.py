"""What the cache stores: one complete answer, as a response body or as a stream.

An entry keeps the answer in the form it was produced: a non-streaming call
keeps its response body, a stream keeps its chunks in order (the usage chunk
included), exactly as they were relayed. Either form can be served as the
other: ``response`` assembles a stream into one body, ``stream_chunks`` splits a
body into the chunks a stream would have carried. Replaying the form that was
stored gives the client the same bytes the first caller received.

Entries are encoded with MessagePack. Anything that does not decode as an entry
of this format is treated as absent (and dropped by the tier that held it).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["FORMAT", "Entry", "assemble", "decode_entry", "encode_entry", "merge_delta", "split"]

FORMAT = 1
JSON = dict[str, Any]


class Entry(msgspec.Struct, array_like=True):
    """One cached answer. Times are the cache clock's (seconds since the epoch)."""

    format: int
    kind: str  # chat | completion | embedding
    model: str  # the public model name
    scope: str  # the tenant (or subject) it belongs to, or "shared"
    created: float
    expires: float
    provider: str | None
    usage: JSON | None
    body: JSON | None = None
    chunks: list[JSON] | None = None

    def age(self, now: float) -> float:
        return max(now - self.created, 0.0)

    def response(self) -> JSON:
        """The answer as a non-streaming response body."""
        if self.body is not None:
            return self.body
        return assemble(self.chunks or [], self.kind)

    def stream_chunks(self) -> list[JSON]:
        """The answer as the chunks of a stream, the usage chunk last."""
        if self.chunks is not None:
            return self.chunks
        return split(self.body or {}, self.kind)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)


def encode_entry(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> Entry | None:
    """The entry, or None when ``data`` is corrupt or of another format."""
    try:
        entry = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if entry.format != FORMAT or (entry.body is None and not entry.chunks):
        return None
    return entry


def assemble(chunks: list[JSON], kind: str) -> JSON:
    """Chunks of a chat or text completion stream, as the one body a non-stream call returns."""
    chat = kind == "chat"
    choices: dict[int, JSON] = {}
    usage = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            slot = choices.get(index)
            if slot is None:
                slot = choices[index] = _empty_choice(index, chat)
            if chat:
                merge_delta(slot["message"], part.get("delta") or {})
            else:
                slot["text"] += part.get("text") or ""
            if part.get("finish_reason") is not None:
                slot["finish_reason"] = part["finish_reason"]
    first = chunks[0] if chunks else {}
    body: JSON = {
        "id": first.get("id"),
        "object": "chat.completion" if chat else "text_completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if first.get("system_fingerprint") is not None:
        body["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        body["usage"] = usage
    return body


def _empty_choice(index: int, chat: bool) -> JSON:
    if chat:
        message = {"role": "assistant", "content": None}
        return {"index": index, "message": message, "finish_reason": None}
    return {"index": index, "text": "", "finish_reason": None}


def merge_delta(message: JSON, delta: JSON) -> None:
    if delta.get("role"):
        message["role"] = delta["role"]
    for field in ("content", "refusal"):
        text = delta.get(field)
        if isinstance(text, str):
            message[field] = (message.get(field) or "") + text
    for call in delta.get("tool_calls") or ():
        calls: list[JSON] = message.setdefault("tool_calls", [])
        index = call.get("index", len(calls))
        while len(calls) <= index:
            calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        target = calls[index]
        if call.get("id"):
            target["id"] = call["id"]
        if call.get("type"):
            target["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            target["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            target["function"]["arguments"] += function["arguments"]


def split(body: JSON, kind: str) -> list[JSON]:
    """A complete response as the chunks of a stream: content, then finish, then usage."""
    chat = kind == "chat"
    base: JSON = {
        "id": body.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": body.get("created"),
        "model": body.get("model"),
    }
    if body.get("system_fingerprint") is not None:
        base["system_fingerprint"] = body["system_fingerprint"]
    chunks: list[JSON] = []
    for choice in body.get("choices") or ():
        index = choice.get("index", 0)
        if chat:
            chunks.append(_delta_chunk(base, index, choice.get("message") or {}))
            finish = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
        else:
            text = {"index": index, "text": choice.get("text") or "", "finish_reason": None}
            chunks.append({**base, "choices": [text]})
            finish = {"index": index, "text": "", "finish_reason": choice.get("finish_reason")}
        chunks.append({**base, "choices": [finish]})
    if body.get("usage") is not None:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


def _delta_chunk(base: JSON, index: int, message: JSON) -> JSON:
    delta: JSON = {"role": message.get("role") or "assistant", "content": message.get("content")}
    if message.get("refusal") is not None:
        delta["refusal"] = message["refusal"]
    calls = message.get("tool_calls")
    if calls:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
    return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
