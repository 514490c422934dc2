"""Distributed checkpoints with several processes: saved by two, converted by one and by two, loaded by one and two.

Every test here starts processes of its own (torchrun, or ``ckpt-path convert --workers 2``),
so each is named ``test_two_processes_...``. The checkpoint is the demo model at 0.1.0 saved by
two processes as row-sharded DTensors (``tests/dcp_ranks.py``); each conversion's output is
loaded with ``torch.distributed.checkpoint.load`` into the 1.1.0 model, sharded over two
processes and whole in this one, and compared bitwise with the conversion of the same weights
saved by ``torch.save``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from ckpt_fixtures import assert_bitwise_equal
from ckpt_path import Registry
from ckpt_path.commands import convert_file
from ckpt_path.demo.models import make_model
from helpers import EXAMPLE_CONVERTERS, cli

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RANKS = HERE / "dcp_ranks.py"

pytestmark = pytest.mark.slow  # every test starts processes of its own


def torchrun(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``torchrun --nproc-per-node 2 ARGS`` on this machine (gloo)."""
    argv = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=180)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def ckpt_path(*args: object) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ckpt-path ARGS`` in a process of its own."""
    argv = [str(BIN / "ckpt-path"), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def digests(directory: Path) -> dict[str, str]:
    """Every file of a directory (dot files too) and the SHA-256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def leftovers(directory: Path) -> list[str]:
    """Temporaries of this tool left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if ".ckpt-path-" in p.name)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Save the 0.1.0 demo model from two processes as row-sharded DTensors; convert it the torch.save way too."""
    root = tmp_path_factory.mktemp("sharded")
    torchrun(RANKS, "save", root / "in", "0.1.0")
    torch.save({"state_dict": make_model("0.1.0", 0).state_dict(), "epoch": 3}, root / "in.ckpt")
    registry = Registry.from_directory(EXAMPLE_CONVERTERS)
    convert_file(root / "in.ckpt", root / "reference.ckpt", source="0.1.0", registry=registry)
    return root / "in", torch.load(root / "reference.ckpt", weights_only=True)["state_dict"]


def load_whole(path: Path) -> dict[str, Any]:
    """Load a DCP checkpoint into the 1.1.0 model in this one process."""
    target = {"state_dict": make_model("1.1.0", 1).state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(target, checkpoint_id=str(path))
    return target["state_dict"]


def test_two_processes_save_then_convert_with_one_and_two_and_load_with_one_and_two(sharded, tmp_path):
    """Saved sharded by 2 processes; converted by 1, --workers 2 and torchrun; loaded by 1 and 2: all bitwise equal."""
    source, expected = sharded
    before = digests(source)
    args = ("--from", "0.1.0", "--converters", EXAMPLE_CONVERTERS)
    one = cli("convert", source, "-o", tmp_path / "one", *args)
    assert one.exit_code == 0, one.output
    workers = ckpt_path("convert", source, "-o", tmp_path / "workers", "--workers", 2, *args)
    assert workers.returncode == 0, workers.stderr
    assert "written to" in workers.stdout
    launched = torchrun("-m", "ckpt_path", "convert", source, "-o", tmp_path / "torchrun", *args)
    assert launched.stdout.count("written to") == 1  # process 0 reports, the other is silent
    for name in ("workers", "torchrun"):
        assert sorted(p.name for p in (tmp_path / name).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    outputs = [tmp_path / name for name in ("one", "workers", "torchrun")]
    torchrun(RANKS, "load", "1.1.0", tmp_path / "loaded.pt", *outputs)
    loaded_by_two = torch.load(tmp_path / "loaded.pt", weights_only=True)
    for out in outputs:
        assert_bitwise_equal(loaded_by_two[str(out)], expected)
        assert_bitwise_equal(load_whole(out), expected)
    assert digests(source) == before
    assert leftovers(tmp_path) == []


KILLER = '''\
"""Cast every tensor to float64 through an op that kills process 1 when it computes (at write time)."""

import os
import signal

import torch

source = "0.1.0"
target = "0.2.0"
touches = ["*"]

try:
    torch.ops.ckpt_path_test.double_or_die
except (AttributeError, RuntimeError):

    @torch.library.custom_op("ckpt_path_test::double_or_die", mutates_args=())
    def double_or_die(x: torch.Tensor) -> torch.Tensor:
        if os.environ.get("RANK") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return x.to(torch.float64)

    @double_or_die.register_fake
    def _(x):
        return torch.empty(x.shape, dtype=torch.float64, device=x.device)


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in list(sd):
        sd[key] = torch.ops.ckpt_path_test.double_or_die(sd[key])
    return ckpt
'''


def test_two_processes_one_killed_while_writing_leaves_nothing(sharded, tmp_path):
    """Process 1 is killed (SIGKILL) while it writes its share: exit 1, one error line, nothing at OUT, input intact."""
    source, _expected = sharded
    converters = tmp_path / "conv"
    converters.mkdir()
    (converters / "001_double.py").write_text(KILLER, encoding="utf-8")
    before = digests(source)
    done = ckpt_path(
        "convert", source, "-o", tmp_path / "out", "--workers", 2, "--from", "0.1.0", "--converters", converters
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: process 1 of 2 failed"), lines[0]
    assert "SIGKILL" in lines[0]
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []
    assert digests(source) == before


def test_two_processes_under_torchrun_one_killed_leaves_nothing(sharded, tmp_path):
    """Under torchrun, rank 1 killed (SIGKILL) as it writes: torchrun fails, no OUT, no temporaries, input intact.

    torchrun stops the surviving rank with SIGTERM; its handler removes the temporary directory rank 0 made.
    """
    source, _expected = sharded
    converters = tmp_path / "conv"
    converters.mkdir()
    (converters / "001_double.py").write_text(KILLER, encoding="utf-8")
    before = digests(source)
    out = tmp_path / "out"
    args = ("-m", "ckpt_path", "convert", source, "-o", out, "--from", "0.1.0", "--converters", converters)
    done = torchrun(*args, check=False)
    assert done.returncode != 0
    assert "SIGKILL" in done.stderr or "Signal 9" in done.stderr, done.stderr[-2000:]
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert digests(source) == before


def test_two_processes_an_error_in_one_fails_both(sharded, tmp_path):
    """An operation failing in process 1 only, as it computes, fails the conversion with its error; nothing at OUT."""
    converters = tmp_path / "conv"
    converters.mkdir()
    failing = KILLER.replace("os.kill(os.getpid(), signal.SIGKILL)", 'raise ValueError("process one says no")')
    (converters / "001_fail.py").write_text(failing.replace("double_or_die", "double_or_fail"), encoding="utf-8")
    source, _expected = sharded
    done = ckpt_path(
        "convert", source, "-o", tmp_path / "out", "--workers", 2, "--from", "0.1.0", "--converters", converters
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: process 1 of 2 failed"), lines[0]
    assert "process one says no" in lines[0]
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_two_processes_from_a_torch_file_share_the_work(tmp_path):
    """A torch.save checkpoint converts into a DCP directory with --workers 2: each process writes its share."""
    torch.save({"state_dict": make_model("0.1.0", 0).state_dict(), "epoch": 3}, tmp_path / "in.ckpt")
    registry = Registry.from_directory(EXAMPLE_CONVERTERS)
    convert_file(tmp_path / "in.ckpt", tmp_path / "reference.ckpt", source="0.1.0", registry=registry)
    expected = torch.load(tmp_path / "reference.ckpt", weights_only=True)["state_dict"]
    args = ("--from", "0.1.0", "--converters", EXAMPLE_CONVERTERS, "--workers", 2)
    done = ckpt_path("convert", tmp_path / "in.ckpt", "-o", tmp_path / "out.dcp", *args)
    assert done.returncode == 0, done.stderr
    sizes = [(tmp_path / "out.dcp" / f"__{rank}_0.distcp").stat().st_size for rank in (0, 1)]
    assert min(sizes) > 0
    assert_bitwise_equal(load_whole(tmp_path / "out.dcp"), expected)
    assert (tmp_path / "out.dcp" / ".metadata").is_file()
