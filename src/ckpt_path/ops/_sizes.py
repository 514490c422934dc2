"""Sizes in shapes and ``sizes=``: check them when an op is made, resolve them against a state dict.

A size is a number, a name bound by ``source_shape`` (``"C"``) or another key's size
(``"{*b}.norm.weight[0]"``, filled with the binding of the key at hand).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ckpt_path.errors import OpError
from ckpt_path.ops._templates import _check_template, _fill
from ckpt_path.shapes import TensorSpec

Size = int | str
"""A size in a shape or ``sizes``: a number, a name (``"C"``) or another key's size (``"key[0]"``)."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"(?P<key>.+)\[(?P<dim>-?[0-9]+)\]")


def _check_size(entry: object, op: str, *, infer: bool, names: bool, references: bool = True) -> Size:
    """Check one size entry when the op is made: what it may be depends on where it stands."""
    if isinstance(entry, bool):
        raise OpError(f"{op}: {entry!r} is not a size")
    if isinstance(entry, int):
        if entry >= 0 or (infer and entry == -1):
            return entry
        raise OpError(f"{op}: sizes must be >= 0{', or -1 to infer' if infer else ''}, got {entry}")
    if isinstance(entry, str):
        if names and _NAME.fullmatch(entry):
            return entry
        reference = _REFERENCE.fullmatch(entry)
        if references and reference:
            _check_template(reference["key"], op)
            return entry
    allowed = "a number" + (", a name such as 'C'" if names else "") + (", or 'key[dim]'" if references else "")
    raise OpError(f"{op}: {entry!r} is not a size ({allowed})")


def _show(sizes: Sequence[Size]) -> str:
    return "[" + ", ".join(str(s) for s in sizes) + "]"


def _resolve(
    entry: Size, key: str, binding: Mapping[str, str], sig: Mapping[str, TensorSpec], bound: Mapping[str, int]
) -> int:
    """Return the size an entry names for ``key``: a number, a bound name, or a dim of another key."""
    if isinstance(entry, int):
        return entry
    reference = _REFERENCE.fullmatch(entry)
    if reference and not _NAME.fullmatch(entry):
        other = _fill(reference["key"], binding)
        if other not in sig:
            raise OpError(f"{key}: size {entry!r} reads {other}, which is not in the state dict")
        shape = sig[other].shape
        dim = int(reference["dim"])
        if not -len(shape) <= dim < len(shape):
            raise OpError(f"{key}: size {entry!r}: {other} has {len(shape)} dimension(s)")
        return shape[dim]
    if entry not in bound:
        raise OpError(f"{key}: the size {entry!r} is not bound; name it in source_shape")
    return bound[entry]


def _check_sizes(sizes: object, parts: int, op: str) -> tuple[Size, ...] | None:
    if sizes is None:
        return None
    items = tuple(sizes) if isinstance(sizes, list | tuple) else (sizes,)
    for entry in items:
        _check_size(entry, op, infer=True, names=False)
    if len(items) != parts:
        raise OpError(f"{op}: sizes {_show(items)} name {len(items)} part(s), not {parts}")
    return items


def _split_sizes(  # noqa: PLR0913, PLR0917 - the key, its size, the parts, and what resolves references
    key: str,
    total: int,
    parts: int,
    sizes: tuple[Size, ...] | None,
    binding: Mapping[str, str],
    sig: Mapping[str, TensorSpec],
) -> tuple[int, ...]:
    if sizes is None:
        if total % parts:
            raise OpError(f"{key}: size {total} does not split into {parts} equal parts; give sizes=[...]")
        return (total // parts,) * parts
    resolved = [-1 if e == -1 else _resolve(e, key, binding, sig, {}) for e in sizes]
    inferred = resolved.count(-1)
    rest = total - sum(s for s in resolved if s != -1)
    if inferred and (rest < 0 or rest % inferred):
        raise OpError(f"{key}: sizes {_show(sizes)} leave {rest} of {total}, which does not split into {inferred}")
    found = tuple(rest // inferred if s == -1 else s for s in resolved)
    if len(found) != parts or sum(found) != total:
        raise OpError(f"{key}: sizes {_show(sizes)} do not split size {total} into {parts} parts")
    return found
