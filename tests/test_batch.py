"""Many checkpoints in one command: `convert IN... --output-dir DIR [--workers N]`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from ckpt_path import Registry
from ckpt_path.batch import convert_batch, plan_outputs
from ckpt_path.cli import app
from ckpt_path.demo.models import make_checkpoint
from helpers import copy_examples

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: object) -> Result:
    """Run ``ckpt-path ARGS`` in process."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, Path]:
    """Write a sweep of four stamped 0.1.0 checkpoints and copy the example converters."""
    runs = tmp_path / "sweep"
    runs.mkdir()
    for seed in range(4):
        ckpt = make_checkpoint("0.1.0", seed=seed)
        ckpt["ckpt_path"] = {"version": "0.1.0", "history": []}
        torch.save(ckpt, runs / f"run{seed}.ckpt")
    return runs, copy_examples(tmp_path / "converters")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = torch.load(path, weights_only=True)["state_dict"]
    return state_dict


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_directory_converts_into_the_output_dir_as_single_runs_would(tmp_path, sweep, workers):
    """Each checkpoint of a directory lands in DIR under its own name, equal to what a single convert writes."""
    runs, converters = sweep
    out = tmp_path / "upgraded"
    result = cli("convert", runs, "--output-dir", out, "--converters", converters, "--workers", workers)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"run{i}.ckpt" for i in range(4)]
    assert "4 of 4 converted" in result.stdout
    for seed in range(4):
        single = tmp_path / f"single{seed}.ckpt"
        assert cli("convert", runs / f"run{seed}.ckpt", "-o", single, "--converters", converters).exit_code == 0
        assert _equal(_tensors(out / f"run{seed}.ckpt"), _tensors(single))


def test_a_dry_run_of_a_batch_writes_nothing_not_even_its_directory(tmp_path, sweep):
    """--dry-run with --output-dir plans every input, says it was a dry run, and creates nothing."""
    runs, converters = sweep
    out = tmp_path / "upgraded"
    result = cli("convert", runs, "--output-dir", out, "--converters", converters, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4 of 4 would convert (dry run, nothing written)" in result.stdout
    assert not out.exists()


def test_the_summary_shows_whole_paths_when_piped(tmp_path, sweep):
    """Piped (not a terminal), the summary table is as wide as its paths: none is cut to `run0.ck…`."""
    runs, converters = sweep
    out = tmp_path / "a_rather_long_directory_name_for_the_upgraded_checkpoints_of_this_sweep"
    result = cli("convert", runs, "--output-dir", out, "--converters", converters)
    assert result.exit_code == 0, result.output
    for seed in range(4):
        assert str(out / f"run{seed}.ckpt") in result.stdout
        assert str(runs / f"run{seed}.ckpt") in result.stdout


def test_one_failing_checkpoint_does_not_stop_the_others(tmp_path, sweep):
    """A damaged file fails alone: the others are written, the failure is named, the exit code is 1."""
    runs, converters = sweep
    (runs / "broken.ckpt").write_bytes(b"not a checkpoint at all")
    out = tmp_path / "upgraded"
    result = cli("convert", runs, "--output-dir", out, "--converters", converters, "--workers", "2")
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == [f"run{i}.ckpt" for i in range(4)]
    assert "3 of 4" not in result.stdout  # five inputs
    assert "4 of 5 converted" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert "broken.ckpt" in errors[0]


def test_json_gives_one_object_per_input(tmp_path, sweep):
    """--json prints a list with each input's result or error, in the order of the inputs."""
    runs, converters = sweep
    inputs = [runs / "run2.ckpt", runs / "run0.ckpt"]
    out = tmp_path / "upgraded"
    result = cli("convert", *inputs, "--output-dir", out, "--converters", converters, "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [item["input"] for item in items] == [str(p) for p in inputs]
    assert all(item["ok"] and item["target"] == "1.1.0" and item["error"] is None for item in items)
    assert all(item["copied_bytes"] > 0 for item in items)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["-o", "x.ckpt"], "-o names one OUTPUT"),
        ([], "need --output-dir DIR"),
    ],
    ids=["-o with several inputs", "no --output-dir"],
)
def test_several_inputs_need_an_output_directory(tmp_path, sweep, extra, said):
    """Several inputs with -o, or without --output-dir, are bad usage (exit 2), and nothing is written."""
    runs, converters = sweep
    result = cli("convert", runs / "run0.ckpt", runs / "run1.ckpt", *extra, "--converters", converters)
    assert result.exit_code == 2
    assert said in result.stderr
    assert not (tmp_path / "x.ckpt").exists()


def test_two_inputs_with_one_name_are_refused(tmp_path, sweep):
    """Two inputs that would both be written to DIR/run0.ckpt are refused before anything is converted."""
    runs, converters = sweep
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(runs / "run0.ckpt", other / "run0.ckpt")
    out = tmp_path / "upgraded"
    result = cli("convert", runs / "run0.ckpt", other / "run0.ckpt", "--output-dir", out, "--converters", converters)
    assert result.exit_code == 2
    assert "would both be written to" in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_the_python_api_converts_with_a_registry_made_in_code(tmp_path):
    """convert_batch takes an in-memory registry, even across worker processes."""
    registry = Registry()
    registry.add("1.0", "2.0", lambda ckpt: {**ckpt, "state_dict": {"b": ckpt["state_dict"]["a"] * 2}}, touches=["*"])
    pairs = []
    for i in range(3):
        path = tmp_path / f"m{i}.pt"
        torch.save({"state_dict": {"a": torch.full((2,), float(i))}, "ckpt_path": {"version": "1.0"}}, path)
        pairs.append((path, tmp_path / "out" / path.name))
    items = convert_batch(pairs, registry, workers=2, target="2.0")
    assert [item.ok for item in items] == [True, True, True]
    for i, (_, output) in enumerate(pairs):
        assert torch.equal(_tensors(output)["b"], torch.full((2,), 2.0 * i))


def test_plan_outputs_expands_a_directory_and_skips_the_shards_of_a_layout(tmp_path):
    """A directory stands for its checkpoints; a sharded layout is its index, never its shards one by one."""
    from ckpt_path.storage import save_checkpoint

    save_checkpoint({"w": torch.ones(4), "v": torch.ones(4)}, tmp_path / "model.safetensors.index.json", shard_size=8)
    torch.save({"w": torch.ones(1)}, tmp_path / "a.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    pairs = plan_outputs([tmp_path], tmp_path / "out")
    assert [source.name for source, _ in pairs] == ["a.pt", "model.safetensors.index.json"]


@pytest.mark.slow
def test_a_killed_batch_leaves_finished_outputs_whole_and_the_next_run_clean(tmp_path, sweep):
    """Kill -9 during a batch: every output written is complete, and the next run leaves no temporary behind."""
    runs, converters = sweep
    for seed in range(4, 12):
        shutil.copy(runs / "run0.ckpt", runs / f"run{seed}.ckpt")
    out = tmp_path / "upgraded"
    command = [sys.executable, "-m", "ckpt_path", "convert", str(runs), "--output-dir", str(out)]
    command += ["--converters", str(converters)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.is_dir() and len(list(out.glob("*.ckpt"))) >= 2):
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    finished = sorted(out.glob("*.ckpt"))
    assert finished, "the batch was killed before it wrote anything"
    for path in finished:  # only whole files are ever placed: each equals a single conversion of its input
        reference = tmp_path / f"reference-{path.name}"
        assert cli("convert", runs / path.name, "-o", reference, "--converters", converters).exit_code == 0
        assert _equal(_tensors(path), _tensors(reference)), path.name
    done = cli("convert", runs, "--output-dir", out, "--converters", converters, "--force")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in runs.iterdir())


def test_a_distributed_checkpoint_directory_is_one_input(tmp_path):
    """A directory holding .metadata is one (distributed) checkpoint, not a folder of checkpoints."""
    dcp = tmp_path / "step100"
    dcp.mkdir()
    (dcp / ".metadata").write_bytes(b"")
    (dcp / "__0_0.distcp").write_bytes(b"")
    assert plan_outputs([dcp], tmp_path / "out") == [(dcp, tmp_path / "out" / "step100")]
