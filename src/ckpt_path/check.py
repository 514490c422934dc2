"""Lint a converters directory (for CI and pre-commit), finding every problem at once.

:func:`check_directory` reports all it finds rather than stopping at the first: files that
do not parse or import, bad metadata, duplicate edges, versions that cannot reach
``latest``, steps that fail on a checkpoint their source's schema describes, reversible files
whose round trip is not bitwise identical, and different paths between two versions that give
different tensors. The last three run on synthetic checkpoints built from schemas, so they
need ``schemas/<version>.json``; notes say what could not be checked, and which versions that
a step lands on have no schema.

Each file's own step is checked alone on its source's schema (:func:`_steps`). Ops are data:
one that does not fit the schema's layout, or a result the target's schema refuses, is the
file's problem, found from shapes alone. A ``convert`` function runs on a synthetic
checkpoint of the schema: returning no checkpoint is a problem; any other failure is a note,
as a correct function may read values or entries outside the state dict that a synthetic
checkpoint cannot have. Failures are said once, on the failing step's file.

A round trip is checked in the direction the file was written, ``source -> target ->
source``, from a synthetic checkpoint of ``source``: built from its schema or, when only
``target`` has one, from the layout the inverse ops predict. A lossy way back (a widening
cast's narrowing inverse) is exact on values that came from ``source``, so the file passes.

Nothing here needs pytest: checkpoints come from :mod:`ckpt_path._synthetic`, imported (with
torch) only when a check needs one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from packaging.version import Version

from ckpt_path.converter_files import converter_files, display_path, read_converter_file
from ckpt_path.converters import Converter
from ckpt_path.errors import CkptPathError, ConverterFileError, ShapeMismatchError, StepError
from ckpt_path.graph import split_duplicates
from ckpt_path.planner import Plan
from ckpt_path.registry import Registry, find_converters_dir
from ckpt_path.shapes import Schema
from ckpt_path.versions import latest, parse_version

__all__ = ["Finding", "check_directory"]

MAX_PATHS = 8
"""How many alternative paths between two versions are compared."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing ``check`` found: a problem (exit 1) or a note."""

    file: str
    message: str
    line: int | None = None
    problem: bool = True

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


def _read_all(directory: Path) -> tuple[list[Converter], list[Finding]]:
    converters, findings = [], []
    for path in converter_files(directory):
        try:
            converters.append(read_converter_file(path, display=display_path(path)))
        except ConverterFileError as exc:
            findings.append(Finding(file=exc.file, line=exc.line, message=exc.reason))
    return converters, findings


def _imports(converters: list[Converter]) -> list[Finding]:
    from ckpt_path._converter_code import load_converter_code

    findings = []
    for converter in converters:
        if converter.kind == "ops" and not converter.has_when:
            continue  # ops are built from the syntax tree; nothing to import
        try:
            module = load_converter_code(converter)
        except CkptPathError as exc:
            reason = exc.reason if isinstance(exc, StepError) else str(exc)
            findings.append(Finding(file=converter.origin, message=reason))
            continue
        if converter.kind == "convert" and not callable(getattr(module, "convert", None)):
            findings.append(Finding(file=converter.origin, message="convert is not a function"))
    return findings


def _reach_latest(registry: Registry) -> list[Finding]:
    graph = registry.graph
    top = latest(graph.nodes)
    if top is None:
        return [Finding(file=str(registry.directory), message="no version without a local label: no latest")]
    reaching = nx.ancestors(graph, top) | {top}
    findings = []
    for version in sorted(set(graph.nodes) - reaching):
        files = sorted(
            {graph.edges[e]["converter"].origin for e in graph.in_edges(version)}
            | {graph.edges[e]["converter"].origin for e in graph.out_edges(version)}
        )
        findings.append(
            Finding(file=files[0], message=f"version {version} cannot reach latest ({top})"),
        )
    return findings


_Edge = tuple[Version, Version]
"""A step's ``(source, target)``, by which a step that failed is said once."""


def _failure(exc: Exception) -> str:
    """Say why a step failed, without the ``step A -> B (file)`` its error starts with."""
    if isinstance(exc, StepError):
        return exc.reason
    if isinstance(exc, ShapeMismatchError):
        against = f" (checked against {exc.schema})" if exc.schema else ""
        return f"it left a wrong state dict{against}: {'; '.join(exc.problems[:3])}"
    return str(exc) if isinstance(exc, CkptPathError) else f"{type(exc).__name__}: {exc}"


def _steps(registry: Registry, broken: set[str]) -> tuple[list[Finding], set[_Edge]]:
    """Check each file's own step on its source's schema; return findings and the edges that failed.

    A step of ops (no ``when``) is predicted on the source schema's layout, no tensor made: ops
    are data, so an op that does not fit or a result the target's schema refuses is the file's
    problem. A ``convert`` function runs on a synthetic checkpoint of the source's schema; a
    function that returns no checkpoint is the file's problem, any other failure a note (a
    synthetic checkpoint has random values and nothing outside the state dict, which a correct
    function may need). Files whose import failed (``broken``) are reported once, there. The
    failed edges are returned so the round trips and paths through them are not reported again.
    """
    from ckpt_path._synthetic import round_trip_start
    from ckpt_path.runner import predict, run

    findings, failed = [], set()
    for converter in registry.converters:
        source, target = str(converter.source), str(converter.target)
        step = f"step {source} -> {target}"
        schema = registry.schema(source)
        if converter.inverse or converter.origin in broken:
            continue
        if schema is None:
            if not converter.reversible:  # a reversible file's round trip runs from whichever side has a schema
                hint = f"`ckpt-path schema CKPT --version {source}`"
                message = f"{step} not run on its own: {source} has no schema ({hint})"
                findings.append(Finding(file=converter.origin, problem=False, message=message))
            continue
        plan = Plan(source=converter.source, target=converter.target, steps=(converter,))
        try:
            layout = schema.signature() if converter.ops is not None and not converter.has_when else None
            if layout is not None:
                predict(plan, layout, registry.schema)
            else:  # a function, a when() guard, or a schema with sizes left free (no one layout)
                run(plan, round_trip_start(registry, source, target), schemas=registry.schema)
        except Exception as exc:  # noqa: BLE001 - one broken step is a finding, not a crash of the lint
            failed.add(converter.edge)
            certain = converter.ops is not None or (isinstance(exc, StepError) and "returned" in exc.reason)
            if certain:
                message = f"{step} fails on {source}'s schema: {_failure(exc)}"
            else:
                message = f"{step} not verified on a synthetic checkpoint of {source}'s schema: {_failure(exc)}"
            findings.append(Finding(file=converter.origin, problem=certain, message=message))
    return findings, failed


def _round_trips(registry: Registry, failed: set[_Edge]) -> list[Finding]:
    """Run each reversible file's ``source -> target -> source`` on a synthetic checkpoint of ``source``.

    A file whose step already failed alone (``failed``) is not reported again.
    """
    from ckpt_path._synthetic import round_trip_differences, summarize

    findings = []
    for converter in registry.converters:
        if not converter.reversible or converter.inverse or converter.edge in failed:
            continue
        source, target = str(converter.source), str(converter.target)
        trip = f"round trip {source} -> {target} -> {source}"
        if registry.schema(source) is None and registry.schema(target) is None:
            findings.append(
                Finding(
                    file=converter.origin,
                    problem=False,
                    message=f"round trip not checked: no schema for {source} or {target}",
                ),
            )
            continue
        try:
            differences = round_trip_differences(registry, source, target)
        except CkptPathError as exc:
            message = f"{trip} fails: {exc}"
        except Exception as exc:  # noqa: BLE001 - one broken case is a finding, not a crash of the lint
            message = f"{trip} raised {type(exc).__name__}: {exc}"
        else:
            if not differences:
                continue
            message = f"{trip} fails: {summarize(differences)}"
        findings.append(Finding(file=converter.origin, message=message))
    return findings


def _unverified_versions(registry: Registry) -> list[Finding]:
    """Note every version a step lands on that has no schema: such steps are checked by their own predictions only.

    A version no step lands on (the first one) needs no schema for that: nothing is verified there.
    """
    findings = []
    for version in sorted(registry.graph.nodes):
        if registry.schema(version) is not None or not registry.graph.in_degree(version):
            continue
        folder = registry.schemas_dir
        file = display_path(folder / f"{version}.json") if folder is not None else str(version)
        findings.append(
            Finding(
                file=file,
                problem=False,
                message=(
                    f"version {version} has no schema: steps landing on it cannot be verified; "
                    f"write one with `ckpt-path schema CKPT --version {version}`"
                ),
            ),
        )
    return findings


def _run_paths(
    registry: Registry,
    lossless: nx.DiGraph,
    paths: list[list[Version]],
    schema: Schema,
    failures: dict[object, Finding],
) -> list[tuple[list[Version], Any]]:
    """Run each path on the same synthetic checkpoint; return the results, noting each failing step in ``failures``.

    A note goes on the file of the step that failed, keyed by that step, so a step that fails
    on many paths is said once.
    """
    from ckpt_path._synthetic import synthetic_checkpoint
    from ckpt_path.runner import run

    results = []
    for nodes in sorted(paths, key=lambda p: (len(p), p)):
        steps = tuple(lossless.edges[u, v]["converter"] for u, v in itertools.pairwise(nodes))
        plan = Plan(source=nodes[0], target=nodes[-1], steps=steps)
        try:
            results.append((nodes, run(plan, synthetic_checkpoint(schema), schemas=registry.schema).checkpoint))
        except (StepError, ShapeMismatchError) as exc:
            edge = (parse_version(exc.source), parse_version(exc.target))
            note = Finding(file=exc.file, problem=False, message=f"paths through it not compared: {exc}")
            failures.setdefault(edge, note)
        except CkptPathError as exc:
            failures.setdefault(
                str(exc), Finding(file=steps[0].origin, problem=False, message=f"path not compared: {exc}")
            )
    return results


def _path_agreement(registry: Registry, failed: set[_Edge]) -> list[Finding]:
    """Compare different lossless paths between two versions where they part and meet again.

    A step that fails is noted once, on its file, unless it already failed alone (``failed``).
    """
    from ckpt_path._synthetic import checkpoint_differences, summarize

    graph = registry.graph
    lossless = nx.DiGraph([(u, v, d) for u, v, d in graph.edges(data=True) if not d["converter"].lossy])
    findings = []
    failures: dict[object, Finding] = {}
    for source, target in itertools.permutations(sorted(lossless.nodes), 2):
        schema = registry.schema(source)
        paths = list(itertools.islice(nx.all_simple_paths(lossless, source, target), MAX_PATHS)) if schema else []
        if len(paths) < 2 or schema is None:  # noqa: PLR2004 - agreement needs two paths
            continue
        results = _run_paths(registry, lossless, paths, schema, failures)
        for other, got in results[1:]:
            first, expected = results[0]
            if other[1] == first[1] or set(other[1:-1]) & set(first[1:-1]):
                continue  # the paths do not part at the source: a shorter pair reports it
            differences = checkpoint_differences(expected, got)
            if differences:
                shown = " -> ".join(map(str, first)), " -> ".join(map(str, other))
                findings.append(
                    Finding(
                        file=graph.edges[other[0], other[1]]["converter"].origin,
                        message=f"paths {shown[0]} and {shown[1]} give different checkpoints: {summarize(differences)}",
                    ),
                )
    return findings + [note for key, note in failures.items() if key not in failed]


def check_directory(directory: str | Path | None = None) -> list[Finding]:
    """Lint a converters directory; return every finding (problems and notes), sorted by file."""
    root = find_converters_dir(directory)
    if not root.is_dir():
        return [Finding(file=str(root), message="converters directory not found")]
    converters, findings = _read_all(root)
    imported = _imports(converters)
    findings += imported
    unique, clash = split_duplicates(converters)
    if clash is not None:
        findings += [
            Finding(
                file=files[-1].removesuffix(" (inverse of reversible)"),
                message=f"two converters for {s} -> {t}: {' and '.join(files)}",
            )
            for s, t, files in clash.clashes
        ]
    registry = Registry(unique, directory=root)
    findings += _reach_latest(registry)
    try:
        findings += _unverified_versions(registry)
        steps, failed = _steps(registry, {finding.file for finding in imported})
        findings += steps
        findings += _round_trips(registry, failed)
        findings += _path_agreement(registry, failed)
    except CkptPathError as exc:  # e.g. a damaged schema file
        findings.append(Finding(file=str(root), message=str(exc)))
    return sorted(findings, key=lambda f: (f.file, f.line or 0, f.message))
