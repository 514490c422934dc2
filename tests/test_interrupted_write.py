"""A convert killed with SIGKILL while it writes never leaves a partial file at OUTPUT."""

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

from ckpt_fixtures import CKPT_PATH_BIN, digest, write_converter
from ckpt_path.checkpoint import Stamp, write_stamp
from ckpt_path.registry import ENV_VAR

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


def kill_while_writing(big: BigCase, out: Path) -> int:
    """Run `ckpt-path convert --force` to ``out``, SIGKILL it once its temp file holds data; return its code."""
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
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)


def remove_leftovers(out: Path) -> None:
    """Delete the temp files a killed write left (hundreds of MiB each)."""
    for tmp in temp_files_of(out):
        tmp.unlink()


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
    finally:
        remove_leftovers(out)
