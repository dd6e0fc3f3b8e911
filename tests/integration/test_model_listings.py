"""One model list everywhere: /v1/models, /api/tags, /api/models (seed 003) and
/ai/models (seed 001) list the same models, the ones the caller's key may use,
each in its API's shape; read with the official openai and ollama clients where
one exists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp
import msgspec
import ollama
import openai
import pytest

from tests.gateway import RunningGateway, make_settings, running_gateway
from tests.keys import new_key

NAMES = ["llama3.2:1b", "qwen2.5-coder:7b", "mock-b"]


def settings():  # type: ignore[no-untyped-def]
    models = [{"name": n, "deployments": [{"provider": "mock"}]} for n in NAMES]
    return make_settings(models)


async def get(gateway: RunningGateway, path: str, key: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + path, headers=headers) as response:
            return response.status, msgspec.json.decode(await response.read())


async def test_every_listing_shows_the_same_models_to_a_user_key() -> None:
    async with running_gateway(settings()) as gateway:
        _, key = await new_key(gateway)
        async with gateway.client(key) as client:
            listed = [m.id async for m in client.models.list()]
            one = await client.models.retrieve("qwen2.5-coder:7b")
        async with ollama.AsyncClient(
            host=gateway.url, headers={"Authorization": f"Bearer {key}"}
        ) as ollama_client:
            tags = await ollama_client.list()
        seed_003 = await get(gateway, "/api/models", key)
        seed_001 = await get(gateway, "/ai/models", key)
    assert listed == NAMES
    assert one.id == "qwen2.5-coder:7b" and one.object == "model"
    assert [m.model for m in tags.models] == NAMES
    assert all(m.modified_at is not None for m in tags.models)
    assert seed_003[0] == 200 and [m["name"] for m in seed_003[1]["models"]] == NAMES
    assert seed_003[1]["models"][0]["model"] == "llama3.2:1b"  # Ollama's shape, as /api/tags
    assert seed_001[0] == 200 and [m["name"] for m in seed_001[1]["models"]] == NAMES
    for model in seed_001[1]["models"]:
        assert set(model) == {"name", "size", "family", "modified_at"}
        assert datetime.fromisoformat(model["modified_at"]).tzinfo is not None


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/models", "openai"),
        ("/v1/models/llama3.2:1b", "openai"),
        ("/ai/models", "openai"),  # the seed endpoints keep OpenAI's error shape
        ("/api/tags", "ollama"),
        ("/api/models", "ollama"),
    ],
)
async def test_listings_need_a_key_and_refuse_in_their_apis_shape(path: str, shape: str) -> None:
    async with running_gateway(settings()) as gateway:
        status, body = await get(gateway, path, None)
        wrong = await get(gateway, path, "rg_not-a-real-key")
    assert status == wrong[0] == 401
    for answer in (body, wrong[1]):
        error = answer["error"]
        assert isinstance(error["message"] if shape == "openai" else error, str)
        assert "rg_not-a-real-key" not in str(answer)


async def test_a_model_not_listed_is_not_found() -> None:
    async with running_gateway(settings()) as gateway, gateway.client() as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("gpt-4o")
    assert "gpt-4o" in str(missing.value)
