"""The package rules of docs/design.md, checked on the source: no import cycle among the modules of
data/, pretrain/ and transfer/ (function-level imports included), data imports nothing of pretrain
or transfer, pretrain nothing of transfer. The graph comes from the source's own import statements
(ast); the cycle search is networkx's."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "pretrain", "transfer")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules one file imports, resolved to modules (``from a.b import c`` is module
    ``a.b.c`` when that is a module, else ``a.b``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    known = {module_name(p) for p in files}
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for path in files:
        g.add_edges_from((module_name(path), target) for target in imported_modules(path, known))
    return g


def without_package_inits(g: nx.DiGraph) -> nx.DiGraph:
    # A package's __init__ re-exporting its own modules is not a cycle between modules.
    inits = {n for n in g if (REPO / n.replace(".", "/") / "__init__.py").is_file()}
    return g.subgraph(set(g) - inits)


def test_the_graph_sees_known_imports(graph):
    # The checker itself: edges that exist in the source must be found, or the cycle test is empty.
    assert graph.has_edge("pretrain.train", "data.loader.pipeline")
    assert graph.has_edge("transfer.finetune", "pretrain.engine")
    assert graph.number_of_edges() > 100


def test_no_import_cycle(graph):
    cycles = list(nx.simple_cycles(without_package_inits(graph)))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles)


@pytest.mark.parametrize("package, forbidden", [("data", ("pretrain", "transfer")), ("pretrain", ("transfer",))])
def test_stages_import_only_earlier_stages(graph, package, forbidden):
    wrong = sorted(f"{a} -> {b}" for a, b in graph.edges
                   if a.split(".")[0] == package and b.split(".")[0] in forbidden)
    assert not wrong, wrong
