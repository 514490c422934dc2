"""Lint a converters directory, and scaffold new converter files.

:func:`check_directory` finds every problem at once (for CI and pre-commit), rather than
stopping at the first: files that do not parse or import, bad metadata, duplicate edges,
versions that cannot reach ``latest``, reversible files whose round trip is not bitwise
identical, and different paths between two versions that give different tensors. The last
two run on synthetic checkpoints built from schemas, so they need ``schemas/<version>.json``;
notes say what could not be checked, and which versions have no schema.

A round trip is checked in the direction the file was written, ``source -> target ->
source``, from a synthetic checkpoint of ``source``: built from its schema or, when only
``target`` has one, from the layout the inverse ops predict. A lossy way back (a widening
cast's narrowing inverse) is exact on values that came from ``source``, so the file passes.

Nothing here needs pytest: checkpoints come from :mod:`ckpt_path._synthetic`, imported (with
torch) only when a check needs one.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from packaging.version import Version

from ckpt_path.converter_files import converter_files, display_path, read_converter_file
from ckpt_path.converters import Converter
from ckpt_path.errors import CkptPathError, ConverterFileError, StepError, VersionError
from ckpt_path.graph import split_duplicates
from ckpt_path.ops import (
    Cast,
    Concat,
    Op,
    OpError,
    Rename,
    Reshape,
    Split,
    Squeeze,
    Stack,
    Transpose,
    Unsqueeze,
    Unstack,
    invert,
    keys_matching,
)
from ckpt_path.planner import Plan
from ckpt_path.registry import Registry, find_converters_dir
from ckpt_path.shapes import Schema, TensorSpec, load_schema
from ckpt_path.versions import latest, parse_version

__all__ = ["Draft", "Finding", "check_directory", "draft_ops", "scaffold_converter"]

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


_CONVERT_TEMPLATE = '''"""{description}"""

source = "{source}"
target = "{target}"
# Glob patterns of the state-dict keys this step may add, remove, reshape or re-type.
# Every other key must come through with the same shape and dtype (checked after the step).
touches = []
# lossy = True     # the step throws information away (used only where no lossless path exists)
# cost = 1.0       # edge weight for the planner


def convert(ckpt):
    """Take a {source} checkpoint and return it as {target} would save it (mutating is fine)."""
    sd = ckpt["state_dict"]  # ckpt["model"], or ckpt itself for a flat state dict
    # Example: sd["new.name"] = sd.pop("old.name")
    del sd  # remove once the step does something
    return ckpt


# def when(ckpt):
#     """Guard: return False to leave checkpoints this step does not apply to unchanged."""
#     return True
'''

_OPS_TEMPLATE = '''"""{description}"""

from ckpt_path.ops import Add, Cast, Concat, Drop, MoveIndex, Permute, Rename, Reshape, Split, Stack  # noqa: F401

source = "{source}"
target = "{target}"
reversible = True  # registers {target} -> {source} too; needs every op to have an inverse (not Drop)

# Read without running this file. Keys are templates: {{name}} matches one dotted segment,
# {{*name}} any number of segments, {{i+1}} computes with a number; optional=True may match nothing.
#   Rename("layers.{{i}}.attn.{{p}}", "layers.{{i}}.self_attn.{{p}}")
#   Rename("{{*m}}.LayerNorm.gamma", "{{*m}}.LayerNorm.weight")        # at every depth, under any prefix
#   Rename("layers.{{i}}.downsample.{{*p}}", "layers.{{i+1}}.downsample.{{*p}}")
#   MoveIndex("embedder.0.weight", dim=1, index=49, to=34)
#   Concat(["attn.q.{{p}}", "attn.k.{{p}}", "attn.v.{{p}}"], into="attn.qkv.{{p}}", dim=0)
#   Split("attn.qkv.{{p}}", into=["attn.q.{{p}}", "attn.k.{{p}}", "attn.v.{{p}}"], dim=0)
#   Stack("{{*m}}.experts.{{e}}.w2.weight", into="{{*m}}.experts.down_proj")   # experts 0..N-1, any N
#   Permute("conv.weight", dims=[1, 0, 2, 3]); Reshape("{{*b}}.gamma", ["C"], source_shape=[1, 1, 1, "C"])
#   Add("head.scale", shape=[6], fill=1.0); Drop("aux.*"); Cast("*.weight", "float16", source_dtype="float32")
#   DropDerived("{{*b}}.relative_position_index"); SetMeta("hyper_parameters.version", "2.0")
# `ckpt-path new NAME --from A --to B --infer` drafts these from schemas/A.json and schemas/B.json.
ops = [
    Rename("OLD.{{p}}", "NEW.{{p}}"),
]
'''


def scaffold_converter(  # noqa: PLR0913 - where, what, the versions, and how to write it
    directory: str | Path,
    name: str,
    source: str,
    target: str,
    *,
    ops: bool = False,
    infer: bool = False,
) -> Path:
    """Write a documented converter file ``NNN_name.py`` for ``source -> target``; return its path.

    With ``infer`` the ops are drafted from ``schemas/<source>.json`` and ``schemas/<target>.json``
    (see :func:`draft_ops`); what the draft could not explain is written as TODO comments.
    """
    root = Path(directory)
    src, tgt = parse_version(source), parse_version(target)
    if src == tgt:
        raise VersionError(target, "source and target are the same version")
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise ConverterFileError(name, "a converter name needs letters or digits")
    root.mkdir(parents=True, exist_ok=True)
    existing, findings = _read_all(root)
    del findings  # a broken neighbour does not stop scaffolding; `check` reports it
    for converter in existing:
        for edge in converter.edges():
            if edge.edge == (src, tgt):
                raise ConverterFileError(converter.origin, f"already converts {src} -> {tgt}")
    numbers = [int(m.group(1)) for p in root.glob("*.py") if (m := re.match(r"(\d+)_", p.name))]
    path = root / f"{(max(numbers) + 1) if numbers else 1:03d}_{slug}.py"
    description = name.replace("_", " ").strip().capitalize().rstrip(".") + "."
    if infer:
        schemas = [_schema_for(root, version) for version in (src, tgt)]
        text = _render_draft(draft_ops(*schemas), description, src, tgt)
    else:
        template = _OPS_TEMPLATE if ops else _CONVERT_TEMPLATE
        text = template.format(description=description, source=src, target=tgt)
    with path.open("x", encoding="utf-8") as handle:
        handle.write(text)
    return path


# -- drafting ops from two layouts (`ckpt-path new NAME --from A --to B --infer`) ---------------

_NUMBER = re.compile(r"0|[1-9][0-9]*")
_LINE = 120
"""The longest line a drafted file writes (the project's line length)."""
_INDEX_NAMES = "ijklmn"
_DIM_SIZES = (7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)
"""Sizes given to the named dimensions of a schema: distinct, so no two names look alike."""
_ORDERS = (
    ("q", "k", "v"),
    ("query", "key", "value"),
    ("wq", "wk", "wv"),
    ("q_proj", "k_proj", "v_proj"),
    ("gate", "up"),
    ("gate_proj", "up_proj"),
    ("w1", "w3"),
    ("w1", "w2", "w3"),
)
"""Orders in which fused parts conventionally come; other parts are put in name order."""
_DERIVED = ("relative_position_index", "attn_mask", "inv_freq", "position_ids", "num_batches_tracked")
"""Names of buffers models usually recompute: a draft suggests DropDerived for them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Draft:
    """Ops drafted from two layouts: what they are, what each covers, and what was left."""

    ops: tuple[tuple[Op, str], ...]
    """Each op with a comment for its line (how many keys it covers, what to check)."""
    todo: tuple[str, ...]
    """Lines saying what the draft could not explain."""
    problems: tuple[str, ...]
    """How the drafted ops, run on the source layout, differ from the target layout (empty: they match)."""


def _layout(schema: Schema, dims: dict[str, int]) -> dict[str, TensorSpec]:
    """One concrete signature of a schema; a named dimension gets the same size in every schema."""
    sig: dict[str, TensorSpec] = {}
    for entry in schema.entries:
        shape = []
        for d in entry.shape or ():
            if isinstance(d, int):
                shape.append(d)
                continue
            if d not in dims:
                n = len(dims)
                dims[d] = _DIM_SIZES[n % len(_DIM_SIZES)] + 64 * (n // len(_DIM_SIZES))
            shape.append(dims[d])
        sig[entry.key.replace("*", "0").replace("?", "0")] = TensorSpec(tuple(shape), entry.dtype or "float32")
    return sig


def _numbers(key: str) -> tuple[str, ...]:
    return tuple(s for s in key.split(".") if _NUMBER.fullmatch(s))


def _similarity(a: str, b: str) -> float:
    segments = difflib.SequenceMatcher(None, a.split("."), b.split("."), autojunk=False).ratio()
    return segments + 0.1 * difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _ordered(parts: Sequence[str]) -> list[str]:
    """Put fused parts in their conventional order (q, k, v; gate, up; w1, w3), else by name."""
    segments = [p.split(".") for p in parts]
    varying = [i for i in range(min(map(len, segments))) if len({s[i] for s in segments}) > 1]
    tokens = [".".join(s[i] for i in varying) for s in segments] if varying else list(parts)
    for order in _ORDERS:
        if set(tokens) <= set(order):
            return [p for _, p in sorted(zip((order.index(t) for t in tokens), parts, strict=True))]
    return sorted(parts)


@dataclass(slots=True)
class _Inference:
    """Concrete ops explaining how layout ``a`` becomes layout ``b``, found kind by kind."""

    a: dict[str, TensorSpec]
    b: dict[str, TensorSpec]
    removed: dict[str, TensorSpec] = field(default_factory=dict)
    added: dict[str, TensorSpec] = field(default_factory=dict)
    kinds: dict[str, list[Op]] = field(default_factory=dict)
    notes: dict[Op, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.removed = {k: v for k, v in self.a.items() if self.b.get(k) != v}
        self.added = {k: v for k, v in self.b.items() if self.a.get(k) != v}
        self.kinds = {kind: [] for kind in ("rename", "stack", "unstack", "concat", "split", "in place")}

    def run(self) -> None:
        self._renames()
        intermediates = self._stacks()
        self._unstacks()
        self._concats(intermediates)
        self._splits()
        self._in_place()

    def _renames(self) -> None:
        by_spec: dict[TensorSpec, list[str]] = {}
        for key, spec in self.added.items():
            by_spec.setdefault(spec, []).append(key)
        scored = sorted(
            (-_similarity(old, new), old, new)
            for old, spec in self.removed.items()
            for new in by_spec.get(spec, ())
            if old != new
        )
        olds: set[str] = set()
        news: set[str] = set()
        for score, old, new in scored:
            if old in olds or new in news or -score < 0.2:  # noqa: PLR2004 - nothing in common: not a rename
                continue
            olds.add(old)
            news.add(new)
            self.kinds["rename"].append(Rename(old, new))
        self._consume(list(olds), list(news))

    def _consume(self, removed: Sequence[str], added: Sequence[str]) -> None:
        for key in removed:
            self.removed.pop(key, None)
        for key in added:
            self.added.pop(key, None)

    @staticmethod
    def _runs(keys: Mapping[str, TensorSpec]) -> dict[str, list[str]]:
        """Keys alike but for their last number, running 0..N-1 (N >= 2): ``pattern with {e}`` -> keys in order."""
        groups: dict[str, dict[int, str]] = {}
        for key in keys:
            segments = key.split(".")
            last = max((i for i, s in enumerate(segments) if _NUMBER.fullmatch(s)), default=None)
            if last is not None:
                pattern = ".".join([*segments[:last], "{e}", *segments[last + 1 :]])
                groups.setdefault(pattern, {})[int(segments[last])] = key
        return {
            pattern: [members[i] for i in range(len(members))]
            for pattern, members in sorted(groups.items())
            if len(members) >= 2  # noqa: PLR2004 - one part is a rename, not a stack
            and sorted(members) == list(range(len(members)))
            and len({keys[k] for k in members.values()}) == 1
        }

    def _best(self, name: str, spec: TensorSpec, pool: Mapping[str, TensorSpec]) -> str | None:
        context = _numbers(name.replace(".{e}", ""))
        fits = [k for k, s in pool.items() if s == spec and _numbers(k) == context]
        return max(fits, key=lambda k: (_similarity(name, k), k), default=None)

    def _stacks(self) -> dict[str, tuple[str, TensorSpec]]:
        """Stack runs of removed keys into added keys; return the runs left, by the name they would stack into."""
        left: dict[str, tuple[str, TensorSpec]] = {}
        for pattern, parts in self._runs(self.removed).items():
            spec = self.removed[parts[0]]
            stacked = TensorSpec((len(parts), *spec.shape), spec.dtype)
            target = self._best(pattern, stacked, self.added)
            if target is not None:
                self.kinds["stack"].append(Stack(pattern, into=target))
                self._consume(parts, [target])
                continue
            name = pattern.replace(".{e}", "") if ".{e}" in pattern else pattern.replace("{e}", "all")
            if name not in self.a and name not in self.b:
                left[name] = (pattern, stacked)
        return left

    def _unstacks(self) -> None:
        for pattern, parts in self._runs(self.added).items():
            spec = self.added[parts[0]]
            source = self._best(pattern, TensorSpec((len(parts), *spec.shape), spec.dtype), self.removed)
            if source is not None:
                self.kinds["unstack"].append(Unstack(source, into=pattern))
                self._consume([source], parts)

    @staticmethod
    def _fit(whole: TensorSpec, pool: Mapping[str, TensorSpec], name: str) -> tuple[list[str], int] | None:
        """Find the 2-4 keys of ``pool`` that concatenate into ``whole`` along one dim, most alike ``name``."""
        best: tuple[float, list[str], int] | None = None
        for dim in range(len(whole.shape)):
            fitting = [
                k
                for k, s in pool.items()
                if s.dtype == whole.dtype
                and len(s.shape) == len(whole.shape)
                and all(a == b for i, (a, b) in enumerate(zip(s.shape, whole.shape, strict=True)) if i != dim)
            ]
            fitting = sorted(fitting, key=lambda k: -_similarity(name, k))[:12]
            for size in range(2, min(4, len(fitting)) + 1):
                for combo in itertools.combinations(fitting, size):
                    sizes = [pool[k].shape[dim] for k in combo]
                    if sum(sizes) != whole.shape[dim]:
                        continue
                    score = sum(_similarity(name, k) for k in combo) / size + 0.5 * (len(set(sizes)) == 1)
                    if best is None or score > best[0]:
                        best = (score, list(combo), dim)
        return None if best is None else (best[1], best[2])

    def _concats(self, intermediates: Mapping[str, tuple[str, TensorSpec]]) -> None:
        for target in sorted(self.added):
            pool = {k: s for k, s in self.removed.items() if _numbers(k) == _numbers(target)}
            pool.update({k: s for k, (_, s) in intermediates.items() if _numbers(k) == _numbers(target)})
            found = self._fit(self.added[target], pool, target)
            if found is None:
                continue
            parts, dim = found
            ordered = _ordered(parts)
            for part in ordered:
                if part in intermediates:
                    pattern = intermediates[part][0]
                    self.kinds["stack"].append(Stack(pattern, into=part))
                    self._consume(self._runs(self.removed).get(pattern, []), [])
            sizes = [pool[p].shape[dim] for p in ordered]
            op = Concat(tuple(ordered), into=target, dim=dim, sizes=None if len(set(sizes)) == 1 else tuple(sizes))
            self.kinds["concat"].append(op)
            self.notes[op] = "the order of the parts is a guess: check it"
            self._consume([p for p in ordered if p in self.removed], [target])
            intermediates = {k: v for k, v in intermediates.items() if k not in ordered}

    def _splits(self) -> None:
        for source in sorted(self.removed):
            pool = {k: s for k, s in self.added.items() if _numbers(k) == _numbers(source)}
            found = self._fit(self.removed[source], pool, source)
            if found is None:
                continue
            parts, dim = found
            ordered = _ordered(parts)
            sizes = [pool[p].shape[dim] for p in ordered]
            op = Split(source, into=tuple(ordered), dim=dim, sizes=None if len(set(sizes)) == 1 else tuple(sizes))
            self.kinds["split"].append(op)
            self.notes[op] = "the order of the parts is a guess: check it"
            self._consume([source], ordered)

    def _in_place(self) -> None:
        for key in sorted(self.removed.keys() & self.added.keys()):
            old, new = self.removed[key], self.added[key]
            op: Op | None = None
            if old.shape == new.shape:
                op = Cast(key, new.dtype, source_dtype=old.dtype)
            elif old.dtype == new.dtype and math.prod(old.shape) == math.prod(new.shape):
                op = _reshaping(key, old.shape, new.shape)
                if isinstance(op, Transpose | Reshape):
                    self.notes[op] = "a guess from the shapes alone: check it"
            if op is not None:
                self.kinds["in place"].append(op)
                self._consume([key], [key])


def _reshaping(key: str, old: tuple[int, ...], new: tuple[int, ...]) -> Op:
    """Return the op that turns shape ``old`` into ``new`` (as many elements): (un)squeeze, transpose, reshape."""
    if [d for d in old if d != 1] == [d for d in new if d != 1]:
        squeezed, unsqueezed = _ones_removed(old, new), _ones_removed(new, old)
        if squeezed is not None:
            return Squeeze(key, squeezed)
        if unsqueezed is not None:
            return Unsqueeze(key, unsqueezed)
    if len(old) == 2 and old == new[::-1]:  # noqa: PLR2004 - a matrix
        return Transpose(key, 0, 1)
    return Reshape(key, new, source_shape=old)


def _ones_removed(longer: tuple[int, ...], shorter: tuple[int, ...]) -> tuple[int, ...] | None:
    """Return the positions of 1s in ``longer`` whose removal gives ``shorter``, or None when there are none."""
    positions: list[int] = []
    matched = 0
    for i, d in enumerate(longer):
        if matched < len(shorter) and d == shorter[matched]:
            matched += 1
        elif d == 1:
            positions.append(i)
        else:
            return None
    return tuple(positions) if matched == len(shorter) and positions else None


# Generalising concrete ops into templates that hold for every model size.

_KEY_FIELDS: dict[type[Op], tuple[str, ...]] = {
    Rename: ("source", "target"),
    Stack: ("key", "into"),
    Unstack: ("key", "into"),
    Concat: ("keys", "into"),
    Split: ("key", "into"),
    Cast: ("pattern",),
    Reshape: ("key",),
    Transpose: ("key",),
    Squeeze: ("key",),
    Unsqueeze: ("key",),
}


def _keys_of(op: Op) -> list[str]:
    keys: list[str] = []
    for name in _KEY_FIELDS[type(op)]:
        value = getattr(op, name)
        keys.extend(value if isinstance(value, tuple) else [value])
    return keys


def _with_keys(op: Op, keys: Sequence[str]) -> Op:
    rest = list(keys)
    changes: dict[str, Any] = {}
    for name in _KEY_FIELDS[type(op)]:
        value = getattr(op, name)
        if isinstance(value, tuple):
            changes[name], rest = tuple(rest[: len(value)]), rest[len(value) :]
        else:
            changes[name], rest = rest[0], rest[1:]
    return dataclasses.replace(op, **changes)


def _numbered(keys: Sequence[str]) -> list[str]:
    """Turn the numeric segments of ``keys`` into placeholders bound by the first key (``{i}``, ``{i+1}``)."""
    first = [(n, int(s)) for n, s in enumerate(s for s in keys[0].split(".") if _NUMBER.fullmatch(s))]
    names = [_INDEX_NAMES[n] if n < len(_INDEX_NAMES) else f"i{n}" for n, _ in first]
    out = []
    for key in keys:
        segments, ordinal = [], 0
        for segment in key.split("."):
            if not _NUMBER.fullmatch(segment):
                segments.append(segment)
                continue
            value = int(segment)
            ranked = sorted(first, key=lambda item: item[0] != ordinal)
            choice = next((f"{{{names[n]}}}" for n, v in ranked if v == value), None)
            choice = choice or next((f"{{{names[n]}+1}}" for n, v in ranked if v == value - 1), None)
            choice = choice or next((f"{{{names[n]}-1}}" for n, v in ranked if v == value + 1), None)
            segments.append(choice or segment)
            ordinal += 1
        out.append(".".join(segments))
    return out


def _starred(keys: Sequence[str]) -> list[list[str]]:
    """Every way to let ``{*p}`` / ``{*s}`` take the common leading / trailing segments of ``keys``."""
    split = [k.split(".") for k in keys]
    shortest = min(map(len, split))
    prefix = 0
    while prefix < shortest - 1 and len({s[prefix] for s in split}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - 1 - prefix and len({s[-1 - suffix] for s in split}) == 1:
        suffix += 1
    return [
        [".".join((["{*p}"] if r else []) + s[r : len(s) - t] + (["{*s}"] if t else [])) for s in split]
        for r in range(prefix + 1)
        for t in range(suffix + 1)
        if r or t
    ]


def _candidates(op: Op) -> list[Op]:
    """Return the concrete op and its generalisations, each a template that may cover more keys."""
    keys = _keys_of(op)
    numbered = _numbered(keys)
    found: list[Op] = [op]
    for variant in [numbered, *_starred(numbered)]:
        try:
            found.append(_with_keys(op, variant))
        except OpError:
            continue
    return list(dict.fromkeys(found))


def _literal_segments(op: Op) -> tuple[int, int]:
    """How specific a template is: segments not swallowed by a star, then (fewer is better) bare numbers."""
    segments = [s for k in _keys_of(op) for s in k.split(".")]
    return (sum(not s.startswith("{*") for s in segments), -sum(bool(_NUMBER.fullmatch(s)) for s in segments))


def _generalize(
    concrete: Sequence[Op], sig: dict[str, TensorSpec]
) -> tuple[list[tuple[Op, int]], dict[str, TensorSpec]]:
    """Cover ``concrete`` (ops on disjoint keys) with as few templates as possible, each checked on ``sig``.

    A template is taken only when it does on ``sig`` exactly what the concrete ops it covers
    do, no more: it covers the most ops first, then keeps the most literal segments.
    """
    deltas = []
    for op in concrete:  # each on the keys it reads alone: concrete renames may only work all at once (a shift)
        reads = getattr(op, _KEY_FIELDS[type(op)][0])
        templates = reads if isinstance(reads, tuple) else (reads,)
        matched = {k for t in templates for k in keys_matching(t, list(sig))}
        own = {k: v for k, v in sig.items() if k in matched}
        after = op.predict(own)
        consumed = {k for k in own if after.get(k) != own[k]}
        deltas.append((consumed, {k: v for k, v in after.items() if own.get(k) != v}))
    covers: dict[Op, set[int]] = {}
    for index, op in enumerate(concrete):
        for candidate in _candidates(op):
            covers.setdefault(candidate, set()).add(index)
    remaining = set(range(len(concrete)))
    chosen: list[tuple[Op, int]] = []
    while remaining:
        ranked = sorted(
            ((cover & remaining, c) for c, cover in covers.items() if cover & remaining),
            key=lambda item: (-len(item[0]), [-n for n in _literal_segments(item[1])], repr(item[1])),
        )
        for cover, candidate in ranked:
            consumed = set().union(*(deltas[i][0] for i in cover))
            expected = {k: v for k, v in sig.items() if k not in consumed}
            for i in cover:
                expected.update(deltas[i][1])
            try:
                got = candidate.predict(sig)
            except OpError:
                continue
            if got == expected:
                chosen.append((candidate, len(cover)))
                sig, remaining = got, remaining - cover
                break
        else:  # not even the concrete op fits any more (an earlier template took its keys)
            remaining.discard(min(remaining))
    return chosen, sig


def _schema_for(root: Path, version: Version) -> Schema:
    path = root / "schemas" / f"{version}.json"
    if not path.is_file():
        raise ConverterFileError(
            display_path(path),
            f"--infer needs the schema of {version}; write it with `ckpt-path schema CKPT --version {version}`",
        )
    return load_schema(path)


def draft_ops(source: Schema, target: Schema) -> Draft:
    """Draft the ops that take a state dict of layout ``source`` to layout ``target``.

    Renames are matched by shape and name similarity, runs of keys ``0..N-1`` are stacked (or
    unstacked), and parts whose sizes add up are concatenated (or split); dtypes, transposes
    and reshapes of a key that keeps its name are found last. Each op is then written as a
    template for every layer, expert and prefix, and checked: the drafted ops, predicted on
    ``source``, must give ``target``. What could not be explained is listed in ``todo``.
    """
    dims: dict[str, int] = {}
    a, b = _layout(source, dims), _layout(target, dims)
    inference = _Inference(a, b)
    inference.run()
    best: tuple[list[tuple[Op, str]], dict[str, TensorSpec]] | None = None
    structural = ["stack", "unstack", "concat", "split", "in place"]
    for order in (["rename", *structural], [*structural, "rename"]):
        sig, ops = dict(a), []
        for kind in order:
            try:
                chosen, sig = _generalize(inference.kinds[kind], sig)
            except OpError:
                continue
            ops += [(op, _comment(op, n, inference.notes)) for op, n in chosen]
        if best is None or _distance(sig, b) < _distance(best[1], b):
            best = (ops, sig)
        if sig == b:
            break
    assert best is not None  # noqa: S101 - the loop runs at least once
    ops, sig = best
    problems = Schema.from_signature(str(target.version), b).check(sig)
    return Draft(ops=tuple(ops), todo=tuple(_todo(inference, source, target)), problems=tuple(problems))


def _distance(sig: Mapping[str, TensorSpec], want: Mapping[str, TensorSpec]) -> int:
    return sum(sig.get(k) != want.get(k) for k in sig.keys() | want.keys())


def _comment(op: Op, covered: int, notes: Mapping[Op, str]) -> str:
    note = next((text for concrete, text in notes.items() if type(concrete) is type(op)), "")
    count = f"{covered} matches" if covered > 1 else ""
    return "; ".join(t for t in (count, note) if t)


def _todo(inference: _Inference, source: Schema, target: Schema) -> list[str]:
    lines = []
    for key, spec in sorted(inference.removed.items()):
        hint = f'DropDerived("{key}")' if key.endswith(_DERIVED) else f'Drop("{key}") or an op above'
        lines.append(f"{key} {spec}: only in {source.version}; {hint}")
    for key, spec in sorted(inference.added.items()):
        lines.append(
            f"{key} {spec}: only in {target.version}; e.g. Add({key!r}, {list(spec.shape)}, dtype={spec.dtype!r})"
        )
    return lines


def _render_draft(draft: Draft, description: str, source: Version, target: Version) -> str:
    ops = [op for op, _ in draft.ops]
    names = sorted({type(op).__name__ for op in ops})
    reversible = bool(ops) and not draft.todo and not draft.problems and invert(ops) is not None
    lines = [
        f'"""{description}"""',
        "",
        f"from ckpt_path.ops import {', '.join(names or ['Rename'])}",
        "",
        f'source = "{source}"',
        f'target = "{target}"',
        "reversible = True"
        if reversible
        else "# reversible = True  # once every op has an inverse and nothing is left to do",
        "",
        f"# Drafted by `ckpt-path new --infer` from schemas/{source}.json and schemas/{target}.json.",
        "# Read every op (an order of fused parts, a transpose guessed from shapes), then run `ckpt-path check`.",
        "ops = [",
    ]
    for op, comment in draft.ops:
        note = f"  # {comment}" if comment else ""
        call = _spelled(op)
        if len(call) + len(note) + 5 <= _LINE:
            lines.append(f"    {call},{note}")
        else:  # one argument a line, as a formatter would
            lines.append(f"    {type(op).__name__}({note}")
            lines += [f"        {argument}," for argument in _arguments(op)]
            lines.append("    ),")
    if not ops:
        lines.append('    Rename("OLD.{p}", "NEW.{p}"),  # TODO: nothing could be drafted')
    lines.append("]")
    if draft.todo:
        lines += ["", "# TODO: not explained by the draft; write ops for these keys:"]
        lines += [f"#   {line}" for line in draft.todo]
    if draft.problems:
        lines += ["", "# TODO: the drafted ops do not give the target layout yet:"]
        lines += [f"#   {line}" for line in draft.problems[:20]]
    return "\n".join(lines) + "\n"


def _python(value: object) -> str:
    """Python source for a literal op argument, with double-quoted strings."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    return repr(value)


def _arguments(op: Op) -> list[str]:
    """Spell the arguments that make ``op`` in a converter file: required ones by position, the rest by name."""
    args = []
    for item in dataclasses.fields(op):
        value = getattr(op, item.name)
        if item.default is dataclasses.MISSING:
            args.append(_python(value))
        elif value != item.default:
            args.append(f"{item.name}={_python(value)}")
    return args


def _spelled(op: Op) -> str:
    return f"{type(op).__name__}({', '.join(_arguments(op))})"
