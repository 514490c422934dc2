"""Writes on file systems and kernels that lack what the fast path uses, and writes that race other processes.

Each test makes one situation happen for real or, where a test cannot make the kernel refuse,
makes the system call fail as that kernel or file system does (``monkeypatch``): no
``copy_file_range`` (EXDEV across file systems, ENOSYS on old kernels, EINVAL, EOPNOTSUPP,
EPERM), no hard links, no ``renameat2``, no ``flock``, no ``/proc/self/maps``, a full disk, an
input truncated or replaced while it is converted, an OUTPUT another process creates meanwhile,
Ctrl-C while files are placed. What each checks is what a user sees: the output bitwise equal to
the one the fast path writes, or one error naming the cause, and then nothing half-written and
no temporary left behind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from ckpt_fixtures import (
    CKPT_PATH_BIN,
    assert_bitwise_equal,
    digest,
    lightning,
    temp_files,
    v010_state_dict,
    write_ckpt,
)
from ckpt_path import _atomic, _ranges, dcp, formats
from ckpt_path.checkpoint import Checkpoint, Written
from ckpt_path.errors import (
    OutputExistsError,
    SaveError,
    UnreadableCheckpointError,
)
from ckpt_path.pickles import Moves
from ckpt_path.storage import load_checkpoint, save_checkpoint, write_checkpoint
from helpers import assert_one_line_error, cli

FORMATS = [".ckpt", ".safetensors"]
"""The single-file formats whose writers copy unchanged tensors from the input kernel-side."""

REFUSALS = [errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM]
"""What ``copy_file_range`` says where it cannot copy: across file systems, old kernels, some FUSE and NFS."""


def _errno_id(code: int) -> str:
    return errno.errorcode[code]


def write_input(tmp_path: Path, suffix: str) -> Path:
    """Write a checkpoint of the example model at ``in{suffix}``: Lightning's layout, or a flat state dict."""
    path = tmp_path / f"in{suffix}"
    if suffix == ".safetensors":
        save_checkpoint(v010_state_dict(), path)
    else:
        write_ckpt(path, lightning(v010_state_dict(), "0.1.0"))
    return path


def rewrite(source: Path, out: Path, change: Callable[[Checkpoint], None] = lambda _c: None, **options: Any) -> Written:
    """Load ``source`` memory-mapped, let ``change`` edit it, and write it at ``out`` as a conversion does."""
    checkpoint = load_checkpoint(source)
    change(checkpoint)
    return write_checkpoint(
        checkpoint.obj,
        out,
        state_dict_at=checkpoint.state_dict_at,
        source=checkpoint,
        protect=checkpoint.files,
        **options,
    )


def content(path: Path) -> dict[str, bytes]:
    """Every record of a torch zip but its random serialization id, or a safetensors file's bytes."""
    if path.suffix == ".safetensors":
        return {"": path.read_bytes()}
    with zipfile.ZipFile(path) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.filename.endswith("serialization_id")}


def state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    """Return the state dict a checkpoint file holds, read with the tool's own loader."""
    checkpoint = load_checkpoint(path)
    obj = checkpoint.obj
    for key in checkpoint.state_dict_at:
        obj = obj[key]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


# --- copy_file_range refused: reads and writes instead ---------------------------------------------


@pytest.mark.parametrize("code", REFUSALS, ids=_errno_id)
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_refused_kernel_copy_falls_back_to_the_same_bytes(tmp_path, monkeypatch, suffix, code):
    """Where copy_file_range is refused (another file system, an old kernel), the output is the same, byte for byte."""
    source = write_input(tmp_path, suffix)
    reference = rewrite(source, tmp_path / f"reference{suffix}")
    asked: list[int] = []

    def refuse(*args: Any) -> int:
        asked.append(args[2])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    written = rewrite(source, tmp_path / f"out{suffix}")
    assert asked  # the kernel was asked, and refused
    assert reference.copied_bytes > 0
    assert (written.copied_bytes, written.written_bytes) == (reference.copied_bytes, reference.written_bytes)
    assert content(tmp_path / f"out{suffix}") == content(tmp_path / f"reference{suffix}")
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_without_copy_file_range_in_python_the_bytes_are_copied_by_reads(tmp_path, monkeypatch, suffix):
    """A Python without os.copy_file_range (macOS, BSD) copies the same ranges with reads and writes."""
    source = write_input(tmp_path, suffix)
    reference = rewrite(source, tmp_path / f"reference{suffix}")
    monkeypatch.delattr(os, "copy_file_range")
    written = rewrite(source, tmp_path / f"out{suffix}")
    assert written.copied_bytes == reference.copied_bytes > 0
    assert content(tmp_path / f"out{suffix}") == content(tmp_path / f"reference{suffix}")


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_full_disk_during_a_kernel_copy_is_one_error_and_leaves_nothing(tmp_path, monkeypatch, suffix):
    """ENOSPC from copy_file_range is not taken for "unsupported": one SaveError, no output, no temporary."""
    source = write_input(tmp_path, suffix)
    before = digest(source)

    def full(*_: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", full)
    with pytest.raises(SaveError, match="No space left on device"):
        rewrite(source, tmp_path / f"out{suffix}")
    assert not (tmp_path / f"out{suffix}").exists()
    assert temp_files(tmp_path) == []
    assert digest(source) == before


@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "reads"])
def test_an_input_truncated_while_its_ranges_are_copied_is_one_error(tmp_path, monkeypatch, kernel):
    """An input cut short during the copy (rewritten in place by another job) is one SaveError; it never hangs."""
    source = write_input(tmp_path, ".safetensors")
    first = min(r.data_offset for r in formats.input_ranges(source).by_offset.values())
    name = "copy_file_range" if kernel else "pread"
    real = getattr(os, name)

    def truncated_first(*args: Any) -> Any:
        if source.stat().st_size > first + 8:
            os.truncate(source, first + 8)  # the header and 8 bytes of the first tensor stay
        return real(*args)

    if not kernel:
        monkeypatch.delattr(os, "copy_file_range")
    monkeypatch.setattr(os, name, truncated_first)
    with pytest.raises(SaveError, match="the input ended before the record did"):
        rewrite(source, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    assert temp_files(tmp_path) == []


def test_a_crc_computed_from_an_input_cut_short_ends_where_the_file_ends(tmp_path, monkeypatch):
    """A safetensors record's CRC-32 is computed from the file; cut short meanwhile, the write fails, not hangs.

    Writing a torch zip from a safetensors input after ops only (memory trusted) takes each
    record's CRC-32 from the input file, then copies the record.
    """
    source = write_input(tmp_path, ".safetensors")
    first = min(r.data_offset for r in formats.input_ranges(source).by_offset.values())
    real = _ranges.InputRecords.crc

    def truncated_first(self: _ranges.InputRecords, record: _ranges.InputRecord) -> int:
        if source.stat().st_size > first + 8:
            os.truncate(source, first + 8)
        return real(self, record)

    monkeypatch.setattr(_ranges.InputRecords, "crc", truncated_first)
    with pytest.raises(SaveError, match="the input ended before the record did"):
        rewrite(source, tmp_path / "out.ckpt", trust_memory=True)
    assert not (tmp_path / "out.ckpt").exists()
    assert temp_files(tmp_path) == []


TRUNCATE_THEN_WRITE = """
import os, sys
from ckpt_path.errors import CkptPathError
from ckpt_path.storage import load_checkpoint, write_checkpoint

source, out = sys.argv[1], sys.argv[2]
checkpoint = load_checkpoint(source)
os.truncate(source, os.path.getsize(source) // 2)  # torch.save(obj, source) by another job truncates in place
try:
    write_checkpoint(checkpoint.obj, out, state_dict_at=checkpoint.state_dict_at, source=checkpoint)
except CkptPathError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("suffix", FORMATS)
def test_an_input_truncated_between_loading_and_writing_is_one_error_not_a_crash(tmp_path, suffix):
    """An input truncated in place after it was loaded (a training job saving over it) is one error, not SIGBUS.

    Run in a child process: today the write reads the memory map of the truncated file, and
    the kernel kills the process with SIGBUS, with no message and its temporary left behind.
    """
    source = write_input(tmp_path, suffix)
    out = tmp_path / f"out{suffix}"
    done = subprocess.run(
        [sys.executable, "-c", TRUNCATE_THEN_WRITE, str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: ")
    assert not out.exists()
    assert temp_files(tmp_path) == []


# --- which tensors are copied from the input ---------------------------------------------------------

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "transposed": lambda t: t.t(),
    "without its first row": lambda t: t[1:],
    "without its last row": lambda t: t[:-1],
}
"""Views of an input tensor a step may leave in a state dict: the same storage, other bytes."""


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
def test_a_view_of_an_input_tensor_is_written_with_its_own_values(tmp_path, view):
    """A transposed or sliced view of an input tensor is written with the view's values, not the input's range."""
    source = write_input(tmp_path, ".safetensors")
    key = "processor.q_proj.weight"
    expected = {k: v.clone() for k, v in v010_state_dict().items()}
    expected[key] = view(expected[key]).contiguous()

    def change(checkpoint: Checkpoint) -> None:
        checkpoint.obj[key] = view(checkpoint.obj[key])

    written = rewrite(source, tmp_path / "out.safetensors", change)
    assert_bitwise_equal(state_dict_of(tmp_path / "out.safetensors"), expected)
    assert written.written_bytes == expected[key].nbytes  # the others are still copied
    assert written.copied_bytes == sum(v.nbytes for k, v in expected.items() if k != key)


@pytest.mark.parametrize("suffix", FORMATS)
def test_without_proc_self_maps_everything_is_written_from_memory_alike(tmp_path, monkeypatch, suffix):
    """Where /proc/self/maps cannot be read (macOS, a sandbox without procfs) nothing is copied; the same output."""
    source = write_input(tmp_path, suffix)
    reference = rewrite(source, tmp_path / f"reference{suffix}")
    real = Path.read_text

    def no_proc(self: Path, *args: Any, **kwargs: Any) -> str:
        if str(self) == "/proc/self/maps":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    written = rewrite(source, tmp_path / f"out{suffix}")
    assert reference.copied_bytes > 0
    assert (written.copied_bytes, written.written_bytes) == (0, reference.copied_bytes + reference.written_bytes)
    assert content(tmp_path / f"out{suffix}") == content(tmp_path / f"reference{suffix}")


def _with_damaged_local_header(path: Path, name: str) -> None:
    """Append record ``name`` to the torch zip at ``path``, then break its local header's signature."""
    with zipfile.ZipFile(path, "a") as archive:
        prefix = archive.namelist()[0].split("/", 1)[0]
        archive.writestr(f"{prefix}/{name}", b"notes a zip tool added")
        offset = archive.getinfo(f"{prefix}/{name}").header_offset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = b"XXXX"
    path.write_bytes(raw)


def test_a_record_with_a_damaged_local_header_is_refused_before_anything_is_placed(tmp_path):
    """A torch zip one of whose records has a damaged header loads in torch, but is refused before OUTPUT is written.

    The record is never offered for copying, and the CRC check of what was not copied names it.
    """
    source = write_input(tmp_path, ".ckpt")
    _with_damaged_local_header(source, "extra")
    assert torch.load(source, weights_only=True)["epoch"] == 7  # torch reads past it
    assert all(not r.name.endswith("extra") for r in _ranges.InputRecords.torch_zip(source).by_offset.values())
    with pytest.raises(UnreadableCheckpointError, match=r"record \S+/extra is damaged"):
        rewrite(source, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()
    assert temp_files(tmp_path) == []


def test_an_input_replaced_by_another_file_during_a_conversion_is_refused(tmp_path):
    """An input replaced by rename while converting (rsync, an atomic save) is refused: its CRCs cannot be checked."""
    source = write_input(tmp_path, ".ckpt")
    garbage = tmp_path / "partial"
    garbage.write_bytes(b"rsync has not finished this file yet" * 100)

    def replaced(_checkpoint: Checkpoint) -> None:
        garbage.replace(source)  # the loaded mapping keeps the old file alive

    with pytest.raises(UnreadableCheckpointError, match="damaged zip archive"):
        rewrite(source, tmp_path / "out.ckpt", replaced)
    assert not (tmp_path / "out.ckpt").exists()
    assert temp_files(tmp_path) == []


# --- targets that are not regular files ------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


def _link_to_a_device(path: Path) -> None:
    path.symlink_to("/dev/null")


def _link_to_itself(path: Path) -> None:
    path.symlink_to(path.name)


TARGETS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a FIFO": (_fifo, "it is a FIFO, not a regular file"),
    "a socket": (_socket, "it is a socket, not a regular file"),
    "a link to /dev/null": (_link_to_a_device, "it is a device, not a regular file"),
    "a link to itself": (_link_to_itself, "Too many levels of symbolic links"),
}
"""What an OUTPUT may be that is never replaced, even with --force (``-o >(gzip)`` gives a FIFO)."""


@pytest.mark.parametrize(("make", "said"), TARGETS.values(), ids=TARGETS.keys())
def test_an_output_that_is_no_regular_file_is_refused_even_with_force(tmp_path, make, said):
    """A FIFO, socket, device or a link loop at OUTPUT is refused by what it is, and left as it was."""
    source = write_input(tmp_path, ".ckpt")
    out = tmp_path / "out.ckpt"
    make(out)
    kind = out.lstat().st_mode
    with pytest.raises(SaveError, match=said):
        rewrite(source, out, force=True)
    assert out.lstat().st_mode == kind
    assert temp_files(tmp_path) == []


def test_an_output_below_a_regular_file_is_one_error(tmp_path):
    """OUTPUT named below a file (``model.ckpt/out.ckpt``) is one SaveError saying so; the file is untouched."""
    source = write_input(tmp_path, ".ckpt")
    with pytest.raises(SaveError, match="Not a directory"):
        rewrite(source, source / "out.ckpt", force=True)
    assert load_checkpoint(source).obj["epoch"] == 7


# --- file systems without hard links ---------------------------------------------------------------

NO_LINKS = [errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS]
"""What link() says on file systems without hard links (FAT, some FUSE and SMB mounts)."""


@pytest.mark.parametrize("code", NO_LINKS, ids=_errno_id)
def test_without_hard_links_a_new_output_is_placed_by_rename(tmp_path, monkeypatch, code):
    """Where link() is refused, the file is renamed into place: the same output, no temporary left."""
    source = write_input(tmp_path, ".ckpt")
    rewrite(source, tmp_path / "reference.ckpt")

    def no_links(*_: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    rewrite(source, tmp_path / "out.ckpt")
    assert content(tmp_path / "out.ckpt") == content(tmp_path / "reference.ckpt")
    assert temp_files(tmp_path) == []


def test_without_hard_links_a_file_that_appeared_meanwhile_is_not_replaced(tmp_path, monkeypatch):
    """Without link(), a file another process put at OUTPUT just before placement is kept, and the write refused."""
    source = write_input(tmp_path, ".ckpt")
    out = tmp_path / "out.ckpt"

    def no_links(_tmp: Any, target: Any) -> None:
        Path(target).write_bytes(b"theirs")
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(OutputExistsError):
        rewrite(source, out)
    assert out.read_bytes() == b"theirs"
    assert temp_files(tmp_path) == []


def test_a_link_error_that_is_not_missing_support_is_one_error(tmp_path, monkeypatch):
    """A link() failing for another reason (the disk full) is one SaveError, not a silent rename; nothing is placed."""
    source = write_input(tmp_path, ".ckpt")

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(SaveError, match="No space left on device"):
        rewrite(source, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()
    assert temp_files(tmp_path) == []


# --- other processes writing the same OUTPUT ---------------------------------------------------------


def _tensors(count: int, numel: int = 256) -> dict[str, torch.Tensor]:
    return {f"t{i}": torch.full((numel,), float(i)) for i in range(count)}


def test_an_output_created_by_another_process_during_the_write_is_kept(tmp_path):
    """OUTPUT created by someone else while we write (no --force) is not replaced: OutputExistsError, theirs intact."""
    source = write_input(tmp_path, ".ckpt")
    out = tmp_path / "out.ckpt"

    def meanwhile(_done: int, _total: int) -> None:
        if not out.exists():
            out.write_bytes(b"theirs")

    with pytest.raises(OutputExistsError):
        rewrite(source, out, progress=meanwhile)
    assert out.read_bytes() == b"theirs"
    assert temp_files(tmp_path) == []


def test_a_shard_name_taken_during_the_write_is_never_replaced(tmp_path):
    """A shard name another writer takes while we write is refused, even with --force; nothing of ours is placed."""
    index = tmp_path / "model" / "model.safetensors.index.json"
    second = index.parent / "model-00002-of-00002.safetensors"

    def meanwhile(_done: int, _total: int) -> None:
        if not second.exists():
            second.write_bytes(b"theirs")

    with pytest.raises(OutputExistsError, match="model-00002-of-00002"):
        save_checkpoint(_tensors(2), index, shard_size=1024, progress=meanwhile, force=True)
    assert sorted(p.name for p in index.parent.iterdir()) == [second.name]
    assert second.read_bytes() == b"theirs"


def test_an_index_that_appears_just_before_placement_is_kept_and_our_shards_removed(tmp_path, monkeypatch):
    """If link() finds the index taken (a race after every check), the shards already placed are removed again."""
    index = tmp_path / "model" / "model.safetensors.index.json"
    real = os.link

    def racing(source: Any, target: Any) -> None:
        if Path(target) == index:
            index.write_text("theirs")
        real(source, target)

    monkeypatch.setattr(os, "link", racing)
    with pytest.raises(OutputExistsError, match=r"index\.json"):
        save_checkpoint(_tensors(3), index, shard_size=1024)
    assert sorted(p.name for p in index.parent.iterdir()) == [index.name]
    assert index.read_text() == "theirs"


def test_ctrl_c_while_files_are_placed_waits_until_every_file_is_in_place(tmp_path, monkeypatch):
    """Ctrl-C during placement is held until the layout is whole, then raised: never half a layout."""
    index = tmp_path / "model" / "model.safetensors.index.json"
    real = _atomic._place  # noqa: SLF001 - wrapped: the signal arrives while files are placed
    sent: list[bool] = []

    def interrupted(tmp: Path, target: Path, *, replace: bool) -> None:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        real(tmp, target, replace=replace)

    monkeypatch.setattr(_atomic, "_place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_tensors(3), index, shard_size=1024)
    assert sent
    assert_bitwise_equal(dict(formats.load_sharded(index)[0]), _tensors(3))
    assert temp_files(index.parent) == []


# --- temporaries left by killed runs ---------------------------------------------------------------


def _temporary_name(target: str, random: str) -> str:
    return f".{target}{_atomic.TEMP_MARK}{random}.tmp"


def test_only_regular_files_named_like_temporaries_are_removed(tmp_path):
    """Clean-up after a commit never follows or removes a link or a directory that merely looks like a temporary."""
    source = write_input(tmp_path, ".ckpt")
    victim = tmp_path / "precious.txt"
    victim.write_text("mine")
    link = tmp_path / _temporary_name("out.ckpt", "linkxxxx")
    link.symlink_to(victim)
    directory = tmp_path / _temporary_name("out.ckpt", "dirxxxxx")
    directory.mkdir()
    stale = tmp_path / _temporary_name("out.ckpt", "stalexxx")
    stale.write_bytes(b"left by a run killed with SIGKILL")
    rewrite(source, tmp_path / "out.ckpt")
    assert not stale.exists()
    assert link.is_symlink()
    assert directory.is_dir()
    assert victim.read_text() == "mine"


def test_without_flock_only_temporaries_older_than_the_limit_are_removed(tmp_path, monkeypatch):
    """On a file system without flock (old NFS: ENOLCK), a temporary counts as stale only once it is old."""
    source = write_input(tmp_path, ".ckpt")
    old = tmp_path / _temporary_name("out.ckpt", "oldxxxxx")
    young = tmp_path / _temporary_name("out.ckpt", "youngxxx")
    for path in (old, young):
        path.write_bytes(b"a temporary")
    long_ago = time.time() - _atomic.STALE_AFTER - 60
    os.utime(old, (long_ago, long_ago))

    def no_locks(*_: Any) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    rewrite(source, tmp_path / "out.ckpt")
    assert temp_files(tmp_path) == [young.name]


def _dcp_values(path: Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load a DCP directory with torch's own loader into copies of ``template``."""
    state = {k: torch.empty_like(v) for k, v in template.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "loading in a single process"
        dcp_load(state, checkpoint_id=str(path))
    return state


def leftovers(directory: Path) -> list[str]:
    """Temporaries of this tool (files or directories) in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if _atomic.TEMP_MARK in p.name)


def test_a_stale_temporary_directory_is_removed_and_a_live_one_kept(tmp_path):
    """After a DCP save, a temporary directory a killed run left is removed; one a running writer holds is kept."""
    out = tmp_path / "out.dcp"
    stale = tmp_path / _temporary_name(out.name, "stalexxx")
    live = tmp_path / _temporary_name(out.name, "livexxxx")
    for directory in (stale, live):
        directory.mkdir()
        (directory / "__0_0.distcp").write_bytes(b"half a data file")
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)  # what every process writing it holds
        save_checkpoint(_tensors(2), out)
        assert leftovers(tmp_path) == [live.name]
    finally:
        os.close(held)
    assert_bitwise_equal(_dcp_values(out, _tensors(2)), _tensors(2))


@pytest.mark.parametrize("suffix", [".ckpt", ".dcp"])
def test_a_checkpoint_saved_from_a_worker_thread_is_written(tmp_path, suffix):
    """Saving from a background thread (a training loop's checkpoint thread) works: signals are only handled in main."""
    out = tmp_path / f"out{suffix}"
    errors: list[BaseException] = []

    def save() -> None:
        try:
            save_checkpoint(_tensors(2), out)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which fails the test
            errors.append(exc)

    worker = threading.Thread(target=save)
    worker.start()
    worker.join()
    assert errors == []
    got = _dcp_values(out, _tensors(2)) if suffix == ".dcp" else torch.load(out, weights_only=True)
    assert_bitwise_equal(got, _tensors(2))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert leftovers(tmp_path) == []


# --- directories placed without renameat2 ------------------------------------------------------------


class _Libc:
    """A C library whose renameat2 is missing (``code`` None) or fails with ``code``."""

    def __init__(self, code: int | None) -> None:
        self.code = code

    @property
    def renameat2(self) -> Callable[..., int]:
        if self.code is None:
            raise AttributeError("renameat2")
        return lambda *_: -1


def _without_renameat2(monkeypatch: pytest.MonkeyPatch, code: int | None) -> None:
    """Make renameat2 missing from libc (None), or make the kernel refuse it with ``code``."""
    monkeypatch.setattr(ctypes, "CDLL", lambda *_, **__: _Libc(code))
    monkeypatch.setattr(ctypes, "get_errno", lambda: code)


NO_RENAMEAT2 = {
    "libc without it": None,
    "ENOSYS": errno.ENOSYS,
    "EINVAL": errno.EINVAL,
    "EOPNOTSUPP": errno.EOPNOTSUPP,
}
"""Where renameat2 cannot be used: musl before 1.2.5, kernels before 3.15, file systems without the flags."""


@pytest.mark.parametrize("code", NO_RENAMEAT2.values(), ids=NO_RENAMEAT2.keys())
def test_without_renameat2_a_dcp_output_is_placed_and_replaced_whole(tmp_path, monkeypatch, code):
    """Without renameat2 a DCP directory is renamed into place, and --force moves the old one aside first."""
    _without_renameat2(monkeypatch, code)
    out = tmp_path / "out.dcp"
    first, second = _tensors(2), {k: v + 10 for k, v in _tensors(2).items()}
    save_checkpoint(first, out)
    assert_bitwise_equal(_dcp_values(out, first), first)
    with pytest.raises(OutputExistsError):
        save_checkpoint(second, out)
    save_checkpoint(second, out, force=True)
    assert_bitwise_equal(_dcp_values(out, second), second)
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kernel", [True, False], ids=["renameat2", "rename"])
def test_a_directory_created_at_output_just_before_the_rename_is_kept(tmp_path, monkeypatch, kernel):
    """A directory another process makes at OUTPUT after every check is never replaced: OutputExistsError."""
    if not kernel:
        _without_renameat2(monkeypatch, None)
    out = tmp_path / "out.dcp"
    real = _atomic._renameat2  # noqa: SLF001 - wrapped: the directory appears just before the rename

    def racing(source: Path, target: Path, flags: int) -> bool | None:
        target.mkdir(exist_ok=True)
        (target / "theirs").write_text("theirs")
        return real(source, target, flags)

    monkeypatch.setattr(_atomic, "_renameat2", racing)
    with pytest.raises(OutputExistsError):
        save_checkpoint(_tensors(2), out)
    assert sorted(p.name for p in out.iterdir()) == ["theirs"]
    assert leftovers(tmp_path) == []


def test_a_directory_created_at_output_during_the_write_is_kept(tmp_path, monkeypatch):
    """OUTPUT made by another process while the data files are written (no --force) is kept: OutputExistsError."""
    out = tmp_path / "out.dcp"
    real = dcp.write_share

    def meanwhile(*args: Any) -> Any:
        out.mkdir()
        return real(*args)

    monkeypatch.setattr("ckpt_path.dcp._save.write_share", meanwhile)
    with pytest.raises(OutputExistsError):
        save_checkpoint(_tensors(2), out)
    assert list(out.iterdir()) == []
    assert leftovers(tmp_path) == []


def test_a_failing_rename_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    """renameat2 failing for a reason other than support (EIO) is one SaveError; the temporary directory is removed."""
    _without_renameat2(monkeypatch, errno.EIO)
    out = tmp_path / "out.dcp"
    with pytest.raises(SaveError, match="Input/output error"):
        save_checkpoint(_tensors(2), out)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_a_failed_swap_without_renameat2_puts_the_old_output_back(tmp_path, monkeypatch):
    """Without renameat2, if the new directory cannot be renamed in once the old one is aside, the old one returns."""
    out = tmp_path / "out.dcp"
    save_checkpoint(_tensors(2), out)
    before = {p.name: digest(p) for p in out.iterdir()}
    _without_renameat2(monkeypatch, None)
    real = Path.rename
    failed: list[Path] = []

    def failing(self: Path, target: Any) -> Any:
        if Path(target) == out and not failed:
            failed.append(self)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(SaveError, match="Input/output error"):
        save_checkpoint({k: v + 10 for k, v in _tensors(2).items()}, out, force=True)
    assert failed
    assert {p.name: digest(p) for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


# --- torch files that are not what they seem -------------------------------------------------------


def test_a_file_holding_none_is_one_clear_error(tmp_path):
    """torch.save(None, path) loads, but holds no checkpoint: one error line saying so."""
    path = write_ckpt(tmp_path / "none.ckpt", None)
    assert_one_line_error(cli("inspect", path), "the file holds None")


def test_a_pickle_limit_that_is_no_number_is_a_usage_error(tmp_path, monkeypatch):
    """CKPT_PATH_MAX_PICKLE_MB set to something that is not a number is one usage error (exit 2) naming it."""
    source = write_input(tmp_path, ".ckpt")
    monkeypatch.setenv("CKPT_PATH_MAX_PICKLE_MB", "lots")
    result = cli("inspect", source)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: CKPT_PATH_MAX_PICKLE_MB='lots' is not a number of MiB",
    ]
    monkeypatch.setenv("CKPT_PATH_MAX_PICKLE_MB", "0.5")
    assert cli("inspect", source).exit_code == 0


class _StorageLookalike(pickle.Pickler):
    """Pickles the string ``"marker"`` as a persistent id that is not a torch storage."""

    def persistent_id(self, obj: object) -> object:
        return ("not-a-storage", 1) if obj == "marker" else None


def test_a_refusal_by_weights_only_says_torchs_reason(tmp_path):
    """A zip whose pickle weights_only refuses for a reason other than a global says that reason, not torch's preamble.

    torch 2.6+ puts the reason on its own line after ``WeightsUnpickler error:``.
    """
    source = write_input(tmp_path, ".ckpt")
    buffer = io.BytesIO()
    _StorageLookalike(buffer, protocol=2).dump({"w": "marker"})
    crafted = tmp_path / "crafted.ckpt"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(crafted, "w") as copy:
        for info in original.infolist():
            copy.writestr(
                info.filename, buffer.getvalue() if info.filename.endswith("data.pkl") else original.read(info)
            )
    line = assert_one_line_error(cli("inspect", crafted), "weights_only loading refused it")
    assert "persistent_load" in line
    assert "Please file an issue" not in line


def _write_module(directory: Path, name: str, classes: int) -> None:
    body = "".join(f"class C{i}:\n    pass\n\n\n" for i in range(classes))
    (directory / f"{name}.py").write_text(body, encoding="utf-8")


@pytest.mark.usefixtures("payload_modules")
@pytest.mark.parametrize(("classes", "readable"), [(3, True), (65, False)])
def test_a_legacy_file_of_deleted_classes_is_read_round_by_round_within_a_bound(tmp_path, classes, readable):
    """A pre-1.6 file names one refused global per attempt; deleted classes are mapped one round each, 64 at most.

    A file naming more (hostile, or a tree of 65 deleted classes) is one error, not unbounded work.
    """
    name = f"ckpt_payload_{'many' if classes > 3 else 'few'}_{os.getpid()}"
    _write_module(tmp_path, name, classes)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        obj = {"state_dict": {"w": torch.ones(2)}, "extra": [getattr(module, f"C{i}")() for i in range(classes)]}
        path = tmp_path / "legacy.ckpt"
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    moves = Moves(modules={}, globals={}, deleted=(f"{name}.*",))
    if readable:
        checkpoint = load_checkpoint(path, moves=moves)
        assert checkpoint.format == "torch-legacy"
        assert checkpoint.placeholders == tuple(f"{name}.C{i}" for i in range(classes))
    else:
        with pytest.raises(UnreadableCheckpointError, match="needs more than 64 rounds of moved globals"):
            load_checkpoint(path, moves=moves)


TERMINATOR = '''\
"""Cast every tensor to float64 through an op that sends SIGTERM to its own process when it computes."""

import os
import signal

import torch

source = "0.1.0"
target = "0.2.0"
touches = ["*"]


@torch.library.custom_op("ckpt_path_test::double_or_term", mutates_args=())
def double_or_term(x: torch.Tensor) -> torch.Tensor:
    os.kill(os.getpid(), signal.SIGTERM)
    return x.to(torch.float64)


@double_or_term.register_fake
def _(x):
    return torch.empty(x.shape, dtype=torch.float64, device=x.device)


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in list(sd):
        sd[key] = torch.ops.ckpt_path_test.double_or_term(sd[key])
    return ckpt
'''


@pytest.mark.slow
def test_sigterm_while_a_dcp_directory_is_written_removes_it_and_ends_as_sigterm(tmp_path):
    """SIGTERM (a scheduler preempting the job) while a DCP output is written: its temporary directory is removed.

    The tensors are computed as they are written, so the signal arrives inside the write; the
    process then ends by SIGTERM, as the scheduler expects, with nothing at OUTPUT.
    """
    source = tmp_path / "in.dcp"
    save_checkpoint(lightning(v010_state_dict(), "0.1.0"), source, state_dict_at=("state_dict",))
    before = {p.name: digest(p) for p in source.iterdir()}
    converters = tmp_path / "conv"
    converters.mkdir()
    (converters / "001_double.py").write_text(TERMINATOR, encoding="utf-8")
    done = subprocess.run(
        [str(CKPT_PATH_BIN), "convert", str(source), "-o", str(tmp_path / "out"), "--converters", str(converters)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stderr[-2000:])
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []
    assert {p.name: digest(p) for p in source.iterdir()} == before


@pytest.mark.parametrize("suffix", FORMATS)
def test_an_input_rewritten_in_place_after_loading_is_refused(tmp_path, suffix):
    """The same inode with other bytes (another job's save over it, same size) is refused, not written out as read."""
    source = write_input(tmp_path, suffix)
    checkpoint = load_checkpoint(source)
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF  # the last tensor byte changes; the size stays
    with source.open("r+b") as handle:
        handle.write(bytes(data))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock could hide the write
    out = tmp_path / f"out{suffix}"
    with pytest.raises(UnreadableCheckpointError, match="rewritten in place while it was being converted"):
        write_checkpoint(checkpoint.obj, out, state_dict_at=checkpoint.state_dict_at, source=checkpoint)
    assert not out.exists()
    assert temp_files(tmp_path) == []
