"""The package's import graph: no cycle, no arrow from a lower layer to a higher one, torch only where needed.

The layers are the README's module map, bottom up. An import inside a function counts as much
as one at the top of a module (it is an arrow all the same), and so does one under
``TYPE_CHECKING``. A subpackage (``ops``, ``dcp``) is one node: its modules import each other freely.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "ckpt_path"

LAYERS: list[tuple[str, set[str]]] = [
    (
        "values and rules, no I/O",
        {"errors", "versions", "stamp", "shapes", "ops", "pickles", "converters", "checkpoint"},
    ),
    ("converter files and the graph", {"converter_files", "_converter_code", "graph", "planner", "registry"}),
    ("bytes on disk", {"_ranges", "_atomic", "_lazy", "_zipwriter", "formats", "torchfiles", "dcp", "storage"}),
    ("running a plan", {"optimizer", "runner", "provenance", "_synthetic", "pipeline"}),
    (
        "entry points",
        {"commands", "testing", "lightning", "check", "scaffold", "drafting", "dcp_planner", "batch", "distributed"},
    ),
    ("the command line", {"cli", "__main__"}),
]
"""Bottom up; a module may import from its own layer and those below, never from one above."""

NO_TORCH = [
    "stamp",
    "checkpoint",
    "converters",
    "converter_files",
    "planner",
    "registry",
    "runner",
    "provenance",
    "cli",
]
"""Modules that import without torch: the command line starts fast, and the runner needs no more than it is handed."""


def node(dotted: str) -> str | None:
    """``ckpt_path.ops._templates`` -> ``ops``; the package itself and the demo are no node."""
    parts = dotted.split(".")
    if parts[0] != "ckpt_path" or len(parts) == 1 or parts[1] == "demo":
        return None
    return parts[1]


def module_names() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["ckpt_path", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> nx.DiGraph:
    """Arrows between the nodes of the package, from every import statement anywhere in a module."""
    graph = nx.DiGraph()
    for dotted, path in module_names().items():
        here = node(dotted)
        if here is None:
            continue
        graph.add_node(here)
        for statement in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(statement, ast.Import):
                targets = [alias.name for alias in statement.names]
            elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
                targets = [f"{statement.module}.{alias.name}" for alias in statement.names]
            else:
                continue
            for target in targets:
                there = node(target)
                if there is not None and there != here:
                    graph.add_edge(here, there)
    return graph


def layer_of() -> dict[str, int]:
    return {name: number for number, (_, names) in enumerate(LAYERS) for name in names}


def test_every_module_has_a_layer():
    """A new module is placed in a layer (and so in the README's map) before it lands."""
    assert set(import_graph().nodes) == set(layer_of())


def test_the_import_graph_has_no_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == []


def test_no_module_imports_from_a_higher_layer():
    layers = layer_of()
    upward = [
        f"{low} ({LAYERS[layers[low]][0]}) imports {high} ({LAYERS[layers[high]][0]})"
        for low, high in import_graph().edges
        if layers[high] > layers[low]
    ]
    assert upward == []


def test_the_readme_module_map_names_every_module_and_only_those():
    """The README's "Layout" paragraph of its development section is the map: `name` (job) per module."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("Layout, bottom up:") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`(\w+)`\s+\(", paragraph))
    assert named == set(layer_of()) - {"__main__"}


@pytest.mark.slow  # a fresh interpreter per module
@pytest.mark.parametrize("module", NO_TORCH)
def test_module_imports_without_torch(module):
    code = f"import sys, ckpt_path.{module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
