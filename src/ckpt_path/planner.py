"""The planner: the best path between two versions, as frozen data.

The planner minimises, in this order: the number of lossy steps, then the total cost, then
the number of steps. Paths still tied are ordered by their versions read from the target
backwards (the path whose last differing version is lower wins), so the same graph gives
the same plan on every run, whatever order the converters were read in.

Costs are summed in millionths (integers), so totals are exact and ties are real ties.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from typing import Any

import networkx as nx
from packaging.version import Version

from ckpt_path.converters import Converter
from ckpt_path.errors import LossyPathError, NoPathError, UnknownVersionError
from ckpt_path.versions import nearest_versions, resolve_target

__all__ = ["Plan", "Planner", "Step"]

_MICRO = 1_000_000


def _micro(cost: float) -> int:
    return max(1, round(cost * _MICRO))


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One converter applied: the edge ``source -> target``."""

    converter: Converter

    @property
    def source(self) -> Version:
        """The version the step starts from."""
        return self.converter.source

    @property
    def target(self) -> Version:
        """The version the step lands on."""
        return self.converter.target

    @property
    def name(self) -> str:
        """The converter's name (its file name without ``.py``)."""
        return self.converter.name

    @property
    def file(self) -> str | None:
        """The converter file, or None for a converter made in code."""
        return self.converter.file

    @property
    def lossy(self) -> bool:
        """Whether the step throws information away."""
        return self.converter.lossy

    @property
    def cost(self) -> float:
        """The edge weight."""
        return self.converter.cost

    @property
    def description(self) -> str:
        """The first line of the converter's docstring."""
        return self.converter.description

    def to_dict(self) -> dict[str, Any]:
        """Return the step as the contract's JSON object."""
        return {
            "source": str(self.source),
            "target": str(self.target),
            "converter": self.name,
            "file": self.file,
            "lossy": self.lossy,
            "cost": self.cost,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The converters to apply, in order, to take a checkpoint from ``source`` to ``target``."""

    source: Version
    target: Version
    steps: tuple[Step, ...]

    @property
    def cost(self) -> float:
        """Total cost of the path."""
        return sum(_micro(s.cost) for s in self.steps) / _MICRO

    @property
    def lossy(self) -> bool:
        """Whether any step is lossy."""
        return any(s.lossy for s in self.steps)

    @property
    def versions(self) -> tuple[Version, ...]:
        """Every version the path visits, source first."""
        return (self.source, *(s.target for s in self.steps))

    def __len__(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as the contract's JSON object."""
        return {
            "source": str(self.source),
            "target": str(self.target),
            "cost": self.cost,
            "lossy": self.lossy,
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_json(self) -> str:
        """Return the plan as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        if not self.steps:
            return f"{self.source} is already {self.target}: nothing to do"
        lines = [f"{self.source} -> {self.target}: {len(self.steps)} step(s), cost {self.cost:g}"]
        for i, s in enumerate(self.steps, 1):
            tag = "  [lossy]" if s.lossy else ""
            lines.append(f"  {i}. {s.source} -> {s.target}  {s.name}{tag}  {s.description}")
        return "\n".join(lines)


class Planner:
    """Finds plans on a version graph (see :func:`ckpt_path.graph.build_graph`).

    The graph is indexed once; each :meth:`plan` is one Dijkstra search that stops at the
    target.
    """

    def __init__(self, graph: nx.DiGraph) -> None:
        self.graph = graph
        self._versions: list[Version] = sorted(graph.nodes)
        self._rank = {v: i for i, v in enumerate(self._versions)}
        self._edges: list[list[tuple[int, int, int, Converter]]] = [[] for _ in self._versions]
        for u, v, data in graph.edges(data=True):
            conv: Converter = data["converter"]
            self._edges[self._rank[u]].append((self._rank[v], int(conv.lossy), _micro(conv.cost), conv))

    @property
    def versions(self) -> list[Version]:
        """Every version of the graph, oldest first."""
        return list(self._versions)

    def resolve(self, text: str | Version) -> Version:
        """Resolve a version, ``latest`` or ``LABEL@latest`` to a version of the graph."""
        version = text if isinstance(text, Version) else resolve_target(text, self._versions)
        if version not in self._rank:
            raise UnknownVersionError(str(version), nearest_versions(version, self._versions))
        return version

    def plan(self, source: str | Version, target: str | Version, *, allow_lossy: bool = False) -> Plan:
        """Return the best plan from ``source`` to ``target``.

        Raises :class:`UnknownVersionError`, :class:`NoPathError`, or :class:`LossyPathError`
        when the best path has a lossy step and ``allow_lossy`` is false.
        """
        src, tgt = self.resolve(source), self.resolve(target)
        steps = self._search(self._rank[src], self._rank[tgt])
        if steps is None:
            raise NoPathError(
                str(src),
                str(tgt),
                [str(v) for v in sorted(nx.descendants(self.graph, src))],
                [str(v) for v in sorted(nx.ancestors(self.graph, tgt))],
            )
        plan = Plan(source=src, target=tgt, steps=tuple(Step(converter=c) for c in steps))
        if plan.lossy and not allow_lossy:
            raise LossyPathError(plan)
        return plan

    def _search(self, s: int, t: int) -> list[Converter] | None:
        best: dict[int, tuple[int, int, int]] = {s: (0, 0, 0)}
        pred: dict[int, tuple[int, Converter]] = {}
        done: set[int] = set()
        heap = [(0, 0, 0, s)]
        edges = self._edges
        while heap:
            lossy, cost, count, u = heapq.heappop(heap)
            if u in done:
                continue
            done.add(u)
            if u == t:
                break
            for v, e_lossy, e_cost, conv in edges[u]:
                label = (lossy + e_lossy, cost + e_cost, count + 1)
                current = best.get(v)
                # Equal labels: the lower-ranked predecessor wins, whichever was seen first.
                if current is None or label < current or (label == current and u < pred[v][0]):
                    best[v] = label
                    pred[v] = (u, conv)
                    heapq.heappush(heap, (*label, v))
        if t not in done:
            return None
        path: list[Converter] = []
        node = t
        while node != s:
            node, conv = pred[node]
            path.append(conv)
        path.reverse()
        return path
