"""Configuration: the README's example loads; each mistake names its field and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaygate.errors import ConfigError
from relaygate.settings import load_settings


def readme_example() -> str:
    """The configuration example in README.md, so the README and the code cannot drift."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "llama3.2:1b" in block
    return block


README_EXAMPLE = readme_example()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relaygate.yaml"
    path.write_text(text)
    return path


def test_readme_example(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, README_EXAMPLE), environ={"OPENAI_API_KEY": "sk-x"})
    llama, gpt, qwen = settings.models
    assert [d.weight for d in llama.deployments] == [1.0, 2.0]
    assert gpt.deployments[0].api_key == "sk-x"
    assert gpt.fallbacks == ["llama3.2:1b"]
    assert qwen.deployments[0].model == "Qwen/Qwen2.5-7B-Instruct"
    assert qwen.deployments[0].timeouts.connect == 2
    assert qwen.deployments[0].timeouts.total == 600
    assert settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.ollama_discovery_urls == [] and not settings.serves_mock


def test_readme_example_serves_several_workers(tmp_path: Path) -> None:
    """The README runs its example with --workers 2, which needs redis_url."""
    path = write(tmp_path, README_EXAMPLE)
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-x"}, overrides={"workers": 2})
    assert settings.workers == 2 and settings.redis_url == "redis://127.0.0.1:6379/0"


def test_no_configuration_serves_mock_and_local_ollama() -> None:
    settings = load_settings(environ={})
    assert settings.serves_mock
    assert settings.ollama_discovery_urls == ["http://127.0.0.1:11434"]


def test_missing_secret_names_variable_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, README_EXAMPLE)
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert str(error.value) == (
        f"{path}:15: models[1].deployments[0].api_key: "
        "missing secret: environment variable OPENAI_API_KEY is not set"
    )


def test_interpolation_default(tmp_path: Path) -> None:
    text = "port: ${PORT:-9001}\nhost: ${HOST:-0.0.0.0}\n"
    settings = load_settings(write(tmp_path, text), environ={"HOST": "127.0.0.2"})
    assert settings.port == 9001 and settings.host == "127.0.0.2"


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("modles: []\n", 1, "modles: unknown setting"),
        ("port: 8000\nworkers: lots\n", 2, "workers: Expected `int`"),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: ollama\n        base_url: nope\n",
            5,
            "models[0].deployments[0].base_url: not a valid http(s) URL",
        ),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: ollama\n"
            "        base_url: http://h:99999\n",
            5,
            "not a valid URL",
        ),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: mock\n"
            "  - name: a\n    deployments:\n      - provider: mock\n",
            5,
            "models[1].name: duplicate model 'a'",
        ),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: ollama\n",
            4,
            "models[0].deployments[0].base_url: required for provider 'ollama'",
        ),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: azure\n",
            4,
            "models[0].deployments[0].provider: unknown provider 'azure'; valid: openai, ollama",
        ),
        (
            "models:\n  - name: a\n    deployments: []\n",
            3,
            "models[0].deployments: Expected `array` of length >= 1",
        ),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: mock\n        wieght: 2\n",
            5,
            "models[0].deployments[0].wieght: unknown setting",
        ),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: mock\n    fallbacks: [b]\n",
            5,
            "models[0].fallbacks[0]: fallback 'b' is not another configured model",
        ),
        (
            "models:\n  - name: a\n    deployments:\n      - provider: mock\n"
            "        timeouts: {connect: 0}\n",
            5,
            "timeouts.connect: Expected `float` > 0.0",
        ),
        ("port: 1\nport: 2\n", 2, "port: duplicate key"),
        ("port: [1\n", 2, "not valid YAML"),
        ("- a\n- b\n", 1, "the top level must be a mapping"),
    ],
)
def test_mistakes_name_field_and_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert error.value.line == line, str(error.value)
    assert says in str(error.value)
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8000\nrouting:\n  max_attempts: 3\n")
    env = {
        "RELAYGATE_PORT": "9100",
        "RELAYGATE_ROUTING__MAX_ATTEMPTS": "5",
        "RELAYGATE_DISCOVER_OLLAMA": "http://10.1.1.1:11434, http://10.1.1.2:11434",
        "RELAYGATE_MOCK_MODEL": "true",
        "OTHER": "ignored",
    }
    settings = load_settings(path, environ=env)
    assert settings.port == 9100
    assert settings.routing.max_attempts == 5
    assert settings.discover_ollama == ["http://10.1.1.1:11434", "http://10.1.1.2:11434"]
    assert settings.serves_mock


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8123\n")
    assert load_settings(environ={"RELAYGATE_CONFIG": str(path)}).port == 8123


def test_bad_environment_value_names_the_variable_field() -> None:
    with pytest.raises(ConfigError, match="port: Expected `int`"):
        load_settings(environ={"RELAYGATE_PORT": "eighty"})
