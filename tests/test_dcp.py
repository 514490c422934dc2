"""Distributed checkpoints (torch.distributed.checkpoint directories) in one process.

A DCP checkpoint saved here by ``torch.distributed.checkpoint.save`` is inspected, planned,
stamped and converted through the command line; the output is loaded back with
``torch.distributed.checkpoint.load`` and compared bitwise with the same conversion of the same
checkpoint saved by ``torch.save``. Conversions with several processes are in
``test_dcp_distributed.py``.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ckpt_fixtures import assert_bitwise_equal, lightning, v010_state_dict
from ckpt_path import Registry, _lazy, dcp
from ckpt_path.commands import convert_file
from ckpt_path.demo.models import make_model
from ckpt_path.errors import CheckpointError
from ckpt_path.formats import load_safetensors, load_sharded
from helpers import EXAMPLE_CONVERTERS, assert_one_line_error, cli, write_converter


def save_dcp(obj: dict[str, Any], path: Path) -> Path:
    """Save ``obj`` with ``torch.distributed.checkpoint.save`` from this one process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp_save(obj, checkpoint_id=str(path))
    return path


def load_dcp(path: Path, state_dict: dict[str, Any], key: str | None = "state_dict") -> dict[str, Any]:
    """Fill ``state_dict`` (under ``key``) from the DCP checkpoint at ``path`` with DCP's own ``load``."""
    target: dict[str, Any] = {key: state_dict} if key else dict(state_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(target, checkpoint_id=str(path))
    found: dict[str, Any] = target[key] if key else target
    return found


def checkpoint_010() -> dict[str, Any]:
    """Return a checkpoint of the demo model at 0.1.0 with non-tensor entries beside the state dict."""
    return {"state_dict": make_model("0.1.0", 0).state_dict(), "epoch": 3, "hyper_parameters": {"hidden": 16}}


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """Save the 0.1.0 checkpoint as a DCP directory ``in`` (and as ``in.ckpt``, for reference conversions)."""
    torch.save(checkpoint_010(), tmp_path / "in.ckpt")
    return save_dcp(checkpoint_010(), tmp_path / "in")


def reference(tmp_path: Path, target: str = "latest", converters: Path = EXAMPLE_CONVERTERS) -> dict[str, Any]:
    """Convert ``in.ckpt`` (torch.save) the ordinary way and return its state dict: what a DCP conversion must give."""
    out = tmp_path / f"reference-{target}.ckpt"
    registry = Registry.from_directory(converters)
    convert_file(tmp_path / "in.ckpt", out, target=target, source="0.1.0", registry=registry, allow_lossy=True)
    state_dict: dict[str, Any] = torch.load(out, weights_only=True)["state_dict"]
    return state_dict


def digests(directory: Path) -> dict[str, str]:
    """Every file of a directory (dot files too) and the SHA-256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def leftovers(directory: Path) -> list[str]:
    """Temporaries of this tool left in ``directory`` (files or directories)."""
    return sorted(p.name for p in directory.iterdir() if ".ckpt-path-" in p.name)


# --- metadata only ---------------------------------------------------------------------------------


def test_metadata_only_commands_read_no_data_file(demo, monkeypatch):
    """Inspect, plan CKPT, convert --dry-run and --from auto open no .distcp file (zeroed, to be sure)."""
    assert cli("stamp", demo, "0.1.0").exit_code == 0
    for data in demo.glob("*.distcp"):
        data.write_bytes(bytes(data.stat().st_size))  # any read of tensor data would now fail its CRC-32
    opened: list[str] = []
    real_open, real_os_open = io.open, os.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_os_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    monkeypatch.setattr(os, "open", spy_os)
    inspected = cli("inspect", demo, "--converters", EXAMPLE_CONVERTERS, "--json")
    assert inspected.exit_code == 0, inspected.output
    planned = cli("plan", demo, "latest", "--converters", EXAMPLE_CONVERTERS)
    dry = cli("convert", demo, "--dry-run", "--converters", EXAMPLE_CONVERTERS)
    auto = cli("convert", demo, "--dry-run", "--from", "auto", "--converters", EXAMPLE_CONVERTERS)
    for result in (planned, dry, auto):
        assert result.exit_code == 0, result.output
    assert [f for f in opened if f.endswith(".distcp")] == []
    assert any(f.endswith(".metadata") for f in opened)
    assert '"format": "dcp"' in inspected.stdout
    assert '"version": "0.1.0"' in inspected.stdout
    assert "concatenated 3 into processor.qkv_proj.{p}" in dry.stdout
    assert "0.1.0 -> 1.1.0" in auto.stdout


def test_inspect_shows_tensors_and_inferred_version(demo):
    """Inspect describes a DCP directory: format, tensors, bytes, the state dict, the version the schemas give."""
    result = cli("inspect", demo, "--converters", EXAMPLE_CONVERTERS)
    assert result.exit_code == 0, result.output
    assert "format:      dcp" in result.stdout
    assert "tensors:     14" in result.stdout
    assert "state dict:  state_dict" in result.stdout
    assert "0.1.0 according to schemas" in result.stdout


# --- stamp -----------------------------------------------------------------------------------------


def test_stamp_in_place_rewrites_metadata_and_keeps_dcp_loading(demo):
    """Stamp writes the stamp into .metadata (renamed over the old one); DCP still loads; history grows on restamp."""
    chunks_before = digests(demo)["__0_0.distcp"]
    inode = (demo / ".metadata").stat().st_ino
    assert cli("stamp", demo, "0.1.0").exit_code == 0
    assert (demo / ".metadata").stat().st_ino != inode
    assert digests(demo)["__0_0.distcp"] == chunks_before  # the data are not rewritten
    assert leftovers(demo) == []
    assert leftovers(demo.parent) == []
    assert cli("stamp", demo, "0.2.0").exit_code == 0
    shown = cli("inspect", demo)
    assert "version:     0.2.0" in shown.stdout
    assert "0.1.0 -> 0.2.0  ckpt-path stamp" in shown.stdout
    assert len(list(demo.glob("__stamp-*.distcp"))) == 1  # the first stamp's entries were removed
    loaded = load_dcp(demo, make_model("0.1.0", 1).state_dict())
    assert_bitwise_equal(loaded, make_model("0.1.0", 0).state_dict())


def test_stamp_to_another_output_leaves_the_input(demo, tmp_path):
    """Stamp -o OUT writes a stamped copy (chunks copied) and does not touch the input."""
    before = digests(demo)
    result = cli("stamp", demo, "0.1.0", "-o", tmp_path / "stamped")
    assert result.exit_code == 0, result.output
    assert digests(demo) == before
    assert "version:     0.1.0" in cli("inspect", tmp_path / "stamped").stdout
    assert "not stamped" in cli("inspect", demo).stdout


def test_lightning_style_stamp_entries_are_read(tmp_path):
    """A DCP checkpoint saved with a ckpt_path entry (as Lightning saves a stamped checkpoint) shows its version."""
    save_dcp(lightning(v010_state_dict(), version="0.1.0"), tmp_path / "lit")
    result = cli("inspect", tmp_path / "lit")
    assert "version:     0.1.0" in result.stdout
    converted = cli("convert", tmp_path / "lit", "-o", tmp_path / "out", "--converters", EXAMPLE_CONVERTERS)
    assert converted.exit_code == 0, converted.output
    checkpoint = dcp.load(tmp_path / "out")
    assert checkpoint.stamp is not None
    assert checkpoint.stamp.version == "1.1.0"
    assert checkpoint.obj["hyper_parameters"]["features"] == ["u", "v", "t", "msl", "q", "z"]
    assert checkpoint.obj["ckpt_path"]["version"] == "1.1.0"  # the entries follow the stamp


# --- DCP to DCP ------------------------------------------------------------------------------------


def test_convert_dcp_to_dcp_matches_the_reference_bitwise(demo, tmp_path):
    """A DCP conversion along the example history loads with DCP into the 1.1.0 model, equal to the torch.save path."""
    before = digests(demo)
    result = cli("convert", demo, "-o", tmp_path / "out", "--from", "0.1.0", "--converters", EXAMPLE_CONVERTERS)
    assert result.exit_code == 0, result.output
    assert digests(demo) == before
    assert dcp.is_dcp(tmp_path / "out")
    loaded = load_dcp(tmp_path / "out", make_model("1.1.0", 1).state_dict())
    assert_bitwise_equal(loaded, reference(tmp_path))
    shown = cli("inspect", tmp_path / "out")
    assert "version:     1.1.0" in shown.stdout
    assert "003_fuse_qkv" in shown.stdout
    assert load_dcp(tmp_path / "out", {"epoch": 0}, key=None)["epoch"] == 3
    assert leftovers(tmp_path) == []


def test_rename_path_copies_every_chunk_kernel_side(demo, tmp_path, monkeypatch):
    """A path of renames reads no tensor data: every chunk is copied with os.copy_file_range."""
    write_converter(
        tmp_path / "conv",
        "001_wrap",
        "0.1.0",
        "0.2.0",
        code='from ckpt_path.ops import Rename\n\nops = [Rename("{*k}", "net.{*k}")]\n',
    )
    copied: list[int] = []
    real_copy = os.copy_file_range

    def spy(*args: Any) -> int:
        done = real_copy(*args)
        copied.append(done)
        return done

    def refuse(*_: Any) -> None:
        raise AssertionError("tensor data read on a path of renames")

    monkeypatch.setattr(os, "copy_file_range", spy)
    monkeypatch.setattr(dcp.Reader, "read", refuse)
    result = cli("convert", demo, "-o", tmp_path / "out", "--from", "0.1.0", "--converters", tmp_path / "conv")
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    chunks = sum(c.where.length for e in dcp.read_layout(demo).entries for c in e.chunks)
    assert sum(copied) == chunks
    assert "0 B written" in result.stdout
    state_dict = make_model("0.1.0", 1).state_dict()
    loaded = load_dcp(tmp_path / "out", {f"net.{k}": v for k, v in state_dict.items()})
    assert_bitwise_equal(loaded, {f"net.{k}": v for k, v in make_model("0.1.0", 0).state_dict().items()})


def test_a_computing_step_reads_only_its_tensors(demo, tmp_path, monkeypatch):
    """A step that computes one tensor reads that tensor's chunks and no other."""
    write_converter(
        tmp_path / "conv",
        "001_move",
        "0.1.0",
        "0.2.0",
        code=(
            "from ckpt_path.ops import MoveIndex\n\n"
            'ops = [MoveIndex("grid_prev_embedder.0.weight", dim=1, index=3, to=1)]\n'
        ),
    )
    read: list[str] = []
    real_read = dcp.Reader.read

    def spy(self: Any, key: str) -> torch.Tensor:
        read.append(key)
        return real_read(self, key)

    monkeypatch.setattr(dcp.Reader, "read", spy)
    result = cli("convert", demo, "-o", tmp_path / "out", "--from", "0.1.0", "--converters", tmp_path / "conv")
    assert result.exit_code == 0, result.output
    assert read == ["state_dict.grid_prev_embedder.0.weight"]
    loaded = load_dcp(tmp_path / "out", make_model("0.1.0", 1).state_dict())
    expected = make_model("0.1.0", 0).state_dict()
    expected["grid_prev_embedder.0.weight"] = expected["grid_prev_embedder.0.weight"][:, [0, 3, 1, 2, 4, 5]]
    assert_bitwise_equal(loaded, expected)


def test_flat_dcp_checkpoint_converts_and_loads_into_the_model(tmp_path):
    """A flat DCP state dict (the model's own keys at the top) converts; the stamp lives in .metadata only."""
    flat = make_model("0.2.0", 0).state_dict()
    save_dcp(dict(flat), tmp_path / "flat")
    torch.save(flat, tmp_path / "flat.pt")
    registry = Registry.from_directory(EXAMPLE_CONVERTERS)
    convert_file(tmp_path / "flat.pt", tmp_path / "reference.pt", source="0.2.0", registry=registry)
    out = tmp_path / "out"
    result = cli("convert", tmp_path / "flat", "-o", out, "--from", "0.2.0", "--converters", EXAMPLE_CONVERTERS)
    assert result.exit_code == 0, result.output
    model = make_model("1.1.0", 1)
    state_dict = load_dcp(out, model.state_dict(), key=None)
    model.load_state_dict(state_dict, strict=True)
    assert_bitwise_equal(state_dict, dict(torch.load(tmp_path / "reference.pt", weights_only=True)))
    assert sorted(dcp.read_layout(out).entries[i].fqn for i in range(len(state_dict))) == sorted(state_dict)
    assert "version:     1.1.0" in cli("inspect", out).stdout


# --- failures --------------------------------------------------------------------------------------


def test_a_failing_step_leaves_nothing_at_output(demo, tmp_path):
    """A converter that raises fails the conversion with one error line; no OUTPUT, no temporary, input intact."""
    write_converter(tmp_path / "conv", "001_bad", "0.1.0", "0.2.0", body="raise ValueError('no')")
    before = digests(demo)
    result = cli("convert", demo, "-o", tmp_path / "out", "--from", "0.1.0", "--converters", tmp_path / "conv")
    assert_one_line_error(result, "001_bad", "no")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []
    assert digests(demo) == before


def test_a_failing_write_leaves_nothing_at_output(demo, tmp_path, monkeypatch):
    """A write that fails half-way (disk full) removes the temporary directory; OUTPUT never appears."""
    real = dcp.write_share

    def full(items: Any, directory: Path, name: str) -> Any:
        real(items[:3], directory, name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dcp, "write_share", full)
    result = cli("convert", demo, "-o", tmp_path / "out", "--from", "0.1.0", "--converters", EXAMPLE_CONVERTERS)
    assert_one_line_error(result, "cannot write", "no space left")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_output_is_replaced_only_with_force(demo, tmp_path):
    """An existing OUTPUT needs --force; a directory that is not a DCP checkpoint, or the input, is never replaced."""
    args = ("--from", "0.1.0", "--converters", EXAMPLE_CONVERTERS)
    out = tmp_path / "out"
    assert cli("convert", demo, "-o", out, *args).exit_code == 0
    assert_one_line_error(cli("convert", demo, "-o", out, *args), "already exists", "--force")
    old = (out / ".metadata").stat().st_ino
    assert cli("convert", demo, "-o", out, "--to", "1.0.0", "--force", *args).exit_code == 0
    assert (out / ".metadata").stat().st_ino != old
    assert "version:     1.0.0" in cli("inspect", out).stdout
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_one_line_error(cli("convert", demo, "-o", other, "--force", *args), "not a DCP checkpoint")
    assert (other / "notes.txt").read_text() == "mine"
    assert_one_line_error(cli("convert", demo, "-o", demo, "--force", *args), "input")
    assert_one_line_error(cli("convert", demo, "-o", demo / "inside", *args), "input")
    assert leftovers(tmp_path) == []


def test_missing_or_damaged_data_is_one_clear_error(demo, tmp_path):
    """A missing, truncated or corrupted data file, or damaged metadata, is one error line, never a traceback."""
    args = ("--from", "0.1.0", "--converters", EXAMPLE_CONVERTERS)
    data = demo / "__0_0.distcp"
    layout = dcp.read_layout(demo)
    chunk = next(e for e in layout.entries if e.fqn == "state_dict.grid_prev_embedder.0.weight").chunks[0].where
    raw = bytearray(data.read_bytes())
    records = dcp.archive_records(bytes(raw[chunk.offset : chunk.offset + chunk.length]), "x", "x")
    start, size = next(place for name, place in records.items() if name.endswith("data/0"))
    raw[chunk.offset + start + size // 2] ^= 0xFF
    data.write_bytes(raw)
    assert_one_line_error(cli("convert", demo, "-o", tmp_path / "o1", *args), "crc-32", "grid_prev_embedder")
    data.write_bytes(raw[: len(raw) // 2])
    assert_one_line_error(cli("convert", demo, "-o", tmp_path / "o2", *args), "truncated")
    data.unlink()
    assert_one_line_error(cli("inspect", demo), "__0_0.distcp is missing")
    (demo / ".metadata").write_bytes(b"\x80\x04not a pickle")
    assert_one_line_error(cli("inspect", demo), ".metadata is damaged")
    assert leftovers(tmp_path) == []
    assert not any((tmp_path / name).exists() for name in ("o1", "o2"))


def test_metadata_naming_another_global_is_refused_unrun(demo, tmp_path):
    """A .metadata pickle that names a global outside DCP's metadata classes is refused by name; nothing runs."""
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Evil(str(marker)))
    (demo / ".metadata").write_bytes(evil)
    result = cli("inspect", demo)
    assert_one_line_error(result, "needs the global", "nothing was run")
    assert not marker.exists()


def test_dcp_saved_with_safetensors_serialization_is_refused_from_metadata(tmp_path):
    """A DCP checkpoint whose chunks are raw bytes (safetensors serialization) is refused in one line, unread."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat

    writer = FileSystemWriter(str(tmp_path / "raw"), serialization_format=SerializationFormat.SAFETENSORS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_save({"model": {"w": torch.ones(3)}}, storage_writer=writer)
    assert_one_line_error(cli("inspect", tmp_path / "raw"), "safetensors serialization")
    args = ("--from", "0.1.0", "--to", "0.1.0", "--state-dict", "model")
    assert_one_line_error(cli("convert", tmp_path / "raw", "-o", tmp_path / "out", *args), "raw bytes")
    assert not (tmp_path / "out").exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


# --- other formats ---------------------------------------------------------------------------------


def test_dcp_to_files_and_back_stream_one_tensor_at_a_time(demo, tmp_path, monkeypatch):
    """DCP to torch, safetensors and sharded, and back: bitwise, with one computed tensor alive at a time."""
    alive, peak = [0], [0]
    real = _lazy._compute  # noqa: SLF001 - counted: every tensor a step computes passes through it

    def counted(*args: Any) -> torch.Tensor:
        tensor = real(*args)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(tensor, lambda: alive.__setitem__(0, alive[0] - 1))
        return tensor

    monkeypatch.setattr(_lazy, "_compute", counted)
    expected = reference(tmp_path)
    args = ("--from", "0.1.0", "--converters", EXAMPLE_CONVERTERS)
    assert cli("convert", demo, "-o", tmp_path / "out.pt", *args).exit_code == 0
    assert_bitwise_equal(torch.load(tmp_path / "out.pt", weights_only=True)["state_dict"], expected)
    assert cli("convert", demo, "-o", tmp_path / "out.safetensors", "--state-dict-only", *args).exit_code == 0
    assert_bitwise_equal(dict(load_safetensors(tmp_path / "out.safetensors")[0]), expected)
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    assert cli("convert", demo, "-o", index, "--state-dict-only", *args).exit_code == 0
    assert_bitwise_equal(dict(load_sharded(index)[0]), expected)
    assert peak[0] == 1
    back = cli("convert", tmp_path / "out.pt", "-o", tmp_path / "back.dcp", "--converters", EXAMPLE_CONVERTERS)
    assert back.exit_code == 0, back.output
    assert_bitwise_equal(load_dcp(tmp_path / "back.dcp", make_model("1.1.0", 1).state_dict()), expected)
    assert "version:     1.1.0" in cli("inspect", tmp_path / "back.dcp").stdout
    assert leftovers(tmp_path) == []


def test_a_dcp_directory_written_from_a_file_gets_the_dcp_layout(tmp_path):
    """OUTPUT ending in .dcp is a DCP directory whatever the input: .metadata and one __0_0.distcp."""
    torch.save(checkpoint_010(), tmp_path / "in.ckpt")
    result = cli("convert", tmp_path / "in.ckpt", "-o", tmp_path / "x.dcp", "--from", "0.1.0", "--to", "0.1.0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "x.dcp").iterdir()) == [".metadata", "__0_0.distcp"]
    assert_bitwise_equal(
        load_dcp(tmp_path / "x.dcp", make_model("0.1.0", 1).state_dict()), checkpoint_010()["state_dict"]
    )


# --- lazy tensors ----------------------------------------------------------------------------------


class _Memory:
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.reads: list[str] = []

    def read(self, key: str) -> torch.Tensor:
        self.reads.append(key)
        return self.tensors[key].clone()


def test_lazy_tensors_defer_work_and_keep_in_place_semantics():
    """Operations on lazy tensors are deferred; in-place writes, item() and meta copies behave as on plain tensors."""
    source = _Memory({"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(2, 4)})
    a = _lazy.stored(source, "a", (3, 4), torch.float32)
    b = _lazy.stored(source, "b", (2, 4), torch.float32)
    joined, half = torch.cat([a, b]), a.to(torch.float16)
    assert (joined.shape, half.dtype, source.reads) == ((5, 4), torch.float16, [])
    assert a.to("meta").device.type == "meta"
    assert source.reads == []
    assert torch.equal(_lazy.evaluate(joined), torch.cat([source.tensors["a"], source.tensors["b"]]))
    assert a.sum().item() == 66.0
    doubled, row = a * 2, a[0]
    row.mul_(10)  # writes into a: what was deferred from a before sees the old values
    assert torch.equal(_lazy.evaluate(doubled)[0], torch.tensor([0.0, 2.0, 4.0, 6.0]))
    assert torch.equal(_lazy.evaluate(a)[0], torch.tensor([0.0, 10.0, 20.0, 30.0]))
    index = torch.tensor([0, 1])
    picked = b.index_select(0, index)
    index.add_(1)
    with pytest.raises(CheckpointError, match=r"changed a tensor in place after using it in aten\.index_select"):
        _lazy.evaluate(picked)


# --- loading an old checkpoint into a new model ------------------------------------------------------


def test_load_planner_reads_an_old_checkpoint_into_the_new_model_along_renames(demo, tmp_path):
    """DCP's load with UpgradingLoadPlanner fills the 0.2.0 model from the 0.1.0 files; a computed tensor is refused."""
    from ckpt_path.dcp_planner import UpgradingLoadPlanner

    registry = Registry.from_directory(EXAMPLE_CONVERTERS)
    before = digests(demo)
    target: dict[str, Any] = {"state_dict": make_model("0.2.0", 1).state_dict(), "epoch": 0}
    planner = UpgradingLoadPlanner(demo, registry, "0.2.0", source="0.1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(target, checkpoint_id=str(demo), planner=planner)
    assert_bitwise_equal(target["state_dict"], reference(tmp_path, "0.2.0"))
    assert target["epoch"] == 3
    assert digests(demo) == before
    later = {"state_dict": make_model("0.3.0", 1).state_dict()}
    refusing = UpgradingLoadPlanner(demo, registry, "0.3.0", source="0.1.0")
    with warnings.catch_warnings(), pytest.raises(CheckpointException, match="ckpt-path convert") as refused:  # noqa: PT012
        warnings.simplefilter("ignore")
        dcp_load(later, checkpoint_id=str(demo), planner=refusing)
    assert "grid_prev_embedder.0.weight" in str(refused.value)


def test_a_dry_run_says_the_optimizer_state_of_a_dcp_checkpoint_was_not_checked(demo, tmp_path):
    """A DCP dry run reads .metadata only: it says the optimizer state was not checked, rather than claim it was."""
    stamp = ("stamp", demo, "0.1.0")
    assert cli(*stamp).exit_code == 0
    result = cli("convert", demo, "--dry-run", "--converters", EXAMPLE_CONVERTERS)
    assert result.exit_code == 0, result.output
    assert "whether the optimizer state can follow each step was not checked" in result.stderr
    real = cli("convert", demo, "-o", tmp_path / "out", "--converters", EXAMPLE_CONVERTERS)
    assert real.exit_code == 0, real.output
    assert "was not checked" not in real.stderr
