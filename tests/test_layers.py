"""The import graph is one-way: `tuna` (the library) ← `evaluation` ← `tuna_recipes`; no module imports one that
imports it back (directly or round a circle, lazy imports inside functions included); no module uses another's
private (underscore) names. Read from the source with ast, so nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tuna", "evaluation", "tuna_recipes")
LAYER = {"tuna": 0, "evaluation": 1, "tuna_recipes": 2}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of the project's own modules in ``path``."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            subs = [n for n in names if f"{mod}.{n}" in modules]  # `from pkg import module`
            found += [(f"{mod}.{n}", [], node.lineno) for n in subs]
            found.append((mod, [n for n in names if n not in subs], node.lineno))
    return [(m, ns, ln) for m, ns, ln in found if m in modules]


def _graph():
    modules = _modules()
    return modules, {name: _imports(path, name, modules) for name, path in modules.items()}


def test_the_layers_import_one_way_only():
    modules, graph = _graph()
    upward = [f"{m} imports {t} (line {ln})" for m, edges in graph.items() for t, _, ln in edges
              if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert not upward
    assert len(modules) >= 60 and sum(len(e) for e in graph.values()) >= 150  # the walk read the tree


def test_no_module_uses_another_modules_private_names():
    _, graph = _graph()
    private = [f"{m} takes {n} from {t} (line {ln})" for m, edges in graph.items() for t, names, ln in edges
               for n in names if n.startswith("_") and t != m]
    assert not private


def test_no_import_circles():
    """A package's __init__ is left out as an importer (importing a submodule runs it first, which is no circle)."""
    modules, graph = _graph()
    edges = {m: {t for t, _, _ in es if t != m and not m.startswith(t + ".") and modules[m].name != "__init__.py"}
             for m, es in graph.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not circles
    assert len(state) == len(modules)
