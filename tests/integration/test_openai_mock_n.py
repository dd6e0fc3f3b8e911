"""The development model honours ``n``: n distinct choices, streamed too, all counted."""

from __future__ import annotations

from collections import defaultdict

from tests.gateway import RunningGateway

USER = [{"role": "user", "content": "Give me three ideas"}]
FRESH = {"Cache-Control": "no-cache"}  # answered by the model, not replayed from the cache


async def test_chat_n_choices_are_distinct_deterministic_and_all_counted(
    mock_gateway: RunningGateway,
) -> None:
    async with mock_gateway.client() as client:
        one = await client.chat.completions.create(model="mock", messages=USER, extra_headers=FRESH)  # type: ignore[arg-type]
        three = await client.chat.completions.create(
            model="mock", messages=USER, n=3, extra_headers=FRESH
        )  # type: ignore[arg-type]
        again = await client.chat.completions.create(
            model="mock", messages=USER, n=3, extra_headers=FRESH
        )  # type: ignore[arg-type]
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len(set(texts)) == 3
    assert texts[0] == one.choices[0].message.content
    assert [c.message.content for c in again.choices] == texts
    assert all(c.finish_reason == "stop" for c in three.choices)
    assert three.usage is not None and one.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == sum(len((t or "").split()) for t in texts)


async def test_streamed_n_choices_match_the_whole_reply(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        whole = await client.chat.completions.create(
            model="mock",
            messages=USER,
            n=2,
            max_tokens=4,
            extra_headers=FRESH,  # type: ignore[arg-type]
        )
        stream = await client.chat.completions.create(
            model="mock",
            messages=USER,
            n=2,
            max_tokens=4,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
            extra_headers=FRESH,
        )
        chunks = [chunk async for chunk in stream]
    texts: dict[int, str] = defaultdict(str)
    finished: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert dict(texts) == {c.index: c.message.content for c in whole.choices}
    assert finished == {0: "length", 1: "length"}
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == 8 == whole.usage.completion_tokens


async def test_completions_n(mock_gateway: RunningGateway) -> None:
    async with mock_gateway.client() as client:
        reply = await client.completions.create(
            model="mock", prompt="Once", n=2, extra_headers=FRESH
        )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text != reply.choices[1].text
