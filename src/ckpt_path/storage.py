"""Checkpoint formats on disk: one object per format reads and writes it, chosen once from the path.

=======================  ==============================  ===========================  ==========================
format                   on disk                         read by                      written by
=======================  ==============================  ===========================  ==========================
``torch``                one ``torch.save`` zip          :mod:`ckpt_path.torchfiles`  :mod:`ckpt_path._zipwriter`
``torch-legacy``         one pre-1.6 ``torch.save``      :mod:`ckpt_path.torchfiles`  (written as ``torch``)
``safetensors``          one ``.safetensors`` file       :mod:`ckpt_path.formats`     :mod:`ckpt_path.formats`
``safetensors-sharded``  an index and its shards         :mod:`ckpt_path.formats`     :mod:`ckpt_path.formats`
``dcp``                  a directory with ``.metadata``  :mod:`ckpt_path.dcp`         :mod:`ckpt_path.dcp`
=======================  ==============================  ===========================  ==========================

:func:`load_checkpoint` asks :func:`reading_format` once which format a path holds;
:func:`write_checkpoint` asks :func:`writing_format` once which format an output is written in
(its extension, in any case; a DCP input's output is a DCP directory unless it names a file
format). The file formats share one write: refuse what cannot be written, by key, before
touching the disk, then write every file into one :class:`ckpt_path._atomic.Transaction`. The
input's format says which of its byte ranges may be copied as they are
(:meth:`Format.copyable`) and what must be checked once they were read (:meth:`Format.check_read`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import types
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ckpt_path import _atomic, dcp, formats, torchfiles
from ckpt_path._ranges import InputRecord, InputRecords
from ckpt_path._zipwriter import save_torch_zip
from ckpt_path.checkpoint import Checkpoint, Written, find_state_dict, get_state_dict, stamp_fields
from ckpt_path.errors import (
    CheckpointError,
    InputOverwriteError,
    OutputExistsError,
    SaveError,
    StateDictError,
    UnreadableCheckpointError,
)
from ckpt_path.pickles import Moves
from ckpt_path.stamp import STAMP_KEY, read_stamp, write_stamp

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "Format",
    "load_checkpoint",
    "reading_format",
    "save_checkpoint",
    "verify_records",
    "write_checkpoint",
    "writing_format",
]

DEFAULT_SHARD_SIZE = 5 * 1024**3
"""Largest shard written for a sharded output when the input was not sharded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadOptions:
    """How to read a checkpoint: where its state dict is, which globals may be named, which moved."""

    state_dict_key: str | None = None
    safe_globals: tuple[str, ...] = ()
    moves: Moves | None = None
    mmap: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteOptions:
    """How to write a checkpoint (see :func:`write_checkpoint`)."""

    force: bool = False
    state_dict_at: tuple[str, ...] = ()
    state_dict_only: bool = False
    metadata: Mapping[str, str] | None = None
    shard_size: int | None = None
    progress: formats.Progress | None = None
    protect: tuple[str | os.PathLike[str], ...] = ()
    trust_memory: bool = False


@dataclass(slots=True)
class _Tally:
    copied_bytes: int = 0
    written_bytes: int = 0
    copied: tuple[InputRecord, ...] = ()


class Format:
    """One format on disk: how it is read, how it is written, and what of an input in it may be copied."""

    name: ClassVar[str]

    def read(self, path: Path, options: ReadOptions) -> Checkpoint:
        """Read the checkpoint at ``path``."""
        raise NotImplementedError

    def write(self, obj: object, path: Path, options: WriteOptions, source: Checkpoint | None) -> Written:
        """Write ``obj`` at ``path`` atomically; ``source`` is the checkpoint it was loaded from, if any."""
        raise NotImplementedError

    def copyable(self, source: Checkpoint) -> list[InputRecords]:  # noqa: ARG002 - formats that copy nothing
        """Return the byte ranges of ``source``'s files (read in this format) that still hold tensors, to copy."""
        return []

    def check_read(self, source: Checkpoint, copied: Sequence[InputRecord]) -> None:
        """Check what was read from ``source``'s files (not copied as it was) before the output is placed."""


class _FileFormat(Format):
    """A format written as files through one :class:`ckpt_path._atomic.Transaction` (torch, safetensors)."""

    tensors_only: ClassVar[bool] = False
    """Holds a flat state dict of tensors only (safetensors): other content needs ``state_dict_only``."""
    own_directory: ClassVar[bool] = False
    """Makes its directory when it does not exist (a sharded layout is a directory of its own)."""
    writer: ClassVar[str]
    """What writes it, as messages name it."""

    def write(self, obj: object, path: Path, options: WriteOptions, source: Checkpoint | None) -> Written:
        """Refuse what cannot be written, then write every file into one transaction; see :func:`write_checkpoint`."""
        self._check_output(path, force=options.force)
        directory = path.parent if str(path.parent) else Path()
        obj = self._to_write(obj, path, options)
        created = _missing_directories(directory) if self.own_directory else []
        if created:
            directory.mkdir(parents=True)
        if not directory.is_dir():
            raise SaveError(str(path), f"directory {directory} does not exist")
        check_unchanged(source)
        inputs = _copyable(source)
        try:
            with _atomic.Transaction(force=options.force, protect=options.protect) as transaction:
                tally = self._write_files(transaction, obj, path, options, inputs)
                _check_read(source, tally.copied)
        except BaseException as exc:
            for made in created:  # deepest first; one that is not empty any more stays
                with contextlib.suppress(OSError):
                    made.rmdir()
            if isinstance(exc, pickle.PicklingError | AttributeError | TypeError | OSError | RuntimeError):
                raise _save_error(path, exc, self.writer) from exc
            raise
        return Written(path=path, copied_bytes=tally.copied_bytes, written_bytes=tally.written_bytes)

    def _check_output(self, path: Path, *, force: bool) -> None:
        """Refuse an OUTPUT that must not be replaced, before anything else is done."""
        _atomic.check_target(path)  # a directory or a device is never replaced
        if path.exists() and not force:
            raise OutputExistsError(str(path))

    def _to_write(self, obj: Any, path: Path, options: WriteOptions) -> Any:
        """Return what is written at ``path``; refuse what cannot be, by key, before anything touches the disk."""
        if self.tensors_only or options.state_dict_only:
            obj = _flat_state_dict(obj, options.state_dict_at, path, state_dict_only=options.state_dict_only)
        if self.tensors_only:
            formats.tensor_items(obj)  # non-tensors, reserved names, meta, sparse, ...
        elif (found := _unwritable_tensor(obj)) is not None:
            raise SaveError(str(path), f"{found[0]}: {found[1]}")
        return obj

    def _write_files(
        self,
        transaction: _atomic.Transaction,
        obj: Any,
        path: Path,
        options: WriteOptions,
        inputs: Sequence[InputRecords],
    ) -> _Tally:
        """Write ``obj`` into the transaction's temporary files."""
        raise NotImplementedError


class _Torch(_FileFormat):
    """``torch.save``'s zip: read weights-only, written with unchanged records copied (they keep their CRC-32)."""

    name = "torch"
    writer = "torch.save"

    def read(self, path: Path, options: ReadOptions) -> Checkpoint:
        """Read weights-only, mapping moved globals; see :mod:`ckpt_path.torchfiles`."""
        found = torchfiles.read_torch_file(
            path, safe_globals=options.safe_globals, moves=options.moves, mmap=options.mmap
        )
        state_dict_at = find_state_dict(found.obj, options.state_dict_key)
        return Checkpoint(
            obj=found.obj,
            state_dict_at=state_dict_at,
            **stamp_fields(found.obj, state_dict_at, path),
            format=(_TORCH if found.zipped else _TORCH_LEGACY).name,
            file=path,
            files=(path,),
            placeholders=found.placeholders,
            read_as_dict=found.read_as_dict,
        )

    def copyable(self, source: Checkpoint) -> list[InputRecords]:
        """Return the zip's records, which keep their CRC-32 when copied."""
        return [InputRecords.torch_zip(source.file)] if source.file is not None else []

    def check_read(self, source: Checkpoint, copied: Sequence[InputRecord]) -> None:
        """Check the CRC-32 of every record of the zip that was read, not copied as it was."""
        if source.file is not None:
            skip = {record.data_offset for record in copied}
            torchfiles.verify(source.file, lambda start: start not in skip)

    def _write_files(
        self,
        transaction: _atomic.Transaction,
        obj: Any,
        path: Path,
        options: WriteOptions,
        inputs: Sequence[InputRecords],
    ) -> _Tally:
        with transaction.open(path) as handle:
            report = save_torch_zip(
                obj,
                handle,
                inputs=inputs,
                trust_memory=options.trust_memory,
                progress=options.progress,
                total=_tensor_bytes(obj),
            )
        return _Tally(copied_bytes=report.copied_bytes, written_bytes=report.written_bytes, copied=report.copied)


class _TorchLegacy(_Torch):
    """``torch.save``'s format before torch 1.6: read only (written as a zip); no records to copy or check."""

    name = "torch-legacy"

    def copyable(self, source: Checkpoint) -> list[InputRecords]:  # noqa: ARG002 - nothing to copy
        """Return nothing: the legacy format has no records to copy."""
        return []

    def check_read(self, source: Checkpoint, copied: Sequence[InputRecord]) -> None:
        """Check nothing: the legacy format has no CRC-32 to check."""


class _Safetensors(_FileFormat):
    """One safetensors file: a flat state dict, read lazily, written as a stream with ranges copied."""

    name = "safetensors"
    tensors_only = True
    writer = "the safetensors writer"

    def read(self, path: Path, options: ReadOptions) -> Checkpoint:
        """Read the header and map the file; see :mod:`ckpt_path.formats`."""
        _flat_only(path, options)
        state_dict, metadata = formats.load_safetensors(path)
        return Checkpoint(
            obj=state_dict,
            state_dict_at=(),
            **stamp_fields(state_dict, (), path),
            format=self.name,
            file=path,
            files=(path,),
            metadata=metadata,
        )

    def copyable(self, source: Checkpoint) -> list[InputRecords]:
        """Return every tensor's byte range."""
        return [formats.input_ranges(source.file)] if source.file is not None else []

    def _write_files(
        self,
        transaction: _atomic.Transaction,
        obj: Any,
        path: Path,
        options: WriteOptions,
        inputs: Sequence[InputRecords],
    ) -> _Tally:
        copied = formats.Copied()
        with transaction.open(path) as handle:
            formats.save_safetensors(obj, handle, options.metadata, options.progress, inputs=inputs, tally=copied)
        return _Tally(copied_bytes=copied.copied_bytes, written_bytes=copied.written_bytes)


class _Sharded(_FileFormat):
    """A sharded safetensors layout: an index and the shards it names, all in one directory."""

    name = "safetensors-sharded"
    tensors_only = True
    own_directory = True
    writer = "the safetensors writer"

    def read(self, path: Path, options: ReadOptions) -> Checkpoint:
        """Read the index and every shard's header; see :mod:`ckpt_path.formats`."""
        _flat_only(path, options)
        state_dict, metadata, largest = formats.load_sharded(path)
        return Checkpoint(
            obj=state_dict,
            state_dict_at=(),
            **stamp_fields(state_dict, (), path),
            format=self.name,
            file=path,
            files=(path, *_shard_files(path)),
            metadata=metadata,
            shard_size=largest,
        )

    def copyable(self, source: Checkpoint) -> list[InputRecords]:
        """Return every shard's tensors' byte ranges."""
        return [formats.input_ranges(shard) for shard in source.files[1:]]

    def _check_output(self, path: Path, *, force: bool) -> None:
        if path.is_symlink():
            raise SaveError(
                str(path), "it is a symbolic link; a sharded layout is written beside its index, so name the real path"
            )
        super()._check_output(path, force=force)

    def _write_files(
        self,
        transaction: _atomic.Transaction,
        obj: Any,
        path: Path,
        options: WriteOptions,
        inputs: Sequence[InputRecords],
    ) -> _Tally:
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
            shard_size=options.shard_size or DEFAULT_SHARD_SIZE,
            metadata=options.metadata,
            progress=options.progress,
            inputs=inputs,
            tally=copied,
        )
        return _Tally(copied_bytes=copied.copied_bytes, written_bytes=copied.written_bytes)


class _Dcp(Format):
    """A ``torch.distributed.checkpoint`` directory; see :mod:`ckpt_path.dcp`."""

    name = dcp.FORMAT

    def read(self, path: Path, options: ReadOptions) -> Checkpoint:
        """Read ``.metadata``; tensors stay lazy until a step or a writer needs them."""
        return dcp.load(
            path, state_dict_key=options.state_dict_key, safe_globals=options.safe_globals, moves=options.moves
        )

    def write(self, obj: object, path: Path, options: WriteOptions, source: Checkpoint | None) -> Written:
        """Write the layout ``torch.distributed.checkpoint.save`` makes, unchanged chunks copied.

        Only a DCP input's chunks are copied; anything read from another input is checked first.
        """
        check_unchanged(source)
        _check_read(source, ())
        report = dcp.save(
            obj,
            path,
            force=options.force,
            state_dict_at=options.state_dict_at,
            state_dict_only=options.state_dict_only,
            protect=options.protect,
            source=source,
        )
        return Written(path=path, copied_bytes=report.copied_bytes, written_bytes=report.written_bytes)


_TORCH, _TORCH_LEGACY, _SAFETENSORS, _SHARDED, _DCP = _Torch(), _TorchLegacy(), _Safetensors(), _Sharded(), _Dcp()
_BY_NAME: dict[str, Format] = {f.name: f for f in (_TORCH, _TORCH_LEGACY, _SAFETENSORS, _SHARDED, _DCP)}


def format_named(name: str) -> Format | None:
    """Return the format a :attr:`Checkpoint.format` names; None for ``object`` (made in memory, no file)."""
    return _BY_NAME.get(name)


def reading_format(path: Path) -> Format:
    """Return the format of the checkpoint at ``path``: a DCP directory, a safetensors index or file, else torch."""
    if dcp.is_dcp(path):
        return _DCP
    if not path.is_file():
        raise UnreadableCheckpointError(str(path), "no such file" if not path.exists() else "not a file")
    if formats.is_sharded(path):
        return _SHARDED
    if formats.is_safetensors(path):
        return _SAFETENSORS
    return _TORCH


def writing_format(path: Path, source: Checkpoint | None) -> Format:
    """Return the format of an output at ``path``: its extension says; a DCP input's output is DCP by default."""
    if dcp.writes_dcp(path, source):
        return _DCP
    if formats.is_sharded(path):
        return _SHARDED
    if formats.is_safetensors(path):
        return _SAFETENSORS
    return _TORCH


def load_checkpoint(
    path: str | Path,
    *,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
    mmap: bool = True,
    moves: Moves | None = None,
) -> Checkpoint:
    """Load a checkpoint with ``weights_only=True``, memory-mapped where possible, in the format it is in.

    ``safe_globals`` names extra globals (``package.module.Class``) the user trusts; they win
    over any move. ``moves`` maps globals that moved, were deleted or are read as plain dicts
    (see :mod:`ckpt_path.pickles`); a global that neither covers is refused. Raises
    :class:`UnreadableCheckpointError` or :class:`UnsafeCheckpointError`. A damaged stamp is
    not trusted: it is kept as ``damaged_stamp`` and raised where the version is needed.
    """
    path = Path(path)
    options = ReadOptions(state_dict_key=state_dict_key, safe_globals=tuple(safe_globals), moves=moves, mmap=mmap)
    checkpoint = reading_format(path).read(path, options)
    checkpoint.sizes = tuple(_identity(file) for file in checkpoint.files)
    return checkpoint


def _identity(file: Path) -> tuple[int, int, int, int]:
    """Return the device, inode, size and modification time of ``file`` (-1s for one that cannot be seen)."""
    try:
        found = file.stat()
    except OSError:
        return (-1, -1, -1, -1)
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def check_unchanged(source: Checkpoint | None) -> None:
    """Refuse an input that another process changed in place since it was read (a job saving over it).

    Its tensors are mapped from the file: reading past a new, shorter end would kill this process
    with SIGBUS, with no message, and bytes rewritten in place (same inode, another size or
    modification time) would be written out as if they had been read. A file replaced by another
    (a new inode) or removed is harmless: the mapping keeps the old bytes. A file cut short while
    OUTPUT is being written is still beyond help: reading past its end is a signal no Python code
    can catch (the next run removes the temporary).
    """
    if source is None:
        return
    for file, (device, inode, size, mtime) in zip(source.files, source.sizes, strict=False):
        now = _identity(file)
        if now[:2] != (device, inode) or now[2] < 0:
            continue  # replaced by another file, or removed: the mapping keeps the bytes that were read
        if now[2] < size:
            raise UnreadableCheckpointError(
                str(file),
                f"it was cut from {size} to {now[2]} bytes while it was being converted (is another job writing "
                "it?); nothing was written",
            )
        if now[2] != size or now[3] != mtime:  # rewritten in place: the mapping now shows the new bytes
            raise UnreadableCheckpointError(
                str(file),
                "it was rewritten in place while it was being converted (is another job writing it?); nothing "
                "was written",
            )


def save_checkpoint(obj: object, path: str | Path, **options: Any) -> Path:
    """Save a checkpoint atomically and return where; the options are :func:`write_checkpoint`'s.

    ``state_dict_path`` is the old name of ``state_dict_at``; it still works, with a DeprecationWarning.
    """
    if "state_dict_path" in options:
        warnings.warn("save_checkpoint(state_dict_path=...) is now state_dict_at=...", DeprecationWarning, stacklevel=2)
        options["state_dict_at"] = options.pop("state_dict_path")
    return write_checkpoint(obj, path, **options).path


def write_checkpoint(  # noqa: PLR0913 - the ways a checkpoint can be written
    obj: object,
    path: str | Path,
    *,
    force: bool = False,
    state_dict_at: Sequence[str] = (),
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
    ``state_dict_only``); a ``.dcp`` name or an existing DCP directory a DCP directory; any
    other name is written with ``torch.save``. Every file goes to a temporary file beside its
    target and is fsynced; only when all are written are they placed (a layout's new shards
    under names no file has, then its index, the one switch; the old layout's shards are
    removed after it). On any failure (including Ctrl-C and SIGTERM) the temporary files are
    removed and the targets are untouched. An existing target is replaced only with ``force``,
    and only if it is a regular file (a symbolic link is written through; the replaced file
    keeps its mode). See :mod:`ckpt_path._atomic`.

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
    options = WriteOptions(
        force=force,
        state_dict_at=tuple(state_dict_at),
        state_dict_only=state_dict_only,
        metadata=metadata,
        shard_size=shard_size,
        progress=progress,
        protect=tuple(protect),
        trust_memory=trust_memory,
    )
    output = writing_format(path, source)
    if source is not None and source.format == _DCP.name and output is not _DCP:
        return _from_lazy(obj, path, output, options)
    return output.write(obj, path, options, source)


def _from_lazy(obj: object, path: Path, output: Format, options: WriteOptions) -> Written:
    """Write a DCP input's object in a file format: its lazy tensors are read one at a time as they are written."""
    for protected in options.protect:
        if (
            Path(protected).name == dcp.METADATA
            and Path(os.path.realpath(protected)).parent in Path(os.path.realpath(path)).parents
        ):
            raise InputOverwriteError(str(path), str(Path(protected).parent), "write into")
    beside = path if path.parent.is_dir() else path.parent  # a sharded layout makes its own directory
    if not beside.parent.is_dir():
        raise SaveError(str(path), f"directory {path.parent} does not exist")
    if os.path.lexists(path) and not options.force:
        raise OutputExistsError(str(path))
    with dcp.materialized(obj, beside) as real:
        written = output.write(real, path, options, None)
    return Written(path=written.path, copied_bytes=0, written_bytes=written.copied_bytes + written.written_bytes)


def verify_records(checkpoint: Checkpoint) -> None:
    """Check every record of a torch zip input against its CRC-32 (the bytes are mapped, not copied).

    A conversion that may have read every byte (a ``convert`` function ran) checks them all
    before writing; one of ops alone checks, after writing, only the records it read (see
    :meth:`Format.check_read`). A record corrupted in transit is refused, never laundered into a
    file with a fresh, valid CRC.
    """
    _check_read(checkpoint, ())


def _reader(source: Checkpoint | None) -> Format | None:
    """Return the format ``source`` was read in from its files; None for no input, or one made in memory."""
    return format_named(source.format) if source is not None and source.file is not None else None


def _copyable(source: Checkpoint | None) -> list[InputRecords]:
    """Return the input's byte ranges that may be copied; none if the input changed under us (write from memory)."""
    reader = _reader(source)
    if reader is None or source is None:
        return []
    try:
        return reader.copyable(source)
    except (OSError, *torchfiles.ZIP_ERRORS, CheckpointError):
        return []


def _check_read(source: Checkpoint | None, copied: Sequence[InputRecord]) -> None:
    """Check what was read of the input, not copied as it was (a torch zip's CRC-32s)."""
    reader = _reader(source)
    if reader is not None and source is not None:
        reader.check_read(source, copied)


def _missing_directories(directory: Path) -> list[Path]:
    """Return ``directory`` and those of its parents that do not exist, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _flat_only(path: Path, options: ReadOptions) -> None:
    if options.state_dict_key is not None:
        raise StateDictError(f"--state-dict does not apply to {path.name}: safetensors hold a flat state dict")


def _shard_files(index: Path) -> list[Path]:
    """Return the shards an index names (already checked by the loader)."""
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    return sorted({index.parent / shard for shard in weight_map.values()})


def _flat_state_dict(obj: Any, state_dict_at: Sequence[str], path: Path, *, state_dict_only: bool) -> Any:
    """Return the state dict alone, carrying the checkpoint's stamp in its ``_metadata``."""
    if not state_dict_at:
        return obj
    others = sorted(str(k) for k in obj if k not in {state_dict_at[0], STAMP_KEY})
    if others and not state_dict_only:
        shown = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")  # noqa: PLR2004
        raise SaveError(
            str(path),
            f"{path.name} would hold only the state dict, but the checkpoint also has {shown}; "
            "pass --state-dict-only to keep only the state dict",
        )
    flat = OrderedDict(get_state_dict(obj, state_dict_at))
    stamp = read_stamp(obj, state_dict_at)
    return write_stamp(flat, (), stamp) if stamp is not None else flat


def _tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _save_error(path: Path, exc: Exception, writer: str) -> SaveError:
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
    return SaveError(str(path), f"the checkpoint holds something {writer} cannot write ({reason[:200]})")


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
