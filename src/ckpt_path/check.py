"""Lint a converters directory (for CI and pre-commit), finding every problem at once.

:func:`check_directory` reports all it finds rather than stopping at the first: files that
do not parse or import, bad metadata, duplicate edges, versions that cannot reach
``latest``, reversible files whose round trip is not bitwise identical, and different paths
between two versions that give different tensors. The last two run on synthetic checkpoints
built from schemas, so they need ``schemas/<version>.json``; notes say what could not be
checked, and which versions have no schema.

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
from ckpt_path.errors import CkptPathError, ConverterFileError, StepError
from ckpt_path.graph import split_duplicates
from ckpt_path.planner import Plan
from ckpt_path.registry import Registry, find_converters_dir
from ckpt_path.shapes import Schema
from ckpt_path.versions import latest

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


def _round_trips(registry: Registry) -> list[Finding]:
    """Run each reversible file's ``source -> target -> source`` on a synthetic checkpoint of ``source``."""
    from ckpt_path._synthetic import round_trip_differences, summarize

    findings = []
    for converter in registry.converters:
        if not converter.reversible or converter.inverse:
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
    """Note every version without a schema: steps landing on it are checked by their own predictions only."""
    findings = []
    for version in sorted(registry.graph.nodes):
        if registry.schema(version) is not None:
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
) -> tuple[list[tuple[list[Version], Any]], list[Finding]]:
    """Run each path on the same synthetic checkpoint; return the results and notes."""
    from ckpt_path._synthetic import synthetic_checkpoint
    from ckpt_path.runner import run

    results, notes = [], []
    for nodes in sorted(paths, key=lambda p: (len(p), p)):
        steps = tuple(lossless.edges[u, v]["converter"] for u, v in itertools.pairwise(nodes))
        plan = Plan(source=nodes[0], target=nodes[-1], steps=steps)
        try:
            results.append((nodes, run(plan, synthetic_checkpoint(schema), schemas=registry.schema).checkpoint))
        except CkptPathError as exc:
            notes.append(Finding(file=steps[0].origin, problem=False, message=f"path not compared: {exc}"))
    return results, notes


def _path_agreement(registry: Registry) -> list[Finding]:
    """Compare different lossless paths between two versions where they part and meet again."""
    from ckpt_path._synthetic import checkpoint_differences, summarize

    graph = registry.graph
    lossless = nx.DiGraph([(u, v, d) for u, v, d in graph.edges(data=True) if not d["converter"].lossy])
    findings = []
    for source, target in itertools.permutations(sorted(lossless.nodes), 2):
        schema = registry.schema(source)
        paths = list(itertools.islice(nx.all_simple_paths(lossless, source, target), MAX_PATHS)) if schema else []
        if len(paths) < 2 or schema is None:  # noqa: PLR2004 - agreement needs two paths
            continue
        results, notes = _run_paths(registry, lossless, paths, schema)
        findings += notes
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
    return findings


def check_directory(directory: str | Path | None = None) -> list[Finding]:
    """Lint a converters directory; return every finding (problems and notes), sorted by file."""
    root = find_converters_dir(directory)
    if not root.is_dir():
        return [Finding(file=str(root), message="converters directory not found")]
    converters, findings = _read_all(root)
    findings += _imports(converters)
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
        findings += _round_trips(registry)
        findings += _path_agreement(registry)
    except CkptPathError as exc:  # e.g. a damaged schema file
        findings.append(Finding(file=str(root), message=str(exc)))
    return sorted(findings, key=lambda f: (f.file, f.line or 0, f.message))
