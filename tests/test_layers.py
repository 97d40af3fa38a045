"""The package's layers: no import cycles, not even deferred ones, and every import goes down.

Read from the source with :mod:`ast`, so an import inside a function counts as much as one at
the top of a module. The layers, bottom to top, are those the package docstring names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import flatness

SRC = Path(flatness.__file__).parent

#: the top level holds only the shared leaves and the entry points
LEAVES = ("errors", "paths", "provenance", "profiles", "validation")
TOP_LEVEL = {"__init__", "__main__", *LEAVES}

BOTTOM = {"leaves"}
#: layer -> the layers its modules may import (besides their own)
ALLOWED = {
    "leaves": set(),
    "hessian": BOTTOM,
    "measures": BOTTOM | {"hessian"},
    "data": BOTTOM,
    "models": BOTTOM,
    "training": BOTTOM | {"hessian", "measures", "data", "models"},
    "results": BOTTOM | {"hessian", "measures", "data", "models", "training"},
    "analysis": BOTTOM,
    "chapters": BOTTOM
    | {"hessian", "measures", "data", "models", "training", "results", "analysis"},
    "book": BOTTOM
    | {"hessian", "measures", "data", "models", "training", "results", "analysis", "chapters"},
    "entry": {"leaves", "hessian", "measures", "data", "models", "training", "results"}
    | {"analysis", "chapters", "book"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__", "cli"):
        return "entry"
    if parts[1] in LEAVES:
        return "leaves"
    return parts[1]


def imports(module: str) -> set[str]:
    """Every flatness module that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "flatness"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "flatness":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in MODULES else source)
    return found - {module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_import_names_a_module_of_the_package():
    unknown = {(m, i) for m, found in GRAPH.items() for i in found if i not in MODULES}
    assert unknown == set()


def test_the_top_level_holds_only_the_shared_leaves_and_the_entry_points():
    top = {p.stem for p in SRC.glob("*.py")}
    assert top == TOP_LEVEL
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert packages == set(ALLOWED) - {"leaves", "entry"} | {"cli"}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [{"a", "b", "c"}]


def test_no_import_cycles_not_even_deferred_ones():
    cycles = [sorted(c) for c in strongly_connected(GRAPH) if len(c) > 1]
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_its_own_layer_or_those_below(module):
    own = layer(module)
    upward = sorted(i for i in GRAPH[module] if layer(i) not in ALLOWED[own] | {own})
    assert upward == [], f"{module} ({own}) imports {upward}"


def test_only_load_or_run_and_sweeps_train_among_the_results():
    trainers = {m for m in MODULES if m.startswith("flatness.results.")}
    trainers = {m for m in trainers if "flatness.training.loop" in GRAPH[m]}
    assert trainers == {"flatness.results.runs", "flatness.results.sweep"}
