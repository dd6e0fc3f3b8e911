"""Bad input gets a 4xx in OpenAI's error shape naming what is wrong; never a 500 or a hang."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import MOCK
from tests.gateway import RunningGateway, make_settings, running_gateway

OK_MESSAGES = [{"role": "user", "content": "hi"}]
JSON_HEADERS = {"Content-Type": "application/json"}


async def post(
    gateway: RunningGateway,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + path,
            data=body,
            headers={**gateway.headers, **(JSON_HEADERS if headers is None else headers)},
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


def assert_openai_error(body: dict[str, Any], *, param: str | None = None, says: str = "") -> None:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"], error["message"]
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"model": "mock", "messages": [', "not valid JSON"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "hi"}]', "not valid JSON"),
        (b"{model: mock}", "not valid JSON"),
        (b'{"model": "mock", "temperature": NaN}', "not valid JSON"),
        (b'{"model": "mock", "temperature": Infinity}', "not valid JSON"),
        (
            b'{"model": "mock", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "not valid JSON",
        ),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"hello"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
async def test_unparseable_bodies(mock_gateway: RunningGateway, raw: bytes, says: str) -> None:
    status, body = await post(mock_gateway, raw)
    assert status == 400
    assert_openai_error(body, says=says)


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"messages": "hi"}, "messages", "Expected `array`, got `str`"),
        ({"max_tokens": "100"}, "max_tokens", "got `str`"),
        ({"stream": "yes"}, "stream", "Expected `bool`"),
        ({"max_tokens": -1}, "max_tokens", ">= 1"),
        ({"max_tokens": 10**12}, "max_tokens", "<="),
        ({"max_tokens": 1e9}, "max_tokens", "got `float`"),
        ({"temperature": -0.5}, "temperature", ">= 0"),
        ({"temperature": 1e308}, "temperature", "<= 2"),
        ({"top_p": -1}, "top_p", ">= 0"),
        ({"n": 10**9}, "n", "<= 128"),
        ({"messages": []}, "messages", "length >= 1"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "Invalid enum"),
        ({"messages": [{"content": "x"}]}, "messages[0]", "missing required field `role`"),
        ({"model": 42}, "model", "Expected `str`"),
        ({"model": ""}, "model", "length >= 1"),
        ({"tools": [{"type": "function"}]}, "tools[0]", "missing required field `function`"),
    ],
)
async def test_wrong_fields_name_the_field(
    mock_gateway: RunningGateway, fields: dict[str, Any], param: str, says: str
) -> None:
    import msgspec

    request = {"model": "mock", "messages": OK_MESSAGES, **fields}
    status, body = await post(mock_gateway, msgspec.json.encode(request))
    assert status == 400
    assert_openai_error(body, param=param, says=says)


async def test_missing_model_names_it(mock_gateway: RunningGateway) -> None:
    status, body = await post(mock_gateway, b'{"messages": [{"role": "user", "content": "x"}]}')
    assert status == 400
    assert_openai_error(body, param="model", says="missing required field `model`")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_wrong_content_type(mock_gateway: RunningGateway, content_type: str) -> None:
    status, body = await post(mock_gateway, b'{"model": "mock"}', {"Content-Type": content_type})
    assert status == 415
    assert_openai_error(body, says="Content-Type must be application/json")


async def test_json_content_type_with_charset_is_fine(mock_gateway: RunningGateway) -> None:
    raw = b'{"model": "mock", "messages": [{"role": "user", "content": "hi"}]}'
    status, _ = await post(mock_gateway, raw, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200


async def test_body_over_limit_refused_before_reading() -> None:
    settings = make_settings(MOCK, max_body_bytes=4096)
    async with running_gateway(settings) as gateway:
        status, body = await post(gateway, b'{"model": "mock", "x": "' + b"a" * 5000 + b'"}')
        assert status == 413
        assert "4096 bytes" in body["error"]["message"]

        async def chunked() -> Any:
            for _ in range(10):
                yield b"a" * 1000

        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway.url + "/v1/chat/completions",
                data=chunked(),
                headers={**gateway.headers, **JSON_HEADERS},
            ) as response,
        ):
            assert response.status == 413


async def test_declared_length_over_limit_answers_without_waiting_for_body(
    mock_gateway: RunningGateway,
) -> None:
    """A client that announces 100 MB gets 413 at once, though it never sends the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mock_gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {mock_gateway.admin_key}\r\n".encode()
        + b"Content-Length: 100000000\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()
    await writer.wait_closed()


async def test_unknown_path_and_method(mock_gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            mock_gateway.url + "/v1/nothing", headers=mock_gateway.headers
        ) as response:
            assert response.status == 404
            assert "under /v1" in (await response.json())["error"]["message"]
        async with session.get(
            mock_gateway.url + "/v1/chat/completions", headers=mock_gateway.headers
        ) as response:
            assert response.status == 405
            assert "use POST" in (await response.json())["error"]["message"]


async def test_embeddings_input_checked(mock_gateway: RunningGateway) -> None:
    for bad, says in [
        ({"input": ""}, "length >= 1"),
        ({"input": [1, "a"]}, "token arrays"),
        ({"input": []}, "length >= 1"),
    ]:
        import msgspec

        status, body = await post(
            mock_gateway, msgspec.json.encode({"model": "mock", **bad}), path="/v1/embeddings"
        )
        assert status == 400, bad
        assert_openai_error(body, param="input", says=says)
