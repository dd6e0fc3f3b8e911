"""Token estimates for when an upstream does not report usage (flagged as estimates).

With tiktoken and OpenAI's ``o200k_base`` encoding. tiktoken downloads its
encoding files on first use, which a gateway on a closed network cannot do, so
the file comes from the ``bpe-openai`` package, which ships it, and tiktoken
checks it against its own expected SHA-256 before using it.

A loaded encoding takes about 100 MiB, so it is loaded in a thread the first time
an estimate is needed, not at start (most upstreams report usage). Until it is
ready, prompts count a token per 4 bytes and streams a token per relayed chunk,
which is what most servers send.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LazyTokenizer", "prompt_text"]

_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_BYTES_PER_TOKEN = 4


class LazyTokenizer:
    """Counts tokens with tiktoken once it is loaded, approximately until then."""

    def __init__(self, cache_dir: str | Path, log: logging.Logger) -> None:
        self.cache_dir = Path(cache_dir)
        self.log = log
        self._encoding: Any = None
        self._loading: asyncio.Task[None] | None = None

    @property
    def exact(self) -> bool:
        return self._encoding is not None

    def prompt(self, text: str) -> int:
        if self._encoding is None:
            self._start_loading()
            return math.ceil(len(text.encode("utf-8", "surrogatepass")) / _BYTES_PER_TOKEN)
        return len(self._encoding.encode_ordinary(text))

    def completion(self, relayed: Sequence[str]) -> int:
        if self._encoding is None:
            self._start_loading()
            return len(relayed)
        return len(self._encoding.encode_ordinary("".join(relayed)))

    async def load(self) -> None:
        """Load now (tests, and operators who want exact estimates from the start)."""
        self._start_loading()
        assert self._loading is not None
        await self._loading

    def _start_loading(self) -> None:
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            self._encoding = await asyncio.to_thread(_o200k, self.cache_dir)
        except Exception:
            self.log.exception("tiktoken could not be loaded; token estimates stay approximate")


def _o200k(cache_dir: Path) -> Any:
    """o200k_base from the copy bpe-openai ships, placed in tiktoken's own cache (blocking)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / hashlib.sha1(_O200K_URL.encode()).hexdigest()
    if not cached.exists():
        cached.write_bytes(gzip.decompress(_shipped_o200k().read_bytes()))
    # tiktoken reads its cache location from the environment, at call time.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import tiktoken

        return tiktoken.get_encoding("o200k_base")


def _shipped_o200k() -> Path:
    """bpe-openai's copy of the file, found without importing the package (its import
    loads and keeps a vocabulary of its own)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpe-openai package (which ships o200k_base) is missing")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "o200k_base.tiktoken.gz"


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
