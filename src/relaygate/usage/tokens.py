"""Token estimates for when an upstream does not report usage.

OpenAI's own encodings (o200k_base) from the ``bpe-openai`` package, which ships
them inside the package: ``tiktoken`` downloads its encoding files at run time,
which a gateway on a closed network cannot do. Estimates are flagged as such.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

__all__ = ["Tokenizer", "load_tokenizer", "prompt_text"]


class Tokenizer(Protocol):
    def count(self, text: str) -> int: ...


class _BPE:
    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._encoding.encode(text))


def load_tokenizer() -> Tokenizer:
    """Blocking (reads the encoding): call it once, at start, off the event loop."""
    with warnings.catch_warnings():
        # bpe-openai loads its vocabularies on import, with the deprecated
        # importlib.resources.open_binary; imported here so that only start pays.
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        return _BPE(bpe_openai.get_encoding("o200k_base"))


def prompt_text(body: dict[str, Any]) -> str:
    """The text of a chat, completion or embeddings request, for estimating its tokens."""
    parts: list[str] = []
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts += [v for v in value if isinstance(v, str)]
    return "\n".join(parts)
