"""One conversion pipeline behind every entry point: load, find the version, plan, run.

The command line, :func:`ckpt_path.convert_file`, :func:`ckpt_path.load`, the Lightning mixin,
the testing helpers and ``check`` all go through :func:`upgrade` (or, for a plan chosen by
hand, through the same :func:`ckpt_path.runner.run_plan`), so a checkpoint is read once, its
version is found one way, and every step is checked the same way wherever it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckpt_path import dcp
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.errors import CkptPathError, UnsafeCheckpointError
from ckpt_path.pickles import Moves, everything_deleted
from ckpt_path.planner import Plan
from ckpt_path.provenance import SourceVersion, digest_mismatches, source_version
from ckpt_path.registry import Registry
from ckpt_path.runner import OnStep, StepReport, run_plan
from ckpt_path.storage import load_checkpoint
from ckpt_path.torchfiles import dict_subclass_error

__all__ = ["Upgrade", "open_checkpoint", "upgrade"]

log = logging.getLogger("ckpt_path")


@dataclass(slots=True, kw_only=True)
class Upgrade:
    """What :func:`upgrade` did: the converted checkpoint, the plan, a report per step."""

    checkpoint: Checkpoint
    plan: Plan
    source: SourceVersion
    steps: list[StepReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchanged_bytes: int = 0
    """Bytes of the tensors no step changed (the same objects as loaded): what a writer can copy."""
    computed_bytes: int = 0
    """Bytes of the tensors the steps made."""

    @property
    def verified(self) -> bool:
        """Whether every step was verified against its landing version's schema."""
        return all(report.verified for report in self.steps)


def _resolve(  # noqa: PLR0913 - what deciding a checkpoint's path needs
    checkpoint: Checkpoint,
    registry: Registry,
    target: str,
    *,
    source: str | None,
    unstamped: str | None,
    allow_lossy: bool,
) -> tuple[SourceVersion, Plan]:
    found = source_version(checkpoint, registry, source, unstamped=unstamped)
    return found, registry.plan(found.version, target, allow_lossy=allow_lossy)


def open_checkpoint(  # noqa: PLR0913 - the options of loading for a conversion
    path: str | Path,
    registry: Registry,
    target: str = "latest",
    *,
    source: str | None = None,
    unstamped: str | None = None,
    allow_lossy: bool = False,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
) -> tuple[Checkpoint, SourceVersion, Plan]:
    """Load a checkpoint file once, find its version and plan its path.

    A pickle naming globals that weights-only loading refuses, in a project whose converters
    declare moved globals, is first read with inert placeholders for all of them (importing
    nothing) to learn its version and plan; it is then loaded with the user's safe globals and
    the moves of the converters on that path, and only those. Dict subclasses a converter
    declares ``read_as_dict`` are read as plain dicts on every load.
    """
    plain = registry.dict_globals

    def read(moves: Moves | None) -> Checkpoint:
        return load_checkpoint(path, state_dict_key=state_dict_key, safe_globals=safe_globals, moves=moves)

    try:
        checkpoint = read(plain or None)
    except UnsafeCheckpointError as refused:
        try:
            peek = read(Moves.merge([everything_deleted(), plain]))
        except CkptPathError:
            raise refused from None
        dicts = sorted(set(refused.globals_needed) & set(peek.read_as_dict))
        if dicts:  # a global nothing allows is a dict subclass: say what would read it
            raise dict_subclass_error(str(path), dicts[0]) from None
        if not any(c.moves for c in registry.converters):
            raise
        found, plan = _resolve(peek, registry, target, source=source, unstamped=unstamped, allow_lossy=allow_lossy)
        moves = Moves.merge([plain, *(s.moves for s in plan.steps if s.moves)])
        return read(moves), found, plan
    found, plan = _resolve(checkpoint, registry, target, source=source, unstamped=unstamped, allow_lossy=allow_lossy)
    return checkpoint, found, plan


def _on_meta(checkpoint: Checkpoint) -> Checkpoint:
    """Return a copy of the checkpoint whose tensors are meta tensors: shapes stay, no data is read.

    Containers (dicts, lists, tuples) are copied, so a dry run changes nothing of the caller's
    object; other values are shared, as the run only reads them.
    """
    return dataclasses.replace(checkpoint, obj=_meta_copy(checkpoint.obj))


def _meta_copy(node: Any) -> Any:
    if isinstance(node, torch.Tensor):
        return node.to("meta")
    if isinstance(node, Mapping):
        try:  # the same kind of dict (an OrderedDict stays one); any other mapping becomes a dict
            copy: Any = type(node)() if isinstance(node, dict) else {}
        except TypeError:
            copy = {}
        for key, value in node.items():
            copy[key] = _meta_copy(value)
        metadata = getattr(node, "_metadata", None)
        if metadata is not None:
            with contextlib.suppress(AttributeError):
                copy._metadata = _meta_copy(metadata)  # noqa: SLF001 - a copy: a flat state dict's stamp lives there
        return copy
    if isinstance(node, list):
        return [_meta_copy(value) for value in node]
    if isinstance(node, tuple) and not hasattr(node, "_fields"):
        return tuple(_meta_copy(value) for value in node)
    return node


def upgrade(  # noqa: PLR0913 - the options every entry point shares
    checkpoint: Checkpoint | str | Path,
    registry: Registry,
    target: str = "latest",
    *,
    source: str | None = None,
    unstamped: str | None = None,
    allow_lossy: bool = False,
    strict: bool = False,
    dry_run: bool = False,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
    drop_optimizer_state: bool = False,
    on_step: OnStep | None = None,
) -> Upgrade:
    """Convert a checkpoint to ``target``: find its version, plan, run every step checked, stamp.

    ``checkpoint`` is a :class:`Checkpoint` (e.g. ``Checkpoint.from_object(ckpt)``, converted in
    place) or a file path (loaded by :func:`open_checkpoint`; the file is never written). The
    version comes from ``source`` (``--from``; ``"auto"`` infers it from the schemas), else the
    stamp, else the project's ``version-key``, else ``unstamped`` (a version or ``"auto"``);
    with none of them the checkpoint is refused (:class:`NoStampError`), never guessed. With
    ``dry_run`` the steps run on meta tensors (no tensor data read). Raises a
    :class:`CkptPathError` subclass for anything a user can cause. Optimizer state follows the
    parameters it belongs to, or the conversion is refused unless ``drop_optimizer_state``.
    """
    if isinstance(checkpoint, Checkpoint):
        found, plan = _resolve(
            checkpoint, registry, target, source=source, unstamped=unstamped, allow_lossy=allow_lossy
        )
        held = checkpoint
    else:
        held, found, plan = open_checkpoint(
            checkpoint,
            registry,
            target,
            source=source,
            unstamped=unstamped,
            allow_lossy=allow_lossy,
            state_dict_key=state_dict_key,
            safe_globals=safe_globals,
        )
    warnings = digest_mismatches(held.stamp, registry)
    if held.damaged_stamp is not None:
        warnings.append(f"{held.name}: the stamp is damaged ({held.damaged_stamp.problem}); using --from {source}")
    stamped = held.stamp.version if held.stamp is not None else None
    overridden = None
    if found.version_from == "--from" and stamped is not None and stamped != str(found.version):
        overridden = f"{held.name} is stamped {stamped} but --from {source} was given; using {found.version}"
        warnings.append(overridden)
    if found.version_from != "stamp":
        log.info("%s has no stamp; its version %s comes from %s", held.name, found.version, found.version_from)
    if plan.requested_source is not None and plan.source_note:
        warnings.append(plan.source_note)
    if dry_run:
        held = _on_meta(held)
        if _unread(held.obj):  # a DCP dry run reads .metadata only: say what that leaves unchecked
            warnings.append(
                f"{held.name}: the dry run read only the metadata, not the non-tensor entries (optimizer param "
                "groups, ...), so whether the optimizer state can follow each step was not checked; the "
                "conversion checks it"
            )
    before = _tensors(held.obj)  # held until counted: a freed tensor's id may be reused by a computed one
    loaded = {id(v) for v in before}
    try:
        reports, run_warnings = run_plan(
            held,
            plan,
            schemas=registry.schema,
            strict=strict,
            dry_run=dry_run,
            drop_optimizer_state=drop_optimizer_state,
            on_step=on_step,
        )
    except CkptPathError as exc:
        if overridden is not None:  # the likeliest cause of the failure: say it with the error, on its line
            _add_note(exc, overridden)
        raise
    tensors = _tensors(held.obj)  # the state dict's and the optimizer state's, as a writer counts them
    unchanged = sum(_nbytes(v) for v in tensors if id(v) in loaded)
    del before
    return Upgrade(
        checkpoint=held,
        plan=plan,
        source=found,
        steps=reports,
        warnings=warnings + run_warnings,
        unchanged_bytes=unchanged,
        computed_bytes=sum(_nbytes(v) for v in tensors) - unchanged,
    )


def _add_note(exc: CkptPathError, note: str) -> None:
    """Append ``note`` to the error's message (its data attributes stay as they are)."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} (note: {note})", *exc.args[1:])


def _reachable(obj: object) -> Iterator[object]:
    """Yield every object reachable from a checkpoint object through dicts, lists and tuples, each once."""
    stack, seen = [obj], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


def _unread(obj: object) -> bool:
    """Whether a checkpoint object holds entries left unread (a DCP checkpoint read for its metadata only)."""
    return any(isinstance(node, dcp.Unread) for node in _reachable(obj))


def _tensors(obj: object) -> list[torch.Tensor]:
    """Every tensor in a checkpoint object (dicts, lists and tuples), each once."""
    return [node for node in _reachable(obj) if isinstance(node, torch.Tensor)]


def _nbytes(tensor: torch.Tensor) -> int:
    return int(tensor.numel()) * tensor.element_size()
