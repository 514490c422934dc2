"""Planning and writing DCP data files and ``.metadata``, laid out as ``torch.distributed.checkpoint.save`` does.

:func:`plan_job` flattens a checkpoint object as DCP does (:func:`flatten`) into a
:class:`Job`: every entry and what writing it costs, shared out by bytes among processes
(:meth:`Job.share`). :func:`write_share` writes one process's share into one data file: a
tensor that no step changed (renamed or not) is copied chunk by chunk from the input's data
files with ``os.copy_file_range`` (in the kernel; a reflink where the file system shares
extents), never through Python; a tensor a step computed is evaluated then, one at a time, and
written as one chunk, a ``torch.save`` archive as DCP writes it. :func:`build_metadata` then
records where everything landed, with the stamp, as DCP's file-system writer does.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckpt_path import _lazy, formats
from ckpt_path.checkpoint import get_state_dict
from ckpt_path.dcp._metadata import STAMP_ATTRIBUTE, _Range
from ckpt_path.dcp._read import Reader, Unread
from ckpt_path.errors import CheckpointError, LazyTensorError, SaveError, StampError
from ckpt_path.stamp import Stamp, read_stamp

_DCP_VERSION = "1.0.0"
"""``Metadata.version`` that torch's file-system writer records."""
_COPY_CHUNK = 1 << 30
"""Bytes asked of one ``copy_file_range`` call."""


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
    """Return the bytes writing ``item`` costs: what shares are balanced by."""
    if isinstance(item, _Copy):
        return item.where.length
    if isinstance(item, _Tensor):
        return item.nbytes
    return 0


def plan_job(obj: Any, state_dict_at: Sequence[str], *, state_dict_only: bool, path: Path) -> Job:
    """Flatten a checkpoint object into what a DCP directory holds, and what each entry costs to write."""
    stamp = _stamp_of(obj, state_dict_at)
    if state_dict_only and state_dict_at:
        obj = OrderedDict(get_state_dict(obj, state_dict_at))
    elif not isinstance(obj, Mapping):
        raise SaveError(str(path), f"a DCP checkpoint holds a dict, not a {type(obj).__name__}")
    leaves = tuple(flatten(obj))
    items: list[Item] = []
    for fqn, _path, value in leaves:
        items.extend(_items_of(fqn, value, path))
    return Job(leaves=leaves, items=tuple(items), stamp=stamp)


def _stamp_of(obj: Any, state_dict_at: Sequence[str]) -> Stamp | None:
    """Return the stamp to record in ``.metadata``, or None when there is none or it is damaged."""
    try:
        return read_stamp(obj, state_dict_at)
    except StampError:
        return None


def _items_of(fqn: str, value: object, path: Path) -> list[Item]:
    """Return the items entry ``fqn`` is written as: its stored chunks copied, a new chunk, or an object."""
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

    def write(self, data: Any) -> int:
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
        raise LazyTensorError(key, f"computing it failed: {type(exc).__name__}: {reason}") from None


def _writable(tensor: torch.Tensor) -> torch.Tensor:
    """Return the tensor's values in a storage of exactly its own bytes, on the CPU, for ``torch.save`` to write."""
    tensor = tensor.detach().resolve_conj().resolve_neg()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    whole = tensor.numel() * tensor.element_size()
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != whole or tensor.storage_offset():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def build_metadata(job: Job, reports: Iterable[WriteReport], path: Path) -> Any:
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


def write_metadata(metadata: object, handle: Any) -> None:
    """Pickle ``Metadata`` as DCP does."""
    pickle.dump(metadata, handle)
