"""The configuration example of docs/nodes-dial-out.md is one relaygate accepts."""

from __future__ import annotations

import re
from pathlib import Path

from relaygate.settings import load_settings

DOC = Path(__file__).parents[3] / "docs" / "nodes-dial-out.md"


def test_the_yaml_example_loads(tmp_path: Path) -> None:
    (example,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    path = tmp_path / "relaygate.yaml"
    path.write_text(example + "discover_ollama: []\n")
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-test"})
    node = settings.models[0].deployments[0]
    assert (node.provider, node.node, node.model) == ("node", "mac-studio", "llama3.1:8b")
    assert settings.models[0].fallbacks == ["gpt-4o-mini"]
    assert settings.nodes.heartbeat_timeout == 15
