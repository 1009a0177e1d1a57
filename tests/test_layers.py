"""The layers of docs/architecture.md, read from the source: imports flow downwards only, no module imports
itself back through others (lazy imports counted), no private name crosses a module, and the core stays
tensors only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
# What each layer may import besides itself (docs/architecture.md).
ALLOWED = {
    "ui": {"run", "render", "batch", "media", "core"},
    "run": {"render", "batch", "media", "core"},
    "render": {"media", "core"},
    "batch": {"media", "core"},
    "media": {"core"},
    "core": set(),
}
CORE_FORBIDDEN = {"os", "sys", "pathlib", "subprocess", "multiprocessing", "PIL", "cv2", "av", "yaml", "pydantic"}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import in `tree`, those inside functions too."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def _target(module: str, name: str) -> str:
    """The pipeline module that `from module import name` loads: a submodule when `name` is one."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def _edges(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for source, tree in modules.items():
        for module, names, _ in _imports(tree):
            if module.split(".")[0] != "pipeline":
                continue
            targets = {_target(module, n) for n in names} or {module}
            graph[source] |= {t for t in targets if t in modules and t != source}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Each import from one layer into a layer it may not import."""
    return [
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in sorted(targets)
        if _layer(source)
        and _layer(target)
        and _layer(target) != _layer(source)
        and _layer(target) not in ALLOWED[_layer(source)]
    ]


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Import cycles among modules (a package importing its own modules is not one)."""
    state: dict[str, str] = {}
    found: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == "open":
                found.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if m not in ("pipeline", "pipeline.__main__") and _layer(m) is None]
    assert not loose, f"modules outside the layer packages: {loose}"


def test_imports_flow_downwards_only():
    assert not (wrong := _upward(_edges(MODULES))), "\n".join(wrong)


def test_no_import_cycle_lazy_imports_counted():
    assert not (cycles := _cycles(_edges(MODULES))), "\n".join(cycles)


def test_the_checks_see_an_upward_import_and_a_cycle():
    """Not vacuous: a lazy import of the CLI planted in the core is both an upward import and a cycle."""
    planted = {**MODULES, "pipeline.core.losses": ast.parse("def f():\n    from pipeline.ui import cli\n")}
    graph = _edges(planted)
    assert "pipeline.core.losses imports pipeline.ui.cli" in _upward(graph)
    assert any("pipeline.core.losses -> pipeline.ui.cli" in c for c in _cycles(graph))


def test_no_private_name_crosses_a_module():
    crossing = []
    for source, tree in MODULES.items():
        for module, names, line in _imports(tree):
            if module.startswith("pipeline"):
                crossing += [f"{source}:{line}: {module}.{n}" for n in names if n.startswith("_")]
    tests = Path(__file__).resolve().parent
    for path in sorted(tests.rglob("*.py")):
        for module, names, line in _imports(ast.parse(path.read_text())):
            if module.startswith("pipeline"):
                crossing += [f"{path.name}:{line}: {module}.{n}" for n in names if n.startswith("_")]
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "core"))
def test_the_core_knows_no_files_processes_or_printing(module):
    tree = MODULES[module]
    imported = {name.split(".")[0] for name, _, _ in _imports(tree)}
    assert not imported & CORE_FORBIDDEN, f"{module} imports {sorted(imported & CORE_FORBIDDEN)}"
    prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
    assert not prints, f"{module} prints (lines {prints})"
