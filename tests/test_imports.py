"""The folder tree is the architecture: dependencies point down the layers below, and no two modules import
each other, directly or through others (imports inside functions count; `if TYPE_CHECKING:` blocks do not)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# higher imports lower, never the reverse; one rank may hold several packages that do not import each other
LAYERS = {
    "cli": 7,
    "serve": 6, "report": 6,
    "runner": 5,
    "methods": 4,
    "adapter": 3, "data": 3,
    "models": 2, "io": 2, "machine": 2,
    "precision": 1, "metrics": 1, "faults": 1,
    "errors": 0,
}


def module_graph() -> dict[str, set[str]]:
    """{module: the moses modules it imports at run time}."""
    files = {}
    for path in (SRC / "moses").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str:
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        type_only = {id(n) for node in ast.walk(tree)
                     if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                     for n in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "moses"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "moses":
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else resolve(node.module)
                         for a in node.names}
        graph[module] = deps - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the top-level moses/__init__ (re-exports)


def test_no_two_modules_import_each_other():
    assert cycles(module_graph()) == []


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dependencies_point_down_the_layers():
    graph = module_graph()
    packages = {package(m) for m in graph} - {None}
    assert packages == set(LAYERS), "a new package needs its place in LAYERS"
    upward = sorted(f"{module} -> {dep}" for module, deps in graph.items() for dep in deps
                    if package(module) and package(dep) != package(module)
                    and LAYERS[package(module)] <= LAYERS[package(dep)])
    assert upward == []


def test_adapter_helpers_take_layers_not_the_model():
    """capacity, export and save_load work on layers and the task list (as peft's save_and_load works on state
    dicts); only the package's __init__ imports model.py, which calls them."""
    importers = sorted(m for m, deps in module_graph().items() if "moses.adapter.model" in deps)
    assert importers == ["moses.adapter"]
