"""Ops that move part of a tensor to a key of its own and back (Slice, Unslice) or add a key into another (AddInto)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ckpt_path.errors import OpError
from ckpt_path.ops._base import Op, Signature, _dim, _signature, _times
from ckpt_path.ops._templates import _fill, _no_glob
from ckpt_path.shapes import TensorSpec


def _range(key: str, size: int, start: int, stop: int | None) -> tuple[int, int]:
    """Normalise ``[start:stop]`` over a dim of ``size`` (negatives count from the end)."""
    begin = start + size if start < 0 else start
    end = size if stop is None else stop + size if stop < 0 else stop
    if not 0 <= begin < end <= size:
        shown = f"[{start}:{'' if stop is None else stop}]"
        raise OpError(f"{key}: {shown} is not a non-empty range of a dim of size {size}")
    return begin, end


def _check_range(start: object, stop: object, op: str) -> None:
    if isinstance(start, bool) or not isinstance(start, int):
        raise OpError(f"{op}: start must be a whole number, got {start!r}")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int)):
        raise OpError(f"{op}: stop must be a whole number or None, got {stop!r}")


@dataclass(frozen=True, slots=True, repr=False)
class Slice(Op):
    """Move ``key[start:stop]`` along ``dim`` out to the key ``into``; ``key`` keeps the rest.

    DINOv2's class-token position: ``Slice("pos_embed", into="pos_embed_cls", dim=1, start=0,
    stop=1)`` leaves ``pos_embed[:, 1:]``. Negative ``start``/``stop`` count from the end. The
    inverse, :class:`Unslice`, puts it back.
    """

    key: str
    into: str
    dim: int
    start: int
    stop: int | None = None

    def __post_init__(self) -> None:
        _no_glob(self.key, "Slice")
        _no_glob(self.into, "Slice")
        _check_range(self.start, self.stop, "Slice")

    def groups(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Return, per key sliced, the key the slice goes to."""
        present = set(keys)
        pairs = [(key, _fill(self.into, binding)) for key, binding in self._find(self.key, keys)]
        for key, into in pairs:
            if into in present:
                raise OpError(f"Slice {key} into {into}, which already exists")
        return pairs

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, into in self.groups(list(sig)):
            spec = sig[key]
            dim = _dim(self.dim, len(spec.shape), key)
            begin, end = _range(key, spec.shape[dim], self.start, self.stop)
            rest, piece = list(spec.shape), list(spec.shape)
            rest[dim] -= end - begin
            piece[dim] = end - begin
            out[key] = TensorSpec(tuple(rest), spec.dtype)
            out[into] = TensorSpec(tuple(piece), spec.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))
        for key, into in self.groups(list(state_dict)):
            tensor = state_dict[key]
            dim = _dim(self.dim, tensor.dim(), key)
            size = tensor.shape[dim]
            begin, end = _range(key, size, self.start, self.stop)
            state_dict[into] = tensor.narrow(dim, begin, end - begin).clone()
            state_dict[key] = torch.cat([tensor.narrow(dim, 0, begin), tensor.narrow(dim, end, size - end)], dim=dim)

    def inverse(self) -> Op:
        return Unslice(self.into, into=self.key, dim=self.dim, start=self.start, stop=self.stop, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        pairs = self.groups(list(sig))
        shown = f"[{self.start}:{'' if self.stop is None else self.stop}]"
        if not pairs:
            return f"sliced nothing: {self.key}{self._optional_note()}"
        key, into = pairs[0] if len(pairs) == 1 else (self.key, self.into)
        return f"moved {shown} of dim {self.dim} of {key} to {into}{_times(len(pairs))}"


@dataclass(frozen=True, slots=True, repr=False)
class Unslice(Op):
    """Put ``key`` back into ``into`` as its ``[start:stop]`` along ``dim`` (positions in the result); remove ``key``.

    The inverse of :class:`Slice` with the same ``dim``, ``start`` and ``stop``.
    """

    key: str
    into: str
    dim: int
    start: int
    stop: int | None = None

    def __post_init__(self) -> None:
        _no_glob(self.key, "Unslice")
        _no_glob(self.into, "Unslice")
        _check_range(self.start, self.stop, "Unslice")

    def groups(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Return, per key put back, the key it goes into."""
        present = set(keys)
        pairs = [(key, _fill(self.into, binding)) for key, binding in self._find(self.key, keys)]
        for key, into in pairs:
            if into not in present:
                raise OpError(f"Unslice {key} into {into}, which is not in the state dict")
        return pairs

    def _place(self, key: str, into: str, sig: Mapping[str, TensorSpec]) -> tuple[int, int, TensorSpec]:
        piece, whole = sig[key], sig[into]
        dim = _dim(self.dim, len(whole.shape), into)
        if (
            len(piece.shape) != len(whole.shape)
            or piece.dtype != whole.dtype
            or any(a != b for i, (a, b) in enumerate(zip(piece.shape, whole.shape, strict=True)) if i != dim)
        ):
            raise OpError(f"Unslice: {key} {piece} does not fit {into} {whole} along dim {self.dim}")
        size = whole.shape[dim] + piece.shape[dim]
        begin, end = _range(into, size, self.start, self.stop)
        if end - begin != piece.shape[dim]:
            raise OpError(f"Unslice: {key} has size {piece.shape[dim]} along dim {self.dim}, the range {end - begin}")
        shape = list(whole.shape)
        shape[dim] = size
        return dim, begin, TensorSpec(tuple(shape), whole.dtype)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, into in self.groups(list(sig)):
            out[into] = self._place(key, into, sig)[2]
            del out[key]
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        sig = _signature(state_dict)
        self.predict(sig)
        for key, into in self.groups(list(state_dict)):
            dim, begin, _ = self._place(key, into, sig)
            piece, whole = state_dict.pop(key), state_dict[into]
            rest = whole.shape[dim] - begin
            state_dict[into] = torch.cat([whole.narrow(dim, 0, begin), piece, whole.narrow(dim, begin, rest)], dim=dim)

    def inverse(self) -> Op:
        return Slice(self.into, into=self.key, dim=self.dim, start=self.start, stop=self.stop, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        pairs = self.groups(list(sig))
        shown = f"[{self.start}:{'' if self.stop is None else self.stop}]"
        if not pairs:
            return f"put back nothing: {self.key}{self._optional_note()}"
        key, into = pairs[0] if len(pairs) == 1 else (self.key, self.into)
        return f"put {key} back into {into} as {shown} of dim {self.dim}{_times(len(pairs))}"


@dataclass(frozen=True, slots=True, repr=False)
class AddInto(Op):
    """Add ``key`` into ``into`` (broadcast to ``into``'s shape, same dtype) and remove ``key``. Lossy; no inverse.

    DINOv2 with registers in timm: ``cls_token + pos_embed[:, 0]`` is
    ``Slice("pos_embed", into="cls_pos", dim=1, start=0, stop=1)`` then ``AddInto("cls_pos", into="cls_token")``.
    """

    key: str
    into: str
    lossy: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _no_glob(self.key, "AddInto")
        _no_glob(self.into, "AddInto")

    def groups(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Return, per key added, the key it is added into."""
        present = set(keys)
        pairs = [(key, _fill(self.into, binding)) for key, binding in self._find(self.key, keys)]
        for key, into in pairs:
            if into not in present or into == key:
                raise OpError(f"AddInto {key} into {into}, which is not another key of the state dict")
        return pairs

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, into in self.groups(list(sig)):
            piece, whole = sig[key], sig[into]
            if piece.dtype != whole.dtype or not _broadcasts(piece.shape, whole.shape):
                raise OpError(f"AddInto: {key} {piece} does not add into {into} {whole} (same dtype, broadcastable)")
            del out[key]
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        self.predict(_signature(state_dict))
        for key, into in self.groups(list(state_dict)):
            whole = state_dict[into]
            # A piece may carry extra leading 1s ([1, 3] into [3]): the sum keeps into's shape, as predicted.
            state_dict[into] = (whole + state_dict.pop(key)).reshape(whole.shape)

    def effect(self, sig: Signature) -> str:
        pairs = self.groups(list(sig))
        if not pairs:
            return f"added nothing: {self.key}{self._optional_note()}"
        key, into = pairs[0] if len(pairs) == 1 else (self.key, self.into)
        return f"added {key} into {into}{_times(len(pairs))} (lossy)"


def _broadcasts(piece: tuple[int, ...], whole: tuple[int, ...]) -> bool:
    """Whether ``piece`` broadcasts to ``whole`` without changing it."""
    if len(piece) > len(whole):
        return all(d == 1 for d in piece[: len(piece) - len(whole)]) and _broadcasts(
            piece[len(piece) - len(whole) :], whole
        )
    return all(p in {1, w} for p, w in zip(reversed(piece), reversed(whole), strict=False))
