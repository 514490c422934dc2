"""Benchmark the planner on a large synthetic version graph, in process.

The graph imitates a long-lived project: a main line of releases joined by upgrade and
downgrade converters, skip converters (cheaper jumps over several releases), a few lossy
converters, and branch versions with local labels (``3.2.0+lam``, ``3.2.0+lam.2``, ...) that
fork off the main line and merge back into a later release. It is generated in memory from a
seeded RNG, so every run plans on the same graph.

Measured:

* graph build: :func:`ckpt_path.build_graph` plus :class:`ckpt_path.Planner` construction;
* ``Planner.plan(source, target, allow_lossy=True)`` over many random (source, target) pairs
  of versions, given as strings as the command line passes them: median and p90;
* the worst case, oldest version -> ``latest`` (the search visits nearly the whole graph),
  and the way back, ``latest`` -> oldest.

Run: ``python benchmarks/bench_plan.py`` (10,000 versions, 40,000 edges) or with ``--quick``
(1,000 versions, 4,000 edges) for a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from _common import GcMeter, Result, add_common_arguments, load, median, ms, percentile, table, write_results
from packaging.version import Version

from ckpt_path import Converter, NoPathError, Planner, build_graph

GOAL_PLAN_MS = 20.0
"""The project's goal: the median plan takes under 20 ms."""

BRANCH_LABELS = ("lam", "exp", "fp8", "moe", "lora", "distill", "sparse", "int8", "rlhf", "mtp")
SKIP_SPANS = (2, 3, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100)
SKIP_WEIGHTS = (20, 15, 12, 10, 8, 8, 6, 6, 5, 4, 3, 3)


@dataclass(frozen=True, slots=True)
class Size:
    """How big a graph to generate and how many plans to time."""

    versions: int
    edges: int
    pairs: int
    warmup: int
    build_repeats: int
    worst_repeats: int


FULL = Size(versions=10_000, edges=40_000, pairs=1_000, warmup=50, build_repeats=3, worst_repeats=20)
QUICK = Size(versions=1_000, edges=4_000, pairs=200, warmup=20, build_repeats=2, worst_repeats=5)


@dataclass
class History:
    """A synthetic version history: versions and the converters (edges) between them."""

    rng: random.Random
    main: list[Version] = field(default_factory=list)
    branch_versions: list[Version] = field(default_factory=list)
    branches: int = 0
    converters: list[Converter] = field(default_factory=list)
    edges: set[tuple[Version, Version]] = field(default_factory=set)

    def add(
        self,
        source: Version,
        target: Version,
        kind: str,
        *,
        cost: float = 1.0,
        lossy: bool = False,
    ) -> bool:
        """Add the converter ``source -> target`` unless that edge exists; return whether added."""
        if source == target or (source, target) in self.edges:
            return False
        self.edges.add((source, target))
        number = len(self.converters) + 1
        self.converters.append(
            Converter(
                source=source,
                target=target,
                name=f"{number:05d}_{kind}",
                description=f"{kind}: {source} -> {target}",
                file=f"converters/{number:05d}_{kind}.py",
                cost=cost,
                lossy=lossy,
            ),
        )
        return True

    def step_cost(self) -> float:
        """Cost of a one-release converter: mostly 1, sometimes cheaper or dearer."""
        return 1.0 if self.rng.random() < 0.85 else self.rng.choice((0.5, 2.0, 3.0, 5.0))


def main_line(rng: random.Random, count: int) -> list[Version]:
    """Generate ``count`` increasing release versions: mostly patches, some minors, rare majors."""
    major, minor, patch = 0, 1, 0
    versions = [Version(f"{major}.{minor}.{patch}")]
    while len(versions) < count:
        roll = rng.random()
        if roll < 0.01:
            major, minor, patch = major + 1, 0, 0
        elif roll < 0.15:
            minor, patch = minor + 1, 0
        else:
            patch += 1
        versions.append(Version(f"{major}.{minor}.{patch}"))
    return versions


def add_main_edges(history: History) -> None:
    """Upgrade and downgrade converters between consecutive releases (a few downgrades lossy)."""
    main, rng = history.main, history.rng
    for older, newer in itertools.pairwise(main):
        history.add(older, newer, "upgrade", cost=history.step_cost())
        history.add(newer, older, "downgrade", cost=history.step_cost(), lossy=rng.random() < 0.005)


def add_branches(history: History, count: int) -> None:
    """Add branch versions until there are ``count``, each branch forking and merging back.

    A branch forks off release ``base`` as ``base+label``, goes on as ``base+label.2`` ...,
    can be left back to ``base``, and merges into a release a little later than ``base``.
    """
    main, rng = history.main, history.rng
    used: set[tuple[Version, str]] = set()
    while len(history.branch_versions) < count:
        at = rng.randrange(len(main) - 1)
        label = rng.choice(BRANCH_LABELS)
        if (main[at], label) in used:
            continue
        used.add((main[at], label))
        history.branches += 1
        length = min(rng.randint(2, 25), count - len(history.branch_versions))
        base = main[at].base_version
        points = [Version(f"{base}+{label}")] + [Version(f"{base}+{label}.{i}") for i in range(2, length + 1)]
        history.branch_versions.extend(points)
        history.add(main[at], points[0], "fork", cost=history.step_cost())
        history.add(points[0], main[at], "leave", cost=history.step_cost())
        for older, newer in itertools.pairwise(points):
            history.add(older, newer, "branch_upgrade", cost=history.step_cost())
            history.add(newer, older, "branch_downgrade", cost=history.step_cost())
        merge = main[min(len(main) - 1, at + rng.randint(1, 30))]
        history.add(points[-1], merge, "merge", cost=history.step_cost())
        if rng.random() < 0.5:
            history.add(merge, points[-1], "unmerge", cost=history.step_cost())


def add_lossy_shortcuts(history: History, count: int) -> None:
    """Cheap lossy jumps over many releases (e.g. dropping optimizer state): never preferred."""
    main, rng = history.main, history.rng
    span = min(200, len(main) // 4)
    added = 0
    while added < count:
        at = rng.randrange(len(main) - span)
        older, newer = main[at], main[at + span]
        pair = (older, newer) if rng.random() < 0.5 else (newer, older)
        added += history.add(*pair, "lossy_shortcut", cost=0.1, lossy=True)


def add_skips(history: History, total_edges: int) -> None:
    """Skip converters over 2 to 100 releases, cheaper than the steps they replace, up to the edge count."""
    main, rng = history.main, history.rng
    while len(history.converters) < total_edges:
        span = rng.choices(SKIP_SPANS, SKIP_WEIGHTS)[0]
        at = rng.randrange(len(main) - span)
        older, newer = main[at], main[at + span]
        cost = round(span * rng.uniform(0.4, 0.9), 3)
        if rng.random() < 0.7:
            history.add(older, newer, "skip_upgrade", cost=cost)
        else:
            history.add(newer, older, "skip_downgrade", cost=cost)


def generate(versions: int, edges: int, seed: int = 0) -> History:
    """Generate the synthetic history: 80 % releases, 20 % branch versions, ``edges`` converters."""
    history = History(rng=random.Random(seed))  # noqa: S311 - reproducible, not secret
    history.main = main_line(history.rng, versions * 4 // 5)
    add_main_edges(history)
    add_branches(history, versions - len(history.main))
    add_lossy_shortcuts(history, max(2, versions // 500))
    add_skips(history, edges)
    return history


def timed(fn: Callable[[], object]) -> tuple[int, object]:
    """Call ``fn`` once; return the elapsed nanoseconds and its result."""
    start = time.perf_counter_ns()
    result = fn()
    return time.perf_counter_ns() - start, result


def measure_build(history: History, repeats: int) -> tuple[list[int], list[int], GcMeter, Planner]:
    """Time ``build_graph`` and ``Planner(...)`` ``repeats`` times.

    Return both timings, the garbage collector's passes during them, and the last planner.
    """
    build_ns: list[int] = []
    planner_ns: list[int] = []
    planner: Planner | None = None
    meter = GcMeter()
    for _ in range(repeats):
        planner = None
        gc.collect()
        with meter:
            elapsed, graph = timed(lambda: build_graph(history.converters))
            build_ns.append(elapsed)
            elapsed, planner = timed(lambda: Planner(graph))  # noqa: B023 - called at once
            planner_ns.append(elapsed)
    assert isinstance(planner, Planner)  # noqa: S101 - repeats >= 1
    return build_ns, planner_ns, meter, planner


def measure_plans(planner: Planner, pairs: list[tuple[str, str]]) -> tuple[list[int], list[int], int]:
    """Time one plan per pair; return the timings, the step counts and how many had no path."""
    samples: list[int] = []
    steps: list[int] = []
    no_path = 0
    for source, target in pairs:
        start = time.perf_counter_ns()
        try:
            plan = planner.plan(source, target, allow_lossy=True)
        except NoPathError:
            no_path += 1
            continue
        finally:
            samples.append(time.perf_counter_ns() - start)
        steps.append(len(plan.steps))
    return samples, steps, no_path


def repeat(fn: Callable[[], object], times: int) -> list[int]:
    """Time ``times`` calls of ``fn``; return the nanoseconds of each."""
    return [timed(fn)[0] for _ in range(times)]


def describe(history: History, seed: int, gen_ns: int) -> None:
    """Print what the generated graph holds."""
    lossy = sum(c.lossy for c in history.converters)
    print(
        f"graph: {len(history.main) + len(history.branch_versions):,} versions "
        f"({len(history.main):,} releases, {len(history.branch_versions):,} branch versions "
        f"on {history.branches:,} branches), {len(history.converters):,} converters "
        f"({lossy} lossy); generated in {ms(gen_ns):.0f} ms (seed {seed})",
    )


def run(size: Size, seed: int) -> list[Result]:
    """Generate the graph, run every measurement, print a table and return the headline results."""
    print(f"before: {load()}")
    gen_ns, history = timed(lambda: generate(size.versions, size.edges, seed))
    assert isinstance(history, History)  # noqa: S101 - for the type checker
    describe(history, seed, gen_ns)
    build_ns, planner_ns, build_gc, planner = measure_build(history, size.build_repeats)
    del history  # keep only what a process that plans holds: the graph and the planner
    total_ns = [b + p for b, p in zip(build_ns, planner_ns, strict=True)]
    if len(planner.versions) != size.versions:
        sys.exit(f"expected {size.versions} versions in the graph, got {len(planner.versions)}")

    rng = random.Random(seed + 1)  # noqa: S311 - reproducible, not secret
    names = [str(v) for v in planner.versions]
    warmup = [(rng.choice(names), rng.choice(names)) for _ in range(size.warmup)]
    pairs = [(rng.choice(names), rng.choice(names)) for _ in range(size.pairs)]
    measure_plans(planner, warmup)
    gc.collect()
    plan_gc, worst_gc = GcMeter(), GcMeter()
    with plan_gc:
        samples, steps, no_path = measure_plans(planner, pairs)
    oldest = names[0]
    with worst_gc:
        worst = repeat(lambda: planner.plan(oldest, "latest", allow_lossy=True), size.worst_repeats)
        back = repeat(lambda: planner.plan("latest", oldest, allow_lossy=True), size.worst_repeats)
    worst_steps = len(planner.plan(oldest, "latest", allow_lossy=True).steps)
    back_steps = len(planner.plan("latest", oldest, allow_lossy=True).steps)
    resolve = repeat(lambda: planner.resolve("latest"), size.worst_repeats)

    def share(meter: GcMeter, timings: list[int]) -> str:
        return f"{100 * meter.total_ns / sum(timings):.0f} %"

    rows = [
        (
            "build_graph",
            f"{ms(median(build_ns)):.1f}",
            f"min {ms(min(build_ns)):.1f}",
            "",
            f"{size.build_repeats} runs",
        ),
        ("Planner(graph)", f"{ms(median(planner_ns)):.1f}", f"min {ms(min(planner_ns)):.1f}", "", ""),
        (
            "graph + planner",
            f"{ms(median(total_ns)):.1f}",
            f"min {ms(min(total_ns)):.1f}",
            share(build_gc, total_ns),
            "",
        ),
        (
            "plan, random pairs",
            f"median {ms(median(samples)):.2f}",
            f"p90 {ms(percentile(samples, 0.9)):.2f}",
            share(plan_gc, samples),
            f"{len(samples)} pairs, median {median(steps):g} steps, {no_path} without path",
        ),
        ("plan, max", f"{ms(max(samples)):.2f}", "", "", "slowest random pair"),
        (
            f"plan {oldest} -> latest",
            f"median {ms(median(worst)):.2f}",
            f"min {ms(min(worst)):.2f}",
            share(worst_gc, worst + back),
            f"{worst_steps} steps, {size.worst_repeats} runs",
        ),
        (
            f"plan latest -> {oldest}",
            f"median {ms(median(back)):.2f}",
            f"min {ms(min(back)):.2f}",
            "",
            f"{back_steps} steps, {size.worst_repeats} runs",
        ),
        (
            'resolve("latest")',
            f"median {ms(median(resolve)):.2f}",
            f"min {ms(min(resolve)):.2f}",
            "",
            "part of every plan to `latest`",
        ),
    ]
    print(table(("measurement", "ms", "", "in GC", "notes"), rows))
    print(f"GC during build: {build_gc.summary()}")
    print(f"GC during random plans: {plan_gc.summary()}")
    plan_median = ms(median(samples))
    verdict = "met" if plan_median < GOAL_PLAN_MS else "MISSED"
    print(f"goal: median plan < {GOAL_PLAN_MS:g} ms: {verdict} ({plan_median:.2f} ms)")
    print(f"after: {load()}")

    scale = f"{size.versions:,} versions, {size.edges:,} edges"
    return [
        Result("plan", f"graph build + Planner ({scale})", round(ms(median(total_ns)), 1), "ms"),
        Result("plan", "plan median, random pairs", round(plan_median, 2), "ms", GOAL_PLAN_MS),
        Result("plan", "plan p90, random pairs", round(ms(percentile(samples, 0.9)), 2), "ms"),
        Result("plan", "plan oldest -> latest", round(ms(median(worst)), 2), "ms", note=f"{worst_steps} steps"),
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--seed", type=int, default=2026, help="RNG seed of the generated graph")
    args = parser.parse_args(argv)
    write_results(args.json, run(QUICK if args.quick else FULL, args.seed))


if __name__ == "__main__":
    main()
