"""No secret an upstream echoes reaches a client, a header, /ready, /metrics or the log.

Fake upstreams echo every kind of secret the gateway knows or issues (the deployment's own
key, shaped like nothing in particular; the caller's relaygate key; another tenant's key; a
JWT) at the start, in the middle, across the old 500-character cut and at the end of their
error text, as a JSON error body, a plain-text body, and an in-stream error (SSE event or
NDJSON line) before and after the first chunk; through every inbound API, streaming and not.
Hypothesis places the secrets and writes the text around them; one gateway answers all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import string
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relaygate.redact import MASK
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

# Configured deployment keys shaped like no known secret (and too short for the "random
# token" rule): only the gateway's knowledge of its own configuration can scrub them.
OPENAI_KEY = "zq8" + "".join(random.Random(1).choices(string.ascii_lowercase + string.digits, k=15))
OLLAMA_KEY = "zq9" + "".join(random.Random(2).choices(string.ascii_lowercase + string.digits, k=15))
PROMPT = "PROMPTMARK"  # stands for a user's prompt quoted in an upstream's error
OLD_CUT = 500
USER = [{"role": "user", "content": "hi"}]

# (path, JSON body for a model, streams?)
ENDPOINTS: list[tuple[str, Any, bool]] = [
    ("/v1/chat/completions", lambda m: {"model": m, "messages": USER}, True),
    ("/v1/completions", lambda m: {"model": m, "prompt": "hi"}, True),
    ("/v1/embeddings", lambda m: {"model": m, "input": "hi"}, False),
    ("/api/chat", lambda m: {"model": m, "messages": USER}, True),
    ("/api/generate", lambda m: {"model": m, "prompt": "hi"}, True),
    ("/ai/generate", lambda m: {"model": m, "prompt": "hi"}, True),
    ("/chat", lambda m: {"model": m, "messages": USER}, True),
]
WORDS = st.sampled_from(
    ["the", "model", "failed", "to", "load", "request", "context", "window", "exceeded",
     "out", "of", "memory", "retry", "later", "upstream", "worker", "crashed", "internal",
     "error", "while", "reading", "your", "prompt"]
)  # fmt: skip


def _jwt(seed: int) -> str:
    rng = random.Random(seed)
    part = lambda n: base64.urlsafe_b64encode(rng.randbytes(n)).decode().rstrip("=")  # noqa: E731
    return f"eyJhbGciOiJIUzI1NiJ9.eyJ{part(60)}.{part(32)}"


@dataclass
class World:
    gateway: RunningGateway
    openai: FakeOpenAI
    ollama: FakeOllama
    caller: str  # the caller's own key
    secrets: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    errors_seen: int = 0


def leaks(world: World, text: str) -> list[str]:
    """Every secret of which some 8-character run appears in ``text``."""
    return [
        name
        for name, secret in world.secrets.items()
        if any(secret[i : i + 8] in text for i in range(len(secret) - 7))
    ]


def error_text(order: list[str], world: World, fillers: list[str]) -> str:
    """The secrets in ``order`` at the start, the middle, across the old cut, the end."""
    start, middle, boundary, end, *more = (world.secrets[name] for name in order)
    text = f"{start} {PROMPT} {fillers[0]} key={middle} {fillers[1]} "
    text += "." * max(0, OLD_CUT - len(boundary) // 2 - len(text))
    text += f"{boundary} {fillers[2]} {' '.join(more)} Bearer {end}"
    assert text.index(boundary) < OLD_CUT < text.index(boundary) + len(boundary)
    return text


async def call(world: World, path: str, body: dict[str, Any]) -> str:
    """One request through the gateway with the caller's key: its status line, headers, body."""
    headers = {"Authorization": f"Bearer {world.caller}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(world.gateway.url + path, json=body, headers=headers) as response:
            raw = await response.read()
            world.requests += 1
            shown = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            return f"{response.status}\n{shown}\n\n{raw.decode('utf-8', 'replace')}"


async def exercise(world: World, text: str, status: int) -> None:
    """Every inbound API, both upstreams, streaming and not, every way of failing."""
    modes = {  # "event-first" last but two: what health keeps at the end is a failure
        "event-mid": Script(error_after=1, error_message=text, content="a b c"),
        "event-first": Script(error_after=0, error_message=text, content="a b c"),
        "json": Script(status=status, error_message=text),
        "text": Script(status=status, error_message=text, error_text=True),
    }
    for path, body, streams in ENDPOINTS:
        for model, fake in (("oa", world.openai), ("ol", world.ollama)):
            for stream in (False, True) if streams else (False,):
                for mode, script in modes.items():
                    if mode.startswith("event") and not stream:
                        continue
                    fake.push(script)
                    seen = await call(world, path, {**body(model), "stream": stream})
                    assert not leaks(world, seen), (path, model, stream, mode, seen)
                    assert fake.pending == 0, (path, model, stream, mode, seen)
                    if MASK in seen:  # the upstream's (scrubbed) words did reach the client
                        world.errors_seen += 1


@pytest.fixture
async def world(fake_openai: FakeOpenAI) -> Any:
    async with FakeOllama(models=["llama3.2:1b"]) as ollama:
        fake_openai.api_key = OPENAI_KEY  # the fake insists on the configured key
        models = [
            {"name": "oa", "deployments": [
                {"provider": "openai", "base_url": fake_openai.base_url, "api_key": OPENAI_KEY}
            ]},
            {"name": "ol", "deployments": [
                {"provider": "ollama", "base_url": ollama.base_url, "model": "llama3.2:1b",
                 "api_key": OLLAMA_KEY}
            ]},
        ]  # fmt: skip
        settings_ = make_settings(models, routing={"failure_threshold": 10**6}, tiers={"open": {}})
        async with running_gateway(settings_) as gateway:
            _, caller = await new_key(gateway, tier="open", tenant="acme")
            _, other = await new_key(gateway, tier="open", tenant="globex")
            found = World(gateway, fake_openai, ollama, caller)
            found.secrets = {
                "openai deployment key": OPENAI_KEY,
                "ollama deployment key": OLLAMA_KEY,
                "caller's key": caller,
                "another tenant's key": other,
                "jwt": _jwt(3),
            }
            yield found


async def test_no_secret_reaches_a_client_ready_metrics_or_the_log(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=1,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @example(  # a key that nothing but the configuration knows, across the old cut
        order=["caller's key", "jwt", "openai deployment key", "another tenant's key",
               "ollama deployment key"],
        fillers=["retry later", "", "out of memory"],
        status=500,
    )  # fmt: skip
    @given(
        order=st.permutations(sorted(world.secrets)),
        fillers=st.lists(st.lists(WORDS, max_size=30).map(" ".join), min_size=3, max_size=3),
        status=st.sampled_from([400, 429, 500, 503]),
    )
    def one_example(order: list[str], fillers: list[str], status: int) -> None:
        text = error_text(order, world, fillers)
        asyncio.run_coroutine_threadsafe(exercise(world, text, status), loop).result(50)

    await asyncio.to_thread(one_example)
    # Last, one retryable failure per deployment: what health keeps for /ready and the admin
    text = error_text(sorted(world.secrets), world, ["worker crashed", "", ""])
    for model, fake in (("oa", world.openai), ("ol", world.ollama)):
        fake.push(Script(status=503, error_message=text))
        seen = await call(world, "/v1/chat/completions", {"model": model, "messages": USER})
        assert seen.startswith("502") and MASK in seen and not leaks(world, seen)

    assert world.errors_seen >= world.requests * 0.9  # upstream words reached clients, scrubbed
    async with aiohttp.ClientSession() as session:
        ready = await (await session.get(world.gateway.url + "/ready")).text()
        metrics = await (await session.get(world.gateway.url + "/metrics")).text()
        admin_url = world.gateway.url + "/admin/deployments"
        async with session.get(admin_url, headers=world.gateway.headers) as admin:
            view = await admin.json()
        caller = {"Authorization": f"Bearer {world.caller}"}
        async with session.get(admin_url, headers=caller) as refused:
            await refused.read()
    assert not leaks(world, ready) and not leaks(world, metrics)
    assert not leaks(world, caplog.text) and "upstream failure" in caplog.text
    # /ready: state and an error class, never upstream text (which may carry prompts)
    assert PROMPT not in ready and MASK not in ready
    states = json.loads(ready)["models"]
    for name in ("oa", "ol"):
        (deployment,) = states[name]["deployments"]
        assert deployment["last_error_class"] == "status_5xx"
    # the admin view has the scrubbed text, for admins only
    assert refused.status == 403 and admin.status == 200
    texts = [
        d["last_error"] for m in view["data"] if m["model"] != "mock" for d in m["deployments"]
    ]
    assert all(PROMPT in t and MASK in t for t in texts) and not leaks(world, json.dumps(view))
