"""The planner: the best path between two versions, as frozen data.

The planner minimises, in this order: the number of lossy steps, then the total cost, then
the number of steps. Paths still tied are ordered by their versions read from the target
backwards (the path whose last differing version is lower wins), so the same graph gives
the same plan on every run, whatever order the converters were read in.

Costs are summed in millionths (integers), so totals are exact and ties are real ties.

A source that is not a version of the graph reads as the highest version at or below it on
its branch (a release between two converters has the layout of the one below); the plan keeps
the version asked for in ``requested_source``. A target must be a version of the graph.
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
from ckpt_path.versions import floor_version, nearest_versions, resolve_target

__all__ = ["Plan", "Planner", "Step"]

_MICRO = 1_000_000


def _micro(cost: float) -> int:
    return max(1, round(cost * _MICRO))


Step = Converter
"""A step is a converter applied: ``Plan.steps`` holds the converters of the path, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The converters to apply, in order, to take a checkpoint from ``source`` to ``target``.

    ``requested_source`` is the version asked for when it is not a version of the graph and
    was read as ``source`` (the highest version at or below it on its branch), else None.
    """

    source: Version
    target: Version
    steps: tuple[Step, ...]
    requested_source: Version | None = None

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
            "requested_source": None if self.requested_source is None else str(self.requested_source),
            "target": str(self.target),
            "cost": self.cost,
            "lossy": self.lossy,
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_json(self) -> str:
        """Return the plan as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @property
    def source_note(self) -> str | None:
        """One line saying which version ``requested_source`` was read as, or None."""
        if self.requested_source is None:
            return None
        return (
            f"{self.requested_source} is not a version of the graph; it reads as {self.source}, "
            "the highest version at or below it on its branch"
        )

    def __str__(self) -> str:
        lines = [] if self.source_note is None else [self.source_note]
        if not self.steps:
            lines.append(f"{self.source} is already {self.target}: nothing to do")
            return "\n".join(lines)
        lines.append(f"{self.source} -> {self.target}: {len(self.steps)} step(s), cost {self.cost:g}")
        for i, s in enumerate(self.steps, 1):
            tag = "  [lossy]" if s.lossy else ""
            lines.append(f"  {i}. {s.source} -> {s.target}  {s.name}{tag}  {s.description}")
        return "\n".join(lines)


def _lossy_because(step: Step) -> str:
    """Say what makes a step lossy: its lossy ops (``Drop(pattern='head.*')``), or its file saying so."""
    culprits = [repr(op) for op in step.ops or () if op.is_lossy()]
    if culprits:
        return f"{', '.join(culprits)} in {step.origin}"
    return f"{step.origin} says lossy = True"


class Planner:
    """Finds plans on a version graph (see :func:`ckpt_path.graph.build_graph`).

    The graph is indexed once; each :meth:`plan` is one Dijkstra search that stops at the
    target.
    """

    def __init__(self, graph: nx.DiGraph) -> None:
        self.graph = graph
        self._versions: list[Version] = sorted(graph.nodes)
        self._rank = {v: i for i, v in enumerate(self._versions)}
        self._resolved: dict[str, Version] = {}
        # A label (lossy steps, cost in millionths, steps) is packed into one int, most
        # significant field first, so labels compare as plain ints and the heap holds ints
        # (no tuples for the garbage collector to chase on large graphs). Each field is wide
        # enough for any simple path: at most every edge once.
        edges = [(self._rank[u], self._rank[v], d["converter"]) for u, v, d in graph.edges(data=True)]
        total_cost = sum(_micro(conv.cost) for _, _, conv in edges)
        count_bits = len(self._versions).bit_length() + 1
        cost_bits = total_cost.bit_length() + 1
        lossy_shift = cost_bits + count_bits
        self._node_bits = max(1, len(self._versions).bit_length())
        self._infinite = 1 << (lossy_shift + count_bits + 1)
        self._edges: list[list[tuple[int, int, Converter]]] = [[] for _ in self._versions]
        for u, v, conv in edges:
            step = (int(conv.lossy) << lossy_shift) | (_micro(conv.cost) << count_bits) | 1
            self._edges[u].append((v, step, conv))

    @property
    def versions(self) -> list[Version]:
        """Every version of the graph, oldest first."""
        return list(self._versions)

    def resolve(self, text: str | Version) -> Version:
        """Resolve a version, ``latest`` or ``LABEL@latest`` to a version of the graph.

        Strict: a version that is not a version of the graph raises
        :class:`UnknownVersionError` (what targets need; sources use :meth:`resolve_source`).
        """
        version = self._parse(text)
        if version not in self._rank:
            raise UnknownVersionError(str(version), nearest_versions(version, self._versions))
        return version

    def resolve_source(self, text: str | Version) -> tuple[Version, Version | None]:
        """Resolve where a checkpoint comes from to a version of the graph.

        Returns the version of the graph and, when it differs, the version asked for. A
        version that is not in the graph reads as the highest version at or below it on its
        branch (see :func:`ckpt_path.versions.floor_version`); with none, it raises
        :class:`UnknownVersionError` listing the nearest versions.
        """
        version = self._parse(text)
        if version in self._rank:
            return version, None
        node = floor_version(version, self._versions)
        if node is None:
            raise UnknownVersionError(str(version), nearest_versions(version, self._versions))
        return node, version

    def _parse(self, text: str | Version) -> Version:
        if isinstance(text, Version):
            return text
        if text not in self._resolved:
            self._resolved[text] = resolve_target(text, self._versions)
        return self._resolved[text]

    def plan(self, source: str | Version, target: str | Version, *, allow_lossy: bool = False) -> Plan:
        """Return the best plan from ``source`` to ``target``.

        A ``source`` that is not a version of the graph reads as the highest version at or
        below it on its branch (:meth:`resolve_source`); ``target`` must be in the graph.
        Raises :class:`UnknownVersionError`, :class:`NoPathError`, or :class:`LossyPathError`
        when the best path has a lossy step and ``allow_lossy`` is false.
        """
        (src, requested), tgt = self.resolve_source(source), self.resolve(target)
        steps = self._search(self._rank[src], self._rank[tgt])
        if steps is None:
            raise NoPathError(
                str(src),
                str(tgt),
                [str(v) for v in sorted(nx.descendants(self.graph, src))],
                [str(v) for v in sorted(nx.ancestors(self.graph, tgt))],
            )
        plan = Plan(
            source=src,
            target=tgt,
            steps=tuple(steps),
            requested_source=requested,
        )
        if plan.lossy and not allow_lossy:
            lossy = [s for s in plan.steps if s.lossy]
            raise LossyPathError(
                str(src), str(tgt), [(str(s.source), str(s.target)) for s in lossy], [_lossy_because(s) for s in lossy]
            )
        return plan

    def _search(self, s: int, t: int) -> list[Converter] | None:
        n = len(self._versions)
        best = [self._infinite] * n
        pred_node = [-1] * n
        pred_conv: list[Converter | None] = [None] * n
        done = bytearray(n)
        best[s] = 0
        shift = self._node_bits
        mask = (1 << shift) - 1
        heap = [s]  # each item: label << shift | node
        edges = self._edges
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            item = pop(heap)
            u = item & mask
            if done[u]:
                continue
            done[u] = 1
            if u == t:
                break
            label = item >> shift
            for v, step, conv in edges[u]:
                candidate = label + step
                current = best[v]
                # Equal labels: the lower-ranked predecessor wins, whichever was seen first.
                if candidate < current or (candidate == current and u < pred_node[v]):
                    best[v] = candidate
                    pred_node[v] = u
                    pred_conv[v] = conv
                    push(heap, (candidate << shift) | v)
        if not done[t]:
            return None
        path: list[Converter] = []
        node = t
        while node != s:
            edge = pred_conv[node]
            assert edge is not None  # noqa: S101 - every reached node but the source has one
            path.append(edge)
            node = pred_node[node]
        path.reverse()
        return path
