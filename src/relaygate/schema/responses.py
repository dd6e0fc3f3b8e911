"""Builders for canonical (OpenAI-shaped) response pieces shared by adapters."""

from __future__ import annotations

import base64
from array import array
from typing import Any

__all__ = ["embedding_list", "usage"]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def embedding_list(
    vectors: list[list[float]], model: str, encoding_format: str | None, prompt_tokens: int
) -> dict[str, Any]:
    """An OpenAI embeddings response; ``base64`` packs little-endian float32 as OpenAI does."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if encoding_format == "base64":
            packed = array("f", vector)
            if packed.itemsize != 4:  # pragma: no cover - every supported platform
                raise RuntimeError("float32 is required for base64 embeddings")
            embedding = base64.b64encode(packed.tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
