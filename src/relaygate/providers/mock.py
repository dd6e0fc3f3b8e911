"""The development model ``mock``: deterministic replies, no upstream at all.

The reply is derived from the prompt, so the same request always gets the same
answer; it is streamed word by word with the deployment's ``chunk_delay``, and
usage counts words. With ``n``, each choice gets its own reply (the index is part
of what it is derived from), and usage counts the words of all of them. It lets
``make run`` work on a machine with no model, and it is listed in /v1/models as
a development model.

When the system prompt carries the web UI builder's marker (``BUILDER_MARKER``), the
reply is a two-file app in the builder's fenced-file format (docs/builder.md):
``index.html``, the same for every request, and ``app.js``, which shows the request,
so a follow-up changes one file of the two.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from relaygate.schema.requests import ChatRequest, CompletionRequest, EmbeddingRequest
from relaygate.schema.responses import embedding_list, usage

if TYPE_CHECKING:
    from relaygate.providers.base import Upstream
    from relaygate.schema.requests import Call

__all__ = ["BUILDER_MARKER", "MockProvider"]

JSON = dict[str, Any]
_DIMENSIONS = 16
BUILDER_MARKER = "relaygate-builder-format v1"


class MockProvider:
    """A provider that answers from the prompt itself."""

    base_url = "mock://"

    async def complete(self, deployment: Upstream, call: Call) -> JSON:
        prompt, replies = _replies(call)
        chat = call.kind == "chat"
        choices = []
        for index, (words, reason) in enumerate(replies):
            text = "".join(words)
            choice: JSON = {"index": index, "logprobs": None, "finish_reason": reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        return {
            "id": ("chatcmpl-" if chat else "cmpl-") + call.request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": choices,
            "usage": usage(_count(prompt), sum(len(words) for words, _ in replies)),
        }

    async def stream(self, deployment: Upstream, call: Call) -> AsyncIterator[JSON]:
        """Word ``i`` of every choice, then word ``i + 1``...; each choice ends on its own."""
        prompt, replies = _replies(call)
        chat = call.kind == "chat"
        base: JSON = {
            "id": ("chatcmpl-" if chat else "cmpl-") + call.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.model,
        }
        longest = max(len(words) for words, _ in replies)
        for position in range(longest):
            if position and deployment.chunk_delay:
                await asyncio.sleep(deployment.chunk_delay)
            for index, (words, _) in enumerate(replies):
                if position < len(words):
                    piece = _piece(chat, words[position], index, first=position == 0)
                    yield {**base, "choices": [piece]}
        for index, (words, reason) in enumerate(replies):
            end = _piece(chat, "", index, first=not words)
            end["finish_reason"] = reason
            yield {**base, "choices": [end]}
        completion = sum(len(words) for words, _ in replies)
        yield {**base, "choices": [], "usage": usage(_count(prompt), completion)}

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


def _replies(call: Call) -> tuple[str, list[tuple[list[str], str]]]:
    """The prompt, and for each of the ``n`` choices its reply split into word pieces and
    its finish reason. Choice 0 is the reply a request without ``n`` gets."""
    prompt = _prompt(call)
    said = " ".join(_last_user_text(call).split())[:200] or "nothing"
    count = getattr(call.params, "n", None) or 1
    return prompt, [_reply(call, prompt, said, index) for index in range(count)]


def _builder_request(call: Call) -> str | None:
    """The builder's request, when the system prompt is the builder's: the last user
    message, or in a follow-up the text after its ``Request:`` line."""
    params = call.params
    if not isinstance(params, ChatRequest):
        return None
    system = [m.content for m in params.messages if m.role == "system"]
    if not any(isinstance(c, str) and BUILDER_MARKER in c for c in system):
        return None
    text = _last_user_text(call)
    at = text.rfind("\nRequest: ")
    if at >= 0 or text.startswith("Request: "):
        text = text[at + 1 :] if at >= 0 else text
        text = text[len("Request: ") :].split("\n\nAnswer with", 1)[0]
    return " ".join(text.split())[:200] or "an app"


_BUILDER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Mock app</title>
</head>
<body>
<h1>Mock app</h1>
<p id="request"></p>
<script src="app.js"></script>
</body>
</html>"""


def _builder_app(request: str, digest: str) -> str:
    """Two files in the builder's format; app.js carries the request (JSON-quoted)."""
    script = (
        f"// build {digest}\n"
        f"const request = {json.dumps(request)};\n"
        "document.getElementById('request').textContent = 'You asked for: ' + request;\n"
    )
    return (
        f"Here is a two-file app for: {request}\n\n"
        f"```html file=index.html\n{_BUILDER_PAGE}\n```\n\n"
        f"```js file=app.js\n{script}```\n"
    )


def _reply(call: Call, prompt: str, said: str, index: int) -> tuple[list[str], str]:
    seed = prompt if index == 0 else f"{prompt}\x00choice {index}"
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    request = _builder_request(call)
    if request is not None:
        built = hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = _builder_app(request, built)
    else:
        text = f"This is the mock development model (reply {digest}). You said: {said}"
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1].rstrip()
    limit = call.max_output_tokens
    if limit is not None and limit < len(words):
        return words[:limit], "length"
    return words, "stop"


def _piece(chat: bool, text: str, index: int, first: bool) -> JSON:
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None}
    delta: JSON = {"role": "assistant", "content": text} if first else {"content": text}
    if not text and not first:
        delta = {}
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


def _count(text: str) -> int:
    return len(text.split())


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
