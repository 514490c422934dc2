"""Synthetic checkpoints, bitwise comparison and round trips, without pytest.

``ckpt-path check`` and :mod:`ckpt_path.testing` share these. ``check`` must run where
pytest is not installed (it is a dev dependency only), so nothing here imports it; the
pytest-facing wrappers (``assert_*``, the fixture) live in :mod:`ckpt_path.testing`.

This module imports torch; ``check`` imports it only when it builds checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ckpt_path.converters import Converter
from ckpt_path.errors import CkptPathError
from ckpt_path.ops import OpError, predict
from ckpt_path.planner import Plan
from ckpt_path.registry import Registry
from ckpt_path.runner import run
from ckpt_path.shapes import Schema, TensorSpec
from ckpt_path.versions import parse_version

__all__ = [
    "DEFAULT_DIM",
    "LayoutError",
    "MissingEdgeError",
    "NoSchemaError",
    "checkpoint_differences",
    "edge_converter",
    "round_trip_differences",
    "round_trip_start",
    "run_converter",
    "schema_signature",
    "summarize",
    "synthetic_checkpoint",
    "tensors",
]

DEFAULT_DIM = 6
"""Size given to a named dimension of a schema (divisible by 2 and 3, for q/k/v splits)."""

_SHOWN = 10
"""How many differences a one-line message lists."""


class NoSchemaError(CkptPathError):
    """A synthetic checkpoint of ``version`` was asked for, and the version has no schema."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"version {version} has no schema; write one with `ckpt-path schema CKPT --version {version}`")


class LayoutError(CkptPathError):
    """The layout of ``version`` cannot be derived from the schema of ``known`` by the inverse ops."""

    def __init__(self, version: str, known: str, reason: str) -> None:
        self.version = version
        self.known = known
        self.reason = reason
        super().__init__(f"cannot derive the layout of {version} from the schema of {known}: {reason}")


class MissingEdgeError(CkptPathError):
    """No converter goes directly from ``source`` to ``target``."""

    def __init__(self, source: str, target: str) -> None:
        self.source = source
        self.target = target
        super().__init__(f"no converter {source} -> {target}")


def _concrete(key: str) -> str:
    """Make a glob key of a schema concrete: every wildcard becomes ``0``."""
    return key.replace("*", "0").replace("?", "0")


def schema_signature(schema: Schema, dims: Mapping[str, int] | None = None) -> dict[str, TensorSpec]:
    """Return the signature of the synthetic checkpoint of ``schema`` (no tensor is made).

    Named dimensions take their size from ``dims`` (default :data:`DEFAULT_DIM`); glob keys
    get one concrete key each; an entry that leaves its dtype free is ``float32``.
    """
    sizes = dict(dims or {})
    sig: dict[str, TensorSpec] = {}
    for entry in schema.entries:
        shape = tuple(d if isinstance(d, int) else sizes.setdefault(d, DEFAULT_DIM) for d in (entry.shape or ()))
        sig[_concrete(entry.key)] = TensorSpec(shape, entry.dtype or "float32")
    return sig


def synthetic_checkpoint(
    schema: Schema,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    state_dict_key: str | None = "state_dict",
) -> dict[str, Any]:
    """Build a checkpoint whose state dict matches ``schema``, filled with seeded random values.

    Named dimensions take their size from ``dims`` (default :data:`DEFAULT_DIM`); glob keys
    get one concrete key each. ``state_dict_key=None`` returns a flat state dict.
    """
    generator = torch.Generator().manual_seed(seed)
    state_dict = {
        key: _random(spec.shape, getattr(torch, spec.dtype), generator)
        for key, spec in schema_signature(schema, dims).items()
    }
    return {state_dict_key: state_dict} if state_dict_key else state_dict


def _random(shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.randint(0, 2, tuple(shape), generator=generator).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(tuple(shape), generator=generator).to(dtype)
    return torch.randint(-100, 100, tuple(shape), generator=generator).to(dtype)


def tensors(checkpoint: Any) -> dict[str, torch.Tensor]:
    """Return the tensors of a checkpoint's state dict (``ckpt["state_dict"]``, or the flat checkpoint)."""
    sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _spec(tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(tuple(int(d) for d in tensor.shape), str(tensor.dtype).removeprefix("torch."))


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device.type == "meta" or b.device.type == "meta":
        return True
    if a.numel() == 0:
        return True
    # reshape(-1): a 0-d tensor cannot be viewed as bytes of another element size.
    return bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def checkpoint_differences(expected: Any, got: Any) -> list[str]:
    """Every way the tensors of ``got`` differ from those of ``expected``, one line per key, sorted.

    ``KEY: missing``, ``KEY: unexpected``, ``KEY: expected [2, 3] float32, got [3, 2] float32``
    or ``KEY: values differ`` (bitwise: ``-0.0`` differs from ``0.0``, a NaN equals the same
    NaN). Empty when both hold the same keys with the same shapes, dtypes and bits; entries
    that are not tensors are not compared.
    """
    a, b = tensors(expected), tensors(got)
    lines = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            lines.append(f"{key}: missing")
        elif key not in a:
            lines.append(f"{key}: unexpected")
        elif _spec(a[key]) != _spec(b[key]):
            lines.append(f"{key}: expected {_spec(a[key])}, got {_spec(b[key])}")
        elif not _bitwise_equal(a[key], b[key]):
            lines.append(f"{key}: values differ")
    return lines


def summarize(differences: Sequence[str]) -> str:
    """Join difference lines into one message: the first few, and how many more."""
    more = f"; and {len(differences) - _SHOWN} more" if len(differences) > _SHOWN else ""
    return "; ".join(differences[:_SHOWN]) + more


def edge_converter(registry: Registry, source: str, target: str) -> Converter:
    """Return the converter of the edge ``source -> target`` (an inverse edge too); MissingEdgeError if none."""
    data = registry.graph.get_edge_data(parse_version(source), parse_version(target))
    if data is None:
        raise MissingEdgeError(source, target)
    converter: Converter = data["converter"]
    return converter


def run_converter(registry: Registry, converter: Converter, checkpoint: Any) -> Any:
    """Run one converter, with every check of a real run, on a copy of ``checkpoint``; return the result."""
    plan = Plan(source=converter.source, target=converter.target, steps=(converter,))
    return run(plan, copy.deepcopy(checkpoint), schemas=registry.schema).checkpoint


def round_trip_start(registry: Registry, source: str, target: str) -> dict[str, Any]:
    """Build a synthetic checkpoint of ``source``, to start the round trip ``source -> target -> source``.

    It is built from the schema of ``source``. Without one, the layout of ``source`` is
    derived from the schema of ``target`` by the shape effects of the ops of the edge
    ``target -> source`` (ops know their shapes), so a round trip is still checked in the
    direction the file was written.
    """
    forward = registry.graph.get_edge_data(parse_version(source), parse_version(target))
    seeded = _seed_metadata(forward["converter"].ops or () if forward is not None else ())
    schema = registry.schema(source)
    if schema is not None:
        return {**seeded, **synthetic_checkpoint(schema)}
    known = registry.schema(target)
    backward = registry.graph.get_edge_data(parse_version(target), parse_version(source))
    ops = backward["converter"].ops if backward is not None else None
    if known is None or ops is None:
        raise NoSchemaError(source)
    try:
        derived = predict(ops, schema_signature(known))
    except OpError as exc:
        raise LayoutError(source, target, str(exc)) from None
    return {**seeded, **synthetic_checkpoint(Schema.from_signature(source, derived))}


def _same_value(a: object, b: object) -> bool:
    """Compare plain entries; ones that hold tensors are the tensor comparison's business."""
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):
        return True


def _seed_metadata(ops: Sequence[Any]) -> dict[str, Any]:
    """Build the checkpoint entries outside the state dict that the ops' metadata steps expect to find.

    A ``MoveMeta`` needs its source, a ``DropMeta`` its path (with its value when it names one),
    a ``SetMeta`` that names the old value that value; paths an earlier op makes are left to it.
    """
    from ckpt_path.ops import UNSET, DropMeta, MoveMeta, SetMeta

    seeded: dict[str, Any] = {}
    made: set[tuple[str, ...]] = set()
    for op in ops:
        need: tuple[tuple[str, ...], Any] | None = None
        if isinstance(op, MoveMeta):
            need = (op.source, f"synthetic {'.'.join(op.source)}")
            made.add(op.target)
            parent = seeded
            for part in op.target[:-1]:  # where it moves to must be a dict of the checkpoint
                parent = parent.setdefault(part, {})
        elif isinstance(op, DropMeta):
            need = (op.path, op.value if op.value is not UNSET else f"synthetic {'.'.join(op.path)}")
        elif isinstance(op, SetMeta):
            need = (op.path, op.old) if op.old is not UNSET else None
            made.add(op.path)
        if need is not None and need[0] not in made:
            node = seeded
            for part in need[0][:-1]:
                node = node.setdefault(part, {})
            node.setdefault(need[0][-1], need[1])
    return seeded


def round_trip_differences(
    registry: Registry,
    source: str,
    target: str,
    checkpoint: Any = None,
) -> list[str]:
    """Run ``source -> target -> source`` and return how the result differs from the start (bitwise).

    Without ``checkpoint`` one is synthesised (see :func:`round_trip_start`). A step that
    fails raises its :class:`~ckpt_path.errors.CkptPathError`.
    """
    forward, backward = edge_converter(registry, source, target), edge_converter(registry, target, source)
    start = checkpoint if checkpoint is not None else round_trip_start(registry, source, target)
    back = run_converter(registry, backward, run_converter(registry, forward, start))
    differences = checkpoint_differences(start, back)
    if isinstance(start, Mapping) and isinstance(back, Mapping):
        ignored = {"state_dict", "ckpt_path"}
        for key in sorted({*start, *back} - ignored, key=str):
            if key not in back or key not in start or not _same_value(start[key], back[key]):
                differences.append(f"{key}: the entry outside the state dict differs after the round trip")
    return differences
