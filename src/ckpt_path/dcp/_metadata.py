"""A DCP checkpoint's ``.metadata``: unpickled with an allowlist, checked field by field, made a layout.

``.metadata`` is a pickle of DCP's ``Metadata``: every entry's shape, dtype and chunks, and
where each chunk's bytes lie in the data files. It is unpickled with an allowlist of DCP's own
metadata classes (no other global is ever imported or called) and checked entry by entry:
every chunk inside its tensor, the chunks covering it, every byte range inside an existing
regular file of the directory, every chunk a ``torch.save`` archive. What passes becomes a
:class:`_Layout`, the only form in which the rest of the package sees the metadata.

**The stamp** lives in ``.metadata`` itself (an attribute ``ckpt_path`` of the pickled
``Metadata``, plain strings and lists), so it is read without a data file, and
``torch.distributed.checkpoint.load`` into a model's state dict works as before.
"""

from __future__ import annotations

import math
import os
import pickle
import stat
from collections import OrderedDict
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from ckpt_path.errors import CheckpointError, UnreadableCheckpointError, UnsafeCheckpointError

FORMAT = "dcp"
"""``Checkpoint.format`` of a distributed checkpoint."""
METADATA = ".metadata"
"""The file that makes a directory a DCP checkpoint."""
STAMP_ATTRIBUTE = "ckpt_path"
"""Attribute of the pickled ``Metadata`` holding the stamp (plain dicts, lists and strings)."""


def is_dcp(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DCP checkpoint: a directory holding ``.metadata``."""
    path = Path(path)
    return path.is_dir() and (path / METADATA).exists()


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

    def __init__(self, handle: Any, name: str) -> None:
        super().__init__(handle)
        self._name = name
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(self._name, [f"{module}.{name}"])
        return found


def _read_metadata(directory: Path) -> Any:
    """Unpickle ``directory/.metadata`` (allowlisted globals only) and check it is DCP's ``Metadata``."""
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
    """One stored piece of a tensor: where it lies in the tensor, and where its archive lies."""

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
    """A DCP directory's checked metadata: its entries, its stamp as stored, the data files it names."""

    directory: Path
    entries: tuple[_Entry, ...]
    stamp: object
    """The ``ckpt_path`` attribute of the metadata, as stored (None when absent)."""
    files: tuple[str, ...]


def _ints(value: object) -> tuple[int, ...] | None:
    """Return ``value`` as a tuple of non-negative ints, or None when it is not one."""
    if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
        return None
    return tuple(value)


def _check_range(directory: Path, info: object, sizes: dict[str, int], what: str) -> _Range:
    """Check one storage entry: a plain byte range inside a regular file of ``directory`` (sizes cached)."""
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
