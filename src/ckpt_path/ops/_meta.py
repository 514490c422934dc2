"""Ops on the checkpoint outside the state dict (hyper-parameters, loop and callback state).

SetMeta, MoveMeta and DropMeta leave the state dict's signature alone and act in
:meth:`Op.apply_meta`, on paths into the whole checkpoint object; they never touch the state
dict or ckpt-path's stamp.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ckpt_path.errors import OpError
from ckpt_path.ops._base import Op, Signature
from ckpt_path.ops._templates import _INDEX

_STAMP_KEY = "ckpt_path"
"""The stamp's key (ckpt_path.stamp.STAMP_KEY): metadata ops never touch it."""


class _Unset:
    """The default of ``old`` and ``value``: not given (a file cannot spell it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"

    def __reduce__(self) -> str:
        return "UNSET"  # one object, through pickling (workers) and copying alike

    def __copy__(self) -> _Unset:
        return self

    def __deepcopy__(self, memo: object) -> _Unset:
        return self


UNSET: Any = _Unset()


def _path(path: object, op: str) -> tuple[str, ...]:
    """Read a path: dotted (``"hyper_parameters.lr"``) or a list of keys (for keys with dots in them)."""
    if isinstance(path, str):
        parts = tuple(path.split("."))
    elif isinstance(path, list | tuple) and all(isinstance(p, str) for p in path):
        parts = tuple(path)
    else:
        raise OpError(f"{op}: a path is a dotted string or a list of keys, got {path!r}")
    if not parts or any(p == "" for p in parts):
        raise OpError(f"{op}: {path!r} is not a path (empty segment)")
    return parts


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) if not any("." in p for p in path) else repr(list(path))


def _parent(checkpoint: Any, path: tuple[str, ...], state_dict_at: Sequence[str], op: str) -> Any:
    """Return the container holding ``path``'s last key, checking the path is metadata."""
    if not state_dict_at:
        raise OpError(f"{op}: the checkpoint is a flat state dict; it holds no metadata")
    at = tuple(state_dict_at)
    if path[: len(at)] == at or at[: len(path)] == path:
        raise OpError(f"{op}: {_dotted(path)} is in the state dict ({'.'.join(at)}); use the state-dict ops")
    if path[0] == _STAMP_KEY:
        raise OpError(f"{op}: {_dotted(path)} is ckpt-path's stamp, which only ckpt-path writes")
    node = checkpoint
    for depth, part in enumerate(path[:-1]):
        node = _child(node, part)
        if node is UNSET:
            return UNSET
        if not isinstance(node, MutableMapping | list):
            where = _dotted(path[: depth + 1])
            raise OpError(f"{op}: {where} is a {type(node).__name__}, not a dict")
    return node


def _child(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, UNSET)
    if isinstance(node, list) and _INDEX.fullmatch(part) and int(part) < len(node):
        return node[int(part)]
    return UNSET


def _get(checkpoint: Any, path: tuple[str, ...], state_dict_at: Sequence[str], op: str) -> Any:
    parent = _parent(checkpoint, path, state_dict_at, op)
    return UNSET if parent is UNSET else _child(parent, path[-1])


def _set(checkpoint: Any, path: tuple[str, ...], value: Any, state_dict_at: Sequence[str], op: str) -> None:
    parent = _parent(checkpoint, path, state_dict_at, op)
    if parent is UNSET or not isinstance(parent, MutableMapping):
        where = _dotted(path[:-1])
        raise OpError(f"{op}: {where} is not a dict of the checkpoint; make it first, e.g. SetMeta({where!r}, {{}})")
    parent[path[-1]] = value


def _delete(checkpoint: Any, path: tuple[str, ...], state_dict_at: Sequence[str], op: str) -> Any:
    parent = _parent(checkpoint, path, state_dict_at, op)
    if not isinstance(parent, MutableMapping):
        raise OpError(f"{op}: {_dotted(path)} is not a key of a dict of the checkpoint")
    return parent.pop(path[-1])


class _MetaOp(Op):
    """An op on the checkpoint outside the state dict: no effect on the state dict's shapes."""

    __slots__ = ()
    meta: ClassVar[bool] = True

    def predict(self, sig: Signature) -> Signature:
        return dict(sig)

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        """Leave the state dict alone: metadata ops act in :meth:`apply_meta`."""
        del state_dict


def _meta_hash(op: Op) -> int:
    return hash((type(op).__name__, repr(op)))


@dataclass(frozen=True, slots=True, repr=False)
class SetMeta(_MetaOp):
    """Set ``path`` of the checkpoint (outside the state dict) to the literal ``value``.

    - ``SetMeta(path, value)``: the path must be absent; inverse ``DropMeta(path, value=value)``.
    - ``SetMeta(path, value, old=x)``: the path must hold ``x``; inverse ``SetMeta(path, x, old=value)``.
    - ``SetMeta(path, value, replace=True)``: whatever it held is lost; lossy, no inverse.
    """

    path: tuple[str, ...]
    value: Any
    old: Any = UNSET
    replace: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path, "SetMeta"))
        if self.replace and self.old is not UNSET:
            raise OpError("SetMeta: give old= or replace=True, not both")

    __hash__ = _meta_hash

    def is_lossy(self) -> bool:
        return self.replace

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:
        current = _get(checkpoint, self.path, state_dict_at, "SetMeta")
        where = _dotted(self.path)
        if self.old is not UNSET:
            if current is UNSET and self.optional:
                return
            if current is UNSET or current != self.old:
                got = "is absent" if current is UNSET else f"holds {current!r}"
                raise OpError(f"SetMeta: {where} {got}, not {self.old!r}")
        elif not self.replace and current is not UNSET:
            raise OpError(f"SetMeta: {where} already holds {current!r}; give old={current!r} or replace=True")
        _set(checkpoint, self.path, self.value, state_dict_at, "SetMeta")

    def inverse(self) -> Op | None:
        if self.replace:
            return None
        if self.old is UNSET:
            return DropMeta(self.path, value=self.value)
        return SetMeta(self.path, self.old, old=self.value, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        del sig
        was = f" (was {self.old!r})" if self.old is not UNSET else " (lossy: replaces it)" if self.replace else ""
        return f"set {_dotted(self.path)} = {self.value!r}{was}"


@dataclass(frozen=True, slots=True, repr=False)
class MoveMeta(_MetaOp):
    """Move the value at ``source`` of the checkpoint to ``target``, outside the state dict.

    Renames a hyper-parameter, or moves a config key or a callback's state; ``target``'s dict
    must exist, and nothing is overwritten. Inverse: ``MoveMeta(target, source)``.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", _path(self.source, "MoveMeta"))
        object.__setattr__(self, "target", _path(self.target, "MoveMeta"))
        if self.source == self.target:
            raise OpError(f"MoveMeta: source and target are both {_dotted(self.source)}")

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:
        value = _get(checkpoint, self.source, state_dict_at, "MoveMeta")
        if value is UNSET:
            if self.optional:
                return
            raise OpError(f"MoveMeta: {_dotted(self.source)} is not in the checkpoint")
        if _get(checkpoint, self.target, state_dict_at, "MoveMeta") is not UNSET:
            raise OpError(f"MoveMeta: {_dotted(self.target)} already exists; it is never overwritten")
        if self.target[: len(self.source)] == self.source:
            raise OpError(f"MoveMeta: {_dotted(self.target)} is inside {_dotted(self.source)}")
        if not isinstance(_parent(checkpoint, self.source, state_dict_at, "MoveMeta"), MutableMapping):
            # checked before the target is written: a refused move changes nothing
            raise OpError(f"MoveMeta: {_dotted(self.source)} is not a key of a dict of the checkpoint")
        _set(checkpoint, self.target, value, state_dict_at, "MoveMeta")
        _delete(checkpoint, self.source, state_dict_at, "MoveMeta")

    def inverse(self) -> Op:
        return MoveMeta(self.target, self.source, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        del sig
        return f"moved {_dotted(self.source)} → {_dotted(self.target)}"


@dataclass(frozen=True, slots=True, repr=False)
class DropMeta(_MetaOp):
    """Remove ``path`` from the checkpoint (outside the state dict).

    Lossy and without inverse, unless ``value`` says what it holds: then the path must hold
    exactly that, nothing is lost, and the inverse is ``SetMeta(path, value)``.
    """

    path: tuple[str, ...]
    value: Any = UNSET

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path, "DropMeta"))

    __hash__ = _meta_hash

    def is_lossy(self) -> bool:
        return self.value is UNSET

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:
        current = _get(checkpoint, self.path, state_dict_at, "DropMeta")
        if current is UNSET:
            if self.optional:
                return
            raise OpError(f"DropMeta: {_dotted(self.path)} is not in the checkpoint")
        if self.value is not UNSET and current != self.value:
            raise OpError(f"DropMeta: {_dotted(self.path)} holds {current!r}, not {self.value!r}")
        _delete(checkpoint, self.path, state_dict_at, "DropMeta")

    def inverse(self) -> Op | None:
        if self.value is UNSET:
            return None
        return SetMeta(self.path, self.value)

    def effect(self, sig: Signature) -> str:
        del sig
        return f"dropped {_dotted(self.path)}" + (" (lossy)" if self.is_lossy() else f" (it held {self.value!r})")
