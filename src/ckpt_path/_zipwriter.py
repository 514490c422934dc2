"""A torch zip writer that copies unchanged tensor records from the input instead of rewriting them.

``torch.save`` pickles the object and then writes every storage's bytes through Python, with
a fresh CRC-32 each. Most conversions change a few tensors, or only names: the bytes of an
unchanged tensor are already in the input file, in a record of the same layout. This module
gives :func:`torch.serialization._save` (the pickling half of ``torch.save``, so ``data.pkl``
is exactly what torch writes) a record writer of our own, which writes the zip container
itself:

- a storage that is an unchanged view of an input record is copied from the input file
  kernel-side (``os.copy_file_range``; a plain read/write loop where that fails), and its CRC
  comes from the input's central directory: its bytes never pass through Python;
- any other storage is written from its memory, its CRC computed on the way.

Records are stored (never compressed) and aligned to 64 bytes, as ``torch.load(mmap=True)``
needs; the layout (``archive/data.pkl``, ``.format_version``, ``.storage_alignment``,
``byteorder``, ``data/N``, ``version``, ``.data/serialization_id``) and the zip64 end records
are those torch writes, so the file loads with ``torch.load`` (``weights_only`` and ``mmap``
alike) and with ``zipfile``. Which storages are views of the input is read from
``/proc/self/maps`` (Linux); elsewhere nothing is copied and every record is written.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pickle
import secrets
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ckpt_path._ranges import CHUNK, InputRecord, InputRecords, copy_range

__all__ = ["ZipReport", "save_torch_zip"]

ALIGNMENT = 64
"""Where record data starts, as torch writes it (``torch.load(mmap=True)`` relies on it)."""
_ZIP64_LIMIT = 0xFFFFFFFF
_PAD_ID = 0x4246  # "FB": the extra field torch pads with
_ZIP64_ID = 0x0001
_UTF8 = 0x0800

Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True, slots=True)
class _Record:
    name: str
    offset: int
    """Where its local header starts in the output."""
    size: int
    crc: int


class _Writer:
    """What ``torch.serialization._save`` writes records into; we write the zip ourselves."""

    def __init__(  # noqa: PLR0913 - where to write and what may be copied
        self,
        fd: int,
        start: int,
        *,
        inputs: Sequence[InputRecords],
        trust_memory: bool,
        progress: Progress | None,
        total: int,
    ) -> None:
        self.fd = fd
        self.position = start
        self.start = start
        self.inputs = inputs
        self.trust_memory = trust_memory
        self.progress = progress
        self.total = total
        self.done = 0
        self.records: list[_Record] = []
        self.copied: list[InputRecord] = []
        self.copied_bytes = 0
        self.written_bytes = 0
        self._source_fds: dict[Path, int] = {}

    # --- the interface torch.serialization._save uses --------------------------------------

    def write_record(self, name: str, data: Any, nbytes: int) -> None:
        """Write one record: bytes or a string as given, a storage from the input or its memory."""
        full = f"archive/{name}"
        if isinstance(data, str):
            data = data.encode()
        if isinstance(data, bytes | bytearray):  # the pickle and torch's small records: not tensor bytes
            self._write_memory(full, memoryview(data), nbytes, counted=False)
            return
        for inputs in self.inputs:
            source = inputs.find(data)
            if source is not None:
                crc = inputs.crc(source)
                if self.trust_memory or _crc_of_storage(data) == crc:
                    self._copy_record(full, inputs.path, source, crc)
                    return
                break
        self._write_memory(full, _storage_view(data, nbytes), nbytes, counted=True)

    def write_record_metadata(self, name: str, nbytes: int) -> None:
        """Refuse: ckpt-path never writes records without their data."""
        msg = f"record {name} ({nbytes} bytes) without data"
        raise NotImplementedError(msg)

    # --- records ----------------------------------------------------------------------------

    def _header(self, name: str, size: int, crc: int) -> bytes:
        encoded = name.encode()
        zip64 = size >= _ZIP64_LIMIT
        extra = struct.pack("<HHQQ", _ZIP64_ID, 16, size, size) if zip64 else b""
        fixed = 30 + len(encoded) + len(extra)
        pad = (-(self.position + fixed + 4)) % ALIGNMENT
        extra += struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad
        shown = _ZIP64_LIMIT if zip64 else size
        return (
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                45 if zip64 else 20,
                _UTF8,
                0,  # stored
                0,
                0x21,  # 1980-01-01, as torch writes
                crc,
                shown,
                shown,
                len(encoded),
                len(extra),
            )
            + encoded
            + extra
        )

    def _put(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.position)
            self.position += written
            view = view[written:]

    def _write_memory(self, name: str, view: memoryview, nbytes: int, *, counted: bool) -> None:
        crc = 0
        for offset in range(0, nbytes, CHUNK):
            crc = zlib.crc32(view[offset : offset + CHUNK], crc)
        self.records.append(_Record(name=name, offset=self.position, size=nbytes, crc=crc))
        self._put(self._header(name, nbytes, crc))
        for offset in range(0, nbytes, CHUNK):
            self._put(view[offset : offset + CHUNK])
            if counted:
                self._advance(min(CHUNK, nbytes - offset))
        if counted:  # tensor bytes only: the pickle and torch's small records are not what users count
            self.written_bytes += nbytes

    def _copy_record(self, name: str, path: Path, source: InputRecord, crc: int) -> None:
        if path not in self._source_fds:
            self._source_fds[path] = os.open(path, os.O_RDONLY)
        self.records.append(_Record(name=name, offset=self.position, size=source.size, crc=crc))
        self._put(self._header(name, source.size, crc))
        copy_range(self._source_fds[path], source.data_offset, self.fd, self.position, source.size, self._advance)
        self.position += source.size
        self.copied.append(source)
        self.copied_bytes += source.size

    def _advance(self, nbytes: int) -> None:
        """Report tensor bytes written; a storage larger than its tensors (a view's) never takes it past the total."""
        self.done += nbytes
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    # --- the end of the archive -------------------------------------------------------------

    def finish(self) -> int:
        """Write torch's closing records and the central directory; return the end position."""
        self.write_record("version", "3\n", 2)
        serialization_id = str(secrets.randbits(128)).zfill(40)[:40]
        self.write_record(".data/serialization_id", serialization_id, 40)
        directory_start = self.position
        for record in self.records:
            self._put(_central_entry(record, self.start))
        directory_end = self.position
        count, size = len(self.records), directory_end - directory_start
        self._put(
            struct.pack(
                "<IQHHIIQQQQ",
                0x06064B50,
                44,
                45,
                45,
                0,
                0,
                count,
                count,
                size,
                directory_start - self.start,
            )
        )
        self._put(struct.pack("<IIQI", 0x07064B50, 0, directory_end - self.start, 1))
        self._put(
            struct.pack(
                "<IHHHHIIH",
                0x06054B50,
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(size, _ZIP64_LIMIT),
                min(directory_start - self.start, _ZIP64_LIMIT),
                0,
            )
        )
        for fd in self._source_fds.values():
            os.close(fd)
        self._source_fds.clear()
        return self.position


def _central_entry(record: _Record, start: int) -> bytes:
    encoded = record.name.encode()
    offset = record.offset - start
    big_size, big_offset = record.size >= _ZIP64_LIMIT, offset >= _ZIP64_LIMIT
    fields = ([record.size, record.size] if big_size else []) + ([offset] if big_offset else [])
    extra = struct.pack("<HH", _ZIP64_ID, 8 * len(fields)) + struct.pack(f"<{len(fields)}Q", *fields) if fields else b""
    return (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            45,
            45 if fields else 20,
            _UTF8,
            0,
            0,
            0x21,
            record.crc,
            _ZIP64_LIMIT if big_size else record.size,
            _ZIP64_LIMIT if big_size else record.size,
            len(encoded),
            len(extra),
            0,
            0,
            0,
            0,
            _ZIP64_LIMIT if big_offset else offset,
        )
        + encoded
        + extra
    )


def _storage_view(storage: torch.UntypedStorage, nbytes: int) -> memoryview:
    """Return the storage's bytes as a memoryview of its own memory (nothing copied)."""
    if storage.device.type != "cpu":
        storage = storage.cpu()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    if nbytes == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * nbytes).from_address(storage.data_ptr())).cast("B")


def _crc_of_storage(storage: torch.UntypedStorage) -> int:
    view = _storage_view(storage, storage.nbytes())
    crc = 0
    for offset in range(0, len(view), CHUNK):
        crc = zlib.crc32(view[offset : offset + CHUNK], crc)
    return crc


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ZipReport:
    """What a save did: the input records copied as they were, and the bytes copied and written."""

    copied: tuple[InputRecord, ...]
    copied_bytes: int
    written_bytes: int


def save_torch_zip(  # noqa: PLR0913 - what a save needs
    obj: object,
    handle: BinaryIO,
    *,
    inputs: Sequence[InputRecords] = (),
    trust_memory: bool = True,
    progress: Progress | None = None,
    total: int = 0,
) -> ZipReport:
    """Write ``obj`` as torch.save would, into an open binary file; copy unchanged input records.

    ``trust_memory`` says the input's mapped memory was not written to since loading (only
    ops ran, which make new tensors): a storage that is a view of an input record is then
    copied without reading it. Otherwise its memory's CRC-32 must equal the record's to be
    copied (a convert function may have changed it in place), and it is written from memory
    when it does not.
    """
    handle.flush()
    fd = handle.fileno()
    start = handle.tell()
    writer = _Writer(fd, start, inputs=inputs, trust_memory=trust_memory, progress=progress, total=total)
    save = torch.serialization._save  # noqa: SLF001 - torch's own pickling half, so data.pkl is what torch writes
    save(obj, writer, pickle, 2, _disable_byteorder_record=False)  # type: ignore[no-untyped-call]
    end = writer.finish()
    handle.seek(end)
    return ZipReport(copied=tuple(writer.copied), copied_bytes=writer.copied_bytes, written_bytes=writer.written_bytes)
