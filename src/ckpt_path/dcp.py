"""Distributed checkpoints (``torch.distributed.checkpoint``, DCP): read from their metadata, written as DCP does.

A DCP checkpoint is a directory: a ``.metadata`` file (a pickle of DCP's ``Metadata``: every
entry's shape, dtype and chunks, and where each chunk's bytes lie) and data files
(``__R_N.distcp``) in which every tensor chunk, and every non-tensor entry, is one small
``torch.save`` archive at an offset.

**Reading.** ``.metadata`` is unpickled with an allowlist of DCP's own metadata classes (no
other global is ever imported or called), checked entry by entry (every chunk inside its tensor,
the chunks covering it, every byte range inside an existing file of the directory), and turned
into the nested object DCP flattened (its ``planner_data``). Tensors become lazy tensors
(:mod:`ckpt_path._lazy`): their values are read only when a step computes from them or a writer
needs them, and each chunk's CRC-32 is checked when it is read. Non-tensor entries (epoch,
hyper-parameters, optimizer param groups) are read with ``torch.load(weights_only=True)``; within
:func:`metadata_only` (``inspect``, ``plan CKPT``, ``convert --dry-run``) they are left as inert
:class:`Unread` placeholders, so not one byte of a data file is read.

**The stamp** lives in ``.metadata`` itself (an attribute ``ckpt_path`` of the pickled
``Metadata``, plain strings and lists), so it is read without a data file, and
``torch.distributed.checkpoint.load`` into a model's state dict works as before. A nested
checkpoint (``{"model": ..., "optimizer": ...}``) also carries it as DCP entries
``ckpt_path.version`` and ``ckpt_path.history``, as Lightning's strategies save a stamped
checkpoint.

**Writing** (:func:`save`) makes the layout ``torch.distributed.checkpoint.save`` makes. A tensor
that no step changed (renamed or not) is copied chunk by chunk from the input's data files with
``os.copy_file_range`` (in the kernel; a reflink where the file system shares extents), never
through Python; a tensor a step computed is evaluated then, one at a time, and written as one
chunk. Everything goes into a temporary directory beside OUTPUT, is fsynced, and the directory
is renamed into place (an existing OUTPUT, replaced only with ``force``, is swapped out
atomically where the kernel can, then removed). :mod:`ckpt_path.distributed` runs the same
writer in many processes, each writing its share of the tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import errno
import fcntl
import io
import math
import mmap
import os
import pickle
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import uuid
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ckpt_path import _atomic, _lazy, formats
from ckpt_path.errors import (
    CheckpointError,
    InputOverwriteError,
    OutputExistsError,
    SaveError,
    StampError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UsageError,
)
from ckpt_path.stamp import STAMP_KEY, Stamp, parse_stamp, read_stamp, write_stamp

if TYPE_CHECKING:
    from types import FrameType

    from ckpt_path.checkpoint import Checkpoint
    from ckpt_path.pickles import Moves

__all__ = [
    "FORMAT",
    "METADATA",
    "Unread",
    "WriteReport",
    "is_dcp",
    "load",
    "metadata_only",
    "save",
    "writes_dcp",
]

FORMAT = "dcp"
"""``Checkpoint.format`` of a distributed checkpoint."""
METADATA = ".metadata"
"""The file that makes a directory a DCP checkpoint."""
STAMP_ATTRIBUTE = "ckpt_path"
"""Attribute of the pickled ``Metadata`` holding the stamp (plain dicts, lists and strings)."""
_DCP_VERSION = "1.0.0"
"""``Metadata.version`` that torch's file-system writer records."""
_FILE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar", ".zip", ".safetensors", ".json"})
"""Extensions that name a single-file (or safetensors) output, not a DCP directory."""
_COPY_CHUNK = 1 << 30
"""Bytes asked of one ``copy_file_range`` call."""

_METADATA_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("ckpt_path_dcp_metadata_only", default=False)


@contextlib.contextmanager
def metadata_only() -> Iterator[None]:
    """Within the block a DCP checkpoint is loaded from its ``.metadata`` alone: no data file is read."""
    token = _METADATA_ONLY.set(True)
    try:
        yield
    finally:
        _METADATA_ONLY.reset(token)


def is_dcp(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DCP checkpoint: a directory holding ``.metadata``."""
    path = Path(path)
    return path.is_dir() and (path / METADATA).exists()


def writes_dcp(path: str | os.PathLike[str], source: Checkpoint | None) -> bool:
    """Whether a checkpoint written at ``path`` is a DCP directory.

    It is when ``path`` is a DCP directory already, ends in ``.dcp``, or the input is a DCP
    checkpoint and ``path`` names no other format (``.pt``, ``.ckpt``, ``.safetensors``, ...).
    """
    path = Path(path)
    if is_dcp(path) or path.suffix.lower() == ".dcp":
        return True
    if source is None or source.format != FORMAT:
        return False
    return not (formats.is_sharded(path) or path.suffix.lower() in _FILE_SUFFIXES)


# --- reading .metadata ----------------------------------------------------------------------------


def _allowed_globals() -> dict[tuple[str, str], object]:
    """Return the globals a DCP ``.metadata`` pickle may name: DCP's own data classes, sizes, dtypes, paths."""
    from torch.distributed.checkpoint import filesystem, metadata

    allowed: dict[tuple[str, str], object] = {}
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "_MEM_FORMAT_ENCODING",
        "MetadataIndex",
        "StorageMeta",
    ):
        allowed["torch.distributed.checkpoint.metadata", name] = getattr(metadata, name)
    allowed["torch.distributed.checkpoint.filesystem", "_StorageInfo"] = filesystem._StorageInfo  # noqa: SLF001
    allowed["torch", "Size"] = torch.Size
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed["torch", name] = value
    allowed["torch.serialization", "_get_layout"] = torch.serialization._get_layout  # noqa: SLF001
    for name in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
        allowed["pathlib", name] = getattr(import_module("pathlib"), name)
    allowed["collections", "OrderedDict"] = OrderedDict
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles ``.metadata`` naming only allowlisted globals; any other is refused by name, never imported."""

    def __init__(self, handle: Any, name: str) -> None:  # noqa: ANN401 - a binary file
        super().__init__(handle)
        self._name = name
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(self._name, [f"{module}.{name}"])
        return found


def _read_metadata(directory: Path) -> Any:  # noqa: ANN401 - DCP's Metadata
    name = str(directory)
    try:
        with (directory / METADATA).open("rb") as handle:
            metadata = _MetadataUnpickler(handle, f"{name}/{METADATA}").load()
    except OSError as exc:
        raise UnreadableCheckpointError(name, f"{METADATA}: {exc.strerror or exc}") from None
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many types
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UnreadableCheckpointError(name, f"{METADATA} is damaged or not DCP metadata ({reason})") from None
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise UnreadableCheckpointError(name, f"{METADATA} does not hold DCP metadata")
    return metadata


@dataclass(frozen=True, slots=True)
class _Range:
    """Where bytes lie: a file of the checkpoint's directory, an offset, a length."""

    file: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class _Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    where: _Range


@dataclass(frozen=True, slots=True)
class _Entry:
    """One flattened entry: its DCP key, the path into the nested object, and where its bytes are."""

    fqn: str
    path: tuple[str | int, ...]
    dtype: torch.dtype | None = None
    """None for a non-tensor entry."""
    shape: tuple[int, ...] = ()
    chunks: tuple[_Chunk, ...] = ()
    where: _Range | None = None
    """A non-tensor entry's bytes."""


@dataclass(frozen=True, slots=True)
class _Layout:
    directory: Path
    entries: tuple[_Entry, ...]
    stamp: object
    """The ``ckpt_path`` attribute of the metadata, as stored (None when absent)."""
    files: tuple[str, ...]


def _ints(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
        return None
    return tuple(value)


def _check_range(directory: Path, info: object, sizes: dict[str, int], what: str) -> _Range:
    name = str(directory)
    relative = getattr(info, "relative_path", None)
    offset, length = getattr(info, "offset", None), getattr(info, "length", None)
    if not isinstance(relative, str) or type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
        raise UnreadableCheckpointError(name, f"{METADATA} is damaged: no valid storage entry for {what}")
    if getattr(info, "transform_descriptors", None):
        raise UnreadableCheckpointError(
            name,
            f"{what} was written through DCP extensions ({', '.join(map(str, info.transform_descriptors))}), "  # type: ignore[attr-defined]
            "which ckpt-path does not read; save the checkpoint without them",
        )
    if relative in {"", ".", ".."} or any(c in relative for c in "/\\\0"):
        raise UnreadableCheckpointError(
            name, f"{METADATA} names the data file {relative!r} for {what}, which is not a file of the directory"
        )
    if relative not in sizes:
        try:
            status = (directory / relative).stat()
        except OSError:
            raise UnreadableCheckpointError(name, f"data file {relative} is missing (it holds {what})") from None
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableCheckpointError(name, f"data file {relative} is not a regular file")
        sizes[relative] = status.st_size
    if offset + length > sizes[relative]:
        raise UnreadableCheckpointError(
            name,
            f"data file {relative} is truncated or damaged: {what} lies at bytes {offset}-{offset + length}, "
            f"but the file has {sizes[relative]}",
        )
    return _Range(relative, offset, length)


def read_layout(directory: Path) -> _Layout:  # noqa: C901 - one check per field of the metadata
    """Read and check ``.metadata``: every entry, chunk and byte range."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    name = str(directory)
    metadata = _read_metadata(directory)
    storage = metadata.storage_data if isinstance(metadata.storage_data, dict) else {}
    where: dict[tuple[str, tuple[int, ...] | None], object] = {}
    for index, info in storage.items():
        fqn = getattr(index, "fqn", None)
        offset = getattr(index, "offset", None)
        if isinstance(fqn, str):
            where[fqn, tuple(offset) if offset is not None else None] = info
    planner = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    sizes: dict[str, int] = {}
    entries = []
    for fqn, entry in metadata.state_dict_metadata.items():
        if not isinstance(fqn, str):
            raise UnreadableCheckpointError(name, f"{METADATA} is damaged: a key is a {type(fqn).__name__}")
        path = planner.get(fqn, (fqn,))
        if (
            not isinstance(path, tuple)
            or not path
            or not all(isinstance(p, str) or type(p) is int for p in path)
            or not isinstance(path[0], str)
        ):
            raise UnreadableCheckpointError(name, f"{METADATA} is damaged: bad planner path for {fqn!r}")
        if isinstance(entry, BytesStorageMetadata):
            info = where.get((fqn, None))
            entries.append(_Entry(fqn=fqn, path=path, where=_check_range(directory, info, sizes, f"entry {fqn!r}")))
            continue
        if not isinstance(entry, TensorStorageMetadata):
            raise UnreadableCheckpointError(name, f"{METADATA} is damaged: {fqn!r} is a {type(entry).__name__}")
        dtype = getattr(entry.properties, "dtype", None)
        shape = _ints(entry.size)
        if not isinstance(dtype, torch.dtype) or shape is None or not isinstance(entry.chunks, list):
            raise UnreadableCheckpointError(name, f"{METADATA} is damaged: bad dtype, size or chunks for {fqn!r}")
        chunks = []
        for i, chunk in enumerate(entry.chunks):
            offsets, chunk_sizes = _ints(getattr(chunk, "offsets", None)), _ints(getattr(chunk, "sizes", None))
            if (
                offsets is None
                or chunk_sizes is None
                or len(offsets) != len(shape)
                or len(chunk_sizes) != len(shape)
                or any(o + s > d for o, s, d in zip(offsets, chunk_sizes, shape, strict=True))
            ):
                raise UnreadableCheckpointError(name, f"{METADATA} is damaged: chunk {i} of {fqn!r} lies outside it")
            info = where.get((fqn, offsets))
            place = _check_range(directory, info, sizes, f"chunk {i} of {fqn!r}")
            if place.length <= math.prod(chunk_sizes) * dtype.itemsize:  # a torch.save archive is larger than its data
                raise UnreadableCheckpointError(
                    name,
                    f"chunk {i} of {fqn!r} is raw bytes, not a torch.save archive: the checkpoint was saved with "
                    "DCP's safetensors serialization (or another storage writer), which ckpt-path does not read",
                )
            chunks.append(_Chunk(offsets, chunk_sizes, place))
        if sum(math.prod(c.sizes) for c in chunks) != math.prod(shape):
            raise UnreadableCheckpointError(name, f"{METADATA} is damaged: the chunks of {fqn!r} do not cover it")
        entries.append(_Entry(fqn=fqn, path=path, dtype=dtype, shape=shape, chunks=tuple(chunks)))
    return _Layout(
        directory=directory,
        entries=tuple(entries),
        stamp=getattr(metadata, STAMP_ATTRIBUTE, None),
        files=tuple(sorted(sizes)),
    )


# --- reading data ---------------------------------------------------------------------------------


def archive_records(data: Any, name: str, what: str) -> dict[str, tuple[int, int]]:  # noqa: ANN401 - bytes-like
    """Return where each record of one ``torch.save`` archive lies in ``data``, each checked against its CRC-32.

    ``data`` is the archive's bytes or a view of them (a memory map: nothing is copied).
    """
    try:
        with zipfile.ZipFile(_View(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise UnreadableCheckpointError(name, f"{what} is damaged (not a torch archive: {exc})") from None
    view = memoryview(data)
    found: dict[str, tuple[int, int]] = {}
    try:
        for info in infos:
            header = bytes(view[info.header_offset : info.header_offset + 30])
            if len(header) < 30 or header[:4] != b"PK\x03\x04" or info.compress_type != zipfile.ZIP_STORED:  # noqa: PLR2004
                raise UnreadableCheckpointError(name, f"{what} is damaged (record {info.filename})")
            start = info.header_offset + 30 + int.from_bytes(header[26:28], "little")
            start += int.from_bytes(header[28:30], "little")
            part = view[start : start + info.compress_size]
            try:
                intact = len(part) == info.compress_size and zlib.crc32(part) == info.CRC
            finally:
                part.release()
            if not intact:
                raise UnreadableCheckpointError(
                    name, f"{what} is damaged (its CRC-32 does not match its bytes); nothing was written"
                )
            found[info.filename] = (start, info.compress_size)
    finally:
        view.release()
    return found


class _View(io.RawIOBase):
    """A read-only, seekable file over bytes or a memory map, that copies only what is read."""

    def __init__(self, data: Any) -> None:  # noqa: ANN401 - bytes-like
        super().__init__()
        self._data = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer
        chunk = self._data[self._position : self._position + len(buffer)]
        size = len(chunk)
        memoryview(buffer).cast("B")[:size] = chunk
        self._position += size
        return size

    def close(self) -> None:
        self._data.release()
        super().close()


class Reader:
    """Reads chunks and non-tensor entries of one DCP directory: the ``Source`` of its lazy tensors.

    Data files are memory-mapped (copy-on-write): a chunk becomes a tensor whose storage is its
    record in the page cache, so reading one costs no anonymous memory (a tensor of several
    chunks is put together in memory of its own).
    """

    def __init__(self, layout: _Layout, safe_globals: Sequence[str], moves: Moves | None) -> None:
        self.layout = layout
        self.entries = {entry.fqn: entry for entry in layout.entries}
        self._safe_globals = tuple(safe_globals)
        self._moves = moves
        self._maps: dict[str, tuple[Any, mmap.mmap]] = {}

    @property
    def directory(self) -> Path:
        """The checkpoint's directory."""
        return self.layout.directory

    def chunks(self, key: str) -> tuple[_Chunk, ...]:
        """Return the chunks of tensor ``key``: where each lies in the tensor and in the data files."""
        return self.entries[key].chunks

    def _map(self, file: str) -> tuple[Any, mmap.mmap]:  # an UntypedStorage of the whole file, and an mmap
        if file not in self._maps:
            path = self.directory / file
            try:
                with path.open("rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
            except (OSError, RuntimeError, ValueError) as exc:
                raise UnreadableCheckpointError(str(self.directory), f"{file}: {exc}") from None
            self._maps[file] = (storage, mapped)
        return self._maps[file]

    def _bytes(self, where: _Range, what: str) -> bytes:
        try:
            with (self.directory / where.file).open("rb") as handle:
                handle.seek(where.offset)
                data = handle.read(where.length)
        except OSError as exc:
            raise UnreadableCheckpointError(str(self.directory), f"{where.file}: {exc.strerror or exc}") from None
        if len(data) != where.length:
            raise UnreadableCheckpointError(str(self.directory), f"data file {where.file} is truncated ({what})")
        archive_records(data, str(self.directory), f"{what} in {where.file}")
        return data

    def _load(self, data: bytes, what: str, allowed: Mapping[str, object] | None = None) -> Any:  # noqa: ANN401
        pairs: list[Any] = [(obj, dotted) for dotted, obj in sorted((allowed or {}).items())]
        try:
            with torch.serialization.safe_globals(pairs):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if found:
                raise UnsafeCheckpointError(str(self.directory), [found.group(1)]) from None
            raise UnreadableCheckpointError(str(self.directory), f"{what} is damaged ({str(exc)[:160]})") from None
        except Exception as exc:  # noqa: BLE001 - torch raises many types on damaged archives
            raise UnreadableCheckpointError(str(self.directory), f"{what} is damaged ({str(exc)[:160]})") from None

    def _chunk(self, where: _Range, what: str) -> torch.Tensor:
        """Return one chunk as a tensor over the mapped file (its records checked against their CRC-32)."""
        storage, mapped = self._map(where.file)
        name = str(self.directory)
        view = memoryview(mapped)[where.offset : where.offset + where.length]
        try:
            records = archive_records(view, name, f"{what} in {where.file}")
            by_name = {key.split("/", 1)[-1]: place for key, place in records.items()}
            order = by_name.get("byteorder")
            if order is not None and bytes(view[order[0] : order[0] + order[1]]) != sys.byteorder.encode():
                raise UnreadableCheckpointError(name, f"{what} was saved with another byte order")
            if "data.pkl" not in by_name:
                raise UnreadableCheckpointError(name, f"{what} is damaged (no data.pkl)")
            start, size = by_name["data.pkl"]
            pickled = bytes(view[start : start + size])
        finally:
            view.release()

        def persistent_load(saved_id: Any) -> Any:  # noqa: ANN401 - torch's persistent id
            if not isinstance(saved_id, tuple) or len(saved_id) != 5 or saved_id[0] != "storage":  # noqa: PLR2004
                raise UnreadableCheckpointError(name, f"{what} is damaged (a bad storage reference)")
            _, kind, key, _location, numel = saved_id
            dtype = torch.uint8 if kind is torch.UntypedStorage else kind.dtype
            place = by_name.get(f"data/{key}")
            nbytes = numel * dtype.itemsize
            if place is None or place[1] != nbytes:
                raise UnreadableCheckpointError(name, f"{what} is damaged (storage {key} is missing or short)")
            begin = where.offset + place[0]
            own = storage[begin : begin + nbytes]
            return torch.storage.TypedStorage(wrap_storage=own, dtype=dtype, _internal=True)  # type: ignore[no-untyped-call]

        from torch import _weights_only_unpickler

        unpickler = _weights_only_unpickler.Unpickler(io.BytesIO(pickled), encoding="utf-8")
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
        try:
            tensor = unpickler.load()  # type: ignore[no-untyped-call]
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many types
            raise UnreadableCheckpointError(name, f"{what} is damaged ({str(exc)[:160]})") from None
        if not isinstance(tensor, torch.Tensor):
            raise UnreadableCheckpointError(name, f"{what} does not hold a tensor")
        return tensor

    def read(self, key: str) -> torch.Tensor:
        """Return the tensor ``key``: a view of the mapped file, or its chunks put together."""
        entry = self.entries[key]
        assert entry.dtype is not None  # noqa: S101 - only tensors are read as tensors
        whole: torch.Tensor | None = None
        for i, chunk in enumerate(entry.chunks):
            what = f"chunk {i} of {key!r}"
            part = self._chunk(chunk.where, what)
            if tuple(part.shape) != chunk.sizes or part.dtype != entry.dtype:
                raise UnreadableCheckpointError(str(self.directory), f"{what} does not hold what the metadata says")
            if len(entry.chunks) == 1:
                return part
            if whole is None:
                whole = torch.empty(entry.shape, dtype=entry.dtype)
            target = whole
            for dim, (start, size) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
                target = target.narrow(dim, start, size)
            target.copy_(part)
        return whole if whole is not None else torch.empty(entry.shape, dtype=entry.dtype)

    def read_object(self, key: str) -> Any:  # noqa: ANN401 - any non-tensor entry
        """Return the non-tensor entry ``key``, loaded with ``weights_only=True`` (moves applied)."""
        entry = self.entries[key]
        assert entry.where is not None  # noqa: S101 - only non-tensor entries are read as objects
        what = f"entry {key!r}"
        data = self._bytes(entry.where, what)
        allowed = _user_globals(self._safe_globals)
        for _ in range(64):
            try:
                return self._load(data, what, allowed)
            except UnsafeCheckpointError as exc:
                found = self._moves.resolve(exc.global_name) if self._moves is not None else None
                if found is None or exc.global_name in allowed:
                    raise
                allowed[exc.global_name] = found
        raise UnreadableCheckpointError(str(self.directory), f"{what} needs too many moved globals")


def _user_globals(names: Sequence[str]) -> dict[str, object]:
    from ckpt_path.pickles import user_globals as imported

    return imported(names)


@dataclass(frozen=True, slots=True)
class Unread:
    """A non-tensor entry of a DCP checkpoint that was not read (:func:`metadata_only`); written back as it is."""

    source: Reader = field(repr=False)
    key: str

    def __repr__(self) -> str:
        return f"<DCP entry {self.key!r}, not read>"

    def read(self) -> Any:  # noqa: ANN401
        """Read the entry now."""
        return self.source.read_object(self.key)


# --- the nested object ----------------------------------------------------------------------------


def _set_element(root: dict[str, Any], path: tuple[str | int, ...], value: object, name: str) -> None:
    """Put ``value`` at ``path`` (a list where the next key is an int), as DCP unflattens."""
    node: Any = root
    for depth, key in enumerate(path):
        last = depth == len(path) - 1
        fresh: Any = value if last else ([] if isinstance(path[depth + 1], int) else {})
        if isinstance(node, list) and isinstance(key, int):
            node.extend([None] * (key + 1 - len(node)))
            if last or node[key] is None:
                node[key] = fresh
        elif isinstance(node, dict) and isinstance(key, str):
            if last:
                if key in node:
                    raise UnreadableCheckpointError(name, f"{METADATA} is damaged: two entries at {path!r}")
                node[key] = fresh
            else:
                node.setdefault(key, fresh)
        else:
            raise UnreadableCheckpointError(name, f"{METADATA} is damaged: the entries at {path!r} do not nest")
        node = node[key]


def load(
    path: str | os.PathLike[str],
    *,
    state_dict_key: str | None = None,
    safe_globals: Sequence[str] = (),
    moves: Moves | None = None,
) -> Checkpoint:
    """Load a DCP directory as a :class:`~ckpt_path.checkpoint.Checkpoint` of lazy tensors.

    Only ``.metadata`` is read, and the non-tensor entries (unless within :func:`metadata_only`,
    or ``moves`` is a peek: then they stay :class:`Unread`). A stamp in the metadata wins over
    ``ckpt_path`` entries.
    """
    from ckpt_path.checkpoint import Checkpoint, find_state_dict

    directory = Path(path)
    layout = read_layout(directory)
    reader = Reader(layout, safe_globals, moves)
    unread = _METADATA_ONLY.get() or (moves is not None and moves.peeking)
    tree: dict[str, Any] = {}
    for entry in layout.entries:
        if entry.dtype is not None:
            value: object = _lazy.stored(reader, entry.fqn, entry.shape, entry.dtype)
        elif unread and (entry.path[0] != STAMP_KEY or layout.stamp is not None):  # the stamp: read if only here
            value = Unread(reader, entry.fqn)
        else:
            value = reader.read_object(entry.fqn)
        _set_element(tree, entry.path, value, str(directory))
    state_dict_at = find_state_dict(tree, state_dict_key)
    obj: Any = tree
    damaged: StampError | None = None
    try:
        stamp = parse_stamp(layout.stamp) if layout.stamp is not None else None
    except StampError as exc:
        stamp, damaged = None, exc.at(str(directory))
    if not state_dict_at:
        entries = obj.pop(STAMP_KEY, None)  # a flat checkpoint keeps its stamp beside the state dict
        if stamp is None and damaged is None and entries is not None:
            stamp, damaged = _parse(entries, directory)
        obj = OrderedDict(obj)
    elif stamp is None and damaged is None:
        stamp, damaged = _parse(obj.get(STAMP_KEY), directory)
    if stamp is not None:
        obj = write_stamp(obj, state_dict_at, stamp)
    files = (directory / METADATA, *(directory / f for f in layout.files))
    return Checkpoint(
        obj=obj,
        state_dict_at=state_dict_at,
        stamp=stamp,
        damaged_stamp=damaged,
        format=FORMAT,
        file=directory,
        files=files,
    )


def _parse(raw: object, directory: Path) -> tuple[Stamp | None, StampError | None]:
    if raw is None:
        return None, None
    try:
        return parse_stamp(raw), None
    except StampError as exc:
        return None, exc.at(str(directory))


# --- flattening, as DCP does ----------------------------------------------------------------------


def _terminal(value: object) -> bool:
    """Whether DCP stores ``value`` as one entry (a list is walked only when it holds tensors or mappings)."""
    if isinstance(value, Mapping):
        return False
    if not isinstance(value, list):
        return True
    for item in value:
        if isinstance(item, Mapping | list) and not _terminal(item):
            return False
        if isinstance(item, torch.Tensor):
            return False
    return True


def flatten(obj: Mapping[str, Any]) -> list[tuple[str, tuple[str | int, ...], Any]]:
    """Return ``(key, path, value)`` for every entry DCP would store for ``obj``, in DCP's order."""
    found: list[tuple[str, tuple[str | int, ...], Any]] = []
    seen: set[str] = set()

    def visit(path: tuple[str | int, ...], value: object) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit((*path, str(key)), item)
        elif _terminal(value):
            fqn = ".".join(map(str, path))
            if fqn in seen:
                raise SaveError(fqn, f"two entries would have the DCP key {fqn!r}")
            seen.add(fqn)
            found.append((fqn, path, value))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                visit((*path, i), item)

    for key, value in obj.items():
        visit((str(key),), value)
    return found


# --- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Copy:
    """A stored chunk copied as it is: DCP key, chunk index and place, and where its bytes are."""

    fqn: str
    index: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    directory: Path
    where: _Range


@dataclass(frozen=True, slots=True)
class _Tensor:
    """A tensor written as one new chunk."""

    fqn: str
    value: torch.Tensor
    nbytes: int


@dataclass(frozen=True, slots=True)
class _Object:
    """A non-tensor entry: written anew, or copied as it is when it was never read."""

    fqn: str
    value: object


Item = _Copy | _Tensor | _Object


@dataclass(frozen=True, slots=True)
class _Placed:
    """Where one item landed: what ``.metadata`` needs to find it."""

    fqn: str
    index: int | None
    offsets: tuple[int, ...] | None
    file: str
    offset: int
    length: int


@dataclass(slots=True)
class WriteReport:
    """What one process wrote: where every item landed, and the bytes copied and written."""

    placed: list[_Placed] = field(default_factory=list)
    copied_bytes: int = 0
    written_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Job:
    """A checkpoint object flattened into DCP entries and the work of writing them."""

    leaves: tuple[tuple[str, tuple[str | int, ...], Any], ...]
    items: tuple[Item, ...]
    stamp: Stamp | None

    def share(self, rank: int, world: int) -> list[Item]:
        """Return the items process ``rank`` of ``world`` writes: balanced by bytes, the same on every process."""
        if world == 1:
            return list(self.items)
        load = [0] * world
        mine: list[int] = []
        for position in sorted(range(len(self.items)), key=lambda i: (-_cost(self.items[i]), i)):
            item = self.items[position]
            if isinstance(item, _Object):
                owner = 0  # small: the process that writes the metadata writes them
            else:
                owner = min(range(world), key=lambda r: (load[r], r))
                load[owner] += _cost(item)
            if owner == rank:
                mine.append(position)
        return [self.items[position] for position in sorted(mine)]


def _cost(item: Item) -> int:
    if isinstance(item, _Copy):
        return item.where.length
    if isinstance(item, _Tensor):
        return item.nbytes
    return 0


def plan_job(obj: Any, state_dict_at: Sequence[str], *, state_dict_only: bool, path: Path) -> Job:  # noqa: ANN401
    """Flatten a checkpoint object into what a DCP directory holds, and what each entry costs to write."""
    stamp = _stamp_of(obj, state_dict_at)
    if state_dict_only and state_dict_at:
        from ckpt_path.checkpoint import get_state_dict

        obj = OrderedDict(get_state_dict(obj, state_dict_at))
    elif not isinstance(obj, Mapping):
        raise SaveError(str(path), f"a DCP checkpoint holds a dict, not a {type(obj).__name__}")
    leaves = tuple(flatten(obj))
    items: list[Item] = []
    for fqn, _path, value in leaves:
        items.extend(_items_of(fqn, value, path))
    return Job(leaves=leaves, items=tuple(items), stamp=stamp)


def _stamp_of(obj: Any, state_dict_at: Sequence[str]) -> Stamp | None:  # noqa: ANN401
    try:
        return read_stamp(obj, state_dict_at)
    except StampError:
        return None


def _items_of(fqn: str, value: object, path: Path) -> list[Item]:
    if isinstance(value, _lazy.LazyTensor):
        node = _lazy.node_of(value)
        if isinstance(node, _lazy.Stored) and isinstance(node.source, Reader):
            entry = node.source.entries[node.key]
            return [
                _Copy(fqn, i, chunk.offsets, chunk.sizes, node.source.directory, chunk.where)
                for i, chunk in enumerate(entry.chunks)
            ]
    if isinstance(value, torch.Tensor):
        problem = formats.unwritable(value, safetensors=False)
        if value.is_meta or problem is not None:
            raise SaveError(str(path), f"{fqn}: {problem or 'a meta tensor has no values'}")
        if value.is_sparse or value.layout != torch.strided or value.is_nested:
            raise SaveError(str(path), f"{fqn}: a DCP checkpoint holds dense tensors; make it dense first")
        return [_Tensor(fqn, value, value.numel() * value.element_size())]
    return [_Object(fqn, value)]


class _DataFile:
    """A data file written through its descriptor: archives by ``write``, ranges by ``copy_file_range``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.position = 0

    def write(self, data: Any) -> int:  # noqa: ANN401 - bytes-like
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        self.position += done
        return done

    def flush(self) -> None:
        """Nothing is buffered."""

    def copy(self, source: Path, offset: int, length: int) -> None:
        """Append ``length`` bytes of ``source`` from ``offset``, in the kernel where it can."""
        with source.open("rb") as handle:
            _copy_range(handle.fileno(), self.fd, offset, self.position, length)
        self.position += length
        os.lseek(self.fd, self.position, os.SEEK_SET)  # a copy at an offset leaves the file position alone

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


def _copy_range(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy bytes between files with ``os.copy_file_range`` (falling back to reads and writes)."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < length:
        count = min(_COPY_CHUNK, length - done)
        if kernel:
            try:
                copied = os.copy_file_range(src, dst, count, src_offset + done, dst_offset + done)
            except OSError as exc:
                if exc.errno not in {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM}:
                    raise
                kernel = False
                continue
            if copied == 0:
                raise OSError(errno.EIO, "the input file ended early")
        else:
            data = os.pread(src, min(count, 64 << 20), src_offset + done)
            if not data:
                raise OSError(errno.EIO, "the input file ended early")
            copied = os.pwrite(dst, data, dst_offset + done)
        done += copied


def write_share(items: Sequence[Item], directory: Path, file_name: str) -> WriteReport:
    """Write ``items`` into ``directory/file_name`` (one data file) and say where each landed.

    Stored chunks are copied from their file; computed tensors are evaluated one at a time and
    written with ``torch.save``, as DCP writes a chunk; non-tensor entries likewise (or copied,
    when they were never read).
    """
    report = WriteReport()
    if not items:
        return report
    handle = _DataFile(directory / file_name)
    pending: list[Any] = []  # a run of copies contiguous in one input file: copied with one call

    def flush() -> None:
        if pending:
            source, offset, length = pending
            handle.copy(source, offset, length)
            pending.clear()

    try:
        for item in items:
            if isinstance(item, _Copy):
                source = item.directory / item.where.file
                if pending and (pending[0] != source or pending[1] + pending[2] != item.where.offset):
                    flush()
                start = handle.position + (pending[2] if pending else 0)
                if pending:
                    pending[2] += item.where.length
                else:
                    pending[:] = [source, item.where.offset, item.where.length]
                report.copied_bytes += item.where.length
                report.placed.append(_Placed(item.fqn, item.index, item.offsets, file_name, start, item.where.length))
                continue
            flush()
            start = handle.position
            index, offsets = _write_item(handle, item)
            report.written_bytes += item.nbytes if isinstance(item, _Tensor) else 0
            report.placed.append(_Placed(item.fqn, index, offsets, file_name, start, handle.position - start))
        flush()
    finally:
        handle.close()
    return report


def _write_item(handle: _DataFile, item: _Tensor | _Object) -> tuple[int | None, tuple[int, ...] | None]:
    """Append one computed tensor or non-tensor entry to ``handle``; return its chunk index and offsets."""
    if isinstance(item, _Tensor):
        tensor = _writable(computed(item.fqn, item.value))
        torch.save(tensor, handle)  # type: ignore[arg-type]  # a binary file: write and flush
        return 0, (0,) * item.value.dim()
    if isinstance(item.value, Unread):
        where = item.value.source.entries[item.value.key].where
        assert where is not None  # noqa: S101 - a non-tensor entry has its bytes
        handle.copy(item.value.source.directory / where.file, where.offset, where.length)
        return None, None
    buffer = io.BytesIO()
    try:
        torch.save(item.value, buffer)
    except (pickle.PicklingError, TypeError, AttributeError, RuntimeError) as exc:
        raise SaveError(item.fqn, f"torch.save cannot write it ({str(exc)[:160]})") from None
    handle.write(buffer.getbuffer())
    return None, None


def computed(key: str, value: torch.Tensor) -> torch.Tensor:
    """Return the values of ``value`` (the output tensor ``key``); a deferred operation that fails is one error."""
    try:
        return _lazy.evaluate(value)  # type: ignore[no-any-return]
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a converter's deferred operation raised: name the tensor
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"computing {key} failed: {type(exc).__name__}: {reason}") from None


def _writable(tensor: torch.Tensor) -> torch.Tensor:
    """Return the tensor's values in a storage of exactly its own bytes, on the CPU, for ``torch.save`` to write."""
    tensor = tensor.detach().resolve_conj().resolve_neg()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    whole = tensor.numel() * tensor.element_size()
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != whole or tensor.storage_offset():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def build_metadata(job: Job, reports: Iterable[WriteReport], path: Path) -> Any:  # noqa: ANN401 - DCP's Metadata
    """Return the ``Metadata`` of the written checkpoint, as DCP's file-system writer records it."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    placed = {(p.fqn, p.index): p for report in reports for p in report.placed}
    chunks: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    for item in job.items:
        if isinstance(item, _Copy):
            chunks.setdefault(item.fqn, []).append((item.offsets, item.sizes))
        elif isinstance(item, _Tensor):
            chunks[item.fqn] = [((0,) * item.value.dim(), tuple(item.value.shape))]
    entries: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    for fqn, _path, value in job.leaves:
        if not isinstance(value, torch.Tensor):
            entries[fqn] = BytesStorageMetadata()
            landed = [placed.get((fqn, None))]
            indexes = [MetadataIndex(fqn)]
        else:
            own = chunks[fqn]
            entries[fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=value.dtype),
                size=torch.Size(value.shape),
                chunks=[ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s)) for o, s in own],
            )
            landed = [placed.get((fqn, i)) for i in range(len(own))]
            indexes = [MetadataIndex(fqn, offsets, i) for i, (offsets, _sizes) in enumerate(own)]
        for index, where in zip(indexes, landed, strict=True):
            if where is None:
                raise SaveError(str(path), f"{fqn} was not written by any process")
            storage[index] = _StorageInfo(where.file, where.offset, where.length)
    metadata = Metadata(
        state_dict_metadata=entries,
        planner_data={fqn: key_path for fqn, key_path, _value in job.leaves},
        storage_data=storage,
        storage_meta=StorageMeta(checkpoint_id=str(path), save_id=str(uuid.uuid4())),
        version=_DCP_VERSION,
    )
    if job.stamp is not None:
        setattr(metadata, STAMP_ATTRIBUTE, job.stamp.to_dict())
    return metadata


def write_metadata(metadata: object, handle: Any) -> None:  # noqa: ANN401 - a binary file
    """Pickle ``Metadata`` as DCP does."""
    pickle.dump(metadata, handle)


# --- the output directory -------------------------------------------------------------------------


def check_output(path: Path, *, force: bool, protect: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an OUTPUT directory that must not be written or replaced, before anything is written.

    ``protect`` names the input's files: OUTPUT may not hold one of them (replacing it would
    remove it), nor lie inside an input DCP directory (writing it would change that directory).
    """
    real = Path(os.path.realpath(path))
    for protected in protect:
        file = Path(os.path.realpath(protected))
        inside_output = real in file.parents
        directory = file.parent if Path(protected).name == METADATA else None
        if inside_output or (directory is not None and (directory == real or directory in real.parents)):
            raise InputOverwriteError(str(path), str(directory or file), "replace")
    if path.is_symlink():
        raise SaveError(str(path), "it is a symbolic link; a DCP checkpoint is a directory: name the real path")
    if not path.exists():
        if not path.parent.is_dir():
            raise SaveError(str(path), f"directory {path.parent} does not exist")
        return
    if not force:
        raise OutputExistsError(str(path))
    if not path.is_dir():
        raise SaveError(str(path), "it is not a directory, and a DCP checkpoint is one; remove it or name another path")
    if not is_dcp(path) and any(path.iterdir()):
        raise SaveError(str(path), "it is a directory that is not a DCP checkpoint; it is never replaced")


def temporary_directory(path: Path) -> Path:
    """Make the directory a DCP output is written into, beside ``path`` (``.NAME.ckpt-path-XXXXXXXX.tmp``)."""
    return Path(tempfile.mkdtemp(prefix=f".{path.name}{_atomic.TEMP_MARK}", suffix=".tmp", dir=path.parent))


def remove_directory(path: Path) -> None:
    """Remove a temporary output directory (never anything else)."""
    with contextlib.suppress(OSError):
        shutil.rmtree(path)


def finish(job: Job, reports: Sequence[WriteReport], temporary: Path, path: Path, *, force: bool) -> None:
    """Write ``.metadata`` into the temporary directory, fsync it, and put the directory at ``path``."""
    metadata = build_metadata(job, reports, path)
    handle = _DataFile(temporary / METADATA)
    try:
        write_metadata(metadata, handle)
    finally:
        handle.close()
    _fsync(temporary)
    temporary.chmod(0o777 & ~_umask())  # mkdtemp makes it private; give it what mkdir would
    commit(temporary, path, force=force)


def commit(temporary: Path, path: Path, *, force: bool) -> None:
    """Put the written directory at ``path``: a rename, or an atomic swap with what is there (``force``)."""
    if not os.path.lexists(path):
        if _renameat2(temporary, path, _RENAME_NOREPLACE) is False:
            if os.path.lexists(path):
                raise OutputExistsError(str(path))
            temporary.rename(path)
        _fsync(path.parent)
        return
    if not force:
        raise OutputExistsError(str(path))
    if _renameat2(temporary, path, _RENAME_EXCHANGE) is not False:
        _fsync(path.parent)
        remove_directory(temporary)  # it now holds what was at ``path``
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}{_atomic.TEMP_MARK}", suffix=".tmp", dir=path.parent))
    aside.rmdir()
    path.rename(aside)
    try:
        temporary.rename(path)
    except BaseException:
        aside.rename(path)
        raise
    _fsync(path.parent)
    remove_directory(aside)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source: Path, target: Path, flags: int) -> bool | None:
    """``renameat2(2)``; False where the kernel or libc lacks it, so the caller falls back."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd = -100
    result = function(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}:
        return False
    if code == errno.EEXIST:
        raise OutputExistsError(str(target))
    raise OSError(code, os.strerror(code), str(target))


def _fsync(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_directories(path: Path, *, older_than: float = _atomic.STALE_AFTER) -> None:
    """Remove temporary output directories for ``path`` that a killed run left (see :mod:`ckpt_path._atomic`)."""
    _atomic.remove_stale_temporaries(path.parent, re.escape(path.name), older_than=older_than, directories=True)


class _Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives while a DCP output is written."""


@contextlib.contextmanager
def removed_on_failure(temporary: Path) -> Iterator[None]:
    """Remove ``temporary`` on any error, Ctrl-C or SIGTERM (then SIGTERM is delivered again)."""
    previous: Any = None
    terminated = False

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        raise _Terminated

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    lock = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY)
    with contextlib.suppress(OSError):  # shared by every process writing it; the kernel drops it when they die
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    try:
        yield
    except BaseException:
        remove_directory(temporary)
        if terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        os.close(lock)
        if previous is not None and not terminated:
            signal.signal(signal.SIGTERM, previous)


def save(  # noqa: PLR0913 - what writing a checkpoint needs
    obj: Any,  # noqa: ANN401 - any checkpoint object
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    state_dict_path: Sequence[str] = (),
    state_dict_only: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
    source: Checkpoint | None = None,
) -> WriteReport:
    """Write ``obj`` as a DCP directory at ``path``, atomically, in this one process.

    Writing over the directory ``source`` was loaded from (``ckpt-path stamp`` in place) writes
    only what changed: the non-tensor entries into a new data file, then a new ``.metadata``
    renamed over the old one.
    """
    path = Path(path)
    if source is not None and source.file is not None and path.exists() and path.samefile(source.file):
        return _save_in_place(obj, path, state_dict_path=state_dict_path, state_dict_only=state_dict_only)
    check_output(path, force=force, protect=protect)
    job = plan_job(obj, state_dict_path, state_dict_only=state_dict_only, path=path)
    temporary = temporary_directory(path)
    with removed_on_failure(temporary):
        try:
            report = write_share(job.items, temporary, "__0_0.distcp")
            finish(job, [report], temporary, path, force=force)
        except OSError as exc:
            raise SaveError(str(path), exc.strerror or str(exc)) from None
    remove_stale_directories(path)
    return report


def _save_in_place(obj: Any, path: Path, *, state_dict_path: Sequence[str], state_dict_only: bool) -> WriteReport:  # noqa: ANN401
    """Rewrite a DCP directory's non-tensor entries and ``.metadata``; its tensor chunks stay where they are."""
    job = plan_job(obj, state_dict_path, state_dict_only=state_dict_only, path=path)
    copies = [item for item in job.items if isinstance(item, _Copy)]
    if any(isinstance(item, _Tensor) for item in job.items) or any(c.directory != path for c in copies):
        raise SaveError(str(path), "only the stamp and non-tensor entries of a DCP checkpoint are rewritten in place")
    report = WriteReport(
        placed=[_Placed(c.fqn, c.index, c.offsets, c.where.file, c.where.offset, c.where.length) for c in copies]
    )
    old_files = {f.name for f in path.iterdir() if f.name.endswith(".distcp")}
    objects = [item for item in job.items if isinstance(item, _Object)]
    name = f"__stamp-{uuid.uuid4().hex[:8]}.distcp"
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}{_atomic.TEMP_MARK}", suffix=".tmp", dir=path.parent))
    with removed_on_failure(scratch):
        written = write_share(objects, scratch, name)
        report.placed += written.placed
        used = {p.file for p in report.placed}
        metadata = build_metadata(job, [report], path)
        with _atomic.Transaction(force=True) as transaction:
            if written.placed:
                with transaction.open(path / name, fresh=True) as handle:
                    handle.write((scratch / name).read_bytes())
            with transaction.open(path / METADATA) as handle:
                write_metadata(metadata, handle)
            for stale in sorted(old_files - used):
                if re.fullmatch(r"__stamp-[0-9a-f]{8}\.distcp", stale):
                    transaction.remove(path / stale)  # an earlier stamp's entries, no longer named
    remove_directory(scratch)
    return report


# --- other formats from lazy tensors --------------------------------------------------------------


def _walk(obj: object) -> Iterator[object]:
    stack = [obj]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, Mapping):
            stack.extend(node.values())
            stack.extend(
                getattr(node, "_metadata", {}).values() if isinstance(getattr(node, "_metadata", None), Mapping) else ()
            )
        elif isinstance(node, list | tuple):
            stack.extend(node)


@contextlib.contextmanager
def materialized(obj: Any, beside: Path) -> Iterator[Any]:  # noqa: ANN401
    """Yield a copy of ``obj`` whose lazy tensors are plain tensors mapped from a scratch file.

    Each lazy tensor is evaluated on its own and its bytes written to a scratch file beside
    ``beside`` (removed at once; the mapping keeps it readable), so a writer that needs every
    tensor at the same time (``torch.save``) finds them all in the page cache, and anonymous
    memory stays near the size of the largest tensor. Unread non-tensor entries are read.
    """
    lazies: list[_lazy.LazyTensor] = []
    mapped: dict[int, torch.Tensor] = {}
    for value in _walk(obj):
        if not isinstance(value, _lazy.LazyTensor):
            continue
        node = _lazy.node_of(value)
        if (
            isinstance(node, _lazy.Stored)
            and isinstance(node.source, Reader)
            and len(node.source.chunks(node.key)) == 1
        ):
            mapped[id(value)] = _lazy.evaluate(value)  # a view of the mapped input already
        else:
            lazies.append(value)
    if not lazies:
        yield _rebuilt(obj, mapped)
        return
    fd, name = tempfile.mkstemp(prefix=f".{beside.name}{_atomic.TEMP_MARK}", suffix=".tmp", dir=beside.parent)
    with contextlib.suppress(OSError):  # held while it is written: a concurrent cleanup leaves it alone
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    places: list[tuple[int, int]] = []
    try:
        with os.fdopen(fd, "wb") as handle:
            position = 0
            for value in lazies:
                tensor = _writable(computed("a tensor", value))
                nbytes = tensor.numel() * tensor.element_size()
                pad = -position % 64
                handle.write(b"\0" * pad)
                position += pad
                if nbytes:
                    handle.write(memoryview((ctypes.c_char * nbytes).from_address(tensor.data_ptr())))
                places.append((position, nbytes))
                position += nbytes
                del tensor
            handle.flush()
        storage = torch.UntypedStorage.from_file(name, shared=False, nbytes=position) if position else None
    finally:
        Path(name).unlink(missing_ok=True)
    for value, (offset, nbytes) in zip(lazies, places, strict=True):
        if storage is None or nbytes == 0:
            real = torch.empty(value.shape, dtype=value.dtype)
        else:
            own = storage[offset : offset + nbytes]
            real = torch.empty(0, dtype=value.dtype).set_(own, 0, value.shape)  # type: ignore[call-overload]
        mapped[id(value)] = real
    yield _rebuilt(obj, mapped)


def _rebuilt(obj: Any, mapped: Mapping[int, torch.Tensor]) -> Any:  # noqa: ANN401
    """Copy the containers of ``obj``, putting the mapped tensor for each lazy one and reading unread entries."""
    if isinstance(obj, _lazy.LazyTensor):
        return mapped[id(obj)]
    if isinstance(obj, Unread):
        return obj.read()
    if isinstance(obj, Mapping):
        copy = type(obj)() if isinstance(obj, dict) else {}
        for key, value in obj.items():
            copy[key] = _rebuilt(value, mapped)
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:
            copy._metadata = metadata  # type: ignore[attr-defined]  # noqa: SLF001
        return copy
    if isinstance(obj, list):
        return [_rebuilt(v, mapped) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_rebuilt(v, mapped) for v in obj)
    return obj


def refuse_many(world: int, path: Path) -> None:
    """Refuse to write a single-file format from many processes."""
    if world > 1:
        raise UsageError(
            f"{path}: a conversion with {world} processes writes a DCP directory (OUTPUT without a file "
            "extension, or ending in .dcp); convert to this format with one process",
        )
