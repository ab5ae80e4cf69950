"""No import cycles inside segway_sign: every import, at module level or inside a function, points one way.

The imports are read from the sources with ``ast`` (nothing is imported), resolved to modules of the
package, and the graph's strongly connected components are the cycles.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import segway_sign

PACKAGE = Path(segway_sign.__file__).parent

# Cycles known and being taken apart, as pairs of module names or fnmatch patterns, e.g.
#     ("segway_sign.release.runner", "segway_sign.release.verify"),
# Imports between the two sides of an entry are not counted. Meant to stay empty: an entry is for a
# cycle someone is removing right now, and test_known_cycles_are_still_cycles asks for its removal
# as soon as it no longer covers a cycle.
KNOWN_CYCLES: list[tuple[str, str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name → (source file, is a package)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """The package's modules that ``name`` imports."""
    here = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            # "from package import name" imports the submodule when there is one, else the package.
            targets.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _covers(entry: tuple[str, str], a: str, b: str) -> bool:
    left, right = entry
    return (fnmatchcase(a, left) and fnmatchcase(b, right)) or (fnmatchcase(a, right) and fnmatchcase(b, left))


def _without(graph: dict[str, set[str]], entries) -> dict[str, set[str]]:
    return {name: {t for t in targets if not any(_covers(e, name, t) for e in entries)}
            for name, targets in graph.items()}


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "segway_sign.hsm.session" in graph["segway_sign.hsm.keys"]
    assert "segway_sign.hsm.devhsm" in graph["segway_sign.hsm.module"]  # "from . import devhsm"
    assert "segway_sign.errors" in graph["segway_sign.hsm.module"]


def test_no_import_cycles():
    assert cycles(_without(import_graph(), KNOWN_CYCLES)) == []


def test_hsm_has_no_import_cycle_even_through_known_ones():
    assert [c for c in cycles(import_graph()) if any(".hsm" in m for m in c)] == []


def test_known_cycles_are_still_cycles():
    graph = import_graph()
    allowed = cycles(_without(graph, KNOWN_CYCLES))
    stale = [entry for entry in KNOWN_CYCLES
             if cycles(_without(graph, [e for e in KNOWN_CYCLES if e != entry])) == allowed]
    assert stale == [], "no longer a cycle: remove it from KNOWN_CYCLES"


def test_the_finder_sees_a_cycle_and_an_entry_hides_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": {"p"}}
    assert cycles(graph) == [["a", "b", "c"], ["p", "p.x"]]
    assert cycles(_without(graph, [("b", "c"), ("p", "p.*")])) == []
