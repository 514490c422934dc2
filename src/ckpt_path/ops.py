"""Declarative operations on a state dict, with exact shape effects and inverses.

A converter file may say ``ops = [...]`` instead of defining ``convert``. Ops are read from
the file's syntax tree (the file is never imported), so before anything runs ckpt-path knows
which keys each step touches, what shapes it produces, whether it is lossy and what its
inverse is: ``reversible = True`` registers the inverse edge for free.

Keys are *templates*: ``{name}`` matches one dotted segment and binds it, so
``Rename("layers.{i}.attn.{p}", "layers.{i}.self_attn.{p}")`` covers every layer. ``Drop`` and
``Cast`` also take glob patterns (``*``).

This module imports torch only inside :meth:`Op.apply`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

from ckpt_path.errors import OpError
from ckpt_path.shapes import TensorSpec

__all__ = [
    "Add",
    "Cast",
    "Concat",
    "Drop",
    "MoveIndex",
    "Op",
    "OpError",
    "Permute",
    "Rename",
    "Reshape",
    "Split",
]

Signature = dict[str, TensorSpec]

# Casts that keep every value exactly; any other cast between different dtypes is lossy.
_WIDENS = {
    ("float16", "float32"),
    ("float16", "float64"),
    ("bfloat16", "float32"),
    ("bfloat16", "float64"),
    ("float32", "float64"),
    ("int8", "int16"),
    ("int8", "int32"),
    ("int8", "int64"),
    ("int16", "int32"),
    ("int16", "int64"),
    ("int32", "int64"),
    ("uint8", "int16"),
    ("uint8", "int32"),
    ("uint8", "int64"),
    ("bool", "uint8"),
    ("bool", "int8"),
    ("bool", "int32"),
    ("bool", "int64"),
}


@cache
def _template(text: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """Compile a key template: ``{name}`` matches one dotted segment."""
    names: list[str] = []
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", text)
    regex = ""
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name in names:
                regex += f"(?P={name})"
            else:
                names.append(name)
                regex += f"(?P<{name}>[^.]+)"
        else:
            regex += re.escape(part)
    return re.compile(f"^{regex}$"), tuple(names)


def _fill(template: str, binding: Mapping[str, str]) -> str:
    try:
        return template.format_map(dict(binding))
    except KeyError as exc:
        raise OpError(f"template {template!r} uses {{{exc.args[0]}}}, which the source does not bind") from None


def _matches(template: str, keys: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """Every key matching ``template`` (sorted), with its placeholder binding."""
    if _is_glob(template):
        return [(k, {}) for k in sorted(keys) if fnmatch.fnmatchcase(k, template)]
    regex, _ = _template(template)
    found = []
    for key in sorted(keys):
        m = regex.match(key)
        if m:
            found.append((key, m.groupdict()))
    return found


def _require(template: str, keys: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    found = _matches(template, keys)
    if not found:
        raise OpError(f"no key matches {template!r}")
    return found


_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}
"""torch's other names for dtypes; ops use the names shapes report (``float16``, not ``half``)."""


def _dtype_name(name: str, op: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise OpError(f"{op}: {name!r} is not a dtype name such as float16")
    return _ALIASES.get(name, name)


def _torch_dtype(name: str, op: str) -> Any:  # noqa: ANN401 - a torch.dtype
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise OpError(f"{op}: torch has no dtype {name!r}")
    return dtype


def _is_glob(template: str) -> bool:
    return "{" not in template and any(c in template for c in "*?[")


def _no_glob(template: str, op: str) -> None:
    if _is_glob(template):
        raise OpError(f"{op} takes key templates ({{name}} for a segment), not glob patterns: {template!r}")


def _signature(state_dict: Mapping[str, Any]) -> Signature:
    return {k: _spec(v) for k, v in state_dict.items() if _is_tensor(v)}


def _dim(dim: int, ndim: int, key: str) -> int:
    if not -ndim <= dim < ndim:
        raise OpError(f"{key}: dim {dim} is out of range for a tensor of {ndim} dimension(s)")
    return dim % ndim


@dataclass(frozen=True, slots=True)
class Op:
    """Base of every op: a shape effect, an application, and maybe an inverse."""

    lossy: ClassVar[bool] = False

    def predict(self, sig: Signature) -> Signature:
        """Return the signature after the op, from the one before; raise OpError on bad arguments."""
        raise NotImplementedError

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        """Apply the op to a state dict in place."""
        raise NotImplementedError

    def inverse(self) -> Op | None:
        """Return the op that undoes this one exactly, or None when there is none."""
        return None

    def is_lossy(self) -> bool:
        """Whether the op throws information away."""
        return self.lossy


@dataclass(frozen=True, slots=True)
class Rename(Op):
    """Rename every key matching ``source`` to ``target`` (templates with ``{name}``).

    Renaming onto a key that stays, or two keys onto one, is an error, never an overwrite.
    """

    source: str
    target: str

    def __post_init__(self) -> None:
        _no_glob(self.source, "Rename")
        _no_glob(self.target, "Rename")

    def _mapping(self, keys: Sequence[str]) -> dict[str, str]:
        mapping = {old: _fill(self.target, b) for old, b in _require(self.source, keys)}
        staying = set(keys) - mapping.keys()
        seen: dict[str, str] = {}
        for old, new in mapping.items():
            if new in staying:
                raise OpError(f"renaming {old} onto {new}, which already exists")
            if new in seen:
                raise OpError(f"renaming both {seen[new]} and {old} onto {new}")
            seen[new] = old
        return mapping

    def predict(self, sig: Signature) -> Signature:
        mapping = self._mapping(list(sig))
        return {mapping.get(k, k): v for k, v in sig.items()}

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        mapping = self._mapping(list(state_dict))
        moved = {new: state_dict.pop(old) for old, new in mapping.items()}
        state_dict.update(moved)

    def inverse(self) -> Op:
        return Rename(self.target, self.source)


@dataclass(frozen=True, slots=True)
class MoveIndex(Op):
    """Move the slice at ``index`` along ``dim`` to position ``to`` (the others shift up or down)."""

    key: str
    dim: int
    index: int
    to: int

    def _check(self, key: str, spec: TensorSpec) -> int:
        dim = _dim(self.dim, len(spec.shape), key)
        size = spec.shape[dim]
        for name, value in (("index", self.index), ("to", self.to)):
            if not 0 <= value < size:
                raise OpError(f"{key}: {name}={value} is out of range for dim {self.dim} of size {size}")
        return dim

    def predict(self, sig: Signature) -> Signature:
        for key, _ in _require(self.key, list(sig)):
            self._check(key, sig[key])
        return dict(sig)

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))  # every key checked before any changes
        for key, _ in _require(self.key, list(state_dict)):
            tensor = state_dict[key]
            dim = self._check(key, _spec(tensor))
            order = list(range(tensor.shape[dim]))
            order.insert(self.to, order.pop(self.index))
            state_dict[key] = tensor.index_select(dim, torch.tensor(order, device=tensor.device))

    def inverse(self) -> Op:
        return MoveIndex(self.key, dim=self.dim, index=self.to, to=self.index)


@dataclass(frozen=True, slots=True)
class Permute(Op):
    """Permute the dimensions of every key matching ``key``."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if sorted(self.dims) != list(range(len(self.dims))):
            raise OpError(f"Permute dims must be a permutation of 0..{len(self.dims) - 1}, got {self.dims}")

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, _ in _require(self.key, list(sig)):
            spec = sig[key]
            if len(spec.shape) != len(self.dims):
                ndim = len(spec.shape)
                raise OpError(f"{key}: Permute{self.dims} needs {len(self.dims)} dims, the tensor has {ndim}")
            out[key] = TensorSpec(tuple(spec.shape[d] for d in self.dims), spec.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        self.predict(_signature(state_dict))
        for key, _ in _require(self.key, list(state_dict)):
            state_dict[key] = state_dict[key].permute(*self.dims).contiguous()

    def inverse(self) -> Op:
        inverse = [0] * len(self.dims)
        for position, d in enumerate(self.dims):
            inverse[d] = position
        return Permute(self.key, tuple(inverse))


@dataclass(frozen=True, slots=True)
class Reshape(Op):
    """Reshape every key matching ``key``; ``-1`` infers one size.

    The inverse exists when ``source_shape`` (the shape before) is given.
    """

    key: str
    shape: tuple[int, ...]
    source_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.source_shape is not None:
            object.__setattr__(self, "source_shape", tuple(self.source_shape))
        if any(not isinstance(d, int) or d < -1 for d in self.shape):
            raise OpError(f"Reshape {self.key}: sizes must be >= 0, or -1 once to infer one, got {list(self.shape)}")
        if self.source_shape is not None and any(not isinstance(d, int) or d < 0 for d in self.source_shape):
            # source_shape is compared with the tensor's shape and becomes the inverse's shape:
            # a -1 there would match no tensor, so every run would fail.
            raise OpError(
                f"Reshape {self.key}: source_shape must be the exact shape before, sizes >= 0 "
                f"(no -1), got {list(self.source_shape)}",
            )

    def _new_shape(self, key: str, spec: TensorSpec) -> tuple[int, ...]:
        if self.source_shape is not None and spec.shape != self.source_shape:
            raise OpError(f"{key}: expected shape {list(self.source_shape)}, got {list(spec.shape)}")
        numel = math.prod(spec.shape)
        known = math.prod(d for d in self.shape if d != -1)
        if self.shape.count(-1) > 1 or (known == 0 and -1 in self.shape):
            raise OpError(f"{key}: cannot infer the -1 in {list(self.shape)}")
        shape = tuple(numel // known if d == -1 else d for d in self.shape) if known else self.shape
        if math.prod(shape) != numel:
            raise OpError(f"{key}: cannot reshape {list(spec.shape)} ({numel} elements) to {list(self.shape)}")
        return shape

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, _ in _require(self.key, list(sig)):
            out[key] = TensorSpec(self._new_shape(key, sig[key]), sig[key].dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        self.predict(_signature(state_dict))
        for key, _ in _require(self.key, list(state_dict)):
            tensor = state_dict[key]
            state_dict[key] = tensor.reshape(self._new_shape(key, _spec(tensor)))

    def inverse(self) -> Op | None:
        if self.source_shape is None:
            return None
        return Reshape(self.key, self.source_shape, source_shape=None)


def _split_sizes(key: str, total: int, parts: int, sizes: tuple[int, ...] | None) -> tuple[int, ...]:
    if sizes is None:
        if total % parts:
            raise OpError(f"{key}: size {total} does not split into {parts} equal parts; give sizes=[...]")
        return (total // parts,) * parts
    if len(sizes) != parts or sum(sizes) != total:
        raise OpError(f"{key}: sizes {list(sizes)} do not split size {total} into {parts} parts")
    return sizes


@dataclass(frozen=True, slots=True)
class Concat(Op):
    """Concatenate ``keys`` along ``dim`` into the key ``into``, removing the parts.

    Templates bind across the keys: ``Concat(["l.{i}.q", "l.{i}.k", "l.{i}.v"], into="l.{i}.qkv")``.
    With ``sizes=None`` the parts must be equal along ``dim`` (so the inverse Split is exact).
    """

    keys: tuple[str, ...]
    into: str
    dim: int = 0
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(self.sizes))
        if len(self.keys) < 2:  # noqa: PLR2004 - concatenating needs two parts
            raise OpError("Concat needs at least two keys")
        if len(set(self.keys)) != len(self.keys):
            raise OpError(f"Concat names a key twice: {list(self.keys)}")
        for template in (*self.keys, self.into):
            _no_glob(template, "Concat")

    def _groups(self, keys: Sequence[str]) -> list[tuple[list[str], str]]:
        groups = []
        present = set(keys)
        made: dict[str, str] = {}
        for first, binding in _require(self.keys[0], keys):
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
            groups.append((parts, into))
        return groups

    def _result(self, parts: list[str], specs: list[TensorSpec]) -> TensorSpec:
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
        total = sum(sizes)
        if self.sizes is None and len(set(sizes)) > 1:
            raise OpError(
                f"Concat: {', '.join(parts)} differ in size along dim {self.dim} ({list(sizes)}); "
                f"give sizes={list(sizes)} so the inverse Split is exact",
            )
        if self.sizes is not None and self.sizes != sizes:
            raise OpError(
                f"Concat: {', '.join(parts)} have sizes {list(sizes)} along dim {self.dim}, not {list(self.sizes)}"
            )
        shape = list(first.shape)
        shape[dim] = total
        return TensorSpec(tuple(shape), first.dtype)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for parts, into in self._groups(list(sig)):
            result = self._result(parts, [sig[p] for p in parts])
            for p in parts:
                del out[p]
            out[into] = result
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))
        for parts, into in self._groups(list(state_dict)):
            tensors = [state_dict.pop(p) for p in parts]
            state_dict[into] = torch.cat(tensors, dim=self.dim)

    def inverse(self) -> Op:
        return Split(self.into, into=self.keys, dim=self.dim, sizes=self.sizes)


@dataclass(frozen=True, slots=True)
class Split(Op):
    """Split ``key`` along ``dim`` into the keys ``into`` (equal parts when ``sizes`` is None)."""

    key: str
    into: tuple[str, ...]
    dim: int = 0
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "into", tuple(self.into))
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(self.sizes))
        if len(self.into) < 2:  # noqa: PLR2004 - splitting needs two parts
            raise OpError("Split needs at least two target keys")
        if len(set(self.into)) != len(self.into):
            raise OpError(f"Split names a target key twice: {list(self.into)}")
        for template in (self.key, *self.into):
            _no_glob(template, "Split")

    def _groups(self, keys: Sequence[str]) -> list[tuple[str, list[str]]]:
        present = set(keys)
        groups = []
        made: dict[str, str] = {}
        for key, binding in _require(self.key, keys):
            parts = [_fill(t, binding) for t in self.into]
            clash = [p for p in parts if p in present and p != key]
            if clash:
                raise OpError(f"Split {key} onto {', '.join(clash)}, which already exist(s)")
            for part in parts:
                if part in made:
                    raise OpError(f"Split: {made[part]} and {key} would both make {part}")
                made[part] = key
            groups.append((key, parts))
        return groups

    def _sizes(self, key: str, spec: TensorSpec) -> tuple[int, tuple[int, ...]]:
        dim = _dim(self.dim, len(spec.shape), key)
        return dim, _split_sizes(key, spec.shape[dim], len(self.into), self.sizes)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, parts in self._groups(list(sig)):
            spec = out.pop(key)
            dim, sizes = self._sizes(key, spec)
            for part, size in zip(parts, sizes, strict=True):
                shape = list(spec.shape)
                shape[dim] = size
                out[part] = TensorSpec(tuple(shape), spec.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        self.predict(_signature(state_dict))
        for key, parts in self._groups(list(state_dict)):
            tensor = state_dict.pop(key)
            dim, sizes = self._sizes(key, _spec(tensor))
            # clone: each part gets its own storage, so dropping one later frees it.
            for part, piece in zip(parts, tensor.split(list(sizes), dim=dim), strict=True):
                state_dict[part] = piece.clone()

    def inverse(self) -> Op:
        return Concat(self.into, into=self.key, dim=self.dim, sizes=self.sizes)


@dataclass(frozen=True, slots=True)
class Drop(Op):
    """Remove every key matching ``pattern`` (a glob or a template). Lossy; no inverse."""

    pattern: str
    lossy: ClassVar[bool] = True

    def predict(self, sig: Signature) -> Signature:
        gone = {k for k, _ in _require(self.pattern, list(sig))}
        return {k: v for k, v in sig.items() if k not in gone}

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        for key, _ in _require(self.pattern, list(state_dict)):
            del state_dict[key]


@dataclass(frozen=True, slots=True)
class Add(Op):
    """Add a new parameter ``key`` of ``shape`` filled with ``fill`` (its inverse, Drop, is lossy)."""

    key: str
    shape: tuple[int, ...]
    fill: float = 0.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if any(not isinstance(d, int) or d < 0 for d in self.shape):
            raise OpError(f"Add {self.key}: shape must be sizes >= 0, got {list(self.shape)}")
        if "{" in self.key or any(c in self.key for c in "*?["):
            raise OpError(f"Add takes one plain key, not a template: {self.key!r}")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "Add"))

    def predict(self, sig: Signature) -> Signature:
        if self.key in sig:
            raise OpError(f"Add {self.key}: the key already exists")
        return {**sig, self.key: TensorSpec(self.shape, self.dtype)}

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        if self.key in state_dict:
            raise OpError(f"Add {self.key}: the key already exists")
        state_dict[self.key] = torch.full(self.shape, self.fill, dtype=_torch_dtype(self.dtype, "Add"))

    def inverse(self) -> Op:
        return Drop(self.key)


@dataclass(frozen=True, slots=True)
class Cast(Op):
    """Cast every key matching ``pattern`` to ``dtype``.

    Lossy unless ``source_dtype`` is given and ``dtype`` holds every value of it (a widening
    cast, e.g. float16 -> float32); the inverse exists when ``source_dtype`` is given.
    """

    pattern: str
    dtype: str
    source_dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "Cast"))
        if self.source_dtype is not None:
            object.__setattr__(self, "source_dtype", _dtype_name(self.source_dtype, "Cast"))

    def is_lossy(self) -> bool:
        return self.source_dtype is None or (
            self.source_dtype != self.dtype and (self.source_dtype, self.dtype) not in _WIDENS
        )

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, _ in _require(self.pattern, list(sig)):
            if self.source_dtype is not None and sig[key].dtype != self.source_dtype:
                raise OpError(f"{key}: expected dtype {self.source_dtype}, got {sig[key].dtype}")
            out[key] = TensorSpec(sig[key].shape, self.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        target = _torch_dtype(self.dtype, "Cast")
        self.predict(_signature(state_dict))
        for key, _ in _require(self.pattern, list(state_dict)):
            state_dict[key] = state_dict[key].to(target)

    def inverse(self) -> Op | None:
        if self.source_dtype is None:
            return None
        return Cast(self.pattern, self.source_dtype, source_dtype=self.dtype)


def _is_tensor(value: object) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "numel")


def _spec(tensor: Any) -> TensorSpec:  # noqa: ANN401 - a torch.Tensor
    return TensorSpec(tuple(int(d) for d in tensor.shape), str(tensor.dtype).removeprefix("torch."))


OPS: dict[str, type[Op]] = {
    cls.__name__: cls for cls in (Rename, MoveIndex, Permute, Reshape, Concat, Split, Drop, Add, Cast)
}
"""Every op by name, for reading ``ops = [...]`` from a converter file's syntax tree."""


def predict(ops: Sequence[Op], sig: Signature) -> Signature:
    """Apply the shape effects of ``ops`` in order."""
    for op in ops:
        sig = op.predict(sig)
    return sig


def invert(ops: Sequence[Op]) -> tuple[Op, ...] | None:
    """Return the ops that undo ``ops`` (in reverse order), or None when one has no inverse."""
    inverses = [op.inverse() for op in reversed(ops)]
    if any(op is None for op in inverses):
        return None
    return tuple(op for op in inverses if op is not None)
