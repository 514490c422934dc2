"""Writing a checkpoint into or out of DCP: a DCP output directory written whole, atomically.

:func:`save` makes the layout ``torch.distributed.checkpoint.save`` makes (data files and
``.metadata``, by :mod:`ckpt_path.dcp._write`). Everything goes into a temporary directory
beside OUTPUT, is fsynced, and the directory is renamed into place (an existing OUTPUT,
replaced only with ``force``, is swapped out atomically where the kernel can, then removed):
the directory transaction of :mod:`ckpt_path._atomic`. What is DCP's own is checked here:
which outputs are DCP directories (:func:`writes_dcp`), and which may be written or replaced
(:func:`check_output`). :mod:`ckpt_path.distributed` runs the same writer in many processes,
each writing its share of the tensors.

:func:`write` is what ``write_checkpoint`` hands a checkpoint that is, or comes from, a DCP
checkpoint: a DCP output goes to :func:`save`, any other format gets plain tensors from
:func:`ckpt_path.dcp._materialize.materialized`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_path import _atomic, formats
from ckpt_path.dcp._metadata import FORMAT, METADATA, is_dcp
from ckpt_path.dcp._write import (
    Job,
    WriteReport,
    _Copy,
    _DataFile,
    _Object,
    _Placed,
    _Tensor,
    build_metadata,
    plan_job,
    write_metadata,
    write_share,
)
from ckpt_path.errors import InputOverwriteError, OutputExistsError, SaveError, UsageError

if TYPE_CHECKING:
    from ckpt_path.checkpoint import Checkpoint

_FILE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar", ".zip", ".safetensors", ".json"})
"""Extensions that name a single-file (or safetensors) output, not a DCP directory."""


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


def finish(job: Job, reports: Sequence[WriteReport], temporary: Path, path: Path, *, force: bool) -> None:
    """Write ``.metadata`` into the temporary directory, fsync it, and put the directory at ``path``."""
    metadata = build_metadata(job, reports, path)
    handle = _DataFile(temporary / METADATA)
    try:
        write_metadata(metadata, handle)
    finally:
        handle.close()
    _atomic.place_directory(temporary, path, force=force)


def save(  # noqa: PLR0913 - what writing a checkpoint needs
    obj: Any,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    state_dict_at: Sequence[str] = (),
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
        return _save_in_place(obj, path, state_dict_at=state_dict_at, state_dict_only=state_dict_only)
    check_output(path, force=force, protect=protect)
    job = plan_job(obj, state_dict_at, state_dict_only=state_dict_only, path=path)
    temporary = _atomic.temporary_directory(path)
    with _atomic.removed_on_failure(temporary):
        try:
            report = write_share(job.items, temporary, "__0_0.distcp")
            finish(job, [report], temporary, path, force=force)
        except OSError as exc:
            raise SaveError(str(path), exc.strerror or str(exc)) from None
    _atomic.remove_stale_directories(path)
    return report


def _save_in_place(obj: Any, path: Path, *, state_dict_at: Sequence[str], state_dict_only: bool) -> WriteReport:
    """Rewrite a DCP directory's non-tensor entries and ``.metadata``; its tensor chunks stay where they are."""
    job = plan_job(obj, state_dict_at, state_dict_only=state_dict_only, path=path)
    copies = [item for item in job.items if isinstance(item, _Copy)]
    if any(isinstance(item, _Tensor) for item in job.items) or any(c.directory != path for c in copies):
        raise SaveError(str(path), "only the stamp and non-tensor entries of a DCP checkpoint are rewritten in place")
    report = WriteReport(
        placed=[_Placed(c.fqn, c.index, c.offsets, c.where.file, c.where.offset, c.where.length) for c in copies]
    )
    old_files = {f.name for f in path.iterdir() if f.name.endswith(".distcp")}
    objects = [item for item in job.items if isinstance(item, _Object)]
    name = f"__stamp-{uuid.uuid4().hex[:8]}.distcp"
    scratch = _atomic.temporary_directory(path)
    with _atomic.removed_on_failure(scratch):
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
    _atomic.remove_directory(scratch)
    return report


def refuse_many(world: int, path: Path) -> None:
    """Refuse to write a single-file format from many processes."""
    if world > 1:
        raise UsageError(
            f"{path}: a conversion with {world} processes writes a DCP directory (OUTPUT without a file "
            "extension, or ending in .dcp); convert to this format with one process",
        )
