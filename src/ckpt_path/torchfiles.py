"""Reading ``torch.save`` files safely: weights-only, moved globals mapped round by round, hostile files refused.

Every torch file is read with ``torch.load(weights_only=True)``, memory-mapped where the file
allows, so tensor data is read only when something touches it. A file that needs a global
beyond what weights-only loading allows is refused with that global's name; it is never
executed. Moved, renamed or deleted globals (:mod:`ckpt_path.pickles`) are mapped one round at a
time, as torch names what it refused. Before unpickling, a zip's ``data.pkl`` that is compressed
or larger than ``CKPT_PATH_MAX_PICKLE_MB`` is refused (a zip bomb or not a checkpoint); before
writing, records read from the input are checked against their CRC-32 (:func:`verify`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckpt_path.errors import CheckpointError, UnreadableCheckpointError, UnsafeCheckpointError, UsageError
from ckpt_path.pickles import Moves, user_globals

__all__ = ["MAX_PICKLE_ENV", "ZIP_ERRORS", "TorchFile", "dict_subclass_error", "read_torch_file", "verify"]

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_SETITEM_RE = re.compile(r"Can only SETITEM for .*? but got <class '([^']+)'>")
_MAX_ROUNDS = 64
"""A legacy file names one refused global per attempt; a zip file names them all at once."""


@dataclass(frozen=True, slots=True)
class TorchFile:
    """What a torch file held: the object, whether it was a zip, and the globals read as stand-ins."""

    obj: Any
    zipped: bool
    """A zip archive (``torch.save``'s format since 1.6); otherwise the legacy format."""
    placeholders: tuple[str, ...]
    """Globals read as inert placeholders (deleted, or nothing allowed them during a peek)."""
    read_as_dict: tuple[str, ...]
    """Dict subclasses read as plain dicts (declared ``read_as_dict``, or by a peek)."""


def read_torch_file(path: Path, *, safe_globals: Sequence[str], moves: Moves | None, mmap: bool) -> TorchFile:
    """Read a torch file weights-only; ``safe_globals`` names the globals the user allowed (``module.Name``).

    The zip is checked before anything else: a file refused unread never imports the user's modules.

    Raises :class:`UnreadableCheckpointError` (damaged, foreign, hostile in size) or
    :class:`UnsafeCheckpointError` (a global neither the user nor ``moves`` allows, by name).
    """
    zipped = _is_zip(path)
    if zipped:
        _check_pickle_record(path)
    user = user_globals(safe_globals)
    obj, placeholders, dicts = _torch_load(path, zipped=zipped, user=user, moves=moves, mmap=mmap)
    if obj is None:
        raise UnreadableCheckpointError(str(path), "the file holds None")
    return TorchFile(obj=obj, zipped=zipped, placeholders=placeholders, read_as_dict=dicts)


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


MAX_PICKLE_ENV = "CKPT_PATH_MAX_PICKLE_MB"
"""Environment variable that raises the size limit of a checkpoint's pickle (``data.pkl``)."""
DEFAULT_MAX_PICKLE_MB = 1024
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError)


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive; a damaged end of central directory is damage, not "no"."""
    try:
        return zipfile.is_zipfile(path)
    except ZIP_ERRORS as exc:
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
    except ZIP_ERRORS as exc:
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


def verify(path: Path, wanted: Callable[[int], bool] = lambda _start: True) -> None:
    """Check the CRC-32 of each record (or those whose data starts where ``wanted`` says) of a torch zip.

    A record corrupted on disk or in transit is refused where its bytes were read, never
    laundered into an output with a fresh, valid CRC.
    """
    name = str(path)
    try:
        with (
            zipfile.ZipFile(path) as archive,
            path.open("rb") as raw,
            mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        ):
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
    except ZIP_ERRORS as exc:
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
    detail = _torch_reason(message)
    return UnreadableCheckpointError(name, f"weights_only loading refused it ({detail[:200]})")


def _torch_reason(message: str) -> str:
    """Return torch's reason from a weights-only refusal: after ``WeightsUnpickler error:``, on its line or the next.

    torch 2.6+ puts a preamble ("Please file an issue ...") on the line that ends with the marker.
    """
    lines = [line.strip() for line in message.splitlines()]
    marker = "WeightsUnpickler error:"
    for index, line in enumerate(lines):
        if marker in line:
            after = line.split(marker, 1)[1].strip()
            rest = [text for text in lines[index + 1 :] if text]
            return after or (rest[0] if rest else line)
    return next((line for line in lines if line), message)
