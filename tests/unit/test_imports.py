"""The package's import rules, read from the source: arrows point one way.

No two relaygate modules import each other, directly or through others (imports
under ``TYPE_CHECKING`` and inside functions count: a cycle there is still two
concepts tangled), and no module imports another module's private (``_name``)
names. Each rule is checked on the real tree and, so that it can fail, on a
small tree built for the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import relaygate

SRC = Path(relaygate.__file__).parent


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Every module's relaygate imports (module -> modules it imports), and each
    import of a private name as ``module: from x import _y``."""
    modules = {module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    top = root.name
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.split(".")[0] == top)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                if base.split(".")[0] != top:
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:  # from relaygate import pipeline
                        graph[name].add(f"{base}.{alias.name}")
                    else:
                        graph[name].add(base)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append(f"{name}: from {base} import {alias.name}")
    for name in graph:
        graph[name] = {_owner(m, modules) for m in graph[name]} - {name, None}  # type: ignore[arg-type]
    return graph, private


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported dotted name lives in (``a.b.c`` -> ``a.b`` if c is a name)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph, _ = read_imports(SRC)
    assert cycles(graph) == []


def test_no_module_imports_private_names() -> None:
    _, private = read_imports(SRC)
    assert private == []


def test_nothing_below_the_apis_imports_them() -> None:
    graph, _ = read_imports(SRC)
    # server.py answers protocol errors (431, 408) in the shape of the path's API, as app.py does
    above = (
        "relaygate.api",
        "relaygate.app",
        "relaygate.cli",
        "relaygate.cli_admin",
        "relaygate.server",
    )
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if not module.startswith(above)
        for target in targets
        if target.startswith("relaygate.api")
    ]
    assert wrong == []


def test_the_rules_catch_a_cycle_and_a_private_import(tmp_path: Path) -> None:
    root = tmp_path / "relaygate"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("from relaygate.sub.b import thing\n")
    (root / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from relaygate import c\n"
        "thing = 1\n"
    )
    (root / "c.py").write_text("def f():\n    from relaygate.a import _hidden\n")
    (root / "d.py").write_text("from .c import f\nfrom relaygate import a\n")
    graph, private = read_imports(root)
    assert cycles(graph) == [["relaygate.a", "relaygate.c", "relaygate.sub.b"]]
    assert private == ["relaygate.c: from relaygate.a import _hidden"]
    assert graph["relaygate.d"] == {"relaygate.a", "relaygate.c"}
