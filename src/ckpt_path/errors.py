"""Errors raised by ckpt-path.

Every error a user can cause derives from one base; the command line catches only that
base, prints its message on one line and exits with code 1. Anything else is a bug and keeps
its traceback.

    CkptPathError
    ├── VersionError                 a string that is not a PEP 440 version, or a bad target
    ├── ConverterFileError           a converter file that cannot be read (file and line)
    ├── SettingsError                a [tool.ckpt-path] table that cannot be used (file, key)
    ├── SchemaError                  a schema file that cannot be read (file, key)
    ├── OpError                      an op whose arguments do not fit (also a ValueError)
    ├── GraphError
    │   ├── DuplicateConverterError  two converters for one source -> target pair
    │   ├── UnknownVersionError      a version no converter mentions
    │   ├── NoPathError              no path from source to target
    │   ├── LossyPathError           only lossy paths exist and lossy steps were not allowed
    │   └── UnsupportedVersionError  older than the oldest version the project still converts
    ├── CheckpointError
    │   ├── UnreadableCheckpointError  truncated, foreign or missing file
    │   ├── UnsafeCheckpointError      needs unpickling beyond weights_only=True
    │   ├── NoStampError               no version stamped and none given
    │   ├── MovedGlobalError           a declared move that names nothing usable
    │   ├── StampError                 a stamp that is damaged (what is wrong is said)
    │   ├── StateDictError             no state dict where one must be, or one that is not a mapping of names
    │   ├── VersionInferenceError      no schema, or several, match an unstamped state dict
    │   ├── OutputExistsError          OUTPUT exists and --force was not given
    │   ├── SaveError                  OUTPUT cannot be written there (InputOverwriteError: it would
    │   │                              replace or remove a file of INPUT)
    │   ├── UnwritableError            an entry the output's format cannot hold (by key)
    │   ├── LazyTensorError            a tensor read or computed when needed that cannot be (by key)
    │   ├── StoredEntriesError         a DCP load that would need entries computed, not stored
    │   └── DistributedError           another process of a conversion with many processes failed or died
    ├── UsageError                   options that do not fit together (exit 2 on the command line)
    ├── StepError                    a converter raised or returned the wrong thing
    │   ├── UnverifiedStepError      --strict, and a step's landing version has no schema
    │   └── OptimizerStateError      optimizer state that cannot follow a changed parameter
    └── ShapeMismatchError           a step left the state dict in an unexpected shape

Errors keep their data as attributes so callers can act on it without parsing messages.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DROP_OPTIMIZER_STATE",
    "CheckpointError",
    "CkptPathError",
    "ConverterFileError",
    "DistributedError",
    "DuplicateConverterError",
    "GraphError",
    "InputOverwriteError",
    "LazyTensorError",
    "LossyPathError",
    "MovedGlobalError",
    "NoPathError",
    "NoStampError",
    "OpError",
    "OptimizerStateError",
    "OutputExistsError",
    "SaveError",
    "SchemaError",
    "SettingsError",
    "ShapeMismatchError",
    "StampError",
    "StateDictError",
    "StepError",
    "StoredEntriesError",
    "UnknownVersionError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "UnsupportedVersionError",
    "UnverifiedStepError",
    "UnwritableError",
    "UsageError",
    "VersionError",
    "VersionInferenceError",
]

DROP_OPTIMIZER_STATE = (
    "pass --drop-optimizer-state (or set ckpt_path_drop_optimizer_state = True in the Lightning mixin)"
)
"""How a refusal over optimizer state says to drop it instead: both switches, as either may be in use."""

_SHOWN = 20
"""How many offending keys a one-line message lists."""


def _listing(items: Sequence[str]) -> str:
    if not items:
        return "nothing"
    if len(items) <= _SHOWN:
        return ", ".join(items)
    return ", ".join(items[:_SHOWN]) + f" and {len(items) - _SHOWN} more"


class CkptPathError(Exception):
    """Base of every error that ckpt-path reports to users as one line."""


class VersionError(CkptPathError, ValueError):
    """A version string that PEP 440 does not accept, or a target that names nothing."""

    def __init__(self, text: str, reason: str | None = None) -> None:
        self.text = text
        detail = reason or "not a PEP 440 version (e.g. 1.2.0, 1.3.0+lam)"
        super().__init__(f"invalid version {text!r}: {detail}")


class ConverterFileError(CkptPathError):
    """A converter file that cannot be read; names the file and, where known, the line."""

    def __init__(self, file: str, message: str, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")


class SettingsError(CkptPathError):
    """A ``[tool.ckpt-path]`` table that cannot be used: ``file``, the ``key`` at fault, and why."""

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"[tool.ckpt-path] {key}" if key else "[tool.ckpt-path]"
        super().__init__(f"{file}: {where}: {reason}")


class SchemaError(CkptPathError):
    """A schema file that cannot be read: ``file``, the ``key`` at fault if one is, and why."""

    def __init__(self, file: str, reason: str, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"schema {where}: {reason}")


class OpError(CkptPathError, ValueError):
    """An op whose arguments do not fit the state dict (the runner names the step around it)."""


class GraphError(CkptPathError):
    """A problem with the version graph as a whole."""


class DuplicateConverterError(GraphError):
    """Converters that claim the same source -> target edge; every such edge is reported at once.

    ``clashes`` holds one ``(source, target, files)`` per edge claimed twice or more;
    ``source``, ``target`` and ``files`` are the first clash's.
    """

    def __init__(self, clashes: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        self.clashes = tuple((s, t, tuple(f)) for s, t, f in clashes)
        self.source, self.target, self.files = self.clashes[0]
        said = "; ".join(f"two converters for {s} -> {t}: {' and '.join(f)}" for s, t, f in self.clashes)
        super().__init__(f"{said}; keep one of each")


class UnknownVersionError(GraphError):
    """A version that no converter mentions."""

    def __init__(self, version: str, nearest: Sequence[str]) -> None:
        self.version = version
        self.nearest = tuple(nearest)
        hint = (
            f"; nearest known: {', '.join(self.nearest)}"
            if self.nearest
            else ("; the graph has no versions (is the converters directory right?)")
        )
        super().__init__(f"unknown version {version}{hint}")


class NoPathError(GraphError):
    """No chain of converters leads from source to target."""

    def __init__(
        self,
        source: str,
        target: str,
        reachable: Sequence[str],
        reaching: Sequence[str],
    ) -> None:
        self.source = source
        self.target = target
        self.reachable = tuple(reachable)
        self.reaching = tuple(reaching)
        reach = _listing(self.reachable)
        reached = _listing(self.reaching)
        super().__init__(
            f"no path from {source} to {target}: {source} reaches {reach}; {target} is reached from {reached}",
        )


class LossyPathError(GraphError):
    """The only paths to the target throw information away; ``lossy_steps`` are their ``(source, target)``.

    ``culprits``, when given, says per lossy step what made it lossy (its lossy ops, or the
    file's ``lossy = True``), in the order of ``lossy_steps``.
    """

    def __init__(
        self,
        source: str,
        target: str,
        lossy_steps: Sequence[tuple[str, str]],
        culprits: Sequence[str] | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.lossy_steps = tuple(lossy_steps)
        self.culprits = tuple(culprits) if culprits is not None else None
        whys = self.culprits or ("",) * len(self.lossy_steps)
        lossy = ", ".join(
            f"{s} -> {t}" + (f": {why}" if why else "") for (s, t), why in zip(self.lossy_steps, whys, strict=False)
        )
        super().__init__(
            f"every path from {source} to {target} has a lossy step ({lossy}); pass --allow-lossy to accept it",
        )


class UnsupportedVersionError(GraphError):
    """A checkpoint older than the oldest version the project still converts."""

    def __init__(self, version: str, oldest: str, last_release: str | None) -> None:
        self.version = version
        self.oldest = oldest
        self.last_release = last_release
        reader = (
            f"{last_release} is the last release that reads it"
            if last_release
            else "no release that reads it is recorded ([tool.ckpt-path] last-release)"
        )
        super().__init__(
            f"version {version} is older than {oldest}, the oldest version this project still converts; {reader}",
        )


class CheckpointError(CkptPathError):
    """A checkpoint that cannot be read, trusted or written."""


class UnreadableCheckpointError(CheckpointError):
    """A file that is missing, truncated or not a checkpoint."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read {path}: {reason}")


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that needs globals that weights_only loading does not allow.

    Nothing from the file was executed.
    """

    def __init__(self, path: str, globals_needed: Sequence[str]) -> None:
        self.path = path
        self.globals_needed = tuple(globals_needed)
        self.global_name = self.globals_needed[0]
        others = f" (and {', '.join(self.globals_needed[1:])})" if len(self.globals_needed) > 1 else ""
        flags = " ".join(f"--safe-global {g}" for g in self.globals_needed)
        super().__init__(
            f"{path} needs the global {self.global_name}{others}, which weights_only loading "
            f"does not allow; nothing was run. If you trust this file, allow it with {flags}",
        )


class NoStampError(CheckpointError):
    """A checkpoint with no version stamp, when the command needs one."""

    def __init__(self, path: str, fix: str | None = None) -> None:
        self.path = path
        self.fix = (
            fix or f"pass --from VERSION (or --from auto), or stamp it once with `ckpt-path stamp {path} VERSION`"
        )
        super().__init__(f"{path} has no ckpt-path stamp and its version cannot be told: {self.fix}")


class StateDictError(CheckpointError):
    """No state dict where one must be, or one that is not a mapping of names to tensors."""


class StampError(CheckpointError):
    """A stamp that is damaged: ``problem`` says what is wrong with it. It is never trusted."""

    def __init__(self, problem: str, path: str | None = None) -> None:
        self.problem = problem
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}the ckpt_path stamp is damaged ({problem}); "
            "replace it with `ckpt-path stamp CKPT VERSION`, or pass --from VERSION",
        )

    def at(self, path: str) -> StampError:
        """Return the same error naming the file it was read from."""
        return StampError(self.problem, path)


class VersionInferenceError(CheckpointError):
    """No schema, or more than one, matches the state dict of an unstamped checkpoint.

    ``closeness`` maps each version with a schema to the number of keys that differ from it.
    """

    def __init__(self, path: str, matches: Sequence[str], closeness: Sequence[tuple[str, int]]) -> None:
        self.path = path
        self.matches = tuple(matches)
        self.closeness = tuple(closeness)
        near = ", ".join(f"{v} ({n} key(s) differ)" for v, n in self.closeness[:5]) or "no version has a schema"
        if self.matches:
            what = f"its state dict matches the schemas of {', '.join(self.matches)}: ambiguous"
        else:
            what = f"its state dict matches no schema; closest: {near}"
        super().__init__(f"cannot tell the version of {path}: {what}; pass --from VERSION")


class OutputExistsError(CheckpointError):
    """The output path exists and replacing it was not asked for."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} already exists; pass --force to replace it")


class StepError(CkptPathError):
    """A converter raised, or returned something that is not a checkpoint."""

    def __init__(self, source: str, target: str, file: str, reason: str) -> None:
        self.source = source
        self.target = target
        self.file = file
        self.reason = reason
        super().__init__(f"step {source} -> {target} ({file}) failed: {reason}")


class UnverifiedStepError(StepError):
    """``--strict``, and a step landed on a version without a schema, so nothing verified it."""

    def __init__(self, source: str, target: str, file: str, checks: Sequence[str]) -> None:
        self.checks = tuple(checks)
        what = f"only its own checks ran ({', '.join(self.checks)})" if self.checks else "nothing checked it"
        super().__init__(
            source,
            target,
            file,
            f"unverified: version {target} has no schema, so {what}; "
            f"add schemas/{target}.json (`ckpt-path schema CKPT --version {target}`) or drop --strict",
        )


class OptimizerStateError(StepError):
    """A step changes parameters whose optimizer state cannot be matched to them by name."""

    def __init__(self, source: str, target: str, file: str, parameters: Sequence[str], where: str) -> None:
        self.parameters = tuple(parameters)
        self.where = where
        super().__init__(
            source,
            target,
            file,
            f"it changes {_listing(list(self.parameters))}, and the optimizer state in {where} cannot be "
            "matched to parameter names (the checkpoint does not record which state belongs to which "
            f"parameter), so it would silently train on misaligned state; {DROP_OPTIMIZER_STATE} "
            "to drop it (lossy: training resumes with fresh optimizer state)",
        )


class MovedGlobalError(CheckpointError):
    """A moved global a converter declares that cannot be used: ``name``, ``declared_by``, ``reason``."""

    def __init__(self, name: str, declared_by: str, reason: str) -> None:
        self.name = name
        self.declared_by = declared_by
        self.reason = reason
        super().__init__(f"{declared_by}: the moved global {name} {reason}")


class UsageError(CkptPathError):
    """Options that do not fit together; the command line exits with code 2."""


class ShapeMismatchError(CkptPathError):
    """After a step, the state dict does not have the shapes it must have.

    ``problems`` holds one line per offending key, sorted by key; ``schema`` is the schema file
    the state dict was checked against, if any.
    """

    def __init__(self, source: str, target: str, file: str, problems: Sequence[str], schema: str | None = None) -> None:
        self.source = source
        self.target = target
        self.file = file
        self.problems = tuple(problems)
        self.schema = schema
        shown = "; ".join(self.problems[:_SHOWN])
        more = f"; and {len(self.problems) - _SHOWN} more" if len(self.problems) > _SHOWN else ""
        against = f" (checked against {schema})" if schema else ""
        super().__init__(
            f"step {source} -> {target} ({file}) left a wrong state dict{against}: {shown}{more}",
        )


class SaveError(CheckpointError):
    """A checkpoint that cannot be written at ``path`` (``reason`` says why); nothing was written there."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write {path}: {reason}")


class InputOverwriteError(SaveError):
    """Writing OUTPUT would replace or remove ``input_file``, a file of the input; nothing was written."""

    def __init__(self, path: str, input_file: str, action: str) -> None:
        self.input_file = input_file
        self.action = action
        super().__init__(
            path,
            f"that would {action} {input_file}, a file of the input; write the output to another path",
        )


class UnwritableError(CheckpointError):
    """The entry ``key`` of a checkpoint cannot be held by the output's format (``reason`` says why)."""

    def __init__(self, key: str | None, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(reason)


class LazyTensorError(CheckpointError):
    """A tensor read or computed only when needed could not be: ``key`` (when known) and ``reason``."""

    def __init__(self, key: str | None, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key is not None else reason)


class StoredEntriesError(CheckpointError):
    """Loading ``path`` as ``target`` would need ``keys`` computed by a step, not read as they are stored."""

    def __init__(self, path: str, target: str, keys: Sequence[str]) -> None:
        self.path = path
        self.target = target
        self.keys = tuple(keys)
        super().__init__(
            f"{path}: {_listing(self.keys)} would be computed by a step of the path to {target}, not read as "
            "stored; convert the checkpoint with `ckpt-path convert` instead",
        )


class DistributedError(CheckpointError):
    """Process ``rank`` of a conversion with ``world`` processes failed (``reason``) or died; nothing was written."""

    def __init__(self, rank: int | None, world: int, reason: str) -> None:
        self.rank = rank
        self.world = world
        self.reason = reason
        who = f"process {rank} of {world}" if rank is not None else f"a process of {world}"
        super().__init__(f"{who} failed, so the conversion was abandoned and nothing was written: {reason}")
