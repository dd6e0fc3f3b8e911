"""The configuration examples of docs/nodes-dial-out.md are ones relaygate accepts."""

from __future__ import annotations

import re
from pathlib import Path

from relaygate.settings import load_settings

DOC = Path(__file__).parents[3] / "docs" / "nodes-dial-out.md"


def test_the_yaml_examples_load(tmp_path: Path) -> None:
    example, pooled = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    path = tmp_path / "pool.yaml"
    path.write_text(pooled + "discover_ollama: []\n")
    nodes = load_settings(path, environ={}).pools["home"].nodes
    assert [(n.name, n.base_url, n.node) for n in nodes] == [
        ("rtx", "http://192.168.1.30:11434", None),
        ("mac-studio", None, "mac-studio"),
    ]
    path = tmp_path / "relaygate.yaml"
    path.write_text(example + "discover_ollama: []\n")
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-test"})
    node = settings.models[0].deployments[0]
    assert (node.provider, node.node, node.model) == ("node", "mac-studio", "llama3.1:8b")
    assert settings.models[0].fallbacks == ["gpt-4o-mini"]
    assert settings.nodes.heartbeat_timeout == 15
