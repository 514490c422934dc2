"""A DCP checkpoint loaded lazily: tensors read from the data files only when needed, each chunk checked.

:func:`load` reads ``.metadata`` (:mod:`ckpt_path.dcp._metadata`) and turns it into the nested
object DCP flattened (its ``planner_data``). Tensors become lazy tensors
(:mod:`ckpt_path._lazy`) whose source is a :class:`Reader`: their values are read only when a
step computes from them or a writer needs them, from data files memory-mapped, and each
chunk's CRC-32 is checked when it is read. Non-tensor entries (epoch, hyper-parameters,
optimizer param groups) are read with ``torch.load(weights_only=True)``; within
:func:`metadata_only` (``inspect``, ``plan CKPT``, ``convert --dry-run``) they are left as
inert :class:`Unread` placeholders, so not one byte of a data file is read.

A nested checkpoint (``{"model": ..., "optimizer": ...}``) may also carry its stamp as DCP
entries ``ckpt_path.version`` and ``ckpt_path.history``, as Lightning's strategies save a
stamped checkpoint; a stamp in the metadata wins over them.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import mmap
import os
import pickle
import re
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ckpt_path import _lazy
from ckpt_path.checkpoint import Checkpoint, find_state_dict
from ckpt_path.dcp._metadata import FORMAT, METADATA, _Chunk, _Layout, _Range, read_layout
from ckpt_path.errors import CheckpointError, StampError, UnreadableCheckpointError, UnsafeCheckpointError
from ckpt_path.pickles import user_globals
from ckpt_path.stamp import STAMP_KEY, Stamp, parse_stamp, write_stamp

if TYPE_CHECKING:
    from ckpt_path.pickles import Moves

_METADATA_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("ckpt_path_dcp_metadata_only", default=False)


@contextlib.contextmanager
def metadata_only() -> Iterator[None]:
    """Within the block a DCP checkpoint is loaded from its ``.metadata`` alone: no data file is read."""
    token = _METADATA_ONLY.set(True)
    try:
        yield
    finally:
        _METADATA_ONLY.reset(token)


def archive_records(data: Any, name: str, what: str) -> dict[str, tuple[int, int]]:
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

    def __init__(self, data: Any) -> None:
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

    def readinto(self, buffer: Any) -> int:
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

    def _load(self, data: bytes, what: str, allowed: Mapping[str, object] | None = None) -> Any:
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

        def persistent_load(saved_id: Any) -> Any:
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

    def read_object(self, key: str) -> Any:
        """Return the non-tensor entry ``key``, loaded with ``weights_only=True`` (moves applied)."""
        entry = self.entries[key]
        assert entry.where is not None  # noqa: S101 - only non-tensor entries are read as objects
        what = f"entry {key!r}"
        data = self._bytes(entry.where, what)
        allowed = user_globals(self._safe_globals)
        for _ in range(64):
            try:
                return self._load(data, what, allowed)
            except UnsafeCheckpointError as exc:
                found = self._moves.resolve(exc.global_name) if self._moves is not None else None
                if found is None or exc.global_name in allowed:
                    raise
                allowed[exc.global_name] = found
        raise UnreadableCheckpointError(str(self.directory), f"{what} needs too many moved globals")


@dataclass(frozen=True, slots=True)
class Unread:
    """A non-tensor entry of a DCP checkpoint that was not read (:func:`metadata_only`); written back as it is."""

    source: Reader = field(repr=False)
    key: str

    def __repr__(self) -> str:
        return f"<DCP entry {self.key!r}, not read>"

    def read(self) -> Any:
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
    """Parse a stamp found in the entries: the stamp, or the error that says why it is damaged."""
    if raw is None:
        return None, None
    try:
        return parse_stamp(raw), None
    except StampError as exc:
        return None, exc.at(str(directory))
