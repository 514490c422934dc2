"""Lists of ops, as in a converter file's ``ops = [...]``: every op by name; a list's shapes, inverse, description."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ckpt_path.errors import OpError
from ckpt_path.ops._base import Op, Signature
from ckpt_path.ops._fuse import Concat, Split, Stack, Unstack
from ckpt_path.ops._keys import Add, Drop, DropDerived, Rename
from ckpt_path.ops._meta import DropMeta, MoveMeta, SetMeta
from ckpt_path.ops._slices import AddInto, Slice, Unslice
from ckpt_path.ops._tensors import Cast, MoveIndex, Permute, Reshape, Squeeze, Transpose, Unsqueeze
from ckpt_path.shapes import TensorSpec

OPS: dict[str, type[Op]] = {
    cls.__name__: cls
    for cls in (
        Rename,
        MoveIndex,
        Permute,
        Transpose,
        Reshape,
        Squeeze,
        Unsqueeze,
        Concat,
        Split,
        Stack,
        Unstack,
        Slice,
        Unslice,
        AddInto,
        Drop,
        DropDerived,
        Add,
        Cast,
        SetMeta,
        MoveMeta,
        DropMeta,
    )
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


def describe_ops(ops: Sequence[Op], sig: Mapping[str, TensorSpec]) -> list[str]:
    """Say what each op does to a state dict of signature ``sig``, in the user's terms, one line each.

    ``renamed 128: model.layers.{i}.w → backbone.blocks.{i}.w``, ``stacked 8 into ...``,
    ``moved index 3 → 1 of dim 0 in ...``. An op that does not fit says so and ends the list.
    """
    current = dict(sig)
    lines = []
    for index, op in enumerate(ops, 1):
        try:
            lines.append(op.effect(current))
            current = op.predict(current)
        except OpError as exc:
            lines.append(f"op {index} {type(op).__name__} does not fit: {exc}")
            break
    return lines
