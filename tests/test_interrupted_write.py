"""A convert killed while it writes never leaves a partial file at OUTPUT, nor (after SIGTERM) a temporary.

SIGKILL cannot be caught: its temporary stays until the next write of the same OUTPUT removes
it, once it is old enough. SIGTERM is handled like Ctrl-C: the temporary is removed at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ckpt_fixtures import CKPT_PATH_BIN, digest
from ckpt_path.registry import ENV_VAR
from ckpt_path.stamp import Stamp, write_stamp
from ckpt_path.storage import save_checkpoint
from helpers import write_converter

TIMEOUT = 90.0
"""Seconds to wait for anything the subprocess does; a bound, never an assertion on speed."""

MIN_WRITTEN = 1 << 20
"""Bytes the temporary file must hold before the kill, so the kill lands inside the tensor data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BigCase:
    """A large stamped checkpoint, its digest, and converters for 1.0.0 -> 1.1.0."""

    root: Path
    source: Path
    source_digest: str
    converters: Path


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigCase]:
    """Write a ~300 MiB checkpoint once for this module, and delete it afterwards."""
    root = tmp_path_factory.mktemp("interrupted")
    state_dict = {f"layers.{i}.weight": torch.zeros(1024, 25 * 1024) for i in range(3)}  # 3 x 100 MiB
    ckpt = write_stamp({"state_dict": state_dict, "epoch": 1}, ("state_dict",), Stamp(version="1.0.0"))
    source = root / "big.ckpt"
    torch.save(ckpt, source)
    del ckpt, state_dict
    converters = root / "converters"
    write_converter(converters, "identity", "1.0.0", "1.1.0", touches=[])
    yield BigCase(root=root, source=source, source_digest=digest(source), converters=converters)
    shutil.rmtree(root, ignore_errors=True)  # hundreds of MiB: do not keep them among pytest's old runs


def temp_files_of(out: Path) -> list[Path]:
    """Return the temporary files an atomic write of ``out`` creates beside it (``.NAME.*.tmp``)."""
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and p.name.endswith(".tmp")]


def kill_while_writing(big: BigCase, out: Path, sig: signal.Signals = signal.SIGKILL) -> int:
    """Run `ckpt-path convert --force` to ``out``, send ``sig`` once its temp file holds data; return its code."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    command = [str(CKPT_PATH_BIN), "convert", str(big.source), "-o", str(out), "--force"]
    command += ["--converters", str(big.converters)]
    process = subprocess.Popen(
        command,
        cwd=out.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            sizes = []
            for tmp in temp_files_of(out):
                with contextlib.suppress(FileNotFoundError):  # renamed away between listing and stat
                    sizes.append(tmp.stat().st_size)
            if any(size >= MIN_WRITTEN for size in sizes):
                break
            time.sleep(0.002)
        process.send_signal(sig)
        return process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)


def remove_leftovers(out: Path) -> None:
    """Delete the temp files a killed write left (hundreds of MiB each)."""
    for tmp in temp_files_of(out):
        tmp.unlink()


@pytest.mark.slow
def test_sigkill_during_write_keeps_the_old_output(big):
    """Killed while writing over an existing OUTPUT with --force, OUTPUT still holds the old file's bytes."""
    out_dir = big.root / "over-existing"
    out_dir.mkdir()
    out = out_dir / "out.ckpt"
    torch.save({"state_dict": {"old": torch.arange(4.0)}}, out)
    old_bytes = out.read_bytes()
    try:
        code = kill_while_writing(big, out)
        assert code == -signal.SIGKILL, "the conversion ended before it could be killed mid-write"
        assert out.read_bytes() == old_bytes
        assert digest(big.source) == big.source_digest
        # SIGKILL cannot be caught, so the temp file beside OUTPUT stays behind; that is accepted.
        # What matters is that OUTPUT never held a partial file: the rename is the only way in.
        assert [p.name for p in out_dir.iterdir() if p.name != out.name] == [p.name for p in temp_files_of(out)]
    finally:
        remove_leftovers(out)


@pytest.mark.slow
def test_sigkill_during_write_leaves_no_output(big):
    """Killed while writing a new OUTPUT, OUTPUT does not exist afterwards."""
    out_dir = big.root / "fresh"
    out_dir.mkdir()
    out = out_dir / "out.ckpt"
    try:
        code = kill_while_writing(big, out)
        assert code == -signal.SIGKILL, "the conversion ended before it could be killed mid-write"
        assert not out.exists()
        assert digest(big.source) == big.source_digest
        # The temp file a SIGKILL leaves behind is accepted (see above); nothing else may appear.
        assert all(p.name.endswith(".tmp") for p in out_dir.iterdir())
        assert temp_files_of(out)
        # The next run, at once, removes it: no process holds its lock any more.
        done = subprocess.run(
            [str(CKPT_PATH_BIN), "convert", str(big.source), "-o", str(out), "--converters", str(big.converters)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in out_dir.iterdir()) == [out.name]
    finally:
        remove_leftovers(out)


@pytest.mark.slow
def test_sigterm_during_write_removes_the_temporary_and_keeps_the_old_output(big):
    """SIGTERM while writing over OUTPUT: the temporary is removed, OUTPUT keeps its bytes, the exit is SIGTERM's."""
    out_dir = big.root / "terminated"
    out_dir.mkdir()
    out = out_dir / "out.ckpt"
    torch.save({"state_dict": {"old": torch.arange(4.0)}}, out)
    old_bytes = out.read_bytes()
    try:
        code = kill_while_writing(big, out, signal.SIGTERM)
        assert code == -signal.SIGTERM, "the conversion did not end by SIGTERM mid-write"
        assert out.read_bytes() == old_bytes
        assert digest(big.source) == big.source_digest
        assert sorted(p.name for p in out_dir.iterdir()) == [out.name]
    finally:
        remove_leftovers(out)


HOUR_AGO = time.time() - 3600


def leave(path: Path, *, old: bool) -> Path:
    """Write a partial file at ``path`` as a killed write would; backdate it an hour when ``old``."""
    path.write_bytes(b"partial")
    if old:
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    return path


def test_stale_temporaries_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    """Writing OUTPUT removes this tool's temporaries for OUTPUT that no running writer holds, and nothing else."""
    import fcntl

    out = tmp_path / "out.ckpt"
    stale = [
        leave(tmp_path / ".out.ckpt.ckpt-path-a1b2c3d4.tmp", old=True),
        leave(tmp_path / ".out.ckpt.ckpt-path-i9j0k1l2.tmp", old=False),  # killed a moment ago: nobody holds it
    ]
    running = leave(tmp_path / ".out.ckpt.ckpt-path-e5f6g7h8.tmp", old=False)
    kept = [
        running,  # a conversion still running: it holds its temporary's lock
        leave(tmp_path / ".out.ckpt.a1b2c3d4.tmp", old=True),  # not this tool's name
        leave(tmp_path / ".other.ckpt.ckpt-path-a1b2c3d4.tmp", old=True),  # another OUTPUT's
        leave(tmp_path / "out.ckpt.ckpt-path-a1b2c3d4.tmp", old=True),  # not hidden: not a temporary
    ]

    with running.open("rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        save_checkpoint({"w": torch.ones(2)}, out)

    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, *(p.name for p in kept)])


def test_stale_temporaries_of_a_killed_layout_write_are_removed_by_the_next(tmp_path):
    """Writing a sharded layout removes stale temporaries of its index and its shards, not another layout's."""
    index = tmp_path / "model.safetensors.index.json"
    stale = [
        leave(tmp_path / ".model.safetensors.index.json.ckpt-path-a1b2c3d4.tmp", old=True),
        leave(tmp_path / ".model-00002-of-00007.safetensors.ckpt-path-a1b2c3d4.tmp", old=True),
        leave(tmp_path / ".model.1-00001-of-00002.safetensors.ckpt-path-a1b2c3d4.tmp", old=True),
    ]
    kept = leave(tmp_path / ".model-ema-00001-of-00002.safetensors.ckpt-path-a1b2c3d4.tmp", old=True)

    save_checkpoint({"w": torch.ones(2)}, index)

    assert not any(p.exists() for p in stale)
    assert kept.exists()
