"""Provider names in the configuration: an unknown one lists the valid ones; gemini's URL."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaygate.errors import ConfigError
from relaygate.settings import PROVIDERS, DeploymentConfig, load_settings


def test_valid_providers_are_the_ones_the_setting_accepts() -> None:
    hints = typing.get_type_hints(DeploymentConfig, include_extras=True)
    assert typing.get_args(hints["provider"]) == PROVIDERS
    assert {"openai", "ollama", "gemini", "mock"} <= set(PROVIDERS)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda name: name not in PROVIDERS))
def test_an_unknown_provider_names_every_valid_one(name: str) -> None:
    models = [{"name": "a", "deployments": [{"provider": name}]}]
    with pytest.raises(ConfigError) as error:
        load_settings(environ={}, overrides={"models": models})
    assert error.value.message == (
        f"models[0].deployments[0].provider: unknown provider {name!r}; "
        f"valid: {', '.join(PROVIDERS)}"
    )


def test_unknown_provider_in_a_file_keeps_its_line(tmp_path: Path) -> None:
    path = tmp_path / "relaygate.yaml"
    path.write_text("models:\n  - name: a\n    deployments:\n      - provider: gemeni\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert error.value.line == 4
    assert "unknown provider 'gemeni'; valid: " in error.value.message
    assert "gemini" in error.value.message.rpartition("valid: ")[2]


GEMINI_YAML = """
models:
  - name: gemini-1.5-flash
    deployments:
      - provider: gemini
        api_key: ${GEMINI_API_KEY}
  - name: gemini-1.5-pro
    deployments:
      - provider: gemini
        base_url: http://10.0.0.5:8080/v1beta
        api_key: ${GEMINI_API_KEY}
"""


def test_gemini_defaults_to_googles_api_and_keeps_a_given_url(tmp_path: Path) -> None:
    path = tmp_path / "relaygate.yaml"
    path.write_text(GEMINI_YAML)
    loaded = load_settings(path, environ={"GEMINI_API_KEY": "g-key"})
    first, second = (m.deployments[0] for m in loaded.models)
    assert first.base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert second.base_url == "http://10.0.0.5:8080/v1beta"
    assert first.api_key == second.api_key == "g-key"


def test_a_bad_gemini_url_is_still_refused() -> None:
    models = [{"name": "a", "deployments": [{"provider": "gemini", "base_url": "ftp://x"}]}]
    with pytest.raises(ConfigError, match="base_url: not a valid http"):
        load_settings(environ={}, overrides={"models": models})


def test_the_documented_gemini_example_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "gemini.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "relaygate.yaml"
    path.write_text(example)
    loaded = load_settings(path, environ={"GEMINI_API_KEY": "g-key"})
    assert [m.name for m in loaded.models] == [
        "gemini-1.5-flash",
        "gemini-1.5-pro",
        "text-embedding",
    ]
    for model in loaded.models:
        (deployment,) = model.deployments
        assert deployment.provider == "gemini" and deployment.api_key == "g-key"
        assert deployment.base_url == "https://generativelanguage.googleapis.com/v1beta"
