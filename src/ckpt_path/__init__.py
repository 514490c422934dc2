"""ckpt-path: convert PyTorch checkpoints along a graph of versions.

Planning (versions, converters, graph, planner) never imports torch; the parts that touch
tensors are imported on first use.
"""

from __future__ import annotations

from ckpt_path.converters import Converter, read_converter_file, read_converters
from ckpt_path.errors import (
    CheckpointError,
    CkptPathError,
    ConverterFileError,
    DuplicateConverterError,
    GraphError,
    LossyPathError,
    NoPathError,
    NoStampError,
    OutputExistsError,
    ShapeMismatchError,
    StepError,
    UnknownVersionError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    VersionError,
)
from ckpt_path.graph import build_graph, render_graph
from ckpt_path.planner import Plan, Planner, Step
from ckpt_path.registry import Registry, find_converters_dir
from ckpt_path.versions import branch_of, parse_version, resolve_target

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CkptPathError",
    "Converter",
    "ConverterFileError",
    "DuplicateConverterError",
    "GraphError",
    "LossyPathError",
    "NoPathError",
    "NoStampError",
    "OutputExistsError",
    "Plan",
    "Planner",
    "Registry",
    "ShapeMismatchError",
    "Step",
    "StepError",
    "UnknownVersionError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "VersionError",
    "branch_of",
    "build_graph",
    "find_converters_dir",
    "parse_version",
    "read_converter_file",
    "read_converters",
    "render_graph",
    "resolve_target",
]
