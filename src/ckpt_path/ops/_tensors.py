"""Ops that change each matching key's tensor on its own, in place: layout, shape and dtype.

MoveIndex, Permute, Transpose, Reshape, Squeeze, Unsqueeze and Cast: the key keeps its name,
its tensor gets a new layout, shape or dtype, and no other key is read or written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from ckpt_path.errors import OpError
from ckpt_path.ops._base import Op, Signature, _count, _dim, _dtype_name, _ints, _signature, _spec, _torch_dtype
from ckpt_path.ops._sizes import _NAME, Size, _check_size, _resolve, _show
from ckpt_path.ops._templates import _check_key, _matches
from ckpt_path.shapes import TensorSpec

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


@dataclass(frozen=True, slots=True, repr=False)
class MoveIndex(Op):
    """Move the slice at ``index`` along ``dim`` to position ``to`` (the others shift up or down)."""

    key: str
    dim: int
    index: int
    to: int

    def __post_init__(self) -> None:
        _check_key(self.key, "MoveIndex")

    def _check(self, key: str, spec: TensorSpec) -> int:
        dim = _dim(self.dim, len(spec.shape), key)
        size = spec.shape[dim]
        for name, value in (("index", self.index), ("to", self.to)):
            if not 0 <= value < size:
                raise OpError(f"{key}: {name}={value} is out of range for dim {self.dim} of size {size}")
        return dim

    def predict(self, sig: Signature) -> Signature:
        for key, _ in self._find(self.key, list(sig)):
            self._check(key, sig[key])
        return dict(sig)

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))  # every key checked before any changes
        for key, _ in self._find(self.key, list(state_dict)):
            tensor = state_dict[key]
            dim = self._check(key, _spec(tensor))
            order = list(range(tensor.shape[dim]))
            order.insert(self.to, order.pop(self.index))
            state_dict[key] = tensor.index_select(dim, torch.tensor(order, device=tensor.device))

    def inverse(self) -> Op:
        return MoveIndex(self.key, dim=self.dim, index=self.to, to=self.index, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        found = self._find(self.key, list(sig))
        if not found:
            return f"moved nothing: {self.key}{self._optional_note()}"
        where = found[0][0] if len(found) == 1 else f"{_count(len(found))}: {self.key}"
        return f"moved index {self.index} → {self.to} of dim {self.dim} in {where}"


class _EachKey(Op):
    """An op that maps each key matching ``key`` to a new tensor of its own (shape ops, casts)."""

    __slots__ = ()
    key: str

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        raise NotImplementedError

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:
        raise NotImplementedError

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, binding in self._find(self.key, list(sig)):
            out[key] = self._new(key, sig[key], binding, sig)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        sig = _signature(state_dict)
        after = self.predict(sig)  # every key checked before any changes
        for key, _ in self._find(self.key, list(state_dict)):
            state_dict[key] = self._apply_one(state_dict[key], after[key])

    def _changed(self, sig: Signature) -> list[str]:
        return [k for k, _ in self._find(self.key, list(sig))]

    def _where(self, sig: Signature, verb: str) -> str:
        found = self._changed(sig)
        if not found:
            return f"{verb} nothing: {self.key}{self._optional_note()}"
        if len(found) == 1:
            key = found[0]
            after = self._new(key, sig[key], self._find(self.key, [key])[0][1], sig)
            return f"{verb} {key} {_show(sig[key].shape)} → {_show(after.shape)}"
        return f"{verb} {len(found)}: {self.key}"


@dataclass(frozen=True, slots=True, repr=False)
class Permute(_EachKey):
    """Permute the dimensions of every key matching ``key``."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if sorted(self.dims) != list(range(len(self.dims))):
            raise OpError(f"Permute dims must be a permutation of 0..{len(self.dims) - 1}, got {self.dims}")
        _check_key(self.key, "Permute")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        if len(spec.shape) != len(self.dims):
            ndim = len(spec.shape)
            raise OpError(f"{key}: Permute{self.dims} needs {len(self.dims)} dims, the tensor has {ndim}")
        return TensorSpec(tuple(spec.shape[d] for d in self.dims), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:
        del spec
        return tensor.permute(*self.dims).contiguous()

    def inverse(self) -> Op:
        inverse = [0] * len(self.dims)
        for position, d in enumerate(self.dims):
            inverse[d] = position
        return Permute(self.key, tuple(inverse), optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, f"permuted dims {self.dims} of")


@dataclass(frozen=True, slots=True, repr=False)
class Transpose(_EachKey):
    """Swap two dimensions of every key matching ``key``, whatever its number of dimensions; its own inverse."""

    key: str
    dim0: int = 0
    dim1: int = 1

    def __post_init__(self) -> None:
        _ints((self.dim0, self.dim1), "Transpose", "dim0 and dim1")
        _check_key(self.key, "Transpose")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        a, b = _dim(self.dim0, len(spec.shape), key), _dim(self.dim1, len(spec.shape), key)
        shape = list(spec.shape)
        shape[a], shape[b] = shape[b], shape[a]
        return TensorSpec(tuple(shape), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:
        del spec
        return tensor.transpose(self.dim0, self.dim1).contiguous()

    def inverse(self) -> Op:
        return Transpose(self.key, self.dim0, self.dim1, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, f"transposed dims {self.dim0} and {self.dim1} of")


@dataclass(frozen=True, slots=True, repr=False)
class Reshape(_EachKey):
    """Reshape every key matching ``key``; ``-1`` infers one size.

    Sizes may be numbers, names bound by ``source_shape`` (``Reshape(k, ["C"], source_shape=[1,
    1, 1, "C"])``) or another key's size (``"{*b}.norm.weight[0]"``, filled with the key's
    binding), so one op fits every stage. The inverse exists when ``source_shape`` (the shape
    before) is given and every name in it can be read back from the new shape.
    """

    key: str
    shape: tuple[Size, ...]
    source_shape: tuple[Size, ...] | None = None

    def __post_init__(self) -> None:
        shape = self.shape if isinstance(self.shape, list | tuple) else (self.shape,)
        object.__setattr__(self, "shape", tuple(shape))
        what = f"Reshape {self.key}"
        if any(isinstance(d, int) and not isinstance(d, bool) and d < -1 for d in self.shape):
            raise OpError(f"{what}: sizes must be >= 0, or -1 once to infer one, got {_show(self.shape)}")
        for entry in self.shape:
            _check_size(entry, what, infer=True, names=True)
        if self.source_shape is not None:
            source = self.source_shape if isinstance(self.source_shape, list | tuple) else (self.source_shape,)
            object.__setattr__(self, "source_shape", tuple(source))
            if any(isinstance(d, int) and not isinstance(d, bool) and d < 0 for d in source):
                # source_shape is compared with the tensor's shape and becomes the inverse's shape:
                # a -1 there would match no tensor, so every run would fail.
                raise OpError(
                    f"{what}: source_shape must be the exact shape before, sizes >= 0 "
                    f"(no -1; name a size instead, e.g. 'C'), got {_show(source)}",
                )
            for entry in source:
                _check_size(entry, what, infer=False, names=True)
        named = {d for d in self.shape if isinstance(d, str) and _NAME.fullmatch(d)}
        unbound = named - set(self.source_shape or ())
        if unbound:
            raise OpError(f"{what}: the size {min(unbound)!r} is not bound; name it in source_shape")
        _check_key(self.key, "Reshape")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        bound: dict[str, int] = {}
        if self.source_shape is not None:
            mismatch = OpError(f"{key}: expected shape {_show(self.source_shape)}, got {list(spec.shape)}")
            if len(self.source_shape) != len(spec.shape):
                raise mismatch
            for want, got in zip(self.source_shape, spec.shape, strict=True):
                if isinstance(want, str) and _NAME.fullmatch(want):
                    if bound.setdefault(want, got) != got:
                        raise mismatch
                elif _resolve(want, key, binding, sig, bound) != got:
                    raise mismatch
        shape = tuple(-1 if d == -1 else _resolve(d, key, binding, sig, bound) for d in self.shape)
        numel = math.prod(spec.shape)
        known = math.prod(d for d in shape if d != -1)
        if shape.count(-1) > 1 or (known == 0 and -1 in shape):
            raise OpError(f"{key}: cannot infer the -1 in {_show(self.shape)}")
        if known:
            shape = tuple(numel // known if d == -1 else d for d in shape)
        if math.prod(shape) != numel:
            raise OpError(f"{key}: cannot reshape {list(spec.shape)} ({numel} elements) to {_show(self.shape)}")
        return TensorSpec(shape, spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:
        return tensor.reshape(spec.shape)

    def inverse(self) -> Op | None:
        if self.source_shape is None:
            return None
        if all(isinstance(d, int) for d in self.source_shape):
            return Reshape(self.key, self.source_shape, source_shape=None, optional=self.optional)
        rest = [f"_{i}" for i, d in enumerate(self.shape) if d == -1]
        source = tuple(f"_{i}" if d == -1 else d for i, d in enumerate(self.shape))
        names = {d for d in source if isinstance(d, str) and _NAME.fullmatch(d)} - set(rest)
        unknown = [d for d in self.source_shape if isinstance(d, str) and _NAME.fullmatch(d) and d not in names]
        if len(unknown) > 1:
            return None
        shape = tuple(-1 if d in unknown else d for d in self.source_shape)
        return Reshape(self.key, shape, source_shape=source, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, "reshaped")


@dataclass(frozen=True, slots=True, repr=False)
class Squeeze(_EachKey):
    """Remove dimensions of size 1 (``dims``, positions before) from every key matching ``key``."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", _ints(self.dims, "Squeeze", "dims"))
        _check_key(self.key, "Squeeze")

    def _positions(self, key: str, ndim: int) -> list[int]:
        positions = sorted({_dim(d, ndim, key) for d in self.dims})
        if len(positions) != len(self.dims):
            raise OpError(f"{key}: Squeeze dims {list(self.dims)} name a dimension twice")
        return positions

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        positions = self._positions(key, len(spec.shape))
        for d in positions:
            if spec.shape[d] != 1:
                raise OpError(f"{key}: dim {d} of {list(spec.shape)} has size {spec.shape[d]}, not 1")
        return TensorSpec(tuple(n for i, n in enumerate(spec.shape) if i not in positions), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:
        return tensor.reshape(spec.shape)

    def inverse(self) -> Op:
        return Unsqueeze(self.key, self.dims, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, "squeezed")


@dataclass(frozen=True, slots=True, repr=False)
class Unsqueeze(_EachKey):
    """Insert dimensions of size 1 at ``dims`` (positions after) into every key matching ``key``: linear -> 1x1 conv."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", _ints(self.dims, "Unsqueeze", "dims"))
        _check_key(self.key, "Unsqueeze")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        ndim = len(spec.shape) + len(self.dims)
        positions = sorted({_dim(d, ndim, key) for d in self.dims})
        if len(positions) != len(self.dims):
            raise OpError(f"{key}: Unsqueeze dims {list(self.dims)} name a dimension twice")
        sizes = iter(spec.shape)
        return TensorSpec(tuple(1 if i in positions else next(sizes) for i in range(ndim)), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:
        return tensor.reshape(spec.shape)

    def inverse(self) -> Op:
        return Squeeze(self.key, self.dims, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, "unsqueezed")


_OTHERS = ("error", "keep")


@dataclass(frozen=True, slots=True, repr=False)
class Cast(Op):
    """Cast every key matching ``pattern`` to ``dtype``.

    Lossy unless ``source_dtype`` is given and ``dtype`` holds every value of it (a widening
    cast, e.g. float16 -> float32); the inverse exists when ``source_dtype`` is given. With
    ``others="keep"`` the cast goes by dtype rather than by key: only the keys of
    ``source_dtype`` are cast and the others left as they are (``Cast("*", "float32",
    source_dtype="float16", others="keep")``); then there is no inverse, as the way back
    cannot tell the keys it widened from those that were already ``dtype``.
    """

    pattern: str
    dtype: str
    source_dtype: str | None = None
    others: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "Cast"))
        if self.source_dtype is not None:
            object.__setattr__(self, "source_dtype", _dtype_name(self.source_dtype, "Cast"))
        if self.others not in _OTHERS:
            raise OpError(f"Cast: others must be 'error' or 'keep', got {self.others!r}")
        if self.others == "keep" and self.source_dtype is None:
            raise OpError("Cast: others='keep' casts the keys of source_dtype; give source_dtype")
        _check_key(self.pattern, "Cast")

    def is_lossy(self) -> bool:
        return self.source_dtype is None or (
            self.source_dtype != self.dtype and (self.source_dtype, self.dtype) not in _WIDENS
        )

    def _cast(self, sig: Signature) -> list[str]:
        """Return the keys the op casts; raise OpError on a key of another dtype (unless others='keep')."""
        found = [k for k, _ in _matches(self.pattern, list(sig))]
        if self.others == "keep":
            found = [k for k in found if sig[k].dtype == self.source_dtype]
        if not found and not self.optional:
            of = f" of dtype {self.source_dtype}" if self.others == "keep" else ""
            raise OpError(f"no key{of} matches {self.pattern!r}")
        for key in found:
            if self.source_dtype is not None and sig[key].dtype != self.source_dtype:
                raise OpError(f"{key}: expected dtype {self.source_dtype}, got {sig[key].dtype}")
        return found

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key in self._cast(sig):
            out[key] = TensorSpec(sig[key].shape, self.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        target = _torch_dtype(self.dtype, "Cast")
        for key in self._cast(_signature(state_dict)):
            state_dict[key] = state_dict[key].to(target)

    def inverse(self) -> Op | None:
        if self.source_dtype is None or self.others == "keep":
            return None
        return Cast(self.pattern, self.source_dtype, source_dtype=self.dtype, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        found = self._cast(sig)
        lossy = " (lossy)" if self.is_lossy() else ""
        if not found:
            return f"cast nothing: {self.pattern}{self._optional_note()}"
        what = found[0] if len(found) == 1 else f"{len(found)}"
        source = f" from {self.source_dtype}" if self.source_dtype is not None else ""
        kept = len(_matches(self.pattern, list(sig))) - len(found)
        rest = f", kept {kept} of other dtypes" if kept else ""
        return f"cast {what}{source} to {self.dtype}: {self.pattern}{rest}{lossy}"
