"""Checkpoints on disk: load safely, find the state dict, read and write the stamp, save atomically.

Loading always uses ``torch.load(weights_only=True)``, memory-mapped where the file allows,
so tensor data is read only when something touches it. A file that needs a global beyond
what weights-only loading allows is refused with that global's name; it is never executed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ckpt_path import formats
from ckpt_path.errors import (
    CheckpointError,
    OutputExistsError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    VersionError,
)
from ckpt_path.pickles import Moves

if TYPE_CHECKING:
    from typing_extensions import Self
from ckpt_path.versions import parse_version

__all__ = [
    "STAMP_KEY",
    "Loaded",
    "Stamp",
    "find_state_dict",
    "get_state_dict",
    "load_checkpoint",
    "read_stamp",
    "save_checkpoint",
    "write_stamp",
]

STAMP_KEY = "ckpt_path"
"""Key of the stamp: top level of a dict checkpoint, or ``state_dict._metadata`` when flat."""

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stamp:
    """The version recorded in a checkpoint and the steps that led to it."""

    version: str
    history: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the stamp as stored in a checkpoint."""
        return {"version": self.version, "history": [dict(h) for h in self.history]}

    def advanced(
        self,
        *,
        source: str,
        target: str,
        converter: str,
        digest: str | None,
    ) -> Stamp:
        """Return the stamp after one more step, with its history entry appended."""
        entry = {
            "source": source,
            "target": target,
            "converter": converter,
            "digest": digest,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Stamp(version=target, history=(*self.history, entry))


@dataclass(slots=True, kw_only=True)
class Loaded:
    """A checkpoint object read from a file, and where its state dict lies.

    ``state_dict_path`` is the sequence of keys from the top-level object to the state dict
    (empty for a flat state dict).
    """

    obj: Any
    path: Path
    format: str
    state_dict_path: tuple[str, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    """safetensors ``__metadata__`` other than the stamp, kept when writing safetensors again."""
    shard_size: int | None = None
    """For a sharded input: the size of its largest shard, the default for the output's shards."""

    @property
    def state_dict(self) -> MutableMapping[str, Any]:
        """The state dict inside the checkpoint."""
        return get_state_dict(self.obj, self.state_dict_path)


def _is_tensor_map(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def find_state_dict(obj: object, override: str | None = None) -> tuple[str, ...]:
    """Find where the state dict lies inside a checkpoint object.

    ``override`` is a dotted key path (``model.ema``) that wins over detection. Detection
    tries, in order: a flat mapping of tensors, then the keys ``state_dict`` (Lightning),
    ``model``, ``model_state_dict``, ``module`` and ``net``.
    """
    if override is not None:
        path = tuple(p for p in override.split(".") if p)
        try:
            found = get_state_dict(obj, path)
        except (KeyError, TypeError):
            raise CheckpointError(f"no state dict at {override!r} in this checkpoint") from None
        if not isinstance(found, Mapping):
            raise CheckpointError(f"{override!r} holds a {type(found).__name__}, not a state dict")
        return path
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, not a {type(obj).__name__}")
    tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    if tensors and len(tensors) >= len([k for k in obj if k != STAMP_KEY]):
        return ()
    for key in _STATE_DICT_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping) and (not value or _is_tensor_map(_tensor_part(value))):
            return (key,)
    if not obj or tensors:
        return ()
    keys = ", ".join(sorted(map(str, obj))[:10])
    raise CheckpointError(
        f"cannot tell where the state dict is (top-level keys: {keys}); pass --state-dict KEY",
    )


def _tensor_part(mapping: Mapping[str, Any]) -> dict[str, Any]:
    # Some state dicts hold a few non-tensors (e.g. `_extra_state`); judge by the tensors.
    return {k: v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def get_state_dict(obj: Any, path: Sequence[str]) -> MutableMapping[str, Any]:  # noqa: ANN401 - checkpoints are any pickle
    """Follow ``path`` into ``obj`` and return the state dict there."""
    node = obj
    for key in path:
        node = node[key]
    if not isinstance(node, MutableMapping):
        raise CheckpointError(f"{'.'.join(path) or 'the checkpoint'} is a {type(node).__name__}, not a dict")
    return node


def read_stamp(obj: object, state_dict_path: Sequence[str] = ()) -> Stamp | None:
    """Return the stamp of a checkpoint object, or None when it has none."""
    raw: object = None
    if state_dict_path:
        raw = obj.get(STAMP_KEY) if isinstance(obj, Mapping) else None
    else:
        metadata = getattr(obj, "_metadata", None)
        raw = metadata.get(STAMP_KEY) if isinstance(metadata, Mapping) else None
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("version"), str):
        raise CheckpointError(f"the {STAMP_KEY} stamp is damaged: {raw!r:.200}")
    try:
        parse_version(raw["version"])
    except VersionError as exc:
        raise CheckpointError(f"the {STAMP_KEY} stamp is damaged: {exc}") from None
    history = raw.get("history") or []
    return Stamp(version=raw["version"], history=tuple(dict(h) for h in history if isinstance(h, Mapping)))


def write_stamp(obj: Any, state_dict_path: Sequence[str], stamp: Stamp) -> Any:  # noqa: ANN401
    """Write ``stamp`` into a checkpoint object and return the object.

    A dict checkpoint gets a top-level ``ckpt_path`` key. A flat state dict gets it in its
    ``_metadata`` (turning a plain dict into an ``OrderedDict``), so that
    ``model.load_state_dict(sd, strict=True)`` still sees only parameter keys.
    """
    if state_dict_path:
        obj[STAMP_KEY] = stamp.to_dict()
        return obj
    if not isinstance(obj, OrderedDict):
        obj = OrderedDict(obj)
    metadata = getattr(obj, "_metadata", None)
    if metadata is None:
        metadata = OrderedDict()
        obj._metadata = metadata  # noqa: SLF001 - torch's own convention for state-dict metadata
    metadata[STAMP_KEY] = stamp.to_dict()
    return obj


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_MAX_ROUNDS = 64
"""A legacy file names one refused global per attempt; a zip file names them all at once."""


def _resolve_globals(names: Sequence[str]) -> list[Any]:
    """Import the globals a user allowed by name (``module.Name``)."""
    allowed = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            allowed.append(getattr(import_module(module), attr))
        except (ImportError, AttributeError, ValueError):
            raise CheckpointError(f"--safe-global {name}: cannot import {attr!r} from {module!r}") from None
    return allowed


def _load_safetensors(path: Path, state_dict_key: str | None) -> Loaded:
    if state_dict_key is not None:
        raise CheckpointError(f"--state-dict does not apply to {path.name}: safetensors hold a flat state dict")
    if formats.is_sharded(path):
        state_dict, metadata, largest = formats.load_sharded(path)
        return Loaded(
            obj=state_dict,
            path=path,
            format="safetensors-sharded",
            state_dict_path=(),
            metadata=metadata,
            shard_size=largest,
        )
    state_dict, metadata = formats.load_safetensors(path)
    return Loaded(obj=state_dict, path=path, format="safetensors", state_dict_path=(), metadata=metadata)


def _torch_load(path: Path, *, zipped: bool, allowed: list[Any], moves: Moves | None, mmap: bool) -> Any:  # noqa: ANN401
    """``torch.load(weights_only=True)``, mapping moved globals as ``moves`` says, round by round."""
    name = str(path)
    for _ in range(_MAX_ROUNDS):
        try:
            with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
                # torch warns about a newer pickle protocol before failing on it; the error says more.
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
        except pickle.UnpicklingError as exc:
            error = _unpickling_error(name, exc, zipped=zipped)
            if moves is None or not isinstance(error, UnsafeCheckpointError):
                raise error from None
            resolved = [(moves.resolve(g), g) for g in error.globals_needed]
            unresolved = [g for found, g in resolved if found is None]
            if unresolved:
                raise UnsafeCheckpointError(name, unresolved) from None
            allowed = [*allowed, *resolved]
        except Exception as exc:  # noqa: BLE001 - torch raises many types on foreign or damaged files
            if not zipped:
                reason = "not a torch checkpoint (no zip archive, and not the legacy format either)"
            else:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnreadableCheckpointError(name, f"truncated or not a checkpoint ({reason[:160]})") from None
    raise UnreadableCheckpointError(name, f"needs more than {_MAX_ROUNDS} rounds of moved globals")


def load_checkpoint(
    path: str | Path,
    *,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
    mmap: bool = True,
    moves: Moves | None = None,
) -> Loaded:
    """Load a checkpoint file with ``weights_only=True``, memory-mapped where possible.

    ``safe_globals`` names extra globals (``package.module.Class``) the user trusts.
    ``moves`` maps globals that moved or were deleted (see :mod:`ckpt_path.pickles`); a
    global that neither covers is refused. Raises :class:`UnreadableCheckpointError` or
    :class:`UnsafeCheckpointError`.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise UnreadableCheckpointError(name, "no such file" if not path.exists() else "not a file")
    if formats.is_sharded(path) or formats.is_safetensors(path):
        return _load_safetensors(path, state_dict_key)
    zipped = zipfile.is_zipfile(path)
    obj = _torch_load(path, zipped=zipped, allowed=_resolve_globals(safe_globals), moves=moves, mmap=mmap)
    if obj is None:
        raise UnreadableCheckpointError(name, "the file holds None")
    sd_path = find_state_dict(obj, state_dict_key)
    return Loaded(obj=obj, path=path, format="torch" if zipped else "torch-legacy", state_dict_path=sd_path)


def _unpickling_error(name: str, exc: pickle.UnpicklingError, *, zipped: bool) -> CheckpointError:
    message = str(exc)
    found = _GLOBAL_RE.search(message) if "Weights only load failed" in message else None
    offending: list[str] = []
    if zipped:
        with contextlib.suppress(Exception):
            offending = list(torch.serialization.get_unsafe_globals_in_checkpoint(name))
    if found and found.group(1) not in offending:
        offending.insert(0, found.group(1))
    if offending:
        return UnsafeCheckpointError(name, offending)
    if not zipped:
        return UnreadableCheckpointError(
            name, "not a torch checkpoint (no zip archive, and not the legacy format either)"
        )
    if operand := re.search(r"Unsupported operand (\d+)", message):
        return UnreadableCheckpointError(
            name,
            f"its pickle uses an instruction (opcode {operand.group(1)}) that weights_only loading does not "
            "support, as files saved with pickle_protocol above 2 may; if you trust the file, re-save it once "
            "with torch.save's default protocol",
        )
    return UnreadableCheckpointError(name, f"not a checkpoint ({message.splitlines()[0][:160]})")


DEFAULT_SHARD_SIZE = 5 * 1024**3
"""Largest shard written for a sharded output when the input was not sharded."""


def _flat_state_dict(obj: Any, state_dict_path: Sequence[str], path: Path, *, state_dict_only: bool) -> Any:  # noqa: ANN401
    """Return the state dict alone, carrying the checkpoint's stamp in its ``_metadata``."""
    if not state_dict_path:
        return obj
    others = sorted(str(k) for k in obj if k not in {state_dict_path[0], STAMP_KEY})
    if others and not state_dict_only:
        shown = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")  # noqa: PLR2004
        raise CheckpointError(
            f"{path.name} would hold only the state dict, but the checkpoint also has {shown}; "
            "pass --state-dict-only to keep only the state dict",
        )
    flat = OrderedDict(get_state_dict(obj, state_dict_path))
    stamp = read_stamp(obj, state_dict_path)
    return write_stamp(flat, (), stamp) if stamp is not None else flat


def _tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _save_error(path: Path, exc: Exception) -> CheckpointError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "DeletedGlobal[" in reason:
        name = reason.split("DeletedGlobal[", 1)[1].split("]", 1)[0]
        return CheckpointError(
            f"cannot save {path}: it still holds a placeholder for the deleted global {name}; "
            "a converter on the path must drop or replace it",
        )
    if isinstance(exc, OSError):
        return CheckpointError(f"cannot write {path}: {exc.strerror or reason}")
    return CheckpointError(f"cannot save {path}: the checkpoint holds something torch.save cannot write ({reason})")


def save_checkpoint(  # noqa: PLR0913 - the ways a checkpoint can be written
    obj: object,
    path: str | Path,
    *,
    force: bool = False,
    state_dict_path: Sequence[str] = (),
    state_dict_only: bool = False,
    metadata: Mapping[str, str] | None = None,
    shard_size: int | None = None,
    progress: formats.Progress | None = None,
) -> Path:
    """Save a checkpoint atomically, in the format its extension names.

    ``.safetensors`` writes one safetensors file and ``.safetensors.index.json`` a sharded
    layout (both hold the state dict only: other content is refused unless
    ``state_dict_only``); any other name is written with ``torch.save``. Every file goes to a
    temporary file beside its target and is fsynced; only when all are written are they
    renamed into place (a layout's index last). On any failure (including Ctrl-C) the
    temporary files are removed and the targets are untouched. An existing target is replaced
    only with ``force``.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a directory")
    if path.exists() and not force:
        raise OutputExistsError(str(path))
    directory = path.parent if str(path.parent) else Path()
    tensor_only = formats.is_sharded(path) or formats.is_safetensors(path)
    if tensor_only or state_dict_only:
        obj = _flat_state_dict(obj, state_dict_path, path, state_dict_only=state_dict_only)
    if tensor_only:
        formats.tensor_items(obj)  # type: ignore[arg-type]  # refuse non-tensors before anything touches the disk
    created = formats.is_sharded(path) and not directory.exists()
    if created:
        directory.mkdir(parents=True)  # a sharded layout is a directory of its own
    if not directory.is_dir():
        raise CheckpointError(f"cannot write {path}: directory {directory} does not exist")
    try:
        with _Transaction(force=force) as transaction:
            _write(transaction, obj, path, metadata=metadata, shard_size=shard_size, progress=progress)
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(exc, pickle.PicklingError | AttributeError | TypeError | OSError):
            raise _save_error(path, exc) from exc
        raise
    return path


def _write(  # noqa: PLR0913 - what a format needs to be written
    transaction: _Transaction,
    obj: Any,  # noqa: ANN401 - any checkpoint
    path: Path,
    *,
    metadata: Mapping[str, str] | None,
    shard_size: int | None,
    progress: formats.Progress | None,
) -> None:
    """Write ``obj`` in the format ``path`` names, into the transaction's temporary files."""
    if formats.is_sharded(path):
        replaced = formats.layout_files(path)
        if replaced and not transaction.force:
            raise OutputExistsError(str(replaced[0]))
        written = formats.save_sharded(
            obj,
            path,
            transaction.open,
            shard_size=shard_size or DEFAULT_SHARD_SIZE,
            metadata=metadata,
            progress=progress,
        )
        for stale in (p for p in replaced if p not in written):  # shards of the layout this one replaces
            transaction.on_commit(functools.partial(stale.unlink, missing_ok=True))
    elif formats.is_safetensors(path):
        with transaction.open(path) as handle:
            formats.save_safetensors(obj, handle, metadata, progress)
    else:
        with transaction.open(path) as handle, formats.counting(handle, progress, _tensor_bytes(obj)) as out:
            torch.save(obj, out)


class _Transaction:
    """Temporary files beside their targets: all renamed into place on success, all removed otherwise.

    Without ``force`` a target that exists is never replaced: every target is checked before
    the first rename, and each is placed with ``link()``, which refuses to clobber.
    """

    def __init__(self, *, force: bool) -> None:
        self.force = force
        self._files: list[tuple[Path, Path]] = []
        self._after: list[Callable[[], object]] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            for tmp, _target in self._files:
                tmp.unlink(missing_ok=True)
            return
        try:
            self._commit()
        finally:
            for tmp, _target in self._files:
                tmp.unlink(missing_ok=True)

    def on_commit(self, action: Callable[[], object]) -> None:
        """Run ``action`` once every file is in place."""
        self._after.append(action)

    @contextlib.contextmanager
    def open(self, target: Path) -> Iterator[Any]:
        """Open a temporary binary file that becomes ``target`` when the transaction commits."""
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp = Path(name)
        self._files.append((tmp, target))
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())

    def _commit(self) -> None:
        if not self.force:
            for _tmp, target in self._files:
                if target.exists():
                    raise OutputExistsError(str(target))
        for tmp, target in self._files:
            _place(tmp, target, force=self.force)
        for directory in {target.parent for _tmp, target in self._files}:
            _fsync_directory(directory)
        for action in self._after:
            action()


def _place(tmp: Path, target: Path, *, force: bool) -> None:
    if force:
        tmp.replace(target)
        return
    try:
        os.link(tmp, target)  # refuses to replace a file that appeared meanwhile
    except FileExistsError:
        raise OutputExistsError(str(target)) from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise OutputExistsError(str(target)) from None
        tmp.replace(target)


@contextlib.contextmanager
def _atomic_file(path: Path, *, force: bool) -> Iterator[Any]:
    """One file written atomically (see :class:`_Transaction`)."""
    with _Transaction(force=force) as transaction, transaction.open(path) as handle:
        yield handle


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
