"""Prices through the gateway: the shipped examples load, /chat names the answering
provider, every usage record carries its cost, and money budgets charge that cost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import openai
import pytest

from relaygate.settings import Settings, default_prices, load_settings
from tests.fakes.gemini_server import FakeGemini, GeminiScript
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.gateway import make_settings, running_gateway
from tests.integration.test_usage import rows
from tests.keys import new_key

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GEMINI_KEY = "test-gemini-key-0123456789"
SECRETS = {
    "RELAYGATE_ADMIN_KEY": "rg_example-admin-key-0123456789abcdefghijklmnop",
    "GEMINI_API_KEY": GEMINI_KEY,
    "OPENAI_API_KEY": "sk-example-openai-key-0123456789",
    "OPENWEBUI_API_KEY": "ow-example-openwebui-key-0123456789",
}
USER = [{"role": "user", "content": "Hi"}]
LONGER = [{"role": "user", "content": "count these six words for me"}]


def check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaygate", "config", "check", str(path)],
        capture_output=True, text=True, timeout=30, env={**os.environ, **env},
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_each_shipped_example_passes_config_check(name: str) -> None:
    result = check(EXAMPLES / name, SECRETS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{EXAMPLES / name}: OK")
    for secret in SECRETS.values():
        assert secret not in result.stdout + result.stderr


def test_the_examples_are_the_seeds() -> None:
    assert len(list(EXAMPLES.glob("*.yaml"))) == 3
    seed2 = example("seed-002-gemini-and-ollama.yaml")
    assert {(m.name, m.deployments[0].provider) for m in seed2.models} == {
        ("gemini-1.5-flash", "gemini"), ("gemini-1.5-pro", "gemini"),
        ("mistral-7b-instruct", "ollama"), ("phi-3-mini", "ollama"), ("llama3.2-3b", "ollama"),
    }  # fmt: skip
    seed4 = example("seed-004-cafe.yaml")
    providers = {d.provider for m in seed4.models for d in m.deployments}
    assert providers == {"openai", "gemini", "ollama", "openwebui", "mock"}
    assert all(m.fallbacks for m in seed4.models if m.name != "mock")
    # Several GPU machines in one pool, which the local models are served from.
    assert len(seed4.pools["gpus"].nodes) >= 2
    assert {d.pool for m in seed4.models for d in m.deployments if d.provider == "ollama"} == {
        "gpus"
    }


def test_an_example_without_its_secret_is_refused_by_name() -> None:
    env = {k: v for k, v in SECRETS.items() if k != "GEMINI_API_KEY"}
    result = check(EXAMPLES / "seed-002-gemini-and-ollama.yaml", {**env, "GEMINI_API_KEY": ""})
    assert result.returncode == 0  # set but empty is the operator's choice
    stripped = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "relaygate", "config", "check",
         str(EXAMPLES / "seed-002-gemini-and-ollama.yaml")],
        capture_output=True, text=True, timeout=30, env={**stripped, **env},
    )  # fmt: skip
    assert result.returncode == 2 and "GEMINI_API_KEY" in result.stderr


def example(name: str, **env: str) -> Settings:
    return load_settings(EXAMPLES / name, environ={**SECRETS, **env})


def models_of(settings: Settings) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(m) for m in settings.models]


async def test_seed_002_chat_names_the_backend_and_records_the_cost() -> None:
    """Seed 002's own example, against a Gemini fake and an Ollama fake."""
    async with (
        FakeGemini(api_key=GEMINI_KEY) as gemini,
        FakeOllama(models=["mistral:7b-instruct", "phi3:mini", "llama3.2:3b"]) as ollama,
    ):
        seed = await asyncio.to_thread(
            example, "seed-002-gemini-and-ollama.yaml", GEMINI_BASE_URL=gemini.base_url,
            OLLAMA_URL=ollama.base_url.removesuffix("/v1"),
        )  # fmt: skip
        gemini.push(GeminiScript(cached_tokens=2))
        async with running_gateway(make_settings(models_of(seed))) as gateway:
            _, secret = await new_key(gateway)
            answers = {}
            async with aiohttp.ClientSession() as session:
                for model in ("gemini-1.5-flash", "mistral-7b-instruct"):
                    async with session.post(
                        gateway.url + "/chat",
                        json={"model": model, "messages": LONGER},
                        headers={"Authorization": f"Bearer {secret}"},
                    ) as response:
                        assert response.status == 200, await response.text()
                        answers[model] = await response.json()
            records = {r.model: r for r in await rows(gateway, 2)}
    assert answers["gemini-1.5-flash"]["backend"] == "gemini"
    assert answers["mistral-7b-instruct"]["backend"] == "ollama"
    flash = default_prices()["gemini-1.5-flash"]
    usage = answers["gemini-1.5-flash"]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 2 < usage["prompt_tokens"]
    assert flash.cached_input is not None
    expected = (
        (usage["prompt_tokens"] - 2) * flash.input
        + 2 * flash.cached_input
        + usage["completion_tokens"] * flash.output
    ) / 1e6
    assert records["gemini-1.5-flash"].provider == "gemini"
    assert records["gemini-1.5-flash"].cost == pytest.approx(expected)
    assert records["gemini-1.5-flash"].cost > 0
    assert records["mistral-7b-instruct"].provider == "ollama"
    assert records["mistral-7b-instruct"].prompt_tokens > 0
    assert records["mistral-7b-instruct"].cost == 0.0


async def test_an_alias_is_charged_its_upstream_price_until_its_budget_refuses(
    fake_openai: FakeOpenAI,
) -> None:
    """``fast`` -> gpt-4o-mini has no price of its own; a $0.00002 budget pays for the
    first answer, and what it really cost leaves too little for the second."""
    models = [{"name": "fast", "deployments": [
        {"provider": "openai", "base_url": fake_openai.base_url, "model": "gpt-4o-mini"}
    ]}]  # fmt: skip
    tiers = {"thrifty": {"budget_per_month": 0.00002}}
    async with running_gateway(make_settings(models, tiers=tiers)) as gateway:
        _, secret = await new_key(gateway, tier="thrifty")
        async with gateway.client(api_key=secret) as client:
            first = await client.chat.completions.create(
                model="fast", messages=USER, max_tokens=20,  # type: ignore[arg-type]
            )  # fmt: skip
            assert first.usage is not None
            spent = (first.usage.prompt_tokens * 0.15 + first.usage.completion_tokens * 0.6) / 1e6
            # a reservation that fits what is left only if the first answer was charged 0
            left = 0.00002 - spent
            tokens = int(left * 1e6 / 0.6) + 1
            with pytest.raises(openai.RateLimitError) as error:
                await client.chat.completions.create(
                    model="fast", messages=USER, max_tokens=tokens,  # type: ignore[arg-type]
                )  # fmt: skip
        records = await rows(gateway, 2)
        async with aiohttp.ClientSession() as session:
            report = await (
                await session.get(
                    gateway.url + "/usage", headers={"Authorization": f"Bearer {secret}"}
                )
            ).json()
    assert "budget_per_month" in error.value.message
    assert len(fake_openai.requests) == 1
    assert records[0].cost == pytest.approx(spent)
    assert report["budget_per_month"]["used"] == pytest.approx(spent, abs=1e-6)
