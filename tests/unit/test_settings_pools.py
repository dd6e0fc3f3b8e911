"""Pools, pooled deployments and the model router in the configuration: what loads, and
each mistake named with its field (and its line, from a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relaygate.errors import ConfigError
from relaygate.settings import load_settings

POOL = {
    "home": {
        "nodes": [
            {"base_url": "http://127.0.0.1:11434"},
            {"base_url": "http://10.0.0.2:11434", "name": "pc"},
        ]
    }
}


def load(**values: Any) -> Any:
    return load_settings(environ={}, overrides=values)


def test_a_pool_loads_with_defaults_and_names_its_nodes() -> None:
    settings = load(pools=POOL)
    pool = settings.pools["home"]
    assert [n.name for n in pool.nodes] == ["node-1", "pc"]
    assert (pool.provider, pool.balance, pool.max_concurrency, pool.max_queue) == (
        "ollama",
        "least_loaded",
        4,
        16,
    )
    assert pool.ejection.max_ejection_percent == 50
    # a pool is a source of models: no local Ollama discovery and no mock by default
    assert settings.ollama_discovery_urls == [] and not settings.serves_mock


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pools": {"home": {"nodes": [{"base_url": "ftp://x"}]}}}, r"pools.home.nodes\[0\]: not a valid http"),
        ({"pools": {"home": {"nodes": [{"base_url": "http://a:1", "name": "x"}, {"base_url": "http://b:1", "name": "x"}]}}}, "duplicate node name 'x'"),
        ({"pools": {"home": {"nodes": [{"base_url": "http://a:1", "name": "a b"}]}}}, "pools"),
        ({"pools": {"home": {"nodes": []}}}, "nodes"),
        ({"pools": {"home": {"nodes": [{"base_url": "http://a:1"}], "ejection": {"base_ejection_time": 10, "max_ejection_time": 5}}}}, "less than base_ejection_time"),
        ({"pools": POOL, "models": [{"name": "m", "deployments": [{"provider": "ollama", "pool": "gpu"}]}]}, r"deployments\[0\].pool: no pool named 'gpu' \(pools: home\)"),
        ({"pools": POOL, "models": [{"name": "m", "deployments": [{"provider": "openai", "pool": "home"}]}]}, "pool 'home' is of provider 'ollama'"),
        ({"pools": POOL, "models": [{"name": "m", "deployments": [{"provider": "ollama", "pool": "home", "base_url": "http://a:1"}]}]}, "remove base_url"),
        ({"models": [{"name": "m", "deployments": [{"provider": "mock"}]}], "model_router": [{"name": "m", "policy": "cheapest", "models": ["m"]}]}, "'m' is already a model name"),
        ({"models": [{"name": "m", "deployments": [{"provider": "mock"}]}], "model_router": [{"name": "auto", "policy": "cheapest", "models": ["x"]}]}, r"model_router\[0\].models\[0\]: 'x' is not a configured model"),
        ({"models": [{"name": "m", "deployments": [{"provider": "mock"}]}], "model_router": [{"name": "auto", "policy": "smartest", "models": ["m"]}]}, "policy"),
        ({"models": [{"name": "m", "order": "random", "deployments": [{"provider": "mock"}]}]}, "order"),
    ],
)  # fmt: skip
def test_mistakes_are_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(**values)


def test_a_deployment_may_list_its_nodes_as_a_pool_of_its_own() -> None:
    nodes = [{"base_url": "http://10.0.0.2:11434"}, {"base_url": "http://10.0.0.3:11434"}]
    settings = load(
        pools={"llama3.2-1b": POOL["home"]},  # the name it would take is taken
        models=[{"name": "llama3.2:1b", "deployments": [{"provider": "ollama", "nodes": nodes}]}],
    )
    dep = settings.models[0].deployments[0]
    assert dep.pool == "llama3.2-1b-2"
    pool = settings.pools["llama3.2-1b-2"]
    assert [n.name for n in pool.nodes] == ["node-1", "node-2"] and not pool.expose_models


@pytest.mark.parametrize(
    ("dep", "message"),
    [
        ({"provider": "ollama", "base_url": "http://a:1", "nodes": [{"base_url": "http://b:1"}]}, "not more than one"),
        ({"provider": "gemini", "nodes": [{"base_url": "http://b:1"}]}, "provider 'gemini' cannot have nodes"),
        ({"provider": "ollama", "nodes": [{"base_url": "http://b:1"}, {"base_url": "b:1"}]}, r"models\[0\].deployments\[0\].nodes\[1\].base_url: not a valid http"),
    ],
)  # fmt: skip
def test_a_deployments_nodes_are_checked(dep: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(models=[{"name": "m", "deployments": [dep]}])


def test_router_members_may_be_models_a_pool_will_discover() -> None:
    settings = load(
        pools=POOL,
        model_router=[{"name": "auto", "policy": "local_first", "models": ["llama3.2:1b"]}],
    )
    assert settings.model_router[0].models == ["llama3.2:1b"]


def test_the_documented_example_loads(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "docs" / "nodes.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "relaygate.yaml"
    path.write_text(block)
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-test"})
    assert set(settings.pools) == {"home"}
    assert [m.name for m in settings.model_router] == ["auto", "cheap", "fast"]


def test_a_bad_pool_in_a_file_keeps_its_line(tmp_path: Path) -> None:
    path = tmp_path / "relaygate.yaml"
    path.write_text(
        "pools:\n  home:\n    nodes:\n      - base_url: http://a:1\n      - base_url: nope\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert "pools.home.nodes[1]" in str(error.value) and ":5" in str(error.value)
