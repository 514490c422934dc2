"""What the commands do, as functions: convert, load, inspect, stamp, capture a schema.

The command line is a thin shell over these; a project calls them from Python the same way.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version

from ckpt_path.checkpoint import Loaded, Stamp, load_checkpoint, read_stamp, save_checkpoint, write_stamp
from ckpt_path.errors import (
    CheckpointError,
    CkptPathError,
    NoStampError,
    OutputExistsError,
    UnsafeCheckpointError,
    VersionInferenceError,
)
from ckpt_path.formats import Progress
from ckpt_path.pickles import Moves, everything_deleted
from ckpt_path.planner import Plan
from ckpt_path.provenance import digest_mismatches, infer_version, source_version
from ckpt_path.registry import Registry
from ckpt_path.runner import OnStep, StepReport, run
from ckpt_path.shapes import Schema, signature
from ckpt_path.versions import parse_version

__all__ = ["ConvertResult", "capture_schema", "convert_file", "file_version", "inspect_file", "load", "stamp_file"]

log = logging.getLogger("ckpt_path")


@dataclass(slots=True, kw_only=True)
class ConvertResult:
    """What a conversion did: the plan, a report per step, and where the result went."""

    input: Path
    output: Path | None
    plan: Plan
    steps: list[StepReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the result as the contract's ``convert --json`` object."""
        return {
            "source": str(self.plan.source),
            "target": str(self.plan.target),
            "input": str(self.input),
            "output": str(self.output) if self.output is not None else None,
            "dry_run": self.dry_run,
            "lossy": self.plan.lossy,
            "steps": [s.to_dict() for s in self.steps],
            "warnings": list(self.warnings),
        }


def _load_and_plan(  # noqa: PLR0913 - what a conversion needs to start
    path: Path,
    registry: Registry,
    *,
    source: str | None,
    target: str,
    allow_lossy: bool,
    state_dict_key: str | None,
    safe_globals: tuple[str, ...],
) -> tuple[Loaded, Plan, list[str]]:
    """Load a checkpoint, find its version and plan; return warnings about its history.

    A pickle that refers to globals weights-only loading refuses is first read with inert
    placeholders for all of them (importing nothing) to learn its version; it is then loaded
    again with the moves declared by the converters on the planned path, and only those.
    """
    try:
        loaded = load_checkpoint(path, state_dict_key=state_dict_key, safe_globals=safe_globals)
    except UnsafeCheckpointError:
        if not any(c.moves for c in registry.converters):
            raise
        peek = load_checkpoint(
            path, state_dict_key=state_dict_key, safe_globals=safe_globals, moves=everything_deleted()
        )
        version, _ = source_version(peek, source, registry)
        plan = registry.plan(version, target, allow_lossy=allow_lossy)
        moves = Moves.merge(s.converter.moves for s in plan.steps if s.converter.moves)
        loaded = load_checkpoint(path, state_dict_key=state_dict_key, safe_globals=safe_globals, moves=moves)
    version, origin = source_version(loaded, source, registry)
    stamp = read_stamp(loaded.obj, loaded.state_dict_path)
    warnings = digest_mismatches(stamp, registry)
    if origin == "--from" and stamp is not None and parse_version(stamp.version) != version:
        warnings.append(f"{path} is stamped {stamp.version} but --from {source} was given; using {version}")
    if origin not in {"stamp", "--from"}:
        log.info("%s has no stamp; its version %s comes from %s", path, version, origin)
    plan = registry.plan(version, target, allow_lossy=allow_lossy)
    return loaded, plan, warnings


def file_version(path: str | Path, registry: Registry) -> Version:
    """Return the version of a checkpoint file as ``convert`` would find it (stamp, version-key).

    A pickle with refused globals is read with inert placeholders: nothing is imported.
    """
    try:
        loaded = load_checkpoint(path)
    except UnsafeCheckpointError:
        loaded = load_checkpoint(path, moves=everything_deleted())
    version, _ = source_version(loaded, None, registry)
    return version


def _to_meta(loaded: Loaded) -> None:
    """Swap every state-dict tensor for a meta tensor: shapes stay, no data is read."""
    state_dict = loaded.state_dict
    for key, value in list(state_dict.items()):
        if isinstance(value, torch.Tensor):
            state_dict[key] = value.to("meta")


def convert_file(  # noqa: PLR0913 - the options of `ckpt-path convert`
    input: str | Path,  # noqa: A002 - the contract's word
    output: str | Path | None = None,
    *,
    target: str = "latest",
    source: str | None = None,
    registry: Registry | None = None,
    allow_lossy: bool = False,
    dry_run: bool = False,
    force: bool = False,
    strict: bool = False,
    state_dict_key: str | None = None,
    safe_globals: tuple[str, ...] = (),
    state_dict_only: bool = False,
    on_step: OnStep | None = None,
    on_write: Progress | None = None,
) -> ConvertResult:
    """Convert the checkpoint at ``input`` to ``target`` and write it to ``output``.

    Nothing is written when any step fails, and ``input`` is never modified. With
    ``dry_run`` the chain runs on meta tensors (no tensor data is read) and nothing is
    written. The output's format follows its extension (``.safetensors``,
    ``.safetensors.index.json`` for a sharded layout, anything else ``torch.save``); a format
    that holds only tensors needs ``state_dict_only`` when the checkpoint has more.
    """
    registry = registry or Registry.from_directory()
    input_path = Path(input)
    output_path = Path(output) if output is not None else None
    if not dry_run:
        if output_path is None:
            raise CheckpointError("convert needs an output path (-o OUTPUT), or --dry-run")
        if output_path.is_dir():
            raise CheckpointError(f"cannot write {output_path}: it is a directory")
        if output_path.exists() and not force:
            raise OutputExistsError(str(output_path))
        if input_path.exists() and output_path.exists() and output_path.samefile(input_path):
            raise CheckpointError(f"{output_path} is the input; write the result to another path")
    loaded, plan, warnings = _load_and_plan(
        input_path,
        registry,
        source=source,
        target=target,
        allow_lossy=allow_lossy,
        state_dict_key=state_dict_key,
        safe_globals=safe_globals,
    )
    if dry_run:
        _to_meta(loaded)
    outcome = run(
        plan,
        loaded.obj,
        state_dict_path=loaded.state_dict_path,
        schemas=registry.schema,
        strict=strict,
        on_step=on_step,
    )
    written = None
    if not dry_run and output_path is not None:
        written = save_checkpoint(
            outcome.checkpoint,
            output_path,
            force=force,
            state_dict_path=loaded.state_dict_path,
            state_dict_only=state_dict_only,
            metadata=loaded.metadata,
            shard_size=loaded.shard_size,
            progress=on_write,
        )
    return ConvertResult(
        input=input_path,
        output=written,
        plan=plan,
        steps=outcome.steps,
        warnings=warnings + outcome.warnings,
        dry_run=dry_run,
    )


def load(  # noqa: PLR0913 - mirrors convert_file
    path: str | Path,
    target: str = "latest",
    *,
    registry: Registry | None = None,
    source: str | None = None,
    allow_lossy: bool = False,
    strict: bool = False,
    state_dict_key: str | None = None,
    safe_globals: tuple[str, ...] = (),
) -> Any:  # noqa: ANN401 - a checkpoint is whatever the file holds
    """Load a checkpoint file and return it converted to ``target``, in memory.

    The file is not touched. The path taken and the command that would persist the result
    are logged on the ``ckpt_path`` logger.
    """
    registry = registry or Registry.from_directory()
    loaded, plan, warnings = _load_and_plan(
        Path(path),
        registry,
        source=source,
        target=target,
        allow_lossy=allow_lossy,
        state_dict_key=state_dict_key,
        safe_globals=safe_globals,
    )
    outcome = run(plan, loaded.obj, state_dict_path=loaded.state_dict_path, schemas=registry.schema, strict=strict)
    if plan.steps:
        path_text = " -> ".join(str(v) for v in plan.versions)
        persist = f"ckpt-path convert {shlex.quote(str(path))} -o OUTPUT --to {shlex.quote(str(plan.target))}"
        log.info("upgraded %s in memory along %s; to keep it: %s", path, path_text, persist)
    for warning in warnings + outcome.warnings:
        log.warning("%s", warning)
    return outcome.checkpoint


def inspect_file(
    path: str | Path,
    *,
    registry: Registry | None = None,
    state_dict_key: str | None = None,
    safe_globals: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Describe a checkpoint without reading tensor data: format, stamp, tensors, bytes.

    A pickle with globals that weights-only loading refuses is described with inert
    placeholders for them (nothing is imported) and lists them under ``globals``. With a
    ``registry``, an unstamped checkpoint's version is inferred from the schemas where one
    matches (``inferred_version``), and edited converters are reported (``warnings``).
    """
    needs: list[str] = []
    try:
        loaded = load_checkpoint(path, state_dict_key=state_dict_key, safe_globals=safe_globals)
    except UnsafeCheckpointError as exc:
        needs = list(exc.globals_needed)
        loaded = load_checkpoint(
            path, state_dict_key=state_dict_key, safe_globals=safe_globals, moves=everything_deleted()
        )
    stamp = read_stamp(loaded.obj, loaded.state_dict_path)
    sig = signature(loaded.state_dict)
    nbytes = sum(v.numel() * v.element_size() for v in loaded.state_dict.values() if isinstance(v, torch.Tensor))
    top_keys = sorted(str(k) for k in loaded.obj) if loaded.state_dict_path else []
    info: dict[str, Any] = {
        "path": str(loaded.path),
        "format": loaded.format,
        "version": stamp.version if stamp else None,
        "history": list(stamp.history) if stamp else [],
        "state_dict": ".".join(loaded.state_dict_path),
        "tensors": len(sig),
        "bytes": nbytes,
        "file_bytes": _size(loaded),
        "dtypes": dict(sorted(Counter(spec.dtype for spec in sig.values()).items())),
        "keys": top_keys,
        "globals": needs,
        "inferred_version": None,
        "warnings": [],
    }
    if registry is not None:
        info["warnings"] = digest_mismatches(stamp, registry)
        if stamp is None:
            try:
                version, origin = source_version(loaded, None, registry)
                info["inferred_version"], info["version_from"] = str(version), origin
            except NoStampError:
                try:
                    info["inferred_version"], info["version_from"] = str(infer_version(loaded, registry)), "schemas"
                except VersionInferenceError as exc:
                    info["warnings"].append(str(exc))
            except CkptPathError as exc:  # a recorded version that cannot be used: describe anyway
                info["warnings"].append(str(exc))
    return info


def _size(loaded: Loaded) -> int:
    size = loaded.path.stat().st_size
    if loaded.format == "safetensors-sharded":  # the index was read and checked on load
        weight_map = json.loads(loaded.path.read_text(encoding="utf-8"))["weight_map"]
        size += sum((loaded.path.parent / shard).stat().st_size for shard in set(weight_map.values()))
    return size


def stamp_file(  # noqa: PLR0913 - the options of `ckpt-path stamp`
    path: str | Path,
    version: str,
    output: str | Path | None = None,
    *,
    force: bool = False,
    state_dict_key: str | None = None,
    safe_globals: tuple[str, ...] = (),
) -> Path:
    """Stamp a checkpoint with ``version``; write it to ``output`` (default: in place, atomically)."""
    checked = str(parse_version(version))
    loaded = load_checkpoint(path, state_dict_key=state_dict_key, safe_globals=safe_globals)
    old = read_stamp(loaded.obj, loaded.state_dict_path)
    history = (*old.history, _restamp_entry(old.version, version)) if old is not None else ()
    obj = write_stamp(loaded.obj, loaded.state_dict_path, Stamp(version=checked, history=history))
    target = Path(output) if output is not None else loaded.path
    in_place = output is None or (target.exists() and target.samefile(loaded.path))
    return save_checkpoint(
        obj,
        target,
        force=force or in_place,
        state_dict_path=loaded.state_dict_path,
        metadata=loaded.metadata,
        shard_size=loaded.shard_size,
    )


def _restamp_entry(old: str, new: str) -> dict[str, Any]:
    entry = Stamp(version=old).advanced(source=old, target=new, converter="ckpt-path stamp", digest=None)
    return entry.history[-1]


def capture_schema(
    path: str | Path,
    version: str,
    output: str | Path,
    *,
    force: bool = False,
    state_dict_key: str | None = None,
) -> Path:
    """Write the schema of ``version`` captured from a real checkpoint at ``path``."""
    parse_version(version)
    loaded = load_checkpoint(path, state_dict_key=state_dict_key)
    schema = Schema.from_signature(version, signature(loaded.state_dict))
    out = Path(output)
    if out.exists() and not force:
        raise OutputExistsError(str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(schema.to_json(), encoding="utf-8")
    tmp.replace(out)
    return out
