"""Draft the ops that take one schema's layout to another's (for ``ckpt-path new --infer``).

:func:`draft_ops` matches the keys of two schemas kind by kind (renames, stacks and unstacks,
concatenations and splits, then dtypes and shapes of keys that keep their name), writes each
op as a template that holds for every layer, expert and prefix, and checks the result: the
drafted ops, predicted on the source layout, must give the target layout. It returns a
:class:`Draft`, plain values with no I/O; :mod:`ckpt_path.scaffold` writes it as a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    predict,
)
from ckpt_path.shapes import Schema, TensorSpec

__all__ = ["Draft", "draft_ops", "why_not_reversible"]

_NUMBER = re.compile(r"0|[1-9][0-9]*")
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
    do, no more: it covers the most ops first, then keeps the most literal segments. Among
    templates that cover as many ops, one whose inverse undoes it wins: with one layer,
    ``Rename("mlp.{i}.bias", "mlp.bias")`` renames what ``Rename("mlp.0.bias", "mlp.bias")`` does,
    but its target drops ``{i}``, so the way back cannot say which layer; the literal op is kept
    and ``reversible = True`` stays possible. A one-way template that covers more (every layer)
    is still taken over literal ops for some of them; the file is then not reversible.
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
        pick = _best_fit(ranked, deltas, sig, concrete)
        if pick is None:  # not even the concrete op fits any more (an earlier template took its keys)
            remaining.discard(min(remaining))
            continue
        cover, candidate, sig = pick
        chosen.append((candidate, len(cover)))
        remaining -= cover
    return chosen, sig


_Fit = tuple[set[int], Op, dict[str, TensorSpec]]
"""The concrete ops a template covers, the template, and the signature after it."""


def _best_fit(
    ranked: Sequence[tuple[set[int], Op]],
    deltas: Sequence[tuple[set[str], dict[str, TensorSpec]]],
    sig: dict[str, TensorSpec],
    concrete: Sequence[Op],
) -> _Fit | None:
    """Return the first of ``ranked`` that does exactly what the ops it covers do (see :func:`_generalize`)."""
    one_way: _Fit | None = None  # fits, but its inverse does not undo it
    for cover, candidate in ranked:
        consumed = set().union(*(deltas[i][0] for i in cover))
        expected = {k: v for k, v in sig.items() if k not in consumed}
        for i in cover:
            expected.update(deltas[i][1])
        try:
            got = candidate.predict(sig)
        except OpError:
            continue
        if got != expected:
            continue
        if candidate in concrete or _undoes(candidate, got, sig):
            # a one-way template that covers more (every layer) beats a literal op for one layer
            return one_way if one_way is not None and len(one_way[0]) > len(cover) else (cover, candidate, got)
        one_way = one_way or (cover, candidate, got)
    return one_way


def _undoes(op: Op, after: dict[str, TensorSpec], before: dict[str, TensorSpec]) -> bool:
    """Whether ``op``'s inverse, predicted on ``after``, gives ``before`` back (True for an op with no inverse)."""
    inverse = op.inverse()
    if inverse is None:
        return True
    try:
        return inverse.predict(after) == before
    except OpError:
        return False


def why_not_reversible(ops: Sequence[Op], source: Schema, target: Schema) -> str:
    """Say why ``ops`` (from ``source`` to ``target``) cannot be registered ``reversible``; empty when they can.

    They can when every op has an inverse and the inverse, predicted on the layout of
    ``target``, gives the layout of ``source`` back: what ``ckpt-path check`` runs as the round trip.
    """
    inverse = invert(ops)
    if inverse is None:
        index, op = next((n, op) for n, op in enumerate(ops, 1) if op.inverse() is None)
        return f"op {index} ({type(op).__name__}) has no inverse"
    dims: dict[str, int] = {}
    a, b = _layout(source, dims), _layout(target, dims)
    try:
        back = predict(inverse, b)
    except OpError as exc:
        return f"the inverse, predicted on the {target.version} layout, fails: {exc}"
    problems = Schema.from_signature(str(source.version), a).check(back)
    if problems:
        return f"the inverse, predicted on the {target.version} layout, does not give {source.version}: {problems[0]}"
    return ""


def draft_ops(source: Schema, target: Schema) -> Draft:
    """Draft the ops that take a state dict of layout ``source`` to layout ``target``.

    Renames are matched by shape and name similarity, runs of keys ``0..N-1`` are stacked (or
    unstacked), and parts whose sizes add up are concatenated (or split); dtypes, transposes
    and reshapes of a key that keeps its name are found last. Each op is then written as a
    template for every layer, expert and prefix, and checked: the drafted ops, predicted on
    ``source``, must give ``target``. What could not be explained is listed in ``todo``.

    A change is easier to explain in one direction (fusing experts is a Stack and a Concat; the
    way back must guess where to split). When the direct draft leaves something unexplained and
    the draft from ``target`` to ``source`` explains everything, the result is that draft's
    inverse, checked the same way.
    """
    direct = _draft(source, target)
    if not direct.todo and not direct.problems:
        return direct
    backward = _draft(target, source)
    inverse = invert([op for op, _ in backward.ops]) if not backward.todo and not backward.problems else None
    if inverse is None:
        return direct
    dims: dict[str, int] = {}
    a, b = _layout(source, dims), _layout(target, dims)
    try:
        problems = Schema.from_signature(str(target.version), b).check(predict(inverse, a))
    except OpError:
        return direct
    if problems:
        return direct
    said = tuple(
        (op, "; ".join(t for t in (f"undoes a drafted {type(done).__name__}", comment) if t))  # its hints kept
        for (done, comment), op in zip(reversed(backward.ops), inverse, strict=True)
    )
    return Draft(ops=said, todo=(), problems=())


def _draft(source: Schema, target: Schema) -> Draft:
    """Draft the ops from ``source`` to ``target`` in that direction only (see :func:`draft_ops`)."""
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
