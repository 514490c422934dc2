"""ckpt-path: convert PyTorch checkpoints along a graph of versions.

Planning (versions, converters, graph, planner) never imports torch; the parts that touch
tensors are imported on first use.
"""

from __future__ import annotations

import typing

from ckpt_path.converter_files import read_converter_file, read_converters
from ckpt_path.converters import Converter
from ckpt_path.errors import (
    CheckpointError,
    CkptPathError,
    ConverterFileError,
    DuplicateConverterError,
    GraphError,
    InputOverwriteError,
    LossyPathError,
    MovedGlobalError,
    NoPathError,
    NoStampError,
    OpError,
    OptimizerStateError,
    OutputExistsError,
    SaveError,
    SchemaError,
    SettingsError,
    ShapeMismatchError,
    StampError,
    StateDictError,
    StepError,
    UnknownVersionError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UnsupportedVersionError,
    UnverifiedStepError,
    UsageError,
    VersionError,
    VersionInferenceError,
)
from ckpt_path.graph import build_graph, render_graph
from ckpt_path.planner import Plan, Planner, Step
from ckpt_path.registry import Registry, find_converters_dir
from ckpt_path.shapes import Schema
from ckpt_path.versions import branch_of, parse_version, resolve_target

if typing.TYPE_CHECKING:  # the real types for type checkers; at run time these load on first use
    from ckpt_path.checkpoint import Checkpoint
    from ckpt_path.commands import ConvertResult, capture_schema, convert_file, inspect_file, load, stamp_file
    from ckpt_path.pipeline import Upgrade, upgrade
    from ckpt_path.runner import RunResult, StepReport, run
    from ckpt_path.stamp import Stamp, read_stamp
    from ckpt_path.storage import load_checkpoint, save_checkpoint

__version__ = "0.1.0"

_LAZY = {
    # name: module; these import torch, so they load on first use.
    "ConvertResult": "ckpt_path.commands",
    "RunResult": "ckpt_path.runner",
    "StepReport": "ckpt_path.runner",
    "Checkpoint": "ckpt_path.checkpoint",
    "Stamp": "ckpt_path.stamp",
    "Upgrade": "ckpt_path.pipeline",
    "capture_schema": "ckpt_path.commands",
    "convert_file": "ckpt_path.commands",
    "inspect_file": "ckpt_path.commands",
    "load": "ckpt_path.commands",
    "load_checkpoint": "ckpt_path.storage",
    "read_stamp": "ckpt_path.stamp",
    "run": "ckpt_path.runner",
    "save_checkpoint": "ckpt_path.storage",
    "stamp_file": "ckpt_path.commands",
    "upgrade": "ckpt_path.pipeline",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'ckpt_path' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CkptPathError",
    "ConvertResult",
    "Converter",
    "ConverterFileError",
    "DuplicateConverterError",
    "GraphError",
    "InputOverwriteError",
    "LossyPathError",
    "MovedGlobalError",
    "NoPathError",
    "NoStampError",
    "OpError",
    "OptimizerStateError",
    "OutputExistsError",
    "Plan",
    "Planner",
    "Registry",
    "RunResult",
    "SaveError",
    "Schema",
    "SchemaError",
    "SettingsError",
    "ShapeMismatchError",
    "Stamp",
    "StampError",
    "StateDictError",
    "Step",
    "StepError",
    "StepReport",
    "UnknownVersionError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "UnsupportedVersionError",
    "UnverifiedStepError",
    "Upgrade",
    "UsageError",
    "VersionError",
    "VersionInferenceError",
    "branch_of",
    "build_graph",
    "capture_schema",
    "convert_file",
    "find_converters_dir",
    "inspect_file",
    "load",
    "load_checkpoint",
    "parse_version",
    "read_converter_file",
    "read_converters",
    "read_stamp",
    "render_graph",
    "resolve_target",
    "run",
    "save_checkpoint",
    "stamp_file",
    "upgrade",
]
