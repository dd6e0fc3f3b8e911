"""Prices: which one applies to a served request, and what its tokens cost."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.settings import ConfigError, Price, default_prices, load_settings
from relaygate.usage.accounting import Pricing, cost_usd, priced, undated

MINI = default_prices()["gpt-4o-mini"]


def pricing(models: list[dict[str, Any]], **usage: Any) -> Pricing:
    settings = load_settings(
        environ={}, overrides={"discover_ollama": [], "models": models, "usage": usage}
    )
    return Pricing(settings.usage, settings.models)


def openai(model: str | None = None, **extra: Any) -> dict[str, Any]:
    dep: dict[str, Any] = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", **extra}
    if model:
        dep["model"] = model
    return dep


def test_the_table_covers_the_cloud_models_relaygate_speaks_to() -> None:
    table = default_prices()
    for name in (
        "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini",
        "gemini-1.5-flash", "gemini-1.5-pro", "gemini-2.0-flash", "gemini-2.5-flash",
        "gemini-2.5-pro", "claude-3-5-sonnet", "claude-3-7-sonnet", "claude-sonnet-4",
        "claude-3-5-haiku", "claude-opus-4",
    ):  # fmt: skip
        price = table[name]
        assert 0 < price.input < price.output
        assert price.cached_input is not None and price.cached_input < price.input
    assert table["claude-sonnet-4"].cache_write == 3.75  # 1.25 x input (5-minute writes)


@pytest.mark.parametrize(
    ("dated", "plain"),
    [
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gemini-1.5-flash-002", "gemini-1.5-flash"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("gpt-4.1-mini", "gpt-4.1-mini"),
        ("o4-mini", "o4-mini"),
    ],
)
def test_dated_upstream_names_fall_back_to_their_undated_price(dated: str, plain: str) -> None:
    assert undated(dated) == plain


def test_an_alias_is_priced_by_its_deployments_upstream_model() -> None:
    p = pricing([{"name": "fast", "deployments": [openai("gpt-4o-mini")]}])
    assert p.price("fast", "openai", "fast") == MINI
    assert p.cost("fast", "openai", "fast", 1_000_000, 1_000_000) == pytest.approx(0.75)
    # dated upstream names too
    p = pricing([{"name": "smart", "deployments": [openai("claude-sonnet-4-20250514")]}])
    assert p.price("smart", "openai", "smart") == default_prices()["claude-sonnet-4"]


def test_each_deployment_of_a_model_has_its_own_price() -> None:
    models = [{"name": "fast", "deployments": [
        openai("gpt-4o-mini"), openai("gpt-4.1-nano"),
        {"provider": "ollama", "base_url": "http://127.0.0.1:11434", "model": "gpt-4o-mini"},
    ]}]  # fmt: skip
    p = pricing(models)
    assert p.price("fast", "openai", "fast#1") == MINI
    assert p.price("fast", "openai", "fast#2") == default_prices()["gpt-4.1-nano"]
    assert p.price("fast", "ollama", "fast#3") is None  # local: free whatever its name
    assert p.cost("fast", "ollama", "fast#3", 10**6, 10**6) == 0.0
    # admission reserves the dearest of them
    ceiling = p.ceiling("fast")
    assert ceiling is not None and (ceiling.input, ceiling.output) == (0.15, 0.6)


def test_the_ceiling_includes_fallbacks() -> None:
    models = [
        {"name": "cheap", "deployments": [openai("gpt-4.1-nano")], "fallbacks": ["dear"]},
        {"name": "dear", "deployments": [openai("gpt-4o")], "fallbacks": ["cheap"]},
        {"name": "local", "deployments": [{"provider": "mock"}]},
    ]
    p = pricing(models)
    ceiling = p.ceiling("cheap")
    assert ceiling is not None and (ceiling.input, ceiling.output) == (2.5, 10.0)
    assert p.ceiling("local") is None


def test_a_fallback_that_answered_is_charged_its_own_price() -> None:
    models = [
        {"name": "cheap", "deployments": [openai("gpt-4.1-nano")], "fallbacks": ["dear"]},
        {"name": "dear", "deployments": [openai("gpt-4o")]},
    ]
    p = pricing(models)
    # the client asked for "cheap"; the deployment "dear" answered
    assert p.cost("cheap", "openai", "dear", 10**6, 0) == pytest.approx(2.5)
    assert p.cost("cheap", "openai", "cheap", 10**6, 0) == pytest.approx(0.1)


def test_configuration_overrides_the_table() -> None:
    models = [
        {"name": "gpt-4o-mini", "deployments": [openai()], "price": {"input": 1, "output": 2}},
        {"name": "fast", "deployments": [openai("gpt-4o-mini")]},
        {"name": "box", "deployments": [openai("my-own-model")],
         "price": {"input": 0, "output": 0}},
    ]  # fmt: skip
    p = pricing(models, prices={"fast": {"input": 3, "output": 4, "cached_input": 1}})
    assert p.price("gpt-4o-mini", "openai", "gpt-4o-mini") == Price(input=1, output=2)
    assert p.price("fast", "openai", "fast") == Price(input=3, output=4, cached_input=1)
    assert p.cost("box", "openai", "box", 10**6, 10**6) == 0.0
    # the model entry's price wins over usage.prices of the same name
    p = pricing(
        [{"name": "m", "deployments": [openai()], "price": {"input": 1, "output": 1}}],
        prices={"m": {"input": 9, "output": 9}},
    )
    assert p.cost("m", "openai", "m", 10**6, 0) == pytest.approx(1.0)


def test_local_providers_cost_nothing_even_when_priced() -> None:
    models = [{"name": "gpt-4o", "deployments": [{"provider": "mock"}],
               "price": {"input": 5, "output": 5}}]  # fmt: skip
    p = pricing(models)
    assert p.cost("gpt-4o", "mock", "gpt-4o", 10**6, 10**6) == 0.0
    assert cost_usd(p.config, "gpt-4o", "ollama", 10**6, 10**6) == 0.0


def test_an_unknown_model_costs_nothing() -> None:
    assert pricing([]).cost("who-knows", "openai", None, 10**6, 10**6) == 0.0


def test_a_bad_price_is_a_clear_configuration_error() -> None:
    with pytest.raises(ConfigError, match="price"):
        pricing([{"name": "m", "deployments": [openai()], "price": {"input": -1}}])
    with pytest.raises(ConfigError, match="cached_inptu"):
        pricing([], prices={"m": {"cached_inptu": 1}})


def test_cached_and_written_prompt_tokens_have_their_own_prices() -> None:
    price = Price(input=3, output=15, cached_input=0.3, cache_write=3.75)
    usage = {"prompt_tokens_details": {"cached_tokens": 600_000, "cache_write_tokens": 200_000}}
    cost = priced(price, 1_000_000, 100_000, usage)
    assert cost == pytest.approx(0.2 * 3 + 0.6 * 0.3 + 0.2 * 3.75 + 0.1 * 15)
    # without a cached price, cached tokens cost what fresh ones do
    assert priced(Price(input=1, output=0), 10**6, 0, usage) == pytest.approx(1.0)


counts = st.integers(min_value=0, max_value=10**9)
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.integers(-(10**12), 10**12))
rates = st.floats(min_value=0, max_value=1000, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    prompt=counts, completion=counts, cached=junk, written=junk,
    input_rate=rates, output=rates, cached_rate=rates, write_rate=rates,
)  # fmt: skip
def test_the_prompt_is_charged_once_whatever_the_details_claim(
    prompt: int, completion: int, cached: object, written: object,
    input_rate: float, output: float, cached_rate: float, write_rate: float,
) -> None:  # fmt: skip
    price = Price(input=input_rate, output=output, cached_input=cached_rate,
                  cache_write=write_rate)  # fmt: skip
    usage = {"prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written}}
    cost = priced(price, prompt, completion, usage)
    rates_used = (input_rate, cached_rate, write_rate)
    low = (prompt * min(rates_used) + completion * output) / 1e6
    high = (prompt * max(rates_used) + completion * output) / 1e6
    assert low * (1 - 1e-9) <= cost <= high * (1 + 1e-9)
    # the same price everywhere: the split cannot change the total
    flat = Price(input=input_rate, output=output, cached_input=input_rate,
                 cache_write=input_rate)  # fmt: skip
    assert priced(flat, prompt, completion, usage) == pytest.approx(
        priced(flat, prompt, completion), rel=1e-9
    )
