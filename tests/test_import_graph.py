"""No import circles among avalign's modules: the graph of imports (read from the source, not run) is acyclic.

Imports inside functions count: the two circles this guards against (ops <-> kernels, the reward-modeling study <->
its report) each had one side imported lazily, which hides a circle from Python but not the two modules' dependence
on each other. Imports under ``if TYPE_CHECKING:`` (annotations only) do not count, and a parent package is not an
edge unless it is imported by name."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree):
    """Every import statement in ``tree``, at module level or in a function, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from _imports(ast.Module(body=node.orelse, type_ignores=[]))
        else:
            yield from _imports(node)


def import_graph(root: Path = SRC / "avalign") -> dict[str, set[str]]:
    """module -> the avalign modules it imports."""
    files = {_module_name(path, root.parent): path for path in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
                continue
            base = package.rsplit(".", node.level - 1)[0] if node.level else None  # `from ..x`: up one package
            target = ".".join(filter(None, [base, node.module]))
            edges.add(target)
            # `from package import module` imports that module.
            edges.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in files)
        graph[name] = {edge for edge in edges if edge in files and edge != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of ``graph``, or None when it is acyclic."""
    state = {}  # module -> "open" while on the search path, "done" after

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_reports_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_reads_relative_and_guarded_imports(tmp_path):
    package = tmp_path / "avalign"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "low.py", "typed.py", "sub/__init__.py", "sub/lazy.py", "sub/other.py"):
        (package / name).write_text("")
    (package / "sub" / "high.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .. import low\ntry:\n    from . import lazy\nexcept ImportError:\n"
        "    pass\nif TYPE_CHECKING:\n    from avalign import typed\n\ndef f():\n    from ..sub import other\n"
    )
    graph = import_graph(package)
    # `other` is imported lazily inside f, `typed` for annotations only.
    assert graph["avalign.sub.high"] == {"avalign", "avalign.low", "avalign.sub", "avalign.sub.lazy", "avalign.sub.other"}


def test_no_import_cycle():
    graph = import_graph()
    # The circles this guards against went through these modules; they must be in the graph it checks.
    assert {"avalign.ops", "avalign.kernels", "avalign.studies.report", "avalign.studies.reward_modeling"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
