"""Token estimates: approximate until tiktoken is loaded, exact o200k counts after."""

from __future__ import annotations

import logging
from pathlib import Path

from relaygate.usage.tokens import LazyTokenizer, prompt_text


async def test_approximate_then_exact(tmp_path: Path) -> None:
    tokenizer = LazyTokenizer(tmp_path / "tiktoken", logging.getLogger("test"))
    assert not tokenizer.exact
    assert tokenizer.prompt("12345678") == 2  # a token per 4 bytes
    assert tokenizer.completion(["Hel", "lo", " world"]) == 3  # a token per chunk
    await tokenizer.load()  # from the file bpe-openai ships, no network
    assert tokenizer.exact
    assert tokenizer.prompt("Hello world, how are you?") == 7  # o200k_base
    assert tokenizer.completion(["Hel", "lo", " world"]) == 2
    assert any((tmp_path / "tiktoken").iterdir())  # kept in tiktoken's cache for next time


def test_prompt_text_of_each_api() -> None:
    chat = {"messages": [{"role": "user", "content": "a"},
                         {"role": "user", "content": [{"type": "text", "text": "b"}]}]}  # fmt: skip
    assert prompt_text(chat) == "a\nb"
    assert prompt_text({"prompt": "p"}) == "p"
    assert prompt_text({"input": ["x", "y"]}) == "x\ny"
