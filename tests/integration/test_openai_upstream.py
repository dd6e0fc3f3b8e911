"""An OpenAI-compatible upstream behind the gateway, driven by the official openai client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.conftest import closed_port_url
from tests.fakes.local_app import LocalApp
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import make_settings, running_gateway
from tests.usage_rows import usage_rows

USER = [{"role": "user", "content": "tell me a story"}]
# Shaped like no known key (no sk- prefix, too short to look random): only the gateway's
# knowledge of its configured key can scrub it from an upstream's error.
SECRET = "zq8kd93mfa0q7x"


def model(name: str, *base_urls: str, **deployment: Any) -> dict[str, Any]:
    return {
        "name": name,
        "deployments": [{"provider": "openai", "base_url": url, **deployment} for url in base_urls],
    }


async def test_chat_is_forwarded_and_model_renamed(fake_openai: FakeOpenAI) -> None:
    config = model("public", fake_openai.base_url, model="upstream-name", api_key=SECRET)
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        reply = await client.chat.completions.create(
            model="public",
            messages=USER,
            temperature=0.5,
            seed=7,
            user="u1",  # type: ignore[arg-type]
            extra_body={"top_k": 20},
        )
    sent = fake_openai.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json["model"] == "upstream-name"
    assert sent.json["top_k"] == 20 and sent.json["seed"] == 7 and sent.json["user"] == "u1"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert reply.model == "public"
    assert reply.choices[0].message.content == "Echo: tell me a story"
    assert reply.usage is not None and reply.usage.prompt_tokens == 4


async def test_stream_relays_chunks_and_hides_forced_usage(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
            chunks = [c async for c in stream]
            asked = await client.chat.completions.create(
                model="m",
                messages=USER,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
            with_usage = [c async for c in asked]
    assert fake_openai.requests[0].json["stream_options"] == {"include_usage": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Echo: tell me a story"
    )
    assert all(c.model == "m" and c.usage is None for c in chunks)
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens == 5


async def test_stream_is_relayed_as_it_arrives(fake_openai: FakeOpenAI) -> None:
    """Chunks reach the client while the upstream is still generating: the upstream here
    sends one word, then stalls until the client leaves; a buffering gateway would show
    the client nothing at all."""
    fake_openai.push(Script(stall_after=1))
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        body = {"model": "m", "messages": USER, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers
            ) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                received = b""
                while b"Echo" not in received:
                    line = await response.content.readline()
                    assert line, "the stream ended before the first word"
                    received += line
                assert fake_openai.disconnects == 0  # the upstream is still stalled
                response.close()
        await asyncio.wait_for(fake_openai.client_gone.wait(), 10)
    assert received.startswith(b"data: {") and b"[DONE]" not in received


async def test_completions_and_embeddings(fake_openai: FakeOpenAI) -> None:
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        async with gateway.client() as client:
            text = await client.completions.create(model="m", prompt="hello world")
            vectors = await client.embeddings.create(model="m", input=["a", "b c"])
    assert text.model == "m" and text.choices[0].text == "Echo: hello world"
    assert vectors.model == "m" and len(vectors.data) == 2
    assert [r.path for r in fake_openai.requests] == ["/v1/completions", "/v1/embeddings"]


async def test_upstream_5xx_is_502_with_its_message(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(status=500, error_message="CUDA out of memory")
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.InternalServerError) as error:
                await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert error.value.status_code == 502
    assert "CUDA out of memory" in error.value.message
    assert "answered 500" in error.value.message


async def test_upstream_error_never_leaks_the_key(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(
        status=401, error_message=f"Incorrect API key provided: {SECRET}. Find your key at..."
    )
    config = model("m", fake_openai.base_url, api_key=SECRET)
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        with pytest.raises(openai.APIStatusError) as error:
            await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(gateway.url + "/metrics")).text()
    assert error.value.status_code == 502
    assert SECRET not in str(error.value.body) and SECRET[:8] not in error.value.message
    assert "Incorrect API key provided: ***" in error.value.message
    assert SECRET not in metrics


async def test_upstream_400_is_passed_on_as_400(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(status=400, error_message="context length exceeded")
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.BadRequestError) as error:
                await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert "context length exceeded" in error.value.message
    assert len(fake_openai.requests) == 1  # a rejected request is not retried


async def test_upstream_429_is_429_with_retry_after(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(status=429, retry_after="7", error_message="slow down")
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert error.value.response.headers["retry-after"] == "7"
    assert "slow down" in error.value.message


async def test_malformed_upstream_json_is_502(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(malformed=True)
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        async with gateway.client() as client:
            with pytest.raises(openai.InternalServerError) as error:
                await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert error.value.status_code == 502
    assert "not a JSON object" in error.value.message


async def test_total_timeout_is_504(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(first_byte_delay=3)
    config = model("m", fake_openai.base_url, timeouts={"total": 0.3})
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        with pytest.raises(openai.InternalServerError) as error:
            await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert error.value.status_code == 504  # a 200 would mean the 3 s answer was awaited
    assert "timed out for the whole call" in error.value.message
    await fake_openai.wait_disconnect(2)  # the upstream call was abandoned, not left running


async def test_stream_first_byte_timeout_is_504_before_anything_is_sent(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.default = Script(first_byte_delay=3)
    config = model("m", fake_openai.base_url, timeouts={"first_byte": 0.3})
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        with pytest.raises(openai.InternalServerError) as error:
            await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
    assert error.value.status_code == 504
    assert "waiting for the first chunk" in error.value.message


async def test_stream_idle_timeout_ends_with_error_event(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(stall_after=2)
    config = model("m", fake_openai.base_url, timeouts={"idle": 0.3})
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
        received = []
        with pytest.raises(openai.APIError) as error:
            async for chunk in stream:
                received.append(chunk)
    assert len(received) >= 2
    assert "waiting for the next chunk" in str(error.value)
    await fake_openai.wait_disconnect(2)


async def test_failover_to_second_deployment_when_first_is_down(fake_openai: FakeOpenAI) -> None:
    down = closed_port_url()
    config = model("m", down, fake_openai.base_url)
    config["order"] = "preference"  # the one that is down is always tried first
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        for _ in range(3):
            reply = await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
            assert reply.choices[0].message.content == "Echo: tell me a story"
        ready = await _json(gateway.url + "/ready")
    states = {d["name"]: d["state"] for d in ready["models"]["m"]["deployments"]}
    assert states["m#1"] == "cooling_down" and states["m#2"] == "healthy"
    assert len(fake_openai.requests) == 3


async def test_5xx_is_retried_on_another_deployment(fake_openai: FakeOpenAI) -> None:
    async with FakeOpenAI() as other:
        fake_openai.default = Script(status=503)
        config = model("m", fake_openai.base_url, other.base_url)
        config["deployments"][0]["weight"] = 10**6  # the failing one is tried first
        async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
            for _ in range(4):
                await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        assert len(other.requests) == 4
        assert len(fake_openai.requests) == 3  # then cooled down after 3 failures in a row


async def test_all_deployments_down_is_503() -> None:
    config = model("m", closed_port_url(), closed_port_url())
    async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
        with pytest.raises(openai.APIStatusError) as error:
            await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        assert error.value.status_code == 503
        assert "unreachable (connection refused)" in error.value.message
        assert "127.0.0.1" not in error.value.message  # internal addresses stay internal
        for _ in range(3):  # now every deployment is cooling down
            with pytest.raises(openai.APIStatusError) as error:
                await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        assert error.value.status_code == 503
        assert "No healthy deployment" in error.value.message
        assert error.value.response.headers["retry-after"]
        async with aiohttp.ClientSession() as session:
            async with session.get(gateway.url + "/ready") as response:
                assert response.status == 503


async def test_fallback_model_answers_under_the_asked_name(fake_openai: FakeOpenAI) -> None:
    primary = {**model("gpt-4o-mini", closed_port_url()), "fallbacks": ["local"]}
    async with (
        running_gateway(make_settings([primary, model("local", fake_openai.base_url)])) as gateway,
        gateway.client() as client,
    ):
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert reply.model == "gpt-4o-mini"
    assert fake_openai.requests[0].json["model"] == "local"


async def test_stream_failing_after_first_byte_is_not_retried(fake_openai: FakeOpenAI) -> None:
    async with FakeOpenAI() as other:
        fake_openai.default = Script(reset_after=2)
        config = model("m", fake_openai.base_url, other.base_url)
        config["deployments"][0]["weight"] = 10**6
        async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
            stream = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
            got = []
            with pytest.raises(openai.APIError) as error:
                async for chunk in stream:
                    got.append(chunk)
        assert got, "the first chunks reached the client"
        assert "closed the connection mid-response" in str(error.value)
        assert other.requests == []


async def test_stream_retried_before_first_byte(fake_openai: FakeOpenAI) -> None:
    async with FakeOpenAI() as other:
        fake_openai.default = Script(status=502)
        config = model("m", fake_openai.base_url, other.base_url)
        config["deployments"][0]["weight"] = 10**6
        async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
            stream = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Echo: tell me a story"
        assert len(other.requests) == 1


async def test_client_disconnect_cancels_upstream_stream(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Script(chunk_delay=0.2, chunks=50)
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        body = {"model": "m", "messages": USER, "stream": True}
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers
            )
            await response.content.readline()
            response.close()  # the client goes away mid-stream
        await asyncio.wait_for(fake_openai.client_gone.wait(), 2)
    assert fake_openai.disconnects == 1 and fake_openai.completed_streams == 0


async def test_client_disconnect_cancels_stalled_upstream(fake_openai: FakeOpenAI) -> None:
    """Even while the upstream sends nothing, the client leaving ends the upstream call."""
    fake_openai.default = Script(stall_after=1)
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        body = {"model": "m", "messages": USER, "stream": True}
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers
            )
            await response.content.readline()
            response.close()
        await asyncio.wait_for(fake_openai.client_gone.wait(), 2)


async def _json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


async def test_client_leaving_non_streaming_request_cancels_upstream(
    fake_openai: FakeOpenAI,
) -> None:
    """A slow generation the client gave up on does not keep the upstream busy."""
    fake_openai.default = Script(first_byte_delay=10)
    async with running_gateway(make_settings([model("m", fake_openai.base_url)])) as gateway:
        body = {"model": "m", "messages": USER}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            with pytest.raises(TimeoutError):
                await session.post(
                    gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers
                )
        await asyncio.wait_for(fake_openai.client_gone.wait(), 2)
        metrics = await _text(gateway.url + "/metrics")
    assert 'relaygate_requests_total{api="openai",model="m",status="499"} 1.0' in metrics


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_every_5xx_is_retried_on_the_next_deployment(
    fake_openai: FakeOpenAI, status: int, stream: bool
) -> None:
    """Any 5xx before the first byte is tried on the next deployment, unseen by the client."""
    async with FakeOpenAI() as other:
        fake_openai.push(Script(status=status, error_message=f"broken {status}"))
        config = model("m", fake_openai.base_url, other.base_url)
        config["deployments"][0]["weight"] = 10**6  # the failing one is tried first
        async with running_gateway(make_settings([config])) as gateway, gateway.client() as client:
            if stream:
                chunks = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in chunks if c.choices]
                )
            else:
                reply = await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
                text = reply.choices[0].message.content or ""
            ready = await _json(gateway.url + "/ready")
        assert text == "Echo: tell me a story"
        assert (len(fake_openai.requests), len(other.requests)) == (1, 1)
        states = {d["name"]: d["state"] for d in ready["models"]["m"]["deployments"]}
        assert states == {"m#1": "degraded", "m#2": "healthy"}  # one failure, counted


STREAM_FAILURES = {
    "status 500": lambda fake: (fake.base_url, Script(status=500), {}),
    "connect refused": lambda fake: (closed_port_url(), None, {}),
    "first-byte timeout": lambda fake: (
        fake.base_url,
        Script(first_byte_delay=3),
        {"timeouts": {"first_byte": 0.2}},
    ),
}


@pytest.mark.parametrize("failure", list(STREAM_FAILURES))
async def test_streams_failing_before_the_first_chunk_count_toward_health(
    fake_openai: FakeOpenAI, failure: str
) -> None:
    """``failure_threshold`` streams failing before their first chunk eject the deployment."""
    async with FakeOpenAI() as other:
        url, script, extra = STREAM_FAILURES[failure](fake_openai)
        if script is not None:
            fake_openai.default = script
        first = {"provider": "openai", "base_url": url, "weight": 10**6, **extra}
        second = {"provider": "openai", "base_url": other.base_url}
        config = {"name": "m", "deployments": [first, second]}
        settings = make_settings([config], routing={"failure_threshold": 2, "cooldown": 60})
        async with running_gateway(settings) as gateway, gateway.client() as client:
            states = []
            for _ in range(4):
                chunks = await client.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in chunks if c.choices]
                )
                assert text == "Echo: tell me a story"
                ready = await _json(gateway.url + "/ready")
                states.append(ready["models"]["m"]["deployments"][0]["state"])
        # failed, failed (ejected), then skipped while it cools down
        assert states == ["degraded", "cooling_down", "cooling_down", "cooling_down"]
        assert len(other.requests) == 4
        if script is not None:
            assert len(fake_openai.requests) == 2  # never tried while cooling down


class FixedAnswer(LocalApp):
    """An OpenAI-compatible server that answers every call with the same bytes."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/embeddings", self._answer)

    async def _answer(self, request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/json")


# As a server may write it: a vendor field, \u escapes, 1.50, logprobs null, spaces
UPSTREAM_ANSWER = (
    b'{"id": "c1", "object": "chat.completion", "model": "upstream-name", '
    b'"system_fingerprint": "fp_caf\\u00e9", "choices": [{"index": 0, "message": '
    b'{"role": "assistant", "content": "caf\\u00e9 costs 1.50"}, "logprobs": null, '
    b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4, '
    b'"total_tokens": 7}, "vendor": {"score": 1.50, "model": "upstream-name"}}'
)


@pytest.mark.parametrize("cache", [False, True])
async def test_an_answer_is_relayed_as_the_upstream_wrote_it_but_for_its_model(
    cache: bool,
) -> None:
    """The client gets the upstream's own bytes, only the top-level ``model`` renamed
    (nothing decoded and encoded again); usage is still read and recorded, and a cached
    copy replays the same answer."""
    async with FixedAnswer(UPSTREAM_ANSWER) as upstream:
        settings = make_settings(
            [model("public", upstream.base_url + "/v1", model="upstream-name")],
            cache={"enabled": cache},
        )
        async with running_gateway(settings) as gateway, aiohttp.ClientSession() as session:
            body = {"model": "public", "messages": USER}
            sent = []
            for _ in range(2):
                async with session.post(
                    gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers
                ) as response:
                    assert response.status == 200
                    sent.append((await response.read(), response.headers.get("x-cache")))
            rows = await usage_rows(gateway.state.engine, 2)
    expected = json.loads(UPSTREAM_ANSWER)
    expected["model"] = "public"
    first, replayed = sent
    # every value verbatim (spaces inside them too); between top-level keys, compact
    assert first[0] == (
        b'{"id":"c1","object":"chat.completion","model":"public",'
        b'"system_fingerprint":"fp_caf\\u00e9","choices":[{"index": 0, "message": '
        b'{"role": "assistant", "content": "caf\\u00e9 costs 1.50"}, "logprobs": null, '
        b'"finish_reason": "stop"}],"usage":{"prompt_tokens": 3, "completion_tokens": 4, '
        b'"total_tokens": 7},"vendor":{"score": 1.50, "model": "upstream-name"}}'
    )
    assert json.loads(replayed[0]) == expected
    assert replayed[1] == ("HIT" if cache else "BYPASS")
    assert [(r.prompt_tokens, r.completion_tokens, r.tokens_estimated) for r in rows] == [
        (3, 4, False),
        (3, 4, False),
    ]
