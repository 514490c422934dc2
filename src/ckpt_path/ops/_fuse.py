"""Ops that fuse several keys into one tensor and divide one back into several: Concat, Split, Stack, Unstack.

Each pair is the other's inverse, so both halves live here.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from ckpt_path.errors import OpError
from ckpt_path.ops._base import Op, Signature, _dim, _signature, _times
from ckpt_path.ops._sizes import Size, _check_sizes, _resolve, _show, _split_sizes
from ckpt_path.ops._templates import _INDEX, _fill, _index_name, _no_glob
from ckpt_path.shapes import TensorSpec


@dataclass(frozen=True, slots=True, repr=False)
class Concat(Op):
    """Concatenate ``keys`` along ``dim`` into the key ``into``, removing the parts.

    Templates bind across the keys: ``Concat(["l.{i}.q", "l.{i}.k", "l.{i}.v"], into="l.{i}.qkv")``.
    With ``sizes=None`` the parts must be equal along ``dim`` (so the inverse Split is exact);
    ``sizes`` may name another key's size (``"l.{i}.q_norm.weight[0]"``) and use ``-1`` for
    parts of equal size that take the rest.
    """

    keys: tuple[str, ...]
    into: str
    dim: int = 0
    sizes: tuple[Size, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys) if isinstance(self.keys, list | tuple) else (self.keys,))
        if len(self.keys) < 2:  # noqa: PLR2004 - concatenating needs two parts
            raise OpError("Concat needs at least two keys")
        if len(set(self.keys)) != len(self.keys):
            raise OpError(f"Concat names a key twice: {list(self.keys)}")
        for template in (*self.keys, self.into):
            _no_glob(template, "Concat")
        object.__setattr__(self, "sizes", _check_sizes(self.sizes, len(self.keys), "Concat"))

    def _bound_groups(self, keys: Sequence[str]) -> list[tuple[list[str], str, dict[str, str]]]:
        groups = []
        present = set(keys)
        made: dict[str, str] = {}
        for first, binding in self._find(self.keys[0], keys):
            parts = [first] + [_fill(t, binding) for t in self.keys[1:]]
            missing = [p for p in parts if p not in present]
            if missing:
                raise OpError(f"Concat: {', '.join(missing)} missing (needed with {first})")
            into = _fill(self.into, binding)
            if into in present and into not in parts:
                raise OpError(f"Concat into {into}, which already exists")
            if into in made:
                raise OpError(f"Concat: {made[into]} and {first} would both become {into}")
            made[into] = first
            groups.append((parts, into, binding))
        return groups

    def groups(self, keys: Sequence[str]) -> list[tuple[list[str], str]]:
        """Return, per concatenation, its parts (in order) and the key they become."""
        return [(parts, into) for parts, into, _ in self._bound_groups(keys)]

    def _result(self, parts: list[str], binding: Mapping[str, str], sig: Mapping[str, TensorSpec]) -> TensorSpec:
        specs = [sig[p] for p in parts]
        first = specs[0]
        dim = _dim(self.dim, len(first.shape), parts[0])
        for key, spec in zip(parts[1:], specs[1:], strict=True):
            if (
                len(spec.shape) != len(first.shape)
                or spec.dtype != first.dtype
                or any(a != b for i, (a, b) in enumerate(zip(spec.shape, first.shape, strict=True)) if i != dim)
            ):
                raise OpError(f"Concat: {key} {spec} does not fit {parts[0]} {first} along dim {self.dim}")
        sizes = tuple(s.shape[dim] for s in specs)
        if self.sizes is None and len(set(sizes)) > 1:
            raise OpError(
                f"Concat: {', '.join(parts)} differ in size along dim {self.dim} ({list(sizes)}); "
                f"give sizes={list(sizes)} so the inverse Split is exact",
            )
        if self.sizes is not None:
            expected = [None if e == -1 else _resolve(e, parts[0], binding, sig, {}) for e in self.sizes]
            rest = {s for s, e in zip(sizes, expected, strict=True) if e is None}
            if len(rest) > 1 or any(e is not None and e != s for s, e in zip(sizes, expected, strict=True)):
                have = f"{', '.join(parts)} have sizes {list(sizes)}"
                raise OpError(f"Concat: {have} along dim {self.dim}, not {_show(self.sizes)}")
        shape = list(first.shape)
        shape[dim] = sum(sizes)
        return TensorSpec(tuple(shape), first.dtype)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for parts, into, binding in self._bound_groups(list(sig)):
            result = self._result(parts, binding, sig)
            for p in parts:
                del out[p]
            out[into] = result
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))
        for parts, into in self.groups(list(state_dict)):
            tensors = [state_dict.pop(p) for p in parts]
            state_dict[into] = torch.cat(tensors, dim=self.dim)

    def inverse(self) -> Op:
        return Split(self.into, into=self.keys, dim=self.dim, sizes=self.sizes, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(list(sig))
        if not groups:
            return f"concatenated nothing: {self.keys[0]}{self._optional_note()}"
        if len(groups) == 1:
            parts, into = groups[0]
            return f"concatenated {', '.join(parts)} into {into} along dim {self.dim}"
        return f"concatenated {len(self.keys)} into {self.into} along dim {self.dim}{_times(len(groups))}"


@dataclass(frozen=True, slots=True, repr=False)
class Split(Op):
    """Split ``key`` along ``dim`` into the keys ``into`` (equal parts when ``sizes`` is None).

    ``sizes`` may name another key's size (``"l.{i}.q_norm.weight[0]"``) and use ``-1`` for
    parts of equal size that share the rest: ``sizes=["{*a}.o_proj.weight[1]", -1, -1]``
    splits a grouped-query qkv whatever the head counts.
    """

    key: str
    into: tuple[str, ...]
    dim: int = 0
    sizes: tuple[Size, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "into", tuple(self.into) if isinstance(self.into, list | tuple) else (self.into,))
        if len(self.into) < 2:  # noqa: PLR2004 - splitting needs two parts
            raise OpError("Split needs at least two target keys")
        if len(set(self.into)) != len(self.into):
            raise OpError(f"Split names a target key twice: {list(self.into)}")
        for template in (self.key, *self.into):
            _no_glob(template, "Split")
        object.__setattr__(self, "sizes", _check_sizes(self.sizes, len(self.into), "Split"))

    def _bound_groups(self, keys: Sequence[str]) -> list[tuple[str, list[str], dict[str, str]]]:
        present = set(keys)
        groups = []
        made: dict[str, str] = {}
        for key, binding in self._find(self.key, keys):
            parts = [_fill(t, binding) for t in self.into]
            clash = [p for p in parts if p in present and p != key]
            if clash:
                raise OpError(f"Split {key} onto {', '.join(clash)}, which already exist(s)")
            for part in parts:
                if part in made:
                    raise OpError(f"Split: {made[part]} and {key} would both make {part}")
                made[part] = key
            groups.append((key, parts, binding))
        return groups

    def groups(self, keys: Sequence[str]) -> list[tuple[str, list[str]]]:
        """Return, per split, the key split and the keys it becomes (in order)."""
        return [(key, parts) for key, parts, _ in self._bound_groups(keys)]

    def _sizes(
        self, key: str, binding: Mapping[str, str], sig: Mapping[str, TensorSpec]
    ) -> tuple[int, tuple[int, ...]]:
        spec = sig[key]
        dim = _dim(self.dim, len(spec.shape), key)
        return dim, _split_sizes(key, spec.shape[dim], len(self.into), self.sizes, binding, sig)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, parts, binding in self._bound_groups(list(sig)):
            spec = out.pop(key)
            dim, sizes = self._sizes(key, binding, sig)
            for part, size in zip(parts, sizes, strict=True):
                shape = list(spec.shape)
                shape[dim] = size
                out[part] = TensorSpec(tuple(shape), spec.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        sig = _signature(state_dict)
        self.predict(sig)
        for key, parts, binding in self._bound_groups(list(state_dict)):
            dim, sizes = self._sizes(key, binding, sig)
            tensor = state_dict.pop(key)
            # clone: each part gets its own storage, so dropping one later frees it.
            for part, piece in zip(parts, tensor.split(list(sizes), dim=dim), strict=True):
                state_dict[part] = piece.clone()

    def inverse(self) -> Op:
        return Concat(self.into, into=self.key, dim=self.dim, sizes=self.sizes, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(list(sig))
        if not groups:
            return f"split nothing: {self.key}{self._optional_note()}"
        if len(groups) == 1:
            key, parts = groups[0]
            return f"split {key} into {', '.join(parts)} along dim {self.dim}"
        return f"split {self.key} into {len(self.into)} along dim {self.dim}{_times(len(groups))}"


@dataclass(frozen=True, slots=True, repr=False)
class Stack(Op):
    """Stack every binding of an index placeholder into one tensor, along a new dimension ``dim``.

    ``key`` has exactly one placeholder that ``into`` lacks: the index, whose bindings must be
    exactly ``0..N-1`` per target (in numeric order, never by text: ``10`` after ``9``). So
    ``Stack("{*m}.experts.{e}.w2.weight", into="{*m}.experts.down_proj")`` fuses the experts of
    every layer, for 4, 8 or 64 experts alike. Its inverse is :class:`Unstack`.
    """

    key: str
    into: str
    dim: int = 0

    def __post_init__(self) -> None:
        _no_glob(self.key, "Stack")
        _no_glob(self.into, "Stack")
        _index_name(self.key, self.into, "Stack")

    def groups(self, keys: Sequence[str]) -> list[tuple[list[str], str]]:
        """Return, per target key, the keys stacked into it in index order."""
        index = _index_name(self.key, self.into, "Stack")
        by_into: dict[str, list[tuple[int, str]]] = {}
        for key, binding in self._find(self.key, keys):
            raw = binding[index]
            if not _INDEX.fullmatch(raw):
                raise OpError(f"Stack: {key}: {{{index}}} is {raw!r}, not an index 0, 1, 2, ...")
            by_into.setdefault(_fill(self.into, binding), []).append((int(raw), key))
        present = set(keys)
        groups = []
        for into, members in sorted(by_into.items()):
            members.sort()
            indices = [i for i, _ in members]
            if indices != list(range(len(indices))):
                missing = sorted(set(range(indices[-1] + 1)) - set(indices))
                raise OpError(
                    f"Stack into {into}: {{{index}}} must run 0..N-1 without gaps, but "
                    f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} missing "
                    f"(found {', '.join(map(str, indices))})",
                )
            parts = [key for _, key in members]
            if into in present and into not in parts:
                raise OpError(f"Stack into {into}, which already exists")
            groups.append((parts, into))
        return groups

    def _result(self, parts: list[str], into: str, sig: Mapping[str, TensorSpec]) -> TensorSpec:
        first = sig[parts[0]]
        for part in parts[1:]:
            if sig[part] != first:
                raise OpError(f"Stack into {into}: {part} is {sig[part]}, {parts[0]} is {first}; parts must be alike")
        dim = _dim(self.dim, len(first.shape) + 1, into)
        shape = list(first.shape)
        shape.insert(dim, len(parts))
        return TensorSpec(tuple(shape), first.dtype)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for parts, into in self.groups(list(sig)):
            result = self._result(parts, into, sig)
            for part in parts:
                del out[part]
            out[into] = result
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        sig = _signature(state_dict)
        self.predict(sig)
        for parts, into in self.groups(list(state_dict)):
            dim = _dim(self.dim, len(sig[parts[0]].shape) + 1, into)
            tensors = [state_dict.pop(p) for p in parts]
            state_dict[into] = torch.stack(tensors, dim=dim)

    def inverse(self) -> Op:
        return Unstack(self.into, into=self.key, dim=self.dim, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(list(sig))
        if not groups:
            return f"stacked nothing: {self.key}{self._optional_note()}"
        counts = sorted({len(parts) for parts, _ in groups})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        into = groups[0][1] if len(groups) == 1 else self.into
        return f"stacked {n} into {into} along new dim {self.dim}{_times(len(groups))}: {self.key}"


@dataclass(frozen=True, slots=True, repr=False)
class Unstack(Op):
    """Unstack ``key`` along ``dim`` into one key per index: ``into`` has one placeholder ``key`` lacks.

    ``Unstack("{*m}.experts.down_proj", into="{*m}.experts.{e}.w2.weight")`` makes experts
    ``0..N-1`` from a tensor of ``N`` along ``dim``. Its inverse is :class:`Stack`.
    """

    key: str
    into: str
    dim: int = 0

    def __post_init__(self) -> None:
        _no_glob(self.key, "Unstack")
        _no_glob(self.into, "Unstack")
        _index_name(self.into, self.key, "Unstack")

    def groups(self, sig: Mapping[str, TensorSpec]) -> list[tuple[str, list[str]]]:
        """Return, per key unstacked, the keys it becomes in index order (sizes come from ``sig``)."""
        index = _index_name(self.into, self.key, "Unstack")
        present = set(sig)
        made: dict[str, str] = {}
        groups = []
        for key, binding in self._find(self.key, list(sig)):
            shape = sig[key].shape
            dim = _dim(self.dim, len(shape), key)
            if shape[dim] == 0:
                raise OpError(f"{key}: dim {self.dim} has size 0, nothing to unstack")
            parts = [_fill(self.into, {**binding, index: str(n)}) for n in range(shape[dim])]
            for part in parts:
                if part in present and part != key:
                    raise OpError(f"Unstack {key} onto {part}, which already exists")
                if part in made:
                    raise OpError(f"Unstack: {made[part]} and {key} would both make {part}")
                made[part] = key
            groups.append((key, parts))
        return groups

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, parts in self.groups(sig):
            spec = out.pop(key)
            dim = _dim(self.dim, len(spec.shape), key)
            shape = spec.shape[:dim] + spec.shape[dim + 1 :]
            out.update({part: TensorSpec(shape, spec.dtype) for part in parts})
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        sig = _signature(state_dict)
        self.predict(sig)
        for key, parts in self.groups(sig):
            dim = _dim(self.dim, len(sig[key].shape), key)
            tensor = state_dict.pop(key)
            # clone: each part gets its own storage, so dropping one later frees it.
            for part, piece in zip(parts, tensor.unbind(dim), strict=True):
                state_dict[part] = piece.clone(memory_format=torch.contiguous_format)

    def inverse(self) -> Op:
        return Stack(self.into, into=self.key, dim=self.dim, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(sig)
        if not groups:
            return f"unstacked nothing: {self.key}{self._optional_note()}"
        counts = sorted({len(parts) for _, parts in groups})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        key = groups[0][0] if len(groups) == 1 else self.key
        return f"unstacked {key} into {n} along dim {self.dim}{_times(len(groups))}: {self.into}"
