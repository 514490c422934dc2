"""Helpers to unit-test converters, and to catch a model whose layout drifted from its schema.

Use them in a project's own tests::

    from ckpt_path.testing import assert_no_layout_drift, assert_round_trip, run_edge

    def test_fuse_qkv_round_trips(ckpt_path_registry):
        assert_round_trip(ckpt_path_registry, "0.3.0", "1.0.0")

    def test_model_layout_matches_latest(ckpt_path_registry):
        assert_no_layout_drift(MyModel(), ckpt_path_registry)

``ckpt_path_registry`` is a pytest fixture: import it into your ``conftest.py``
(``from ckpt_path.testing import ckpt_path_registry``); it reads the converters directory
the way the command line does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch

from ckpt_path.errors import CkptPathError
from ckpt_path.planner import Plan, Step
from ckpt_path.registry import Registry
from ckpt_path.runner import run
from ckpt_path.shapes import Schema, signature
from ckpt_path.versions import parse_version

__all__ = [
    "assert_equal_checkpoints",
    "assert_no_layout_drift",
    "assert_outputs_preserved",
    "assert_round_trip",
    "ckpt_path_registry",
    "run_edge",
    "synthetic_checkpoint",
]

DEFAULT_DIM = 6
"""Size given to a named dimension of a schema (divisible by 2 and 3, for q/k/v splits)."""


def _concrete(key: str) -> str:
    """Make a glob key of a schema concrete: every wildcard becomes ``0``."""
    return key.replace("*", "0").replace("?", "0")


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
    sizes = dict(dims or {})
    state_dict: dict[str, torch.Tensor] = {}
    for entry in schema.entries:
        shape = [d if isinstance(d, int) else sizes.setdefault(d, DEFAULT_DIM) for d in (entry.shape or ())]
        dtype = getattr(torch, entry.dtype or "float32")
        state_dict[_concrete(entry.key)] = _random(shape, dtype, generator)
    return {state_dict_key: state_dict} if state_dict_key else state_dict


def _random(shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.randint(0, 2, tuple(shape), generator=generator).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(tuple(shape), generator=generator).to(dtype)
    return torch.randint(-100, 100, tuple(shape), generator=generator).to(dtype)


def _schema(registry: Registry, version: str) -> Schema:
    schema = registry.schema(version)
    if schema is None:
        msg = f"version {version} has no schema; write one with `ckpt-path schema CKPT --version {version}`"
        raise AssertionError(msg)
    return schema


def run_edge(registry: Registry, source: str, target: str, checkpoint: Any) -> Any:  # noqa: ANN401
    """Run the one converter ``source -> target`` on a copy of ``checkpoint``; return the result."""
    src, tgt = parse_version(source), parse_version(target)
    data = registry.graph.get_edge_data(src, tgt)
    if data is None:
        msg = f"no converter {source} -> {target}"
        raise AssertionError(msg)
    plan = Plan(source=src, target=tgt, steps=(Step(converter=data["converter"]),))
    return run(plan, copy.deepcopy(checkpoint), schemas=registry.schema).checkpoint


def _tensors(checkpoint: Any) -> dict[str, torch.Tensor]:  # noqa: ANN401
    sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def assert_equal_checkpoints(expected: Any, got: Any) -> None:  # noqa: ANN401
    """Assert two checkpoints hold the same tensor keys with bitwise-equal values and dtypes."""
    a, b = _tensors(expected), _tensors(got)
    missing, extra = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    if missing or extra:
        msg = f"keys differ: missing {missing}, unexpected {extra}"
        raise AssertionError(msg)
    differ = [
        k for k in sorted(a) if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not _bitwise_equal(a[k], b[k])
    ]
    if differ:
        msg = f"values differ at {', '.join(differ[:10])}"
        raise AssertionError(msg)


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device.type == "meta" or b.device.type == "meta":
        return True
    if a.numel() == 0:
        return True
    # reshape(-1): a 0-d tensor cannot be viewed as bytes of another element size.
    return bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def assert_round_trip(registry: Registry, source: str, target: str, checkpoint: Any = None) -> None:  # noqa: ANN401
    """Assert that ``source -> target`` then ``target -> source`` gives back the checkpoint bitwise.

    Without ``checkpoint`` one is synthesised from the schema of ``source``.
    """
    start = checkpoint if checkpoint is not None else synthetic_checkpoint(_schema(registry, source))
    there = run_edge(registry, source, target, start)
    back = run_edge(registry, target, source, there)
    assert_equal_checkpoints(start, back)


def assert_outputs_preserved(  # noqa: PLR0913, PLR0917 - two models, two versions, the inputs
    registry: Registry,
    old_model: torch.nn.Module,
    new_model: torch.nn.Module,
    source: str,
    target: str,
    inputs: Sequence[Any],
    *,
    new_inputs: Sequence[Any] | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> None:
    """Assert that converting ``old_model``'s weights lets ``new_model`` compute the same outputs.

    The old model's state dict is converted along the planned path ``source -> target``,
    loaded into ``new_model`` with ``strict=True``, and both models run on ``inputs``
    (``new_inputs`` for the new model when the input layout changed).
    """
    checkpoint = {"state_dict": {k: v.detach().clone() for k, v in old_model.state_dict().items()}}
    plan = registry.plan(source, target, allow_lossy=True)
    converted = run(plan, checkpoint, schemas=registry.schema).checkpoint
    new_model.load_state_dict(converted["state_dict"], strict=True)
    with torch.no_grad():
        expected = old_model(*inputs)
        got = new_model(*(new_inputs if new_inputs is not None else inputs))
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


def assert_no_layout_drift(model: torch.nn.Module, registry: Registry, version: str = "latest") -> None:
    """Fail when the model's state-dict layout differs from the schema of ``version``.

    A difference means the code changed the layout: add a new version with a converter and
    its schema, so that old checkpoints keep loading.
    """
    resolved = registry.planner.resolve(version)
    schema = _schema(registry, str(resolved))
    problems = schema.check(signature(model.state_dict()))
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""  # noqa: PLR2004
        msg = (
            f"the model's state-dict layout differs from the schema of {resolved}: {shown}{more}. "
            f"Add a new version: `ckpt-path new NAME --from {resolved} --to NEW`, "
            "then `ckpt-path schema CKPT --version NEW`"
        )
        raise AssertionError(msg)


def _registry_fixture() -> Registry:
    """Read the project's converters the way the command line finds them."""
    try:
        return Registry.from_directory()
    except CkptPathError as exc:
        pytest.fail(str(exc))


ckpt_path_registry = pytest.fixture(_registry_fixture, name="ckpt_path_registry")
