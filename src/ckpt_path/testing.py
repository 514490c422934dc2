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

The pieces that need no pytest (synthetic checkpoints, the bitwise comparison, round trips)
live in :mod:`ckpt_path._synthetic`, which ``ckpt-path check`` uses; this module adds the
fixture and the ``assert_*`` wrappers, which raise ``AssertionError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from ckpt_path._synthetic import (
    DEFAULT_DIM,
    LayoutError,
    MissingEdgeError,
    NoSchemaError,
    checkpoint_differences,
    edge_converter,
    round_trip_differences,
    run_converter,
    summarize,
    synthetic_checkpoint,
)
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.errors import CkptPathError
from ckpt_path.pipeline import upgrade
from ckpt_path.registry import Registry
from ckpt_path.shapes import Schema, signature

__all__ = [
    "DEFAULT_DIM",
    "assert_equal_checkpoints",
    "assert_no_layout_drift",
    "assert_outputs_preserved",
    "assert_round_trip",
    "ckpt_path_registry",
    "run_edge",
    "synthetic_checkpoint",
]


def _schema(registry: Registry, version: str) -> Schema:
    schema = registry.schema(version)
    if schema is None:
        raise AssertionError(str(NoSchemaError(version)))
    return schema


def run_edge(registry: Registry, source: str, target: str, checkpoint: Any) -> Any:
    """Run the one converter ``source -> target`` on a copy of ``checkpoint``; return the result."""
    try:
        converter = edge_converter(registry, source, target)
    except MissingEdgeError as exc:
        raise AssertionError(str(exc)) from None
    return run_converter(registry, converter, checkpoint)


def assert_equal_checkpoints(expected: Any, got: Any) -> None:
    """Assert two checkpoints hold the same tensor keys with bitwise-equal values and dtypes."""
    differences = checkpoint_differences(expected, got)
    if differences:
        raise AssertionError(f"checkpoints differ: {summarize(differences)}")


def assert_round_trip(registry: Registry, source: str, target: str, checkpoint: Any = None) -> None:
    """Assert that ``source -> target`` then ``target -> source`` gives back the checkpoint bitwise.

    Without ``checkpoint`` one is synthesised from the schema of ``source`` (or, for ops,
    from the schema of ``target`` through the inverse ops' shape effects).
    """
    try:
        differences = round_trip_differences(registry, source, target, checkpoint)
    except (LayoutError, MissingEdgeError, NoSchemaError) as exc:
        raise AssertionError(str(exc)) from None
    if differences:
        raise AssertionError(f"round trip {source} -> {target} -> {source} differs: {summarize(differences)}")


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
    held = Checkpoint.from_object({"state_dict": {k: v.detach().clone() for k, v in old_model.state_dict().items()}})
    upgrade(held, registry, target, source=source, allow_lossy=True)  # the pipeline every entry point uses
    new_model.load_state_dict(held.state_dict, strict=True)
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
