"""The version graph: a networkx ``DiGraph`` whose nodes are versions and edges converters.

Each edge carries its :class:`~ckpt_path.converters.Converter` under the attribute
``converter``. This module never sees a file path and never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
from packaging.version import Version

from ckpt_path.converters import Converter
from ckpt_path.errors import DuplicateConverterError
from ckpt_path.versions import branch_of

__all__ = ["build_graph", "render_graph", "split_duplicates"]


def split_duplicates(converters: Iterable[Converter]) -> tuple[list[Converter], DuplicateConverterError | None]:
    """Keep the first converter that claims each edge; return those and the error naming every clash.

    A converter from a ``reversible`` file claims its inverse edge as well; it is kept only
    when neither of its edges was claimed before.
    """
    kept: list[Converter] = []
    claimed: dict[tuple[Version, Version], Converter] = {}
    clashes: dict[tuple[Version, Version], list[str]] = {}
    for converter in converters:
        edges = converter.edges()
        taken = [e for e in edges if e.edge in claimed]
        for edge in taken:
            clashes.setdefault(edge.edge, [_label(claimed[edge.edge])]).append(_label(edge))
        if not taken:
            kept.append(converter)
            claimed.update((e.edge, e) for e in edges)
    if not clashes:
        return kept, None
    return kept, DuplicateConverterError([(str(s), str(t), files) for (s, t), files in sorted(clashes.items())])


def build_graph(converters: Iterable[Converter]) -> nx.DiGraph:
    """Build the version graph; edges claimed twice raise one :class:`DuplicateConverterError` naming them all.

    A converter from a ``reversible`` file adds its inverse edge as well.
    """
    kept, clash = split_duplicates(converters)
    if clash is not None:
        raise clash
    graph: nx.DiGraph = nx.DiGraph()
    for converter in kept:
        for edge in converter.edges():
            graph.add_edge(edge.source, edge.target, converter=edge)
    return graph


def _label(converter: Converter) -> str:
    suffix = " (inverse of reversible)" if converter.inverse else ""
    return converter.origin + suffix


def _sorted_edges(graph: nx.DiGraph) -> list[Converter]:
    return sorted(
        (data["converter"] for _, _, data in graph.edges(data=True)),
        key=lambda c: (c.source, c.target),
    )


def render_graph(graph: nx.DiGraph, fmt: str = "text") -> str:
    """Render the graph as ``text``, ``mermaid`` or ``dot``."""
    edges = _sorted_edges(graph)
    nodes = sorted(graph.nodes)
    if fmt == "text":
        lines = []
        for c in edges:
            flags = [f for f, on in (("lossy", c.lossy), ("inverse", c.inverse)) if on]
            cost = f" cost={c.cost:g}" if c.cost != 1.0 else ""
            tag = f" [{', '.join(flags)}]" if flags else ""
            lines.append(f"{c.source} -> {c.target}  {c.name}{cost}{tag}  {c.description}")
        isolated = [str(v) for v in nodes if graph.degree(v) == 0]
        lines.extend(f"{v} (no converters)" for v in isolated)
        return "\n".join(lines)
    if fmt == "mermaid":
        ids = {v: f"v{i}" for i, v in enumerate(nodes)}  # versions are not valid mermaid ids
        lines = ["graph LR"]
        lines += [f'    {ids[v]}["{v}"]' for v in nodes]
        for c in edges:
            arrow = "-.->" if c.lossy else "-->"
            lines.append(f"    {ids[c.source]} {arrow}|{c.name}| {ids[c.target]}")
        return "\n".join(lines)
    if fmt == "dot":
        lines = ["digraph versions {", "    rankdir=LR;"]
        for v in nodes:
            branch = branch_of(v)
            style = ', style="dashed"' if branch else ""
            lines.append(f'    "{v}" [label="{v}"{style}];')
        for c in edges:
            attrs = [f'label="{c.name}"'] + (['style="dashed"', 'color="red"'] if c.lossy else [])
            lines.append(f'    "{c.source}" -> "{c.target}" [{", ".join(attrs)}];')
        lines.append("}")
        return "\n".join(lines)
    msg = f"unknown graph format {fmt!r} (text, mermaid, dot)"
    raise ValueError(msg)
