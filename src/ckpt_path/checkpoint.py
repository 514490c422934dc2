"""Checkpoints on disk: one :class:`Checkpoint` object, loaded safely once, and saved atomically.

Loading always uses ``torch.load(weights_only=True)``, memory-mapped where the file allows,
so tensor data is read only when something touches it. A file that needs a global beyond
what weights-only loading allows is refused with that global's name; it is never executed.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import pickle
import re
import types
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from ckpt_path import _atomic, dcp, formats
from ckpt_path._ranges import InputRecord, InputRecords
from ckpt_path._zipwriter import save_torch_zip
from ckpt_path.errors import (
    CheckpointError,
    OutputExistsError,
    SaveError,
    StampError,
    StateDictError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UsageError,
)
from ckpt_path.pickles import Moves
from ckpt_path.stamp import STAMP_KEY, Stamp, read_stamp, write_stamp

__all__ = [
    "Checkpoint",
    "find_state_dict",
    "get_state_dict",
    "load_checkpoint",
    "save_checkpoint",
]

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
IN_MEMORY = "<checkpoint>"
"""How a checkpoint object handed in from Python (not read from a file) is named in messages."""


@dataclass(slots=True, kw_only=True)
class Checkpoint:
    """One checkpoint: the object, where its state dict lies, its stamp, its format, its files.

    Every entry point (the command line, :func:`ckpt_path.load`, the Lightning mixin, the
    testing helpers, ``check``) builds one of these, by :func:`load_checkpoint` from a file or
    by :meth:`from_object` from an object in memory, and hands it to
    :func:`ckpt_path.pipeline.upgrade`. ``state_dict_at`` is the sequence of keys from the
    top-level object to the state dict (empty for a flat state dict). ``stamp`` is read once,
    when the checkpoint is made, and kept current by the runner.
    """

    obj: Any
    state_dict_at: tuple[str, ...]
    stamp: Stamp | None
    format: str
    """``torch``, ``torch-legacy``, ``safetensors``, ``safetensors-sharded`` or ``object``."""
    file: Path | None = None
    files: tuple[Path, ...] = ()
    """Every file the checkpoint was read from (an index and its shards); never written to."""
    metadata: dict[str, str] = field(default_factory=dict)
    """safetensors ``__metadata__`` other than the stamp, kept when writing safetensors again."""
    shard_size: int | None = None
    """For a sharded input: the size of its largest shard, the default for the output's shards."""
    placeholders: tuple[str, ...] = ()
    """Globals read as inert placeholders because nothing allowed them (see :func:`load_checkpoint`)."""
    read_as_dict: tuple[str, ...] = ()
    """Dict subclasses read as plain dicts (declared ``read_as_dict``, or by a peek)."""
    damaged_stamp: StampError | None = None
    """What is wrong with a stamp that could not be trusted (then ``stamp`` is None)."""

    @classmethod
    def from_object(cls, obj: Any, *, state_dict_key: str | None = None) -> Checkpoint:  # noqa: ANN401
        """Wrap a checkpoint object held in memory (a dict, a flat state dict)."""
        state_dict_at = find_state_dict(obj, state_dict_key)
        return cls(obj=obj, state_dict_at=state_dict_at, format="object", **_stamped(obj, state_dict_at, None))

    @property
    def name(self) -> str:
        """The file it was read from, or ``<checkpoint>`` for an object held in memory."""
        return str(self.file) if self.file is not None else IN_MEMORY

    @property
    def state_dict(self) -> MutableMapping[str, Any]:
        """The state dict inside the checkpoint."""
        return get_state_dict(self.obj, self.state_dict_at)

    def restamp(self, stamp: Stamp) -> None:
        """Write ``stamp`` into the object (a flat plain dict becomes an ``OrderedDict``)."""
        self.obj = write_stamp(self.obj, self.state_dict_at, stamp)
        self.stamp = stamp


def _stamped(obj: object, state_dict_at: Sequence[str], path: Path | None) -> dict[str, Any]:
    """Read the stamp once: ``stamp``, or ``damaged_stamp`` saying what is wrong with it."""
    try:
        return {"stamp": read_stamp(obj, state_dict_at), "damaged_stamp": None}
    except StampError as exc:
        return {"stamp": None, "damaged_stamp": exc.at(str(path)) if path is not None else exc}


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
    ``model``, ``model_state_dict``, ``module`` and ``net``. The state dict's keys must be
    strings.
    """
    if override is not None:
        at = tuple(p for p in override.split(".") if p)
        try:
            found = get_state_dict(obj, at)
        except (KeyError, TypeError, IndexError, CheckpointError):
            raise StateDictError(f"no state dict at {override!r} in this checkpoint") from None
        return _string_keys(found, at)
    if not isinstance(obj, Mapping):
        raise StateDictError(f"a checkpoint must be a dict, not a {type(obj).__name__}")
    tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    if tensors and len(tensors) >= len([k for k in obj if k != STAMP_KEY]):
        return _string_keys(obj, ())
    for key in _STATE_DICT_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping) and (not value or _is_tensor_map(_tensor_part(value))):
            return _string_keys(value, (key,))
    if not obj or tensors:
        return _string_keys(obj, ())
    keys = ", ".join(sorted(map(str, obj))[:10])
    raise StateDictError(
        f"cannot tell where the state dict is (top-level keys: {keys}); pass --state-dict KEY",
    )


def _string_keys(state_dict: Mapping[Any, Any], at: tuple[str, ...]) -> tuple[str, ...]:
    odd = [k for k in state_dict if not isinstance(k, str)]
    if odd:
        where = ".".join(at) or "the state dict"
        raise StateDictError(
            f"{where} has a key that is not a string ({odd[0]!r} of type {type(odd[0]).__name__}); "
            "a state dict maps parameter names to tensors",
        )
    return at


def _tensor_part(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    # Some state dicts hold a few non-tensors (e.g. `_extra_state`); judge by the tensors.
    return {k: v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def get_state_dict(obj: Any, at: Sequence[str]) -> MutableMapping[str, Any]:  # noqa: ANN401 - checkpoints are any pickle
    """Follow the keys ``at`` into ``obj`` and return the state dict there."""
    node = obj
    for key in at:
        node = node[key]
    if not isinstance(node, MutableMapping):
        raise StateDictError(f"{'.'.join(at) or 'the checkpoint'} is a {type(node).__name__}, not a dict")
    return node


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_SETITEM_RE = re.compile(r"Can only SETITEM for .*? but got <class '([^']+)'>")
_MAX_ROUNDS = 64
"""A legacy file names one refused global per attempt; a zip file names them all at once."""


def _user_globals(names: Sequence[str]) -> dict[str, object]:
    """Import the globals a user allowed by name (``module.Name``)."""
    allowed: dict[str, object] = {}
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            allowed[name] = getattr(import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            raise UsageError(f"--safe-global {name}: cannot import {attr!r} from {module!r}") from None
    return allowed


def _load_safetensors(path: Path, state_dict_key: str | None) -> Checkpoint:
    if state_dict_key is not None:
        raise StateDictError(f"--state-dict does not apply to {path.name}: safetensors hold a flat state dict")
    if formats.is_sharded(path):
        state_dict, metadata, largest = formats.load_sharded(path)
        return Checkpoint(
            obj=state_dict,
            state_dict_at=(),
            **_stamped(state_dict, (), path),
            format="safetensors-sharded",
            file=path,
            files=(path, *_shard_files(path)),
            metadata=metadata,
            shard_size=largest,
        )
    state_dict, metadata = formats.load_safetensors(path)
    return Checkpoint(
        obj=state_dict,
        state_dict_at=(),
        **_stamped(state_dict, (), path),
        format="safetensors",
        file=path,
        files=(path,),
        metadata=metadata,
    )


def _shard_files(index: Path) -> list[Path]:
    """Return the shards an index names (already checked by the loader)."""
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    return sorted({index.parent / shard for shard in weight_map.values()})


def _placeholder_name(cls_name: str) -> str:
    """``ckpt_path.pickles.DeletedGlobal[pkg.Cls]`` -> ``pkg.Cls``; other names as they are."""
    if "DeletedGlobal[" in cls_name:
        return cls_name.split("DeletedGlobal[", 1)[1].rsplit("]", 1)[0]
    return cls_name


def _torch_load(  # noqa: C901 - one loop over what torch refuses, each case said plainly
    path: Path,
    *,
    zipped: bool,
    user: Mapping[str, object],
    moves: Moves | None,
    mmap: bool,
) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """``torch.load(weights_only=True)``, mapping moved globals as ``moves`` says, round by round.

    ``user`` maps the globals the user allowed by name to their objects; they always win over
    a move. Returns the object, the globals read as placeholders and those read as dicts.
    """
    name = str(path)
    allowed: dict[str, object] = dict(user)
    for _ in range(_MAX_ROUNDS):
        try:
            pairs: list[Any] = [(obj, dotted) for dotted, obj in sorted(allowed.items())]
            with torch.serialization.safe_globals(pairs), warnings.catch_warnings():
                # torch warns about a newer pickle protocol before failing on it; the error says more.
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
        except pickle.UnpicklingError as exc:
            message = str(exc)
            if setitem := _SETITEM_RE.search(message):
                cls = _placeholder_name(setitem.group(1))
                if moves is not None and moves.peeking and cls not in user:
                    allowed[cls] = dict  # a peek imports nothing: read the mapping as a plain dict
                    continue
                raise dict_subclass_error(name, cls) from None
            error = _unpickling_error(name, exc, zipped=zipped, allowed=allowed)
            if moves is None or not isinstance(error, UnsafeCheckpointError):
                raise error from None
            unresolved = []
            for needed in error.globals_needed:
                found = moves.resolve(needed)
                if found is None:
                    unresolved.append(needed)
                else:
                    allowed[needed] = found
            if unresolved:
                raise UnsafeCheckpointError(name, unresolved) from None
            continue
        except Exception as exc:  # noqa: BLE001 - torch raises many types on foreign or damaged files
            if not zipped:
                reason = "not a torch checkpoint (no zip archive, and not the legacy format either)"
            else:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnreadableCheckpointError(name, f"truncated or not a checkpoint ({reason[:160]})") from None
        placeholders = sorted(
            n for n, o in allowed.items() if n not in user and getattr(o, "__ckpt_path_global__", None)
        )
        dicts = sorted(n for n, o in allowed.items() if n not in user and o is dict)
        return obj, tuple(placeholders), tuple(dicts)
    raise UnreadableCheckpointError(name, f"needs more than {_MAX_ROUNDS} rounds of moved globals")


def load_checkpoint(
    path: str | Path,
    *,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
    mmap: bool = True,
    moves: Moves | None = None,
) -> Checkpoint:
    """Load a checkpoint file with ``weights_only=True``, memory-mapped where possible.

    ``safe_globals`` names extra globals (``package.module.Class``) the user trusts; they win
    over any move. ``moves`` maps globals that moved, were deleted or are read as plain dicts
    (see :mod:`ckpt_path.pickles`); a global that neither covers is refused. Raises
    :class:`UnreadableCheckpointError` or :class:`UnsafeCheckpointError`. A damaged stamp is
    not trusted: it is kept as ``damaged_stamp`` and raised where the version is needed.
    """
    path = Path(path)
    name = str(path)
    if dcp.is_dcp(path):  # a torch.distributed.checkpoint directory: see ckpt_path.dcp
        return dcp.load(path, state_dict_key=state_dict_key, safe_globals=safe_globals, moves=moves)
    if not path.is_file():
        raise UnreadableCheckpointError(name, "no such file" if not path.exists() else "not a file")
    if formats.is_sharded(path) or formats.is_safetensors(path):
        return _load_safetensors(path, state_dict_key)
    zipped = _is_zip(path)
    if zipped:
        _check_pickle_record(path)
    obj, placeholders, dicts = _torch_load(
        path, zipped=zipped, user=_user_globals(safe_globals), moves=moves, mmap=mmap
    )
    if obj is None:
        raise UnreadableCheckpointError(name, "the file holds None")
    state_dict_at = find_state_dict(obj, state_dict_key)
    return Checkpoint(
        obj=obj,
        state_dict_at=state_dict_at,
        **_stamped(obj, state_dict_at, path),
        format="torch" if zipped else "torch-legacy",
        file=path,
        files=(path,),
        placeholders=placeholders,
        read_as_dict=dicts,
    )


MAX_PICKLE_ENV = "CKPT_PATH_MAX_PICKLE_MB"
"""Environment variable that raises the size limit of a checkpoint's pickle (``data.pkl``)."""
DEFAULT_MAX_PICKLE_MB = 1024
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError)


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive; a damaged end of central directory is damage, not "no"."""
    try:
        return zipfile.is_zipfile(path)
    except _ZIP_ERRORS as exc:
        raise UnreadableCheckpointError(str(path), f"damaged zip archive ({exc})") from None


def _max_pickle_bytes() -> int:
    text = os.environ.get(MAX_PICKLE_ENV, str(DEFAULT_MAX_PICKLE_MB))
    try:
        return int(float(text) * 1024 * 1024)
    except ValueError:
        raise UsageError(f"{MAX_PICKLE_ENV}={text!r} is not a number of MiB") from None


def _check_pickle_record(path: Path) -> None:
    """Refuse a ``data.pkl`` that is compressed or larger than the limit, before inflating it.

    torch.save never compresses it, and a pickle describes tensors, not holds them: a huge or
    compressed one is a zip bomb or not a checkpoint. ``CKPT_PATH_MAX_PICKLE_MB`` raises the limit.
    """
    limit = _max_pickle_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            records = [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
    except _ZIP_ERRORS as exc:
        raise UnreadableCheckpointError(str(path), f"damaged zip archive ({exc})") from None
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED:
            raise UnreadableCheckpointError(
                str(path),
                f"{record.filename} is compressed ({record.compress_size} bytes inflating to {record.file_size}); "
                "torch.save never compresses it, so the file was not written by torch; nothing was read",
            )
        if record.file_size > limit:
            raise UnreadableCheckpointError(
                str(path),
                f"{record.filename} is {record.file_size / 2**20:.0f} MiB, over the {limit / 2**20:.0f} MiB limit "
                f"for a checkpoint's pickle; if you trust the file, raise it with {MAX_PICKLE_ENV}=MIB",
            )


def verify_records(checkpoint: Checkpoint) -> None:
    """Check every record of a torch zip input against its CRC-32 (the bytes are mapped, not copied).

    A conversion that may have read every byte (a ``convert`` function ran) checks them all
    before writing; one of ops alone checks, after writing, only the records it read (see
    :func:`write_checkpoint`). A record corrupted in transit is refused, never laundered into a
    file with a fresh, valid CRC.
    """
    if checkpoint.format == "torch" and checkpoint.file is not None:
        _verify(checkpoint.file, lambda _start: True)


def _verify(path: Path, wanted: Callable[[int], bool]) -> None:
    """Check the CRC-32 of each record whose data starts where ``wanted`` says."""
    name = str(path)
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
            if os.fstat(raw.fileno()).st_size == 0:
                return
            with mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                for record in archive.infolist():
                    start = _data_start(mapped, record)
                    if start is not None and not wanted(start):
                        continue
                    if start is None or not _record_intact(mapped, record, start):
                        raise UnreadableCheckpointError(
                            name,
                            f"record {record.filename} is damaged (its CRC-32 does not match its bytes); the "
                            "file was corrupted on disk or in transit; nothing was written",
                        )
    except _ZIP_ERRORS as exc:
        raise UnreadableCheckpointError(name, f"damaged zip archive ({exc})") from None


def _data_start(mapped: mmap.mmap, record: zipfile.ZipInfo) -> int | None:
    header = mapped[record.header_offset : record.header_offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":  # noqa: PLR2004 - a local file header's fixed part
        return None
    return record.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


def _record_intact(mapped: mmap.mmap, record: zipfile.ZipInfo, start: int) -> bool:
    view = memoryview(mapped)
    try:
        data = view[start : start + record.compress_size]
        try:
            return len(data) == record.compress_size and zlib.crc32(data) == record.CRC
        finally:
            data.release()
    finally:
        view.release()


def dict_subclass_error(path: str, cls: str) -> UnreadableCheckpointError:
    """Say that ``cls`` is a dict subclass weights-only loading cannot fill, and how to read it."""
    return UnreadableCheckpointError(
        path,
        f"it holds a {cls}, a dict subclass, and weights_only loading fills only dict, OrderedDict and "
        f'Counter; if {cls} is a plain mapping, declare read_as_dict = ["{cls}"] in a converter file to read '
        "it as a dict",
    )


def _unpickling_error(
    name: str,
    exc: pickle.UnpicklingError,
    *,
    zipped: bool,
    allowed: Mapping[str, object],
) -> CheckpointError:
    message = str(exc)
    found = _GLOBAL_RE.search(message) if "Weights only load failed" in message else None
    offending: set[str] = set()
    if zipped:
        with contextlib.suppress(Exception):
            offending = set(torch.serialization.get_unsafe_globals_in_checkpoint(name))
    if found:
        offending.add(found.group(1))
    offending -= set(allowed)
    if offending:
        return UnsafeCheckpointError(name, sorted(offending))
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
    detail = next((line.strip() for line in message.splitlines() if "WeightsUnpickler error" in line), "")
    detail = detail or message.splitlines()[0]
    return UnreadableCheckpointError(name, f"weights_only loading refused it ({detail[:200]})")


DEFAULT_SHARD_SIZE = 5 * 1024**3
"""Largest shard written for a sharded output when the input was not sharded."""


def _flat_state_dict(obj: Any, state_dict_path: Sequence[str], path: Path, *, state_dict_only: bool) -> Any:  # noqa: ANN401
    """Return the state dict alone, carrying the checkpoint's stamp in its ``_metadata``."""
    if not state_dict_path:
        return obj
    others = sorted(str(k) for k in obj if k not in {state_dict_path[0], STAMP_KEY})
    if others and not state_dict_only:
        shown = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")  # noqa: PLR2004
        raise SaveError(
            str(path),
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


def _save_error(path: Path, exc: Exception) -> SaveError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "DeletedGlobal[" in reason:
        name = reason.split("DeletedGlobal[", 1)[1].split("]", 1)[0]
        return SaveError(
            str(path),
            f"it still holds a placeholder for the deleted global {name}; "
            "a converter on the path must drop or replace it",
        )
    if isinstance(exc, OSError):
        return SaveError(str(path), exc.strerror or reason)
    return SaveError(str(path), f"the checkpoint holds something torch.save cannot write ({reason[:200]})")


_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
"""Objects whose attributes are code, not checkpoint content: never searched for tensors."""


def _unwritable_tensor(obj: object) -> tuple[str, str] | None:
    """Find a tensor anywhere in ``obj`` that torch.save would write without its values; return where and why."""
    seen: set[int] = set()
    stack: list[tuple[str, object]] = [("", obj)]
    while stack:
        where, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[str, object]] = []
        if isinstance(node, torch.Tensor):
            problem = formats.unwritable(node, safetensors=False)
            if problem is not None:
                return where or "the checkpoint", problem
        elif isinstance(node, Mapping):
            children = [(f"{where}.{key}" if where else str(key), value) for key, value in node.items()]
        elif isinstance(node, list | tuple | set | frozenset):
            children = [(f"{where}[{i}]", value) for i, value in enumerate(node)]
        elif hasattr(node, "__dict__") and not isinstance(node, _OPAQUE):
            children = [(f"{where}.{key}" if where else key, value) for key, value in vars(node).items()]
        stack.extend(reversed(children))
    return None


def _check_output(path: Path, *, force: bool) -> None:
    """Refuse an OUTPUT that must not be replaced, before anything else is done."""
    if formats.is_sharded(path) and path.is_symlink():
        raise SaveError(
            str(path), "it is a symbolic link; a sharded layout is written beside its index, so name the real path"
        )
    _atomic.check_target(path)  # a directory or a device is never replaced
    if path.exists() and not force:
        raise OutputExistsError(str(path))


def _to_write(obj: Any, path: Path, state_dict_path: Sequence[str], *, state_dict_only: bool) -> Any:  # noqa: ANN401
    """Return what is written at ``path``; refuse what cannot be, by key, before anything touches the disk."""
    tensor_only = formats.is_sharded(path) or formats.is_safetensors(path)
    if tensor_only or state_dict_only:
        obj = _flat_state_dict(obj, state_dict_path, path, state_dict_only=state_dict_only)
    if tensor_only:
        formats.tensor_items(obj)  # non-tensors, reserved names, meta, sparse, ...
    elif (found := _unwritable_tensor(obj)) is not None:
        raise SaveError(str(path), f"{found[0]}: {found[1]}")
    return obj


@dataclass(frozen=True, slots=True, kw_only=True)
class Written:
    """Where a checkpoint was written, and how many of its tensor bytes were copied or written.

    ``copied_bytes`` came from the input file as they were (kernel-side, never through Python);
    ``written_bytes`` were written from memory (tensors a step computed, or every tensor when
    nothing could be copied).
    """

    path: Path
    copied_bytes: int
    written_bytes: int


def save_checkpoint(obj: object, path: str | Path, **options: Any) -> Path:  # noqa: ANN401 - write_checkpoint's
    """Save a checkpoint atomically and return where; the options are :func:`write_checkpoint`'s."""
    return write_checkpoint(obj, path, **options).path


def write_checkpoint(  # noqa: PLR0913 - the ways a checkpoint can be written
    obj: object,
    path: str | Path,
    *,
    force: bool = False,
    state_dict_path: Sequence[str] = (),
    state_dict_only: bool = False,
    metadata: Mapping[str, str] | None = None,
    shard_size: int | None = None,
    progress: formats.Progress | None = None,
    protect: Iterable[str | os.PathLike[str]] = (),
    source: Checkpoint | None = None,
    trust_memory: bool = False,
) -> Written:
    """Save a checkpoint atomically, in the format its extension names (in any case).

    ``.safetensors`` writes one safetensors file and ``.safetensors.index.json`` a sharded
    layout (both hold the state dict only: other content is refused unless
    ``state_dict_only``); any other name is written with ``torch.save``. Every file goes to a
    temporary file beside its target and is fsynced; only when all are written are they
    placed (a layout's new shards under names no file has, then its index, the one switch;
    the old layout's shards are removed after it). On any failure (including Ctrl-C and
    SIGTERM) the temporary files are removed and the targets are untouched. An existing target
    is replaced only with ``force``, and only if it is a regular file (a symbolic link is
    written through; the replaced file keeps its mode). See :mod:`ckpt_path._atomic`.

    ``protect`` names files that must come through untouched, the input's (for a sharded
    input: its index and every shard): a save that would replace or remove one of them is
    refused with :class:`InputOverwriteError` before anything is written. Tensors that cannot
    be written with their values (meta tensors anywhere; for safetensors also sparse, nested
    or non-CPU ones) are refused by key, before anything is written.

    ``source`` is the checkpoint the object was loaded from: every tensor that is still an
    unchanged view of its file is copied from that file kernel-side instead of being written
    through Python (torch zip records keep their CRC-32). ``trust_memory`` says only ops ran
    since loading (they make new tensors and never write into the input's mapping); otherwise a
    tensor's memory must match the input's CRC-32 to be copied. A torch zip input's records that
    were read rather than copied are checked against their CRC-32 before the output is placed.
    """
    path = Path(path)
    if dcp.writes_dcp(path, source) or (source is not None and source.format == dcp.FORMAT):  # see ckpt_path.dcp
        return dcp.write(
            obj, path, force=force, state_dict_path=state_dict_path, state_dict_only=state_dict_only,
            metadata=metadata, shard_size=shard_size, progress=progress, protect=protect, source=source,
        )  # fmt: skip
    _check_output(path, force=force)
    directory = path.parent if str(path.parent) else Path()
    obj = _to_write(obj, path, state_dict_path, state_dict_only=state_dict_only)
    created = formats.is_sharded(path) and not directory.exists()
    if created:
        directory.mkdir(parents=True)  # a sharded layout is a directory of its own
    if not directory.is_dir():
        raise SaveError(str(path), f"directory {directory} does not exist")
    inputs = _input_ranges(source)
    try:
        with _atomic.Transaction(force=force, protect=protect) as transaction:
            tally = _write(
                transaction,
                obj,
                path,
                metadata=metadata,
                shard_size=shard_size,
                progress=progress,
                inputs=inputs,
                trust_memory=trust_memory,
            )
            if source is not None and source.format == "torch":
                _verify_read_records(source, tally.copied)
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(exc, pickle.PicklingError | AttributeError | TypeError | OSError | RuntimeError):
            raise _save_error(path, exc) from exc
        raise
    return Written(path=path, copied_bytes=tally.copied_bytes, written_bytes=tally.written_bytes)


@dataclass(slots=True)
class _Tally:
    copied_bytes: int = 0
    written_bytes: int = 0
    copied: tuple[InputRecord, ...] = ()


def _input_ranges(source: Checkpoint | None) -> list[InputRecords]:
    """Return the byte ranges of the input's files that still hold tensors, to copy them as they are."""
    if source is None or source.file is None:
        return []
    try:
        if source.format == "torch":
            return [InputRecords.torch_zip(source.file)]
        if source.format == "safetensors":
            return [formats.input_ranges(source.file)]
        if source.format == "safetensors-sharded":
            return [formats.input_ranges(shard) for shard in source.files[1:]]
    except (OSError, *_ZIP_ERRORS, CheckpointError):
        return []  # the input changed under us: write everything from memory
    return []


def _verify_read_records(source: Checkpoint, copied: Sequence[InputRecord]) -> None:
    """Check the CRC-32 of every record of a torch zip input that was read, not copied as it was."""
    if source.file is None:
        return
    skip = {record.data_offset for record in copied}
    _verify(source.file, lambda start: start not in skip)


def _write(  # noqa: PLR0913 - what a format needs to be written
    transaction: _atomic.Transaction,
    obj: Any,  # noqa: ANN401 - any checkpoint
    path: Path,
    *,
    metadata: Mapping[str, str] | None,
    shard_size: int | None,
    progress: formats.Progress | None,
    inputs: Sequence[InputRecords] = (),
    trust_memory: bool = False,
) -> _Tally:
    """Write ``obj`` in the format ``path`` names, into the transaction's temporary files."""
    if formats.is_sharded(path):
        replaced = formats.layout_files(path)
        if replaced and not transaction.force:
            raise OutputExistsError(str(replaced[0]))
        transaction.guard(path)  # the index is opened last: check it before any shard is written
        for stale in replaced:  # the layout this one replaces: removed once the new index is in place
            transaction.remove(stale)
        transaction.clean_stale(path.parent, formats.shard_pattern(path))
        copied = formats.Copied()
        formats.save_sharded(
            obj,
            path,
            transaction.open,
            shard_size=shard_size or DEFAULT_SHARD_SIZE,
            metadata=metadata,
            progress=progress,
            inputs=inputs,
            tally=copied,
        )
        return _Tally(copied_bytes=copied.copied_bytes, written_bytes=copied.written_bytes)
    if formats.is_safetensors(path):
        copied = formats.Copied()
        with transaction.open(path) as handle:
            formats.save_safetensors(obj, handle, metadata, progress, inputs=inputs, tally=copied)
        return _Tally(copied_bytes=copied.copied_bytes, written_bytes=copied.written_bytes)
    with transaction.open(path) as handle:
        report = save_torch_zip(
            obj, handle, inputs=inputs, trust_memory=trust_memory, progress=progress, total=_tensor_bytes(obj)
        )
    return _Tally(copied_bytes=report.copied_bytes, written_bytes=report.written_bytes, copied=report.copied)
