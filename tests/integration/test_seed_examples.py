"""Every curl example of the seeds (and the HTTP calls they document without curl), sent as
written, with a relaygate key in the header the seed uses, to a running relaygate against
the fakes; each answer is checked for the fields the seed's clients read.

Not sent here:
- seed 003's ``curl http://localhost:11434/api/tags`` is addressed to Ollama itself, not to
  the seed's API; relaygate's own ``GET /api/tags`` (the same request to the gateway) is.
- seed 004's ``/api/ai/api-keys`` and ``/api/ai/provider-config(s)``: each user storing
  their own provider keys (Fernet-encrypted) and choosing a provider. Not served yet (the
  per-user key vault is planned); until then the operator configures upstreams and keys.
- seed 002's ``/webhook`` has no documented request in the seed (only "for future Google
  Assistant integration"); tests/integration/test_task_templates.py covers the route.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from relaygate.settings import Settings, load_settings
from tests.fakes.gemini_server import FakeGemini, GeminiScript
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Script
from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.integration.test_usage import rows
from tests.keys import new_key

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GEMINI_KEY = "test-gemini-key-0123456789"
ENV = {"RELAYGATE_ADMIN_KEY": "rg_example-admin-key-0123456789abcdefghijklmnop",
       "GEMINI_API_KEY": GEMINI_KEY}  # fmt: skip
JSON = {"Content-Type": "application/json"}


async def call(
    gateway: RunningGateway,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, gateway.url + path, json=body, headers=headers
        ) as response:
            assert response.status < 500, await response.text()
            return response.status, await response.json(content_type=None)


def example(name: str, **env: str) -> list[dict[str, Any]]:
    """The models of a shipped example configuration, pointed at the fakes."""
    settings: Settings = load_settings(EXAMPLES / name, environ={**ENV, **env})
    return [msgspec.to_builtins(m) for m in settings.models]


def ollama_models(fake: FakeOllama, *names: str) -> list[dict[str, Any]]:
    return [{"name": n, "deployments": [{"provider": "ollama", "base_url": fake.base_url}]}
            for n in names]  # fmt: skip


# seed 000 (chatbuilds.com's NexusAI front end)


async def test_seed_000_front_end_generate_through_its_old_path(fake_ollama: FakeOllama) -> None:
    paths = {"aliases": {"/api/ai/generate": "/ai/generate"}}  # its nginx's /api/ai/* rewrite
    settings = make_settings(ollama_models(fake_ollama, "llama3.2:1b"), paths=paths)
    async with running_gateway(settings) as gateway:
        _, key = await new_key(gateway)
        # seed 000, "Test API Directly": curl -X POST https://chatbuilds.com/api/ai/generate
        status, reply = await call(
            gateway, "POST", "/api/ai/generate", {**JSON, "X-API-Key": key},
            {"prompt": "Say hello", "model": "llama3.2:1b"},
        )  # fmt: skip
    assert status == 200, reply
    # "Expected response": response, model, cached, total_duration_ms
    assert isinstance(reply["response"], str) and reply["response"]
    assert reply["model"] == "llama3.2:1b" and reply["cached"] is False
    assert isinstance(reply["total_duration_ms"], (int, float)) and reply["total_duration_ms"] > 0


# seed 001 (NexusAI's Python API)


async def test_seed_001_create_key_then_generate_usage_and_models(
    fake_ollama: FakeOllama,
) -> None:
    settings = make_settings(ollama_models(fake_ollama, "llama3.2:1b"))
    async with running_gateway(settings) as gateway:
        # seed 001, "API Key Generation": curl -X POST .../auth/create-key (an admin's call:
        # the seed's route took no key; relaygate's wants an admin's, as a Bearer token)
        status, created = await call(
            gateway, "POST", "/auth/create-key", {**JSON, **gateway.headers},
            {"tenant_id": "your-tenant-id", "tier": "pro",
             "description": "Production API key", "expires_in_days": 365},
        )  # fmt: skip
        assert status == 200, created
        assert set(created) >= {"api_key", "key_id", "tier", "rate_limit", "expires_at",
                                "created_at"}  # fmt: skip
        assert created["tier"] == "pro"
        assert created["rate_limit"] == {"requests": 1000, "window": 3600}
        bearer = {"Authorization": f"Bearer {created['api_key']}"}
        # seed 001, "Using API Keys": curl .../ai/generate -H "Authorization: Bearer vpn_..."
        status, generated = await call(
            gateway, "POST", "/ai/generate", {**JSON, **bearer},
            {"prompt": "Explain quantum computing", "model": "llama3.2:1b"},
        )  # fmt: skip
        assert status == 200, generated
        assert generated["response"] and generated["model"] == "llama3.2:1b"
        assert generated["cached"] is False and generated["eval_count"] > 0
        assert generated["total_duration_ms"] > 0
        # seed 001, "Usage & Quota": GET /usage, Authorization: Bearer vpn_your_key_here
        status, usage = await call(gateway, "GET", "/usage", bearer)
        assert status == 200, usage
        assert usage["tier"] == "pro" and usage["requests_limit"] == 1000
        assert usage["requests_used"] >= 1
        assert usage["requests_remaining"] == usage["requests_limit"] - usage["requests_used"]
        assert isinstance(usage["window_reset"], str) and usage["window_reset"].endswith("Z")
        # seed 001, "List Available Models": GET /ai/models
        status, models = await call(gateway, "GET", "/ai/models", bearer)
        assert status == 200, models
        listed = {m["name"]: m for m in models["models"]}
        assert set(listed) == {"llama3.2:1b"}
        assert set(listed["llama3.2:1b"]) >= {"name", "size", "family", "modified_at"}


async def test_seed_001_sql_assist_and_code_complete(fake_openai: FakeOpenAI) -> None:
    models = [{"name": "llama3.2:1b", "deployments": [
        {"provider": "openai", "base_url": fake_openai.base_url}]}]  # fmt: skip
    fake_openai.push(Script(content=(
        "```sql\nSELECT * FROM users WHERE created_at >= NOW() - INTERVAL '7 days'\n```\n"
        "This query filters users by creation date.")))  # fmt: skip
    fake_openai.push(Script(content="```python\nif n < 2:\n        return n\n```"))
    async with running_gateway(make_settings(models)) as gateway:
        _, key = await new_key(gateway)
        bearer = {**JSON, "Authorization": f"Bearer {key}"}
        # seed 001, "2. SQL Assistant": POST /ai/sql/assist
        status, sql = await call(
            gateway, "POST", "/ai/sql/assist", bearer,
            {"query": "Show me all users who signed up last week",
             "schema": "users(id, email, created_at, plan)", "action": "generate"},
        )  # fmt: skip
        # seed 001, "3. Code Completion": POST /ai/code/complete
        status_code, code = await call(
            gateway, "POST", "/ai/code/complete", bearer,
            {"code": "def fibonacci(n):\n    ", "language": "python", "max_tokens": 200},
        )  # fmt: skip
    assert status == 200, sql
    assert sql["sql"] == "SELECT * FROM users WHERE created_at >= NOW() - INTERVAL '7 days'"
    assert "filters users" in sql["explanation"] and sql["cached"] is False
    assert status_code == 200, code
    assert code["completion"] == "if n < 2:\n        return n" and "```" not in code["completion"]
    assert fake_openai.requests[-1].json["max_tokens"] == 200


# seed 002 (the AI chat gateway: Gemini beside local models), its shipped configuration


async def test_seed_002_health_and_every_chat_example() -> None:
    async with (
        FakeGemini(api_key=GEMINI_KEY) as gemini,
        FakeOllama(models=["mistral:7b-instruct", "phi3:mini", "llama3.2:3b"]) as ollama,
    ):
        models = await asyncio.to_thread(
            example, "seed-002-gemini-and-ollama.yaml", GEMINI_BASE_URL=gemini.base_url,
            OLLAMA_URL=ollama.base_url,
        )  # fmt: skip
        gemini.push(GeminiScript(), GeminiScript())
        async with running_gateway(make_settings(models)) as gateway:
            _, key = await new_key(gateway)
            # the seed's curls send no key; relaygate wants one, as a Bearer token
            bearer = {**JSON, "Authorization": f"Bearer {key}"}
            # seed 002, "Temporary Workaround": curl http://localhost:5002/health (no key)
            health_status, _ = await call(gateway, "GET", "/health", {})
            answers: list[tuple[str, dict[str, Any]]] = [
                # "Chat with Mistral (local model)"
                ("ollama", {"model": "mistral-7b-instruct",
                            "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 50}),
                # "Next Steps, 3. Test Gemini"
                ("gemini", {"model": "gemini-1.5-flash",
                            "messages": [{"role": "user", "content": "Hello from Gemini!"}],
                            "max_tokens": 100}),
                # "cURL", "Local model"
                ("ollama", {"model": "mistral-7b-instruct",
                            "messages": [{"role": "user", "content": "Hi"}]}),
                # "cURL", "Gemini (after adding API key)"
                ("gemini", {"model": "gemini-1.5-flash",
                            "messages": [{"role": "user", "content": "Hi"}]}),
            ]  # fmt: skip
            replies = [
                (backend, await call(gateway, "POST", "/chat", bearer, body), body)
                for backend, body in answers
            ]
    assert health_status == 200
    for backend, (status, reply), body in replies:
        assert status == 200, reply
        # the seed's clients read choices[0].message.content; its docs show backend, model
        assert reply["backend"] == backend and reply["model"] == body["model"]
        assert reply["object"] == "chat.completion" and reply["id"]
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        assert reply["choices"][0]["message"]["content"]
        assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    sent = [r.json for r in gemini.requests if r.json]
    assert [s.get("generationConfig", {}).get("maxOutputTokens") for s in sent] == [100, None]
    local = [r.json for r in ollama.requests if r.json]
    assert [r["model"] for r in local] == ["mistral:7b-instruct"] * 2
    assert [r.get("options", {}).get("num_predict") for r in local] == [50, None]


# seed 004 (the Cafe): its GPU machines as one pool of Ollama nodes


async def test_seed_004_gpu_pool_spreads_the_load_and_survives_a_machine_going_off() -> None:
    async with (
        FakeOllama(models=["mistral"], service_time=0.05) as mac,
        FakeOllama(models=["mistral"], service_time=0.05) as box,
    ):
        settings = await asyncio.to_thread(
            load_settings, EXAMPLES / "seed-004-cafe.yaml",
            environ={**ENV, "OPENAI_API_KEY": "sk-example-openai-key-0123456789",
                     "OPENWEBUI_API_KEY": "ow-example-openwebui-key-0123456789",
                     "OLLAMA_URL": mac.base_url, "OLLAMA_URL_2": box.base_url},
        )  # fmt: skip
        models = [msgspec.to_builtins(m) for m in settings.models]
        pools = msgspec.to_builtins(settings.pools)
        async with running_gateway(make_settings(models, pools=pools)) as gateway:
            _, key = await new_key(gateway)
            bearer = {**JSON, "Authorization": f"Bearer {key}"}
            ask = {"model": "mistral", "messages": [{"role": "user", "content": "Hi"}]}
            # Eight at once: each machine answers two at a time (max_concurrency), so
            # both are busy and the rest wait in the queue for a slot.
            together = await asyncio.gather(
                *(call(gateway, "POST", "/v1/chat/completions", bearer, ask) for _ in range(8))
            )
            spread = (mac.served, box.served)
            await mac.__aexit__(None, None, None)  # the Mac is switched off
            after = [
                await call(gateway, "POST", "/v1/chat/completions", bearer, ask) for _ in range(4)
            ]
    assert [status for status, _ in together + after] == [200] * 12
    assert sum(spread) == 8 and min(spread) >= 1, spread
    assert box.served - spread[1] == 4  # every later answer came from the machine still on


# seed 003 (the FastAPI Ollama gateway), its shipped configuration


async def test_seed_003_chat_health_stats_and_tags() -> None:
    async with FakeOllama(models=["functiongemma"]) as ollama:
        models = await asyncio.to_thread(
            example, "seed-003-ollama.yaml", OLLAMA_BASE_URL=ollama.base_url
        )
        async with running_gateway(make_settings(models)) as gateway:
            _, key = await new_key(gateway)
            bearer = {"Authorization": f"Bearer {key}"}
            # seed 003, "Authentication": curl -X POST http://localhost:8000/api/chat
            first = await call(gateway, "POST", "/api/chat", {**bearer, **JSON}, {
                "model": "functiongemma", "messages": [{"role": "user", "content": "Hello!"}]})  # fmt: skip
            # seed 003, "Test with cURL": the same with "What is AI?" and a temperature
            second = await call(gateway, "POST", "/api/chat", {**bearer, **JSON}, {
                "model": "functiongemma",
                "messages": [{"role": "user", "content": "What is AI?"}], "temperature": 0.7})  # fmt: skip
            # seed 003, "Health Check": curl http://localhost:8000/health
            health_status, _ = await call(gateway, "GET", "/health", {})
            await rows(gateway, 2)  # the two answers' usage records are written
            # seed 003, "Database Health": curl http://localhost:8000/api/stats, Bearer
            stats = await call(gateway, "GET", "/api/stats", bearer)
            # seed 003, "Ollama Connection Issues": GET /api/tags (to the gateway, see above)
            tags = await call(gateway, "GET", "/api/tags", bearer)
    for status, reply in (first, second):
        # one JSON body without "stream" (seed 003 prints response.json())
        assert status == 200, reply
        assert reply["model"] == "functiongemma" and reply["done"] is True
        assert reply["message"]["role"] == "assistant" and reply["message"]["content"]
    assert health_status == 200
    assert stats[0] == 200, stats
    assert stats[1]["by_model"]["functiongemma"]["requests"] == stats[1]["requests"] == 2
    assert stats[1]["average_response_time_ms"] > 0
    assert tags[0] == 200 and [m["name"] for m in tags[1]["models"]] == ["functiongemma"]


# seed 004 (the Cafe app's iOS client): authorizedRequest sends a Bearer token


async def test_seed_004_task_suggestions_and_chat(fake_openai: FakeOpenAI) -> None:
    models = [{"name": "gpt-4o-mini", "deployments": [
        {"provider": "openai", "base_url": fake_openai.base_url}]}]  # fmt: skip
    fake_openai.push(Script(content=(
        '```json\n{"suggestions": ["Book the room", "Send invites"], "priority": "medium", '
        '"estimated_minutes": 45}\n```')))  # fmt: skip
    fake_openai.push(Script(content="Start with the menu."))
    async with running_gateway(make_settings(models)) as gateway:
        _, key = await new_key(gateway)
        bearer = {**JSON, "Authorization": f"Bearer {key}"}
        # seed 004, getTaskSuggestions: POST /ai/tasks/suggest {title, description}
        suggested = await call(gateway, "POST", "/ai/tasks/suggest", bearer,
                               {"title": "Team lunch", "description": "Friday, 8 people"})  # fmt: skip
        # seed 004, sendChatMessage: POST /ai/chat {prompt, history: [ChatMessage]}
        chatted = await call(gateway, "POST", "/ai/chat", bearer, {
            "prompt": "What should I cook?",
            "history": [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"}]})  # fmt: skip
    assert suggested[0] == 200, suggested
    assert suggested[1]["suggestions"] == ["Book the room", "Send invites"]
    assert suggested[1]["priority"] == "medium" and suggested[1]["estimated_minutes"] == 45
    assert chatted[0] == 200, chatted
    assert chatted[1]["response"] == "Start with the menu." and chatted[1]["cached"] is False
    history = fake_openai.requests[-1].json["messages"]
    assert history[-3:] == [{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello!"},
                            {"role": "user", "content": "What should I cook?"}]  # fmt: skip
