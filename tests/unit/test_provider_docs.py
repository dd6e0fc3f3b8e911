"""Every YAML example of docs/providers.md is a configuration relaygate accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from relaygate.settings import load_settings

DOC = Path(__file__).parents[2] / "docs" / "providers.md"
EXAMPLES = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_loads(example: str, tmp_path: Path) -> None:
    """As a file, with its ${VARIABLES} set in the environment."""
    path = tmp_path / "relaygate.yaml"
    path.write_text(example + "discover_ollama: []\n")
    names = re.findall(r"\$\{(\w+)\}", example)
    settings = load_settings(path, environ={name: f"secret-{name}" for name in names})
    deployments = [d for model in settings.models for d in model.deployments]
    assert deployments and all(d.base_url for d in deployments)
    assert all(d.api_key and d.api_key.startswith("secret-") for d in deployments)
    assert yaml.safe_load(example)["models"]
