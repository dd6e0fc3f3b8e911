"""The development model ``mock``: deterministic replies, no upstream at all.

The reply is derived from the prompt, so the same request always gets the same
answer; it is streamed word by word with the deployment's ``chunk_delay``, and
usage counts words. It lets ``make run`` work on a machine with no model, and
it is listed in /v1/models as a development model.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from relaygate.schema.requests import ChatRequest, CompletionRequest, EmbeddingRequest
from relaygate.schema.responses import embedding_list, usage

if TYPE_CHECKING:
    from relaygate.providers.base import Upstream
    from relaygate.schema.requests import Call

__all__ = ["MockProvider"]

JSON = dict[str, Any]
_DIMENSIONS = 16


class MockProvider:
    """A provider that answers from the prompt itself."""

    base_url = "mock://"

    async def complete(self, deployment: Upstream, call: Call) -> JSON:
        prompt, words, reason = _reply(call)
        text = "".join(words)
        chat = call.kind == "chat"
        choice: JSON = {"index": 0, "logprobs": None, "finish_reason": reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": ("chatcmpl-" if chat else "cmpl-") + call.request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [choice],
            "usage": usage(_count(prompt), len(words)),
        }

    async def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        prompt, words, reason = _reply(call)
        chat = call.kind == "chat"
        base: JSON = {
            "id": ("chatcmpl-" if chat else "cmpl-") + call.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.model,
        }
        for index, word in enumerate(words):
            if index and deployment.chunk_delay:
                await asyncio.sleep(deployment.chunk_delay)
            yield {**base, "choices": [_piece(chat, word, first=index == 0)]}
        end = _piece(chat, "", first=not words)
        end["finish_reason"] = reason
        yield {**base, "choices": [end]}
        yield {**base, "choices": [], "usage": usage(_count(prompt), len(words))}

    async def embed(self, deployment: Upstream, call: Call) -> JSON:
        params = call.params
        assert isinstance(params, EmbeddingRequest)
        inputs = [params.input] if isinstance(params.input, str) else params.input
        vectors = [_vector(str(item)) for item in inputs]
        tokens = sum(_count(str(item)) for item in inputs)
        return embedding_list(vectors, call.model, params.encoding_format, tokens)

    async def list_models(self) -> list[str]:
        return ["mock"]

    async def aclose(self) -> None:
        return None


def _prompt(call: Call) -> str:
    params = call.params
    if isinstance(params, ChatRequest):
        texts = []
        for message in params.messages:
            if isinstance(message.content, str):
                texts.append(message.content)
            elif message.content:
                texts += [
                    str(p.get("text", "")) for p in message.content if p.get("type") == "text"
                ]
        return "\n".join(texts)
    if isinstance(params, CompletionRequest):
        return params.prompt if isinstance(params.prompt, str) else "\n".join(params.prompt)
    return ""


def _last_user_text(call: Call) -> str:
    params = call.params
    if isinstance(params, ChatRequest):
        for message in reversed(params.messages):
            if message.role == "user" and isinstance(message.content, str):
                return message.content
    return _prompt(call)


def _reply(call: Call) -> tuple[str, list[str], str]:
    """The prompt, the reply split into word pieces, and the finish reason."""
    prompt = _prompt(call)
    said = " ".join(_last_user_text(call).split())[:200] or "nothing"
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    text = f"This is the mock development model (reply {digest}). You said: {said}"
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1].rstrip()
    limit = call.max_output_tokens
    if limit is not None and limit < len(words):
        return prompt, words[:limit], "length"
    return prompt, words, "stop"


def _piece(chat: bool, text: str, first: bool) -> JSON:
    if not chat:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
    delta: JSON = {"role": "assistant", "content": text} if first else {"content": text}
    if not text and not first:
        delta = {}
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


def _count(text: str) -> int:
    return len(text.split())


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
