"""Helpers shared by the benchmark scripts: statistics, results and tables.

Every benchmark script measures something, prints its own table for people, and (with
``--json PATH``) writes its headline figures as a list of :class:`Result` objects, which
``run.py`` gathers into one markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Result:
    """One headline figure of a benchmark, as it appears in ``run.py``'s table."""

    benchmark: str
    metric: str
    value: float
    unit: str
    goal: float | None = None
    """Upper bound the project aims for, in ``unit``; None when there is no goal."""
    note: str = ""

    @property
    def verdict(self) -> str:
        """``"ok"`` or ``"MISSED"`` against the goal, empty without a goal."""
        if self.goal is None:
            return ""
        return "ok" if self.value < self.goal else "MISSED"


class GcMeter:
    """Record the garbage collector's passes (generation, nanoseconds) while in a ``with`` block.

    The planner allocates many small objects next to a large live graph, so collections of the
    oldest generation show up as rare pauses of tens of milliseconds; this tells them apart.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[int, int]] = []
        self._start = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
        else:
            self.pauses.append((info["generation"], time.perf_counter_ns() - self._start))

    def __enter__(self) -> None:
        gc.callbacks.append(self._callback)

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)

    @property
    def total_ns(self) -> int:
        """Time spent in every collection."""
        return sum(ns for _, ns in self.pauses)

    @property
    def full(self) -> list[int]:
        """Durations of the collections of the oldest generation (2)."""
        return [ns for generation, ns in self.pauses if generation == 2]

    def summary(self) -> str:
        """One line: passes, total time, and the full collections."""
        full = self.full
        longest = f", longest {ms(max(full)):.1f} ms" if full else ""
        return f"{len(self.pauses)} GC passes, {ms(self.total_ns):.1f} ms in all; {len(full)} full collections{longest}"


def load() -> str:
    """Describe the machine's load average, so that a noisy run can be recognised."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:  # not available on this platform
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} CPUs"


def ms(ns: float) -> float:
    """Convert nanoseconds to milliseconds."""
    return ns / NS_PER_MS


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``samples`` (``fraction`` in (0, 1])."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    """Return the median of ``samples``."""
    return statistics.median(samples)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a markdown table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every benchmark script takes: ``--quick`` and ``--json PATH``."""
    parser.add_argument("--quick", action="store_true", help="smaller, faster run for smoke tests")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the headline results to PATH as JSON (used by run.py)",
    )


def write_results(path: Path | None, results: Sequence[Result]) -> None:
    """Write ``results`` to ``path`` as a JSON list, when a path is given."""
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")


def read_results(path: Path) -> list[Result]:
    """Read results written by :func:`write_results`."""
    return [Result(**item) for item in json.loads(path.read_text(encoding="utf-8"))]
