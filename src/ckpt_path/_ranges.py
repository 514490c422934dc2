"""Byte ranges of an input file that hold tensors, found again in memory, and copied kernel-side.

A checkpoint loaded with ``mmap`` leaves every unchanged tensor a view of the input file's
mapping. :class:`InputRecords` finds, for a storage or a tensor, the range of the input file
that holds exactly its bytes (through ``/proc/self/maps`` on Linux; elsewhere nothing is
found, and everything is written from memory), so writers can copy that range from file to
file with :func:`copy_range` (``os.copy_file_range``: in-kernel, server-side on NFS, a reflink
where the file system shares extents) instead of passing the bytes through Python.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

__all__ = ["CHUNK", "InputRecord", "InputRecords", "copy_range"]

CHUNK = 64 * 1024 * 1024
"""Bytes copied or checksummed at a time."""


@dataclasses.dataclass(frozen=True, slots=True)
class InputRecord:
    """A range of the input file holding one tensor's bytes: where, how long, and its CRC-32 if known."""

    name: str
    data_offset: int
    size: int
    crc: int | None


class InputRecords:
    """The byte ranges of an input file that hold tensors, and which in-memory storages are views of them.

    A storage counts as a view of a range when its memory lies in a mapping of the input file
    (read from ``/proc/self/maps``) exactly at the range's start, with the range's size. Build
    one with :meth:`torch_zip` (the stored records of a torch zip, CRCs from its central
    directory) or :meth:`ranges` (e.g. a safetensors file's tensors; no CRCs).
    """

    def __init__(self, path: Path, records: Iterable[InputRecord]) -> None:
        self.path = path
        stat = path.stat()
        self._identity = (stat.st_dev, stat.st_ino)
        self.by_offset = {r.data_offset: r for r in records}
        self._regions = self._mapped_regions()

    @classmethod
    def torch_zip(cls, path: Path) -> InputRecords:
        """Return the stored records of a torch zip file."""
        records = []
        with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                    continue
                raw.seek(info.header_offset)
                header = raw.read(30)
                if len(header) < 30 or header[:4] != b"PK\x03\x04":  # noqa: PLR2004 - the fixed part
                    continue
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                records.append(InputRecord(name=info.filename, data_offset=start, size=info.file_size, crc=info.CRC))
        return cls(path, records)

    def _mapped_regions(self) -> list[tuple[int, int, int]]:
        """Return ``(start, end, file offset)`` of every mapping of the input file in this process."""
        regions = []
        try:
            lines = Path("/proc/self/maps").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) < 5:  # noqa: PLR2004 - address, perms, offset, dev, inode
                continue
            span, _perms, offset, dev, inode = parts[:5]
            try:
                major, minor = (int(x, 16) for x in dev.split(":"))
                if (os.makedev(major, minor), int(inode)) != self._identity:
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                regions.append((start, end, int(offset, 16)))
            except ValueError:
                continue
        return regions

    def find(self, storage: torch.UntypedStorage) -> InputRecord | None:
        """Return the input range ``storage`` is an unchanged-layout view of, or None."""
        if storage.device.type != "cpu" or not self._regions:
            return None
        pointer, nbytes = storage.data_ptr(), storage.nbytes()
        for start, end, offset in self._regions:
            if start <= pointer < end:
                record = self.by_offset.get(pointer - start + offset)
                return record if record is not None and record.size == nbytes else None
        return None

    def find_tensor(self, tensor: torch.Tensor) -> InputRecord | None:
        """Return the input range holding exactly ``tensor``'s bytes (a whole, contiguous storage), or None."""
        storage = tensor.untyped_storage()
        if not tensor.is_contiguous() or tensor.storage_offset() or tensor.nbytes != storage.nbytes():
            return None
        return self.find(storage)

    def crc(self, record: InputRecord) -> int:
        """Return the record's CRC-32: from the zip directory, or computed from the file."""
        if record.crc is not None:
            return record.crc
        crc = 0
        with self.path.open("rb") as handle:
            handle.seek(record.data_offset)
            left = record.size
            while left:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
        return crc


def copy_range(  # noqa: PLR0913, PLR0917 - a source range, a target position, and progress
    source: int, offset: int, target: int, at: int, count: int, advance: Callable[[int], None]
) -> None:
    """Copy ``count`` bytes kernel-side where the kernel can; with reads and writes where it cannot."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < count:
        step = min(CHUNK, count - done)
        copied = 0
        if kernel:
            try:
                copied = os.copy_file_range(source, target, step, offset + done, at + done)
            except OSError as exc:
                if exc.errno not in {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}:
                    raise
                kernel = False
        if not copied:
            data = os.pread(source, step, offset + done)
            if not data:
                msg = "the input ended before the record did"
                raise OSError(errno.EIO, msg)
            view = memoryview(data)
            while view:
                written = os.pwrite(target, view, at + done + (len(data) - len(view)))
                view = view[written:]
            copied = len(data)
        done += copied
        advance(copied)
