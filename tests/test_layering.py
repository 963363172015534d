"""The layering of ``core/`` stated in docs/architecture.md, read from the imports.

The foundation (the modules flat in ``core/``) imports no package of
``core``; each package imports only the foundation and the packages below
it in ``LAYERS``; and no module imports another that (directly or not)
imports it back, type-only imports included. The entry points and the
services sit above everything and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"

# Lowest first: a package may import the foundation and the packages before it.
LAYERS = [
    "native",
    "telemetry",
    "openapi",
    "config",
    "registry",
    "security",
    "events",
    "upstream",
    "routes",
    "proxy",
    "service",
    "workers",
]
FOUNDATION = {
    "settings", "errors", "log", "redis", "tasks", "runner", "http", "validation", "trace", "metrics",
    "db", "testing",
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``core`` module that ``path`` imports, wherever the import sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "core")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "core":
                found.update(f"core.{a.name}" for a in node.names)
            elif node.module.startswith("core."):
                found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path):
            # ``from core.upstream import balancer`` names a module too.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _unit(module: str) -> str:
    """``foundation``, or the package a module belongs to (``core.upstream.breaker`` -> ``upstream``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if len(parts) == 2 and parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def test_core_top_level_is_the_foundation_and_the_packages() -> None:
    modules = {p.stem for p in CORE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in CORE.iterdir() if (p / "__init__.py").exists()}
    assert modules == FOUNDATION
    assert packages == set(LAYERS)
    assert len(modules) <= 12


def test_every_package_states_its_face() -> None:
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((CORE / name / "__init__.py").read_text()))
        assert doc is not None, name
        assert "Public face" in doc, name


def test_lower_layers_never_import_higher_ones() -> None:
    rank = {"root": -2, "foundation": -1} | {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for module, deps in _graph().items():
        for dep in deps:
            mine, theirs = _unit(module), _unit(dep)
            if mine == theirs or _unit(module) == "root":
                continue
            if rank[theirs] >= rank[mine]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_no_import_circles() -> None:
    graph = _graph()
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert circles == []
