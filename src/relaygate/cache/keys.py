"""Cache keys: SHA-256 over a canonical encoding of what decides the answer.

Two requests get the same key when they would get the same answer: same kind
(chat, completion, embedding), same public model, same scope (the tenant, or
``shared``), and the same body once the fields that do not change the answer are
left out (``stream``, ``stream_options``, ``user``, ``use_cache``). JSON key
order and whitespace never matter (the body is decoded, and encoded again with
sorted keys); ``1`` and ``1.0`` are the same temperature; ``max_tokens`` and
``max_completion_tokens`` are one setting.

Fields beyond the usual ones (messages, tools, tool_choice, response_format,
temperature, top_p, max tokens, stop, seed, n) are kept too: an upstream-specific
field such as vLLM's ``top_k`` changes the answer, so it must change the key.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["IGNORED_FIELDS", "cache_key", "tag"]

# Fields that change how the answer is delivered, or who asked, but not the answer.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "use_cache", "model"})
_FLOAT_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_encode = msgspec.json.Encoder(order="sorted").encode


def cache_key(kind: str, model: str, scope: str, body: dict[str, Any]) -> str:
    """The hex SHA-256 identifying the answer to ``body``."""
    canonical = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and v is not None}
    for name in _FLOAT_FIELDS:
        value = canonical.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            canonical[name] = float(value)
    if "max_completion_tokens" in canonical:
        canonical["max_tokens"] = canonical.pop("max_completion_tokens")
    digest = hashlib.sha256()
    digest.update(_encode([1, kind, model, scope]))
    digest.update(_encode(canonical))
    return digest.hexdigest()


def tag(value: str) -> str:
    """A short, glob-safe stand-in for a tenant or model name inside Redis key names."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]
