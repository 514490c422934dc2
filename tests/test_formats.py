"""File formats: torch, safetensors and sharded safetensors, read lazily and written safely.

Round trips between every pair of formats go through the command line; interoperability is
checked against the ``safetensors`` library itself; laziness is measured with what Linux reports
about this process (``/proc/self/maps``, ``smaps``, ``io`` and ``status``), each measurement
next to a control that shows it would see tensor data being read.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import Result

import ckpt_path
from ckpt_fixtures import digest, lightning, temp_files
from ckpt_path.checkpoint import get_state_dict
from ckpt_path.commands import inspect_file, load
from ckpt_path.registry import ENV_VAR
from ckpt_path.runner import run
from ckpt_path.stamp import Stamp, read_stamp, write_stamp
from ckpt_path.storage import load_checkpoint, save_checkpoint
from helpers import assert_one_line_error, cli, write_converter

SOURCE_VERSION = "1.0.0"
TARGET_VERSION = "1.1.0"
RENAME = "rename_old_to_new"
"""The converter of the rename path; its file name is its name in the stamp's history."""

EARLIER_STEP = {
    "source": "0.9.0",
    "target": "1.0.0",
    "converter": "older",
    "digest": "sha256:0123456789abcdef",
    "at": "2024-01-01T00:00:00+00:00",
}
"""A step the input went through before, already in its stamp."""

SOURCE_STAMP = Stamp(version=SOURCE_VERSION, history=(EARLIER_STEP,))
STAMP_METADATA = {"ckpt_path.version": SOURCE_VERSION, "ckpt_path.history": json.dumps([EARLIER_STEP])}
"""The same stamp as safetensors ``__metadata__`` entries."""

RENAME_BODY = """\
sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
for key in [k for k in sd if k.startswith("old.")]:
    sd["new." + key.removeprefix("old.")] = sd.pop(key)
return ckpt
"""

BUMP_BODY = """\
sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
for tensor in sd.values():
    tensor.add_(1)
return ckpt
"""

FORMATS = ("pt", "ckpt", "safetensors", "sharded")
SAFETENSORS_FORMATS = ("safetensors", "sharded")
OUTPUTS = {
    "pt": "out.pt",
    "ckpt": "out.ckpt",
    "safetensors": "out.safetensors",
    "sharded": "out/model.safetensors.index.json",
}
MiB = 1 << 20
V = TypeVar("V")


# --- helpers ---------------------------------------------------------------------------------


def sample_state_dict() -> dict[str, torch.Tensor]:
    """Return a small state dict with every dtype the formats must carry, and awkward bit patterns."""
    generator = torch.Generator().manual_seed(0)
    return {
        "old.weight": torch.randn(4, 3, generator=generator),
        # NaN, -0.0, infinities and a subnormal: torch.equal cannot see their bits, bytes can.
        "old.special": torch.tensor([float("nan"), -0.0, float("inf"), float("-inf"), 1e-45]),
        "old.half": torch.randn(5, generator=generator).half(),
        "old.brain": torch.randn(2, 3, generator=generator).to(torch.bfloat16),
        "steps": torch.tensor(12345678901, dtype=torch.int64),
        "ids": torch.arange(-3, 4, dtype=torch.int64),
        "mask": torch.tensor([True, False, True, True]),
        "codes": torch.tensor([0, 7, 128, 255], dtype=torch.uint8),
    }


def renamed(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Return what the rename path makes of ``state_dict``: ``old.*`` becomes ``new.*``."""
    return {("new." + k.removeprefix("old.") if k.startswith("old.") else k): v for k, v in state_dict.items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, shape and bytes."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def assert_same_tensors(got: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> None:
    """Assert ``got`` holds exactly the keys of ``expected``, each a tensor with the same dtype, shape and bits."""
    assert sorted(got) == sorted(expected)
    for key, tensor in expected.items():
        value = got[key]
        assert isinstance(value, torch.Tensor), (key, type(value))
        assert value.dtype == tensor.dtype, (key, value.dtype, tensor.dtype)
        assert value.shape == tensor.shape, (key, value.shape, tensor.shape)
        assert same_bits(value, tensor), key


def converter_digest(converters: Path) -> str:
    """Return the digest ckpt-path records for the rename converter."""
    (converter,) = ckpt_path.Registry.from_directory(converters).converters
    return converter.digest


def assert_history(history: Iterable[Mapping[str, Any]], converters: Path) -> None:
    """Assert a history is the earlier step followed by the rename step."""
    history = list(history)
    assert len(history) == 2, history
    assert dict(history[0]) == EARLIER_STEP
    step = history[1]
    assert (step["source"], step["target"], step["converter"]) == (SOURCE_VERSION, TARGET_VERSION, RENAME)
    assert step["digest"] == converter_digest(converters)
    assert datetime.fromisoformat(step["at"]).tzinfo is not None


def assert_stamped(path: Path, converters: Path) -> None:
    """Assert the checkpoint at ``path`` is stamped with the target version and the right history."""
    loaded = load_checkpoint(path)
    stamp = read_stamp(loaded.obj, loaded.state_dict_at)
    assert stamp is not None
    assert stamp.version == TARGET_VERSION
    assert_history(stamp.history, converters)


def assert_metadata_stamped(metadata: Mapping[str, Any] | None, converters: Path) -> None:
    """Assert safetensors (or index) metadata holds the target version and history as the contract says."""
    assert metadata is not None
    assert metadata["ckpt_path.version"] == TARGET_VERSION
    assert isinstance(metadata["ckpt_path.history"], str)
    assert_history(json.loads(metadata["ckpt_path.history"]), converters)


def st_metadata(path: Path) -> dict[str, str] | None:
    """Return a safetensors file's ``__metadata__`` as the safetensors library reads it."""
    with safe_open(str(path), framework="pt") as handle:
        metadata: dict[str, str] | None = handle.metadata()
    return metadata


def st_keys(path: Path) -> set[str]:
    """Return the tensor names of a safetensors file, as the safetensors library reads them."""
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def read_index(index: Path) -> dict[str, Any]:
    """Return the JSON of a sharded layout's index."""
    data: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))
    return data


def shard_files(index: Path) -> list[Path]:
    """Return the shard files a sharded layout's index names, in order."""
    return [index.parent / name for name in sorted(set(read_index(index)["weight_map"].values()))]


def safetensors_files(path: Path) -> list[Path]:
    """Return the safetensors files of an output: the file itself, or every shard of a layout."""
    return shard_files(path) if path.name.endswith(".safetensors.index.json") else [path]


def load_with_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load an output with the safetensors library alone (every shard of a layout)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        part = load_file(str(file))
        assert not set(part) & set(tensors), f"{file} repeats keys"
        tensors.update(part)
    return tensors


def write_sharded(
    index: Path,
    shards: list[dict[str, torch.Tensor]],
    metadata: Mapping[str, Any],
    shard_metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write a sharded layout the way Hugging Face does: shards with ``save_file``, then the index."""
    index.parent.mkdir(parents=True, exist_ok=True)
    prefix = index.name.removesuffix(".safetensors.index.json")
    weight_map: dict[str, str] = {}
    files = []
    for number, tensors in enumerate(shards, 1):
        name = f"{prefix}-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(index.parent / name), metadata=dict(shard_metadata or {"format": "pt"}))
        weight_map.update(dict.fromkeys(tensors, name))
        files.append(index.parent / name)
    total = sum(t.numel() * t.element_size() for tensors in shards for t in tensors.values())
    index.write_text(json.dumps({"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}))
    return files


def write_input(fmt: str, directory: Path, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write ``state_dict`` stamped 1.0.0 in format ``fmt`` under ``directory``; return the path to convert.

    ``pt`` is a flat state dict (stamp in ``_metadata``), ``ckpt`` a dict with ``state_dict``
    (stamp at the top level), ``safetensors`` one file with ``{"format": "pt"}`` beside the
    stamp, ``sharded`` two shards (each with ``{"format": "pt"}``) and an index holding the stamp.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "pt":
        path = directory / "in.pt"
        torch.save(write_stamp(OrderedDict(state_dict), (), SOURCE_STAMP), path)
    elif fmt == "ckpt":
        path = directory / "in.ckpt"
        torch.save(write_stamp({"state_dict": dict(state_dict)}, ("state_dict",), SOURCE_STAMP), path)
    elif fmt == "safetensors":
        path = directory / "in.safetensors"
        save_file(dict(state_dict), str(path), metadata={"format": "pt", **STAMP_METADATA})
    else:
        path = directory / "in" / "model.safetensors.index.json"
        keys = sorted(state_dict)
        half = len(keys) // 2
        halves = [{k: state_dict[k] for k in keys[:half]}, {k: state_dict[k] for k in keys[half:]}]
        write_sharded(path, halves, STAMP_METADATA)
    return path


def tree(directory: Path) -> dict[str, str]:
    """Return every file and directory under ``directory`` with the digest of each file."""
    return {str(p.relative_to(directory)): (digest(p) if p.is_file() else "dir") for p in sorted(directory.rglob("*"))}


@pytest.fixture
def converters(tmp_path: Path) -> Path:
    """Write a converters directory with one step, 1.0.0 -> 1.1.0, that renames ``old.*`` to ``new.*``."""
    directory = tmp_path / "converters"
    write_converter(directory, RENAME, SOURCE_VERSION, TARGET_VERSION, body=RENAME_BODY, touches=["old.*", "new.*"])
    return directory


def convert(source: Path, output: Path, converters: Path, *extra: object) -> Result:
    """Run ``ckpt-path convert SOURCE -o OUTPUT --converters DIR EXTRA``."""
    return cli("convert", source, "-o", output, "--converters", converters, *extra)


# --- 1. round trips between formats ------------------------------------------------------------


@pytest.mark.parametrize("target_format", FORMATS)
@pytest.mark.parametrize("source_format", FORMATS)
def test_convert_between_formats_keeps_bits_dtypes_and_stamp(tmp_path, converters, source_format, target_format):
    """Converting from each format to each other renames keys, keeps every dtype and bit, and stamps the output."""
    state_dict = sample_state_dict()
    source = write_input(source_format, tmp_path / "src", state_dict)
    output = tmp_path / OUTPUTS[target_format]

    result = convert(source, output, converters)

    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(output)
    assert_same_tensors(loaded.state_dict, renamed(state_dict))
    assert_stamped(output, converters)
    if target_format in SAFETENSORS_FORMATS:
        assert_same_tensors(load_with_safetensors(output), renamed(state_dict))
        for file in safetensors_files(output):
            assert_metadata_stamped(st_metadata(file), converters)
    if target_format == "sharded":
        assert_metadata_stamped(read_index(output)["metadata"], converters)


@pytest.mark.parametrize("target_format", SAFETENSORS_FORMATS)
@pytest.mark.parametrize("source_format", SAFETENSORS_FORMATS)
def test_safetensors_metadata_survives_conversion(tmp_path, converters, source_format, target_format):
    """``__metadata__`` besides the stamp (Hugging Face's ``{"format": "pt"}``) survives safetensors -> safetensors."""
    source = write_input(source_format, tmp_path / "src", sample_state_dict())
    output = tmp_path / OUTPUTS[target_format]

    result = convert(source, output, converters)

    assert result.exit_code == 0, result.output
    for file in safetensors_files(output):
        metadata = st_metadata(file)
        assert metadata is not None, file.name
        assert metadata.get("format") == "pt", (file.name, metadata)
        assert metadata["ckpt_path.version"] == TARGET_VERSION


# --- 2. interoperability with the safetensors library ------------------------------------------


def test_file_written_by_safetensors_library_loads_with_metadata_and_stamp(tmp_path):
    """A file written by ``safetensors.torch.save_file`` loads with the same tensors, its metadata and its stamp."""
    state_dict = {**sample_state_dict(), "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5)}
    plain, stamped = tmp_path / "plain.safetensors", tmp_path / "stamped.safetensors"
    save_file(state_dict, str(plain), metadata={"format": "pt"})
    save_file(state_dict, str(stamped), metadata={"format": "pt", **STAMP_METADATA})

    loaded = load_checkpoint(plain)
    assert (loaded.format, loaded.state_dict_at, loaded.metadata) == ("safetensors", (), {"format": "pt"})
    assert_same_tensors(loaded.state_dict, state_dict)
    assert read_stamp(loaded.obj) is None
    stamp = read_stamp(load_checkpoint(stamped).obj)
    assert stamp == Stamp(version=SOURCE_VERSION, history=(EARLIER_STEP,))


def test_file_written_by_ckpt_path_loads_with_safetensors_library(tmp_path):
    """A file ckpt-path writes (views, transposes, empty and 0-d tensors too) loads with ``load_file`` unchanged."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state_dict = {
        **sample_state_dict(),
        "transposed": base.t(),  # not contiguous
        "slice": base[2:],  # a view that starts inside its storage
        "column": base[:, 1],  # strided
        "empty": torch.zeros(0, 3, dtype=torch.float16),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
    }
    stamped = write_stamp(OrderedDict(state_dict), (), SOURCE_STAMP)
    path = save_checkpoint(stamped, tmp_path / "out.safetensors", metadata={"format": "pt"})

    assert_same_tensors(load_file(str(path)), {k: v.contiguous() for k, v in state_dict.items()})
    assert st_metadata(path) == {"format": "pt", **STAMP_METADATA}


def test_sharded_output_loads_into_module_strictly(tmp_path, converters):
    """The flat state dict of a sharded output loads into an ``nn.Module`` with ``strict=True``, however it is read."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.new = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

    trained = Net()
    trained.get_buffer("new.1.running_mean").add_(1.5)
    trained.get_buffer("new.1.num_batches_tracked").add_(7)
    expected = trained.state_dict()
    old = OrderedDict(("old." + k.removeprefix("new."), v) for k, v in expected.items())
    source = tmp_path / "weights.pt"
    torch.save(write_stamp(old, (), SOURCE_STAMP), source)
    output = tmp_path / "out" / "model.safetensors.index.json"

    result = convert(source, output, converters)

    assert result.exit_code == 0, result.output
    for state_dict in (load_checkpoint(output).obj, load_with_safetensors(output)):
        model = Net()
        model.load_state_dict(state_dict, strict=True)
        assert_same_tensors(model.state_dict(), expected)


# --- 3. sharded layouts ------------------------------------------------------------------------

ELEMENTS = 1024
"""float32 elements of each tensor in the layout tests: 4 KiB, far more than a shard's header."""


def three_shards() -> list[dict[str, torch.Tensor]]:
    """Return six 4 KiB tensors spread unevenly over three shards (3, 1 and 2 tensors)."""
    tensors = {
        f"{prefix}.{i}": torch.full((ELEMENTS,), float(10 * n + i))
        for n, prefix in enumerate(("old", "keep"))
        for i in range(3)
    }
    keys = list(tensors)
    groups = [keys[:3], keys[3:4], keys[4:]]
    return [{k: tensors[k] for k in group} for group in groups]


def test_three_shard_input_is_resharded_at_its_largest_shard_size(tmp_path, converters):
    """A 3-shard input converts; the output is re-sharded at its largest shard, each key indexed to its shard."""
    shards = three_shards()
    index = tmp_path / "src" / "model.safetensors.index.json"
    files = write_sharded(index, shards, STAMP_METADATA)
    limit = max(f.stat().st_size for f in files)
    expected = renamed({k: v for shard in shards for k, v in shard.items()})
    output = tmp_path / "out" / "model.safetensors.index.json"

    result = convert(index, output, converters)

    assert result.exit_code == 0, result.output
    assert_same_tensors(load_checkpoint(output).state_dict, expected)
    layout = read_index(output)
    weight_map = layout["weight_map"]
    assert sorted(weight_map) == sorted(expected)
    written = shard_files(output)
    assert sorted(p.name for p in output.parent.iterdir()) == sorted([output.name, *(p.name for p in written)])
    # 24 KiB of tensors at a limit of 12 KiB and a header: two shards of three tensors.
    assert len(written) == 2
    for shard in written:
        keys = st_keys(shard)
        assert keys == {k for k, name in weight_map.items() if name == shard.name}
        data = sum(t.numel() * t.element_size() for t in load_file(str(shard)).values())
        assert data <= limit, (shard.name, data, limit)
        assert_metadata_stamped(st_metadata(shard), converters)
    assert_metadata_stamped(layout["metadata"], converters)
    assert int(layout["metadata"]["total_size"]) == 6 * ELEMENTS * 4


def test_tensor_larger_than_shard_size_gets_a_shard_of_its_own(tmp_path):
    """A tensor larger than the shard size is written alone in its shard; the others stay within the size."""
    state_dict = {
        "a": torch.zeros(256),
        "b": torch.ones(256),
        "c.big": torch.full((2560,), 2.0),
        "d": torch.full((256,), 3.0),
    }
    index = tmp_path / "model.safetensors.index.json"

    save_checkpoint(state_dict, index, shard_size=3 * 1024)

    weight_map = read_index(index)["weight_map"]
    holders = {name: {k for k, n in weight_map.items() if n == name} for name in set(weight_map.values())}
    assert {"c.big"} in holders.values()
    for name, keys in holders.items():
        if keys != {"c.big"}:
            assert sum(state_dict[k].numel() * 4 for k in keys) <= 3 * 1024, (name, keys)
    assert_same_tensors(load_with_safetensors(index), state_dict)


def test_force_onto_layout_with_more_shards_removes_its_stale_shards(tmp_path, converters):
    """Converting onto a 5-shard layout is refused without --force; with it, the old layout's shards are gone."""
    shards = three_shards()
    index = tmp_path / "src" / "model.safetensors.index.json"
    write_sharded(index, shards, STAMP_METADATA)
    output = tmp_path / "out" / "model.safetensors.index.json"
    old = {f"old.layer{i}": torch.full((ELEMENTS,), -1.0) for i in range(5)}
    save_checkpoint(old, output, shard_size=ELEMENTS * 4)
    assert len(shard_files(output)) == 5
    before = tree(output.parent)

    refused = convert(index, output, converters)

    assert_one_line_error(refused, str(output), "--force")
    assert tree(output.parent) == before

    result = convert(index, output, converters, "--force")

    assert result.exit_code == 0, result.output
    expected = renamed({k: v for shard in shards for k, v in shard.items()})
    assert_same_tensors(load_checkpoint(output).state_dict, expected)
    left = sorted(p.name for p in output.parent.iterdir())
    assert left == sorted([output.name, *(p.name for p in shard_files(output))])
    assert not any("-of-00005" in name for name in left)


@pytest.mark.parametrize("force", [False, True], ids=["new-layout", "force-over-layout"])
def test_writing_a_layout_leaves_other_layouts_in_its_directory_alone(tmp_path, converters, force):
    """Writing ``model.safetensors.index.json`` neither refuses nor deletes the shards of ``model-ema`` beside it."""
    shards = three_shards()
    index = tmp_path / "src" / "model.safetensors.index.json"
    write_sharded(index, shards, STAMP_METADATA)
    directory = tmp_path / "out"
    output = directory / "model.safetensors.index.json"
    if force:  # written first: the other order is refused, as the new-layout case shows
        save_checkpoint({"x": torch.zeros(3)}, output)
    ema = {f"ema.{i}": torch.full((ELEMENTS,), float(i)) for i in range(2)}
    ema_index = directory / "model-ema.safetensors.index.json"
    save_checkpoint(ema, ema_index, shard_size=ELEMENTS * 4)
    ema_files = {p.name: digest(p) for p in [ema_index, *shard_files(ema_index)]}

    result = convert(index, output, converters, *(["--force"] if force else []))

    assert result.exit_code == 0, result.output
    assert {name: digest(directory / name) for name in ema_files if (directory / name).exists()} == ema_files
    assert_same_tensors(load_checkpoint(ema_index).state_dict, ema)


def test_interrupted_forced_write_keeps_the_old_layout(tmp_path):
    """Ctrl-C after the first shard of a forced write leaves the old layout whole: same files, same tensors."""
    output = tmp_path / "out" / "model.safetensors.index.json"
    old = {f"layer{i}": torch.full((ELEMENTS,), 1.0) for i in range(4)}
    save_checkpoint(old, output, shard_size=2 * ELEMENTS * 4)
    assert len(shard_files(output)) == 2
    before = tree(output.parent)
    new = {f"layer{i}": torch.full((ELEMENTS,), 2.0) for i in range(4)}

    def interrupt_after_first_shard(done: int, _total: int) -> None:
        if done > 2 * ELEMENTS * 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(new, output, force=True, shard_size=2 * ELEMENTS * 4, progress=interrupt_after_first_shard)

    assert tree(output.parent) == before
    assert_same_tensors(load_checkpoint(output).state_dict, old)


def test_a_failed_sharded_write_removes_every_directory_it_made(tmp_path):
    """A layout written into new nested directories that fails leaves none of them behind."""
    output = tmp_path / "new" / "nested" / "model.safetensors.index.json"

    def interrupt(_done: int, _total: int) -> None:
        raise KeyboardInterrupt

    state_dict = {f"layer{i}": torch.full((ELEMENTS,), 1.0) for i in range(4)}
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(state_dict, output, shard_size=2 * ELEMENTS * 4, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- 4. checkpoints with more than a state dict ------------------------------------------------


def lightning_input(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write a stamped Lightning-style checkpoint; return it and its state dict."""
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = sample_state_dict()
    path = directory / "lightning.ckpt"
    torch.save(write_stamp(lightning(dict(state_dict)), ("state_dict",), SOURCE_STAMP), path)
    return path, state_dict


LIGHTNING_EXTRAS = (
    "epoch",
    "global_step",
    "hyper_parameters",
    "lr_schedulers",
    "optimizer_states",
    "pytorch-lightning_version",
)


@pytest.mark.parametrize("target_format", SAFETENSORS_FORMATS)
def test_lightning_to_safetensors_needs_state_dict_only(tmp_path, converters, target_format):
    """Lightning -> safetensors without --state-dict-only: one error naming the extras and the flag; nothing written."""
    source, _ = lightning_input(tmp_path / "src")
    before = tree(tmp_path)

    result = convert(source, tmp_path / OUTPUTS[target_format], converters)

    assert_one_line_error(result, *LIGHTNING_EXTRAS, "--state-dict-only")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("target_format", SAFETENSORS_FORMATS)
def test_lightning_to_safetensors_with_state_dict_only(tmp_path, converters, target_format):
    """With --state-dict-only, Lightning -> safetensors keeps just the state dict; the stamp moves to metadata."""
    source, state_dict = lightning_input(tmp_path / "src")
    output = tmp_path / OUTPUTS[target_format]

    result = convert(source, output, converters, "--state-dict-only")

    assert result.exit_code == 0, result.output
    assert_same_tensors(load_with_safetensors(output), renamed(state_dict))
    for file in safetensors_files(output):
        assert_metadata_stamped(st_metadata(file), converters)
    assert_stamped(output, converters)


def test_lightning_to_pt_with_state_dict_only_is_flat(tmp_path, converters):
    """With --state-dict-only a .pt output is a flat state dict, its stamp in ``_metadata``."""
    source, state_dict = lightning_input(tmp_path / "src")
    output = tmp_path / "weights.pt"

    result = convert(source, output, converters, "--state-dict-only")

    assert result.exit_code == 0, result.output
    flat = torch.load(output, weights_only=True)
    assert_same_tensors(flat, renamed(state_dict))
    stamp = flat._metadata["ckpt_path"]  # noqa: SLF001 - where the contract puts a flat state dict's stamp
    assert stamp["version"] == TARGET_VERSION
    assert_history(stamp["history"], converters)


# --- 5. laziness -------------------------------------------------------------------------------

BIG_COUNT = 12
BIG_SHAPE = (1024, 1024)
BIG_BYTES = BIG_COUNT * 1024 * 1024 * 4
"""48 MiB of float32 in 4 MiB tensors: reading it could not hide among what loading reads anyway."""


def mappings(paths: Iterable[Path]) -> dict[Path, list[tuple[int, int, int]]]:
    """Return, per file, the address ranges where this process maps it: (start, end, file offset)."""
    wanted = {str(p.resolve()): p for p in paths}
    found: dict[Path, list[tuple[int, int, int]]] = {p: [] for p in wanted.values()}
    for line in Path("/proc/self/maps").read_text(encoding="utf-8").splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in wanted:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found[wanted[fields[5]]].append((start, end, int(fields[2], 16)))
    return found


def address_of(file_offset: int, ranges: list[tuple[int, int, int]]) -> int | None:
    """Return the address at which ``file_offset`` of a mapped file lies, or None if it is not mapped."""
    for start, end, offset in ranges:
        if offset <= file_offset < offset + (end - start):
            return start + file_offset - offset
    return None


def resident(paths: Iterable[Path]) -> int:
    """Return how many bytes of this process's mappings of ``paths`` are resident (faulted in)."""
    wanted = {str(p.resolve()) for p in paths}
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text(encoding="utf-8").splitlines():
        fields = line.split(maxsplit=5)
        if not fields:
            continue
        if "-" in fields[0] and not fields[0].endswith(":"):
            current = len(fields) == 6 and fields[5] in wanted
        elif current and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def bytes_read() -> int:
    """Return ``rchar``: bytes this process has read with read()-like system calls so far."""
    for line in Path("/proc/self/io").read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition(":")
        if name == "rchar":
            return int(value)
    raise AssertionError("/proc/self/io has no rchar")


def status(field: str) -> int:
    """Return a size field of ``/proc/self/status`` in bytes."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024
    raise AssertionError(f"/proc/self/status has no {field}")


def reset_peak_memory() -> int:
    """Reset this process's peak resident size to its current size (Linux clear_refs) and return it."""
    Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
    return status("VmHWM")


def data_offsets(path: Path) -> dict[str, int]:
    """Return where each tensor's data starts in a safetensors file, read from its header."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {k: 8 + length + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def write_big(fmt: str, directory: Path) -> tuple[Path, dict[str, tuple[Path, int | None]]]:
    """Write 48 MiB of tensors ``old.N`` (each filled with N), stamped 1.0.0, in format ``fmt``.

    Return the path to load and, per key, the file that holds its data and where it starts
    there (None for a torch zip file, whose layout is torch's business).
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"old.{i}": torch.full(BIG_SHAPE, float(i)) for i in range(BIG_COUNT)}
    if fmt == "torch":
        path = directory / "big.ckpt"
        torch.save(write_stamp({"state_dict": tensors, "epoch": 3}, ("state_dict",), SOURCE_STAMP), path)
        return path, dict.fromkeys(tensors, (path, None))
    if fmt == "safetensors":
        path = directory / "big.safetensors"
        save_file(tensors, str(path), metadata=STAMP_METADATA)
        files = [path]
    else:
        path = directory / "model.safetensors.index.json"
        keys = list(tensors)
        thirds = [{k: tensors[k] for k in keys[i::3]} for i in range(3)]
        files = write_sharded(path, thirds, STAMP_METADATA)
    where: dict[str, tuple[Path, int | None]] = {
        key: (file, offset) for file in files for key, offset in data_offsets(file).items()
    }
    return path, where


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "torch"])
def test_rename_only_path_reads_no_tensor_data(tmp_path, converters, fmt):
    """Over a memory-mapped input a rename-only path leaves every tensor a view of the file; no data is read."""
    source, where = write_big(fmt, tmp_path / "src")
    files = {file for file, _ in where.values()}
    plan = ckpt_path.Registry.from_directory(converters).plan(SOURCE_VERSION, TARGET_VERSION)
    read_before = bytes_read()  # load_checkpoint and run are imported (at the top) before anything is measured

    loaded = load_checkpoint(source)
    result = run(plan, loaded.obj)

    read = bytes_read() - read_before
    state_dict = get_state_dict(result.checkpoint, loaded.state_dict_at)
    assert sorted(state_dict) == sorted(renamed(dict.fromkeys(where)))
    mapped = mappings(files)
    for key, tensor in state_dict.items():
        file, offset = where["old." + key.removeprefix("new.")]
        assert mapped[file], f"{file.name} is not memory-mapped"
        if offset is not None:  # safetensors: exactly the bytes the header names
            assert tensor.data_ptr() == address_of(offset, mapped[file]), key
        else:
            assert address_of(0, mapped[file]) is not None
            assert any(start <= tensor.data_ptr() < end for start, end, _ in mapped[file]), key
    assert read < BIG_BYTES // 100, f"{read} bytes read"
    assert resident(files) < BIG_BYTES // 10, f"{resident(files)} bytes of the mapping faulted in"

    # The control: touching the data shows up in the same measurement, and the renames are right.
    for key, tensor in state_dict.items():
        assert torch.all(tensor == float(key.removeprefix("new."))), key
    assert resident(files) > BIG_BYTES * 9 // 10


def test_inspect_safetensors_reads_only_the_header(tmp_path):
    """``inspect`` of a 48 MiB safetensors file is right while reading and mapping in almost nothing but the header."""
    source, _ = write_big("safetensors", tmp_path)
    read_before = bytes_read()
    baseline = reset_peak_memory()

    info = inspect_file(source)

    rise = status("VmHWM") - baseline
    read = bytes_read() - read_before
    assert (info.format, info.version, info.tensors, info.bytes) == (
        "safetensors",
        SOURCE_VERSION,
        BIG_COUNT,
        BIG_BYTES,
    )
    assert list(info.history) == [EARLIER_STEP]
    assert info.dtypes == {"float32": BIG_COUNT}
    assert read < BIG_BYTES // 100, f"{read} bytes read"
    assert rise < BIG_BYTES // 10, f"peak memory rose by {rise} bytes"

    # The control: the same measurement sees a load that does touch the data.
    baseline = reset_peak_memory()
    total = sum(float(t.sum()) for t in load_checkpoint(source).state_dict.values())
    assert total == sum(range(BIG_COUNT)) * 1024 * 1024
    assert status("VmHWM") - baseline > BIG_BYTES * 9 // 10


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "torch"])
def test_converter_writing_into_tensors_never_changes_the_input(tmp_path, fmt):
    """A converter that changes tensors in place works on a private copy: the memory-mapped input keeps its bytes."""
    source, where = write_big(fmt, tmp_path / "src")
    files = sorted({file for file, _ in where.values()} | {source})
    before = {f: digest(f) for f in files}
    directory = tmp_path / "converters"
    write_converter(directory, "bump", SOURCE_VERSION, TARGET_VERSION, body=BUMP_BODY, touches=[])

    result = load(source, TARGET_VERSION, registry=ckpt_path.Registry.from_directory(directory))

    state_dict = get_state_dict(result, ("state_dict",) if fmt == "torch" else ())
    assert torch.all(state_dict["old.5"] == 6.0)
    assert {f: digest(f) for f in files} == before


# --- 6. bad inputs -----------------------------------------------------------------------------


def _header(header: dict[str, Any], data: bytes) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def bad_tiny(directory: Path) -> Path:
    path = directory / "tiny.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    return path


def bad_header_length(directory: Path) -> Path:
    path = directory / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 4096) + b'{"w": {"dtype": "F32"}}')
    return path


def bad_header_json(directory: Path) -> Path:
    path = directory / "garbled.safetensors"
    body = b"this is not json"
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(16))
    return path


def bad_dtype(directory: Path) -> Path:
    path = directory / "dtype.safetensors"
    path.write_bytes(_header({"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 32]}}, bytes(32)))
    return path


def bad_truncated_data(directory: Path) -> Path:
    path = directory / "cut.safetensors"
    save_file({"w": torch.ones(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])  # a download that stopped early
    return path


def bad_missing_shard(directory: Path) -> Path:
    index = directory / "model.safetensors.index.json"
    write_sharded(index, [{"a": torch.ones(2)}, {"b": torch.ones(2)}], {})
    (directory / "model-00002-of-00002.safetensors").unlink()
    return index


def bad_wrong_shard(directory: Path) -> Path:
    index = directory / "model.safetensors.index.json"
    write_sharded(index, [{"a": torch.ones(2)}, {"b": torch.ones(2)}], {})
    layout = read_index(index)
    layout["weight_map"]["a"] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(layout))
    return index


def bad_index_json(directory: Path) -> Path:
    index = directory / "model.safetensors.index.json"
    write_sharded(index, [{"a": torch.ones(2)}], {})
    index.write_text('{"weight_map": {"a": ', encoding="utf-8")
    return index


BAD_INPUTS: list[tuple[Callable[[Path], Path], tuple[str, ...]]] = [
    (bad_tiny, ("tiny.safetensors", "truncated")),
    (bad_header_length, ("long.safetensors", "header", "past the file")),
    (bad_header_json, ("garbled.safetensors", "not json")),
    (bad_dtype, ("dtype.safetensors", "'w'", "dtype")),
    (bad_truncated_data, ("cut.safetensors", "'w'", "past the end")),
    (bad_missing_shard, ("model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing")),
    (bad_wrong_shard, ("model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not hold")),
    (bad_index_json, ("model.safetensors.index.json", "not json")),
]


@pytest.mark.parametrize("command", ["convert", "inspect"])
@pytest.mark.parametrize(("make", "fragments"), BAD_INPUTS, ids=[make.__name__ for make, _ in BAD_INPUTS])
def test_bad_safetensors_input_is_one_clear_error(tmp_path, converters, make, fragments, command):
    """A damaged safetensors file or index is one ``error:`` line naming the file and the damage; nothing is written."""
    (tmp_path / "bad").mkdir()
    source = make(tmp_path / "bad")
    before = tree(tmp_path)

    if command == "convert":
        result = convert(source, tmp_path / "out" / "model.safetensors.index.json", converters)
    else:
        result = cli("inspect", source, "--converters", converters)

    assert_one_line_error(result, *fragments)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("source_format", SAFETENSORS_FORMATS)
def test_state_dict_key_for_safetensors_is_refused(tmp_path, converters, source_format):
    """``--state-dict KEY`` on a safetensors input is one error naming the option; nothing is written."""
    source = write_input(source_format, tmp_path / "src", sample_state_dict())
    before = tree(tmp_path)

    result = convert(source, tmp_path / "out.pt", converters, "--state-dict", "model")

    assert_one_line_error(result, "--state-dict", source.name)
    assert tree(tmp_path) == before


# --- 7. writing --------------------------------------------------------------------------------


@pytest.mark.parametrize("output_name", ["out.safetensors", "model.safetensors.index.json"])
def test_non_tensor_in_state_dict_cannot_be_written_as_safetensors(tmp_path, output_name):
    """A converter that puts a list into the state dict makes a safetensors output one error; nothing is written."""
    source = write_input("safetensors", tmp_path / "src", sample_state_dict())
    directory = tmp_path / "converters"
    write_converter(directory, "add_list", SOURCE_VERSION, TARGET_VERSION, body='ckpt["extra"] = [1, 2]\nreturn ckpt')
    before = tree(tmp_path)

    result = convert(source, tmp_path / output_name, directory)

    assert_one_line_error(result, "extra", "list")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("target_format", SAFETENSORS_FORMATS)
def test_existing_output_is_replaced_only_with_force(tmp_path, converters, target_format):
    """An existing safetensors output is kept without --force and replaced with it; no temp files either way."""
    first = write_input("safetensors", tmp_path / "first", sample_state_dict())
    second_state_dict = {k: v + 1 if v.is_floating_point() else v for k, v in sample_state_dict().items()}
    second = write_input("safetensors", tmp_path / "second", second_state_dict)
    output = tmp_path / OUTPUTS[target_format]
    assert convert(first, output, converters).exit_code == 0
    before = tree(output.parent)

    refused = convert(second, output, converters)

    assert_one_line_error(refused, str(output), "--force")
    assert tree(output.parent) == before
    assert temp_files(output.parent) == []

    replaced = convert(second, output, converters, "--force")

    assert replaced.exit_code == 0, replaced.output
    assert_same_tensors(load_checkpoint(output).state_dict, renamed(second_state_dict))
    assert temp_files(output.parent) == []


@pytest.mark.parametrize("source_format", SAFETENSORS_FORMATS)
def test_stamp_safetensors_in_place(tmp_path, source_format):
    """``stamp`` records the version in a safetensors file or layout in place, keeping tensors and metadata."""
    state_dict = sample_state_dict()
    directory = tmp_path / "src"
    if source_format == "safetensors":
        directory.mkdir()
        path = directory / "in.safetensors"
        save_file(state_dict, str(path), metadata={"format": "pt"})
    else:
        path = directory / "model.safetensors.index.json"
        keys = sorted(state_dict)
        write_sharded(path, [{k: state_dict[k] for k in keys[:4]}, {k: state_dict[k] for k in keys[4:]}], {})

    result = cli("stamp", path, SOURCE_VERSION)

    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(path)
    assert_same_tensors(loaded.state_dict, state_dict)
    assert read_stamp(loaded.obj) == Stamp(version=SOURCE_VERSION)
    for file in safetensors_files(path):
        metadata = st_metadata(file)
        assert metadata is not None
        assert metadata["ckpt_path.version"] == SOURCE_VERSION
    if source_format == "safetensors":
        metadata = st_metadata(path)
        assert metadata is not None
        assert metadata["format"] == "pt"
    assert temp_files(directory) == []


WRITE_LIMITED = """\
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from ckpt_path.cli import main
sys.argv = ["ckpt-path", *sys.argv[2:]]
main()
"""


@pytest.mark.slow
def test_failed_write_is_one_line_error_and_leaves_nothing(tmp_path, converters):
    """A write the file system refuses (a full disk) is one ``error:`` line, exit 1; no output, no temp file."""
    source = write_input("safetensors", tmp_path / "src", {"old.w": torch.zeros(64 * 1024)})  # 256 KiB
    output = tmp_path / "out.safetensors"
    args = ["convert", source, "-o", output, "--converters", converters]
    # Not measured by coverage: under the file-size limit it could not write its own data file either.
    env = {k: v for k, v in os.environ.items() if k not in {ENV_VAR, "COVERAGE_PROCESS_CONFIG"}}

    done = subprocess.run(
        [sys.executable, "-c", WRITE_LIMITED, str(64 * 1024), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )

    assert done.returncode == 1, done.stderr
    assert not output.exists()
    assert temp_files(tmp_path) == []
    assert "Traceback" not in done.stderr, done.stderr[-300:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert str(output) in lines[0]
