"""What the commands do, as functions: convert, load, plan a file, inspect, stamp, capture a schema.

The command line is a thin shell over these; a project calls them from Python the same way.
Conversions go through :func:`ckpt_path.pipeline.upgrade`, like every other entry point.
"""

from __future__ import annotations

import logging
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_path import dcp
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.converters import MovesCode, OpsCode
from ckpt_path.errors import (
    CkptPathError,
    InputOverwriteError,
    NoStampError,
    OutputExistsError,
    SaveError,
    UnsafeCheckpointError,
    UsageError,
    VersionInferenceError,
)
from ckpt_path.formats import INDEX_SUFFIX, Progress
from ckpt_path.pickles import Moves, everything_deleted
from ckpt_path.pipeline import upgrade
from ckpt_path.planner import Plan, Step
from ckpt_path.provenance import SourceVersion, digest_mismatches, infer_version, source_version
from ckpt_path.registry import Registry
from ckpt_path.runner import OnStep, StepReport, predict
from ckpt_path.shapes import Schema, signature
from ckpt_path.stamp import Stamp, write_stamp
from ckpt_path.storage import load_checkpoint, save_checkpoint, verify_records, write_checkpoint
from ckpt_path.versions import parse_version

__all__ = [
    "ConvertResult",
    "Inspection",
    "capture_schema",
    "convert_file",
    "inspect_file",
    "load",
    "plan_file",
    "stamp_file",
]

log = logging.getLogger("ckpt_path")


@dataclass(slots=True, kw_only=True)
class ConvertResult:
    """What a conversion did: the plan, where the version came from, a report per step, the output."""

    input: Path
    output: Path | None
    plan: Plan
    source: SourceVersion
    steps: list[StepReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    copied_bytes: int = 0
    """Tensor bytes copied from the input as they were (in a dry run: that no step changed)."""
    written_bytes: int = 0
    """Tensor bytes written from memory (in a dry run: that steps compute)."""

    @property
    def verified(self) -> bool:
        """Whether every step was verified against its landing version's schema."""
        return all(report.verified for report in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as the contract's ``convert --json`` object."""
        requested = self.plan.requested_source
        return {
            "source": str(self.plan.source),
            "requested_source": str(requested) if requested is not None else None,
            "version_from": self.source.version_from,
            "target": str(self.plan.target),
            "input": str(self.input),
            "output": str(self.output) if self.output is not None else None,
            "dry_run": self.dry_run,
            "lossy": self.plan.lossy,
            "verified": self.verified,
            "copied_bytes": self.copied_bytes,
            "written_bytes": self.written_bytes,
            "steps": [s.to_dict() for s in self.steps],
            "warnings": list(self.warnings),
        }


def _check_output(input_path: Path, output: Path | None, *, force: bool) -> Path:
    if output is None:
        raise UsageError("convert needs an output path (-o OUTPUT), or --dry-run")
    if output.is_dir() and not dcp.writes_dcp(output, None):
        raise SaveError(str(output), "it is a directory")
    if output.exists() and not force:
        raise OutputExistsError(str(output))
    if input_path.exists() and output.exists() and output.samefile(input_path):
        raise InputOverwriteError(str(output), str(input_path), "replace")
    return output


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
    safe_globals: Sequence[str] = (),
    state_dict_only: bool = False,
    drop_optimizer_state: bool = False,
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
    output_path = None if dry_run else _check_output(input_path, Path(output) if output else None, force=force)
    done = upgrade(
        input_path,
        registry,
        target,
        source=source,
        allow_lossy=allow_lossy,
        strict=strict,
        dry_run=dry_run,
        state_dict_key=state_dict_key,
        safe_globals=safe_globals,
        drop_optimizer_state=drop_optimizer_state,
        on_step=on_step,
    )
    result = ConvertResult(
        input=input_path,
        output=None,
        plan=done.plan,
        source=done.source,
        steps=done.steps,
        warnings=done.warnings,
        dry_run=dry_run,
        copied_bytes=done.unchanged_bytes,
        written_bytes=done.computed_bytes,
    )
    if output_path is not None:
        checkpoint = done.checkpoint
        # Only ops ran: nothing wrote into the input's mapping, and the records the writer copies
        # keep their CRC; those it read are checked after writing. Code may have read anything.
        trust = all(_only_ops(step) for step in done.plan.steps)
        if not trust:
            verify_records(checkpoint)
        written = write_checkpoint(
            checkpoint.obj,
            output_path,
            force=force,
            state_dict_at=checkpoint.state_dict_at,
            state_dict_only=state_dict_only,
            metadata=checkpoint.metadata,
            shard_size=checkpoint.shard_size,
            progress=on_write,
            protect=checkpoint.files,
            source=checkpoint,
            trust_memory=trust,
        )
        result.output, result.copied_bytes, result.written_bytes = (
            written.path,
            written.copied_bytes,
            written.written_bytes,
        )
    return result


def _only_ops(step: Step) -> bool:
    """Whether a step ran ops (or nothing) and no code that could write into tensors in place."""
    return isinstance(step.code, OpsCode | MovesCode) and not step.has_when


def _persist_command(  # noqa: PLR0913 - every option the conversion used
    path: Path,
    plan: Plan,
    registry: Registry,
    *,
    allow_lossy: bool,
    state_dict_key: str | None,
    safe_globals: Sequence[str],
) -> str:
    """Return the ``ckpt-path convert`` command that writes what :func:`load` made, runnable as printed."""
    target = str(plan.target)
    if path.name.endswith(INDEX_SUFFIX):
        output = path.with_name(f"{path.name.removesuffix(INDEX_SUFFIX)}-{target}{INDEX_SUFFIX}")
    else:
        output = path.with_name(f"{path.stem}-{target}{path.suffix}")
    words = ["ckpt-path", "convert", str(path), "-o", str(output), "--to", target]
    words += ["--from", str(plan.requested_source or plan.source)]
    if registry.directory is not None:
        words += ["--converters", str(registry.directory)]
    if allow_lossy and plan.lossy:
        words.append("--allow-lossy")
    if state_dict_key is not None:
        words += ["--state-dict", state_dict_key]
    for name in safe_globals:
        words += ["--safe-global", name]
    return shlex.join(words)


def load(  # noqa: PLR0913 - mirrors convert_file
    path: str | Path,
    target: str = "latest",
    *,
    registry: Registry | None = None,
    source: str | None = None,
    allow_lossy: bool = False,
    strict: bool = False,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
) -> Any:
    """Load a checkpoint file and return it converted to ``target``, in memory.

    The file is not touched. The path taken and a command that would persist the result
    (runnable as printed) are logged on the ``ckpt_path`` logger.
    """
    registry = registry or Registry.from_directory()
    done = upgrade(
        Path(path),
        registry,
        target,
        source=source,
        allow_lossy=allow_lossy,
        strict=strict,
        state_dict_key=state_dict_key,
        safe_globals=safe_globals,
    )
    plan = done.plan
    if plan.steps:
        persist = _persist_command(
            Path(path),
            plan,
            registry,
            allow_lossy=allow_lossy,
            state_dict_key=state_dict_key,
            safe_globals=safe_globals,
        )
        log.info(
            "upgraded %s in memory along %s; to keep it: %s", path, " -> ".join(str(v) for v in plan.versions), persist
        )
    for warning in done.warnings:
        log.warning("%s", warning)
    return done.checkpoint.obj


def _peek(path: str | Path, state_dict_key: str | None = None, safe_globals: Sequence[str] = ()) -> Checkpoint:
    """Load a checkpoint with inert placeholders for every global nothing allows: nothing is imported."""
    return load_checkpoint(path, state_dict_key=state_dict_key, safe_globals=safe_globals, moves=everything_deleted())


def plan_file(
    path: str | Path,
    target: str,
    registry: Registry,
    *,
    allow_lossy: bool = False,
) -> tuple[Plan, SourceVersion, list[StepReport]]:
    """Plan a checkpoint file's path and predict each step's effect on its shapes.

    Reads the file's stamp (or ``version-key``) with placeholders for any global (nothing is
    imported) and never runs converter code: ops are predicted from shapes alone; a step with
    a ``convert`` function is reported as known only when it runs.
    """
    checkpoint = _peek(path)
    found = source_version(checkpoint, registry)
    plan = registry.plan(found.version, target, allow_lossy=allow_lossy)
    return plan, found, predict(plan, signature(checkpoint.state_dict), registry.schema)


@dataclass(frozen=True, slots=True, kw_only=True)
class Inspection:
    """What ``inspect`` tells about a checkpoint, read without tensor data."""

    path: str
    format: str
    version: str | None
    """The stamped version; None without a (trustworthy) stamp."""
    history: tuple[dict[str, Any], ...]
    state_dict: str
    """Where the state dict lies, dotted; empty for a flat state dict."""
    tensors: int
    bytes: int
    file_bytes: int
    dtypes: dict[str, int]
    keys: tuple[str, ...]
    """Top-level keys of a dict checkpoint."""
    globals: tuple[str, ...]
    """Globals the pickle needs that weights-only loading does not allow (never imported)."""
    inferred_version: str | None = None
    version_from: str | None = None
    reads_as: str | None = None
    """The version of the graph the stamped or inferred version reads as, when it is not one of the graph."""
    damaged_stamp: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the inspection as ``inspect --json`` prints it."""
        return {
            "path": self.path,
            "format": self.format,
            "version": self.version,
            "history": [dict(h) for h in self.history],
            "state_dict": self.state_dict,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "file_bytes": self.file_bytes,
            "dtypes": dict(self.dtypes),
            "keys": list(self.keys),
            "globals": list(self.globals),
            "inferred_version": self.inferred_version,
            "version_from": self.version_from,
            "reads_as": self.reads_as,
            "damaged_stamp": self.damaged_stamp,
            "warnings": list(self.warnings),
        }


def _version_of_unstamped(checkpoint: Checkpoint, registry: Registry) -> tuple[dict[str, str], list[str]]:
    """Find an unstamped checkpoint's version as ``convert`` would, else from the schemas; never fail."""
    try:
        found = source_version(checkpoint, registry)
        node, requested = registry.planner.resolve_source(found.version)
    except NoStampError:
        try:
            return {"inferred_version": str(infer_version(checkpoint, registry)), "version_from": "schemas"}, []
        except VersionInferenceError as exc:
            return {}, [str(exc)]
    except CkptPathError as exc:  # a recorded version that cannot be used: describe anyway
        return {}, [str(exc)]
    said = {"inferred_version": str(found.version), "version_from": found.version_from}
    if requested is not None:
        said["reads_as"] = str(node)
    return said, []


def _stamped_reads_as(stamp: Stamp, registry: Registry) -> tuple[dict[str, str], list[str]]:
    """Say which version of the graph a stamped version reads as (when it is not one), or that none does."""
    try:
        node, requested = registry.planner.resolve_source(stamp.version)
    except CkptPathError as exc:
        return {}, [f"the converters do not know the stamped version, so convert will refuse it: {exc}"]
    return ({"reads_as": str(node)} if requested is not None else {}), []


def inspect_file(
    path: str | Path,
    *,
    registry: Registry | None = None,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
) -> Inspection:
    """Describe a checkpoint without reading tensor data: format, stamp, tensors, bytes.

    A pickle with globals that weights-only loading refuses is described with inert
    placeholders for them (nothing is imported) and lists them under ``globals``. With a
    ``registry``, an unstamped checkpoint's version is found as ``convert`` finds it, else
    inferred from the schemas (``inferred_version``), and edited converters are reported.
    """
    moves: Moves | None = registry.dict_globals if registry is not None else None
    needs: list[str] = []
    try:
        checkpoint = load_checkpoint(
            path, state_dict_key=state_dict_key, safe_globals=safe_globals, moves=moves or None
        )
    except UnsafeCheckpointError as exc:
        needs = list(exc.globals_needed)
        checkpoint = _peek(path, state_dict_key, safe_globals)
    stamp, damaged = checkpoint.stamp, checkpoint.damaged_stamp
    warnings = [str(damaged)] if damaged is not None else []
    found: dict[str, str] = {}
    if registry is not None:
        warnings += digest_mismatches(stamp, registry)
        if stamp is None and damaged is None:
            found, problems = _version_of_unstamped(checkpoint, registry)
            warnings += problems
        elif stamp is not None:
            found, problems = _stamped_reads_as(stamp, registry)
            warnings += problems
    sig = signature(checkpoint.state_dict)
    return Inspection(
        path=checkpoint.name,
        format=checkpoint.format,
        version=stamp.version if stamp else None,
        history=stamp.history if stamp else (),
        state_dict=".".join(checkpoint.state_dict_at),
        tensors=len(sig),
        bytes=sum(
            int(v.numel()) * int(v.element_size()) for v in checkpoint.state_dict.values() if hasattr(v, "numel")
        ),
        file_bytes=sum(f.stat().st_size for f in checkpoint.files),
        dtypes=dict(sorted(Counter(spec.dtype for spec in sig.values()).items())),
        keys=tuple(sorted(str(k) for k in checkpoint.obj)) if checkpoint.state_dict_at else (),
        globals=tuple(sorted(set(needs) | set(checkpoint.placeholders))),
        damaged_stamp=damaged.problem if damaged is not None else None,
        warnings=tuple(warnings),
        **found,
    )


def stamp_file(  # noqa: PLR0913 - the options of `ckpt-path stamp`
    path: str | Path,
    version: str,
    output: str | Path | None = None,
    *,
    force: bool = False,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
) -> Path:
    """Stamp a checkpoint with ``version``; write it to ``output`` (default: in place, atomically).

    A damaged stamp is replaced (its history cannot be trusted, so it is not kept), and so is a
    flat state dict's ``_metadata`` that is not a mapping.
    """
    checked = str(parse_version(version))
    checkpoint = load_checkpoint(path, state_dict_key=state_dict_key, safe_globals=safe_globals)
    old = checkpoint.stamp
    if old is None:
        history: tuple[dict[str, Any], ...] = ()
    elif old.version == checked:  # stamped again with the same version: nothing happened to record
        history = tuple(old.history)
    else:
        history = (*old.history, _restamp_entry(old.version, checked))
    names = old.optimizer_parameters if old is not None else None  # they name the optimizer state's entries
    stamp = Stamp(version=checked, history=history, optimizer_parameters=names)
    obj = write_stamp(checkpoint.obj, checkpoint.state_dict_at, stamp)
    source_file = checkpoint.file or Path(path)
    target = Path(output) if output is not None else source_file
    in_place = output is None or (target.exists() and target.samefile(source_file))
    return save_checkpoint(
        obj,
        target,
        force=force or in_place,
        state_dict_at=checkpoint.state_dict_at,
        metadata=checkpoint.metadata,
        shard_size=checkpoint.shard_size,
        protect=() if in_place else checkpoint.files,  # in place replaces its own files, nothing else
        source=checkpoint,  # no step ran: every tensor record is copied as it is, CRC and all
        trust_memory=True,
    )


def _restamp_entry(old: str, new: str) -> dict[str, Any]:
    entry = Stamp(version=old).advanced(source=old, target=new, converter="ckpt-path stamp", digest=None)
    return entry.history[-1]


def capture_schema(  # noqa: PLR0913 - the options of `ckpt-path schema`
    path: str | Path,
    version: str,
    output: str | Path,
    *,
    force: bool = False,
    state_dict_key: str | None = None,
    any_dtype: bool = False,
) -> Path:
    """Write the schema of ``version`` captured from a real checkpoint at ``path``.

    With ``any_dtype`` the schema leaves every dtype free, for a layout that ships in several
    dtypes (float32, bfloat16, float16): shapes are checked, dtypes are not.
    """
    parse_version(version)
    checkpoint = _peek(path, state_dict_key)
    schema = Schema.from_signature(version, signature(checkpoint.state_dict), dtypes=not any_dtype)
    out = Path(output)
    if out.exists() and not force:
        raise OutputExistsError(str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(schema.to_json(), encoding="utf-8")
    tmp.replace(out)
    return out
