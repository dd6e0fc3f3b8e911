"""The development model's builder mode: a system prompt with the web UI builder's marker
gets a two-file app in the fenced-file format (docs/builder.md), derived from the request,
streamed like any reply; a follow-up with another request changes app.js only."""

from __future__ import annotations

import json
import re

from relaygate.providers.mock import BUILDER_MARKER
from tests.gateway import RunningGateway

SYSTEM = {"role": "system", "content": f"You are an app builder ({BUILDER_MARKER})."}
FILE = re.compile(r"```\w+ file=(\S+)\n(.*?)```", re.S)


def _files(text: str) -> dict[str, str]:
    return {path: body for path, body in FILE.findall(text)}


async def _ask(gateway: RunningGateway, messages: list[dict[str, str]]) -> str:
    async with gateway.client() as client:
        reply = await client.chat.completions.create(model="mock", messages=messages)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason == "stop"
    return reply.choices[0].message.content or ""


async def test_a_builder_request_gets_two_files(mock_gateway: RunningGateway) -> None:
    text = await _ask(mock_gateway, [SYSTEM, {"role": "user", "content": 'a "todo" app'}])
    files = _files(text)
    assert sorted(files) == ["app.js", "index.html"]
    assert '<script src="app.js"></script>' in files["index.html"]
    quoted = json.dumps('a "todo" app')
    assert f"const request = {quoted};" in files["app.js"]
    assert text == await _ask(mock_gateway, [SYSTEM, {"role": "user", "content": 'a "todo" app'}])


async def test_a_follow_up_changes_app_js_only(mock_gateway: RunningGateway) -> None:
    first = _files(await _ask(mock_gateway, [SYSTEM, {"role": "user", "content": "a timer"}]))
    follow_up = (
        "The project's current files:\n\n```js file=app.js\nold\n```\n\n"
        "Request: add dark mode\n\nAnswer with the files you change or add, in full."
    )
    second = _files(await _ask(mock_gateway, [SYSTEM, {"role": "user", "content": follow_up}]))
    assert second["index.html"] == first["index.html"]
    assert second["app.js"] != first["app.js"]
    assert '"add dark mode"' in second["app.js"] and "old" not in second["app.js"]


async def test_the_stream_carries_the_same_files(mock_gateway: RunningGateway) -> None:
    messages = [SYSTEM, {"role": "user", "content": "a clock"}]
    whole = await _ask(mock_gateway, messages)
    async with mock_gateway.client() as client:
        stream = await client.chat.completions.create(model="mock", messages=messages, stream=True)  # type: ignore[arg-type]
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == whole and len(parts) > 10


async def test_without_the_marker_the_reply_is_the_usual_one(mock_gateway: RunningGateway) -> None:
    system = {"role": "system", "content": "You are an app builder."}
    text = await _ask(mock_gateway, [system, {"role": "user", "content": "a clock"}])
    assert text.endswith("You said: a clock") and "```" not in text
