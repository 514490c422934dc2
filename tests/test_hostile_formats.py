"""Hostile and damaged inputs, and outputs that must not destroy anything (issue 10).

Each test names one guarantee: what a write may replace or remove (never the input, never a
file a layout's index merely names, never a device), that a layout switches all at once, that
crafted headers and indexes are one clear error, and that every tensor is written with the
values it holds or refused by key before anything touches the disk.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckpt_fixtures import digest
from ckpt_path import formats
from ckpt_path.converter_files import read_converters
from ckpt_path.errors import (
    CheckpointError,
    ConverterFileError,
    InputOverwriteError,
    SaveError,
    UnreadableCheckpointError,
)
from ckpt_path.storage import load_checkpoint, save_checkpoint
from helpers import assert_one_line_error, cli, write_converter

ELEMENTS = 256
"""float32 elements per tensor in the layout tests (1 KiB each)."""


# --- helpers ---------------------------------------------------------------------------------


def tree(directory: Path) -> dict[str, str]:
    """Return every entry under ``directory`` (hidden ones too) with the digest of each regular file."""
    return {
        str(p.relative_to(directory)): digest(p) if p.is_file() and not p.is_symlink() else "other"
        for p in sorted(directory.rglob("*"))
    }


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, shape and bytes."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def assert_same_tensors(got: Any, expected: dict[str, torch.Tensor]) -> None:
    """Assert ``got`` holds exactly ``expected``'s keys, each with the same dtype, shape and bytes."""
    assert sorted(got) == sorted(expected)
    for key, tensor in expected.items():
        assert same_bits(got[key], tensor), key


def layout(index: Path) -> dict[str, Any]:
    """Return the JSON of a sharded layout's index."""
    data: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))
    return data


def shard_names(index: Path) -> list[str]:
    """Return the shard files a layout's index names, sorted."""
    return sorted(set(layout(index)["weight_map"].values()))


def tensors(n: int, value: float) -> dict[str, torch.Tensor]:
    """Return ``n`` float32 tensors of ELEMENTS elements, ``layer{i}`` filled with ``value + i``."""
    return {f"layer{i}": torch.full((ELEMENTS,), value + i) for i in range(n)}


def safetensors_bytes(header: dict[str, Any], data: bytes = b"") -> bytes:
    """Return a safetensors file's bytes for a header written as given (nothing checked)."""
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail the test (instead of hanging the run) if it blocks for 20 s, e.g. opening a FIFO."""

    def hung(_signum: int, _frame: object) -> None:
        pytest.fail("blocked for 20 s (waiting on a FIFO?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- 1. a forced layout removes only its own shards ------------------------------------------


def test_force_over_a_layout_keeps_files_its_index_names_that_are_not_shards(tmp_path):
    """--force over a layout whose index names config.json and README.md removes only its shards, not them."""
    index = tmp_path / "model.safetensors.index.json"
    save_checkpoint(tensors(2, 0.0), index, shard_size=ELEMENTS * 4)
    old_shards = shard_names(index)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("# model")
    hacked = layout(index)
    hacked["weight_map"]["extra.a"] = "config.json"
    hacked["weight_map"]["extra.b"] = "README.md"
    index.write_text(json.dumps(hacked))

    save_checkpoint(tensors(3, 5.0), index, force=True, shard_size=ELEMENTS * 4)

    assert (tmp_path / "config.json").read_text() == "{}"
    assert (tmp_path / "README.md").read_text() == "# model"
    assert not any((tmp_path / name).exists() for name in old_shards)
    assert_same_tensors(load_checkpoint(index).state_dict, tensors(3, 5.0))


def test_layout_files_are_only_shard_names_in_the_index_directory(tmp_path):
    """What replacing a layout removes: shard-named files beside the index, never ``../x`` or other names."""
    index = tmp_path / "in" / "model.safetensors.index.json"
    index.parent.mkdir()
    for name in (
        "model-00001-of-00002.safetensors",
        "model.1-00001-of-00001.safetensors",
        "notes.txt",
        "x.safetensors",
    ):
        (index.parent / name).write_bytes(b"x")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"outside")
    weight_map = {
        "a": "model.1-00001-of-00001.safetensors",
        "b": "notes.txt",
        "c": "../model-00002-of-00002.safetensors",
        "d": "x.safetensors",
        "e": str(tmp_path / "model-00002-of-00002.safetensors"),
    }
    index.write_text(json.dumps({"weight_map": weight_map}))

    found = formats.layout_files(index)

    assert [p.name for p in found] == ["model-00001-of-00002.safetensors", "model.1-00001-of-00001.safetensors"]
    assert all(p.parent == index.parent for p in found)


# --- 2. the input is never modified or removed ----------------------------------------------------


def test_single_input_named_like_a_shard_is_not_replaced_by_its_own_layout(tmp_path):
    """A single input ``model-00001-of-00001.safetensors`` written as the layout beside it is refused."""
    source = tmp_path / "model-00001-of-00001.safetensors"
    save_file(tensors(1, 1.0), str(source))
    before = tree(tmp_path)

    with pytest.raises(InputOverwriteError) as info:
        save_checkpoint(tensors(1, 2.0), tmp_path / "model.safetensors.index.json", force=True, protect=[source])

    assert info.value.input_file == str(source)
    assert "input" in str(info.value)
    assert tree(tmp_path) == before


def test_convert_onto_a_layout_whose_shard_is_the_input_is_refused(tmp_path):
    """``convert model-00001-of-00001.safetensors -o model.safetensors.index.json --force`` beside it: one error."""
    converters = tmp_path / "converters"
    write_converter(converters, "step", "1.0.0", "1.1.0", touches=[])
    work = tmp_path / "work"
    work.mkdir()
    source = work / "model-00001-of-00001.safetensors"
    stamp = {"format": "pt", "ckpt_path.version": "1.0.0", "ckpt_path.history": "[]"}
    save_file(tensors(1, 1.0), str(source), metadata=stamp)
    before = tree(work)

    output = work / "model.safetensors.index.json"
    line = assert_one_line_error(cli("convert", source, "-o", output, "--force", "--converters", converters))

    assert str(source) in line
    assert tree(work) == before


def protected_variants(tmp_path: Path, source: Path) -> dict[str, Path]:
    """Return OUTPUT paths that all lead to ``source``: by ``..``, a symbolic link, a hard link."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pt").symlink_to(source)
    os.link(source, tmp_path / "hard.pt")
    return {
        "same": source,
        "dotdot": tmp_path / "sub" / ".." / source.name,
        "symlink": tmp_path / "link.pt",
        "hardlink": tmp_path / "hard.pt",
    }


@pytest.mark.parametrize("variant", ["same", "dotdot", "symlink", "hardlink"])
def test_output_that_leads_to_the_input_is_refused(tmp_path, variant):
    """An OUTPUT that is the input by another name (``..``, symbolic or hard link) is refused; nothing is written."""
    source = tmp_path / "in.pt"
    torch.save({"w": torch.ones(2)}, source)
    output = protected_variants(tmp_path, source)[variant]
    before = tree(tmp_path)

    with pytest.raises(InputOverwriteError):
        save_checkpoint({"w": torch.zeros(2)}, output, force=True, protect=[source])

    assert tree(tmp_path) == before
    assert torch.equal(torch.load(source, weights_only=True)["w"], torch.ones(2))


def test_forced_layout_onto_a_sharded_input_is_refused_before_writing(tmp_path):
    """Writing a layout over a protected sharded input (index and shards) is refused; no shard is written."""
    index = tmp_path / "model.safetensors.index.json"
    save_checkpoint(tensors(2, 0.0), index, shard_size=ELEMENTS * 4)
    inputs = [index, *(tmp_path / name for name in shard_names(index))]
    before = tree(tmp_path)
    progress: list[int] = []

    with pytest.raises(InputOverwriteError):
        save_checkpoint(
            tensors(2, 1.0),
            index,
            force=True,
            shard_size=ELEMENTS * 4,
            protect=inputs,
            progress=lambda done, _total: progress.append(done),
        )

    assert progress == []  # refused before the first byte
    assert tree(tmp_path) == before


# --- 3. a forced layout switches all at once ------------------------------------------------------


def test_forced_layout_failing_to_place_its_second_shard_keeps_the_old_layout(tmp_path, monkeypatch):
    """When placing the second new shard fails, the old layout is whole and loads bitwise identical."""
    index = tmp_path / "out" / "model.safetensors.index.json"
    old = tensors(4, 1.0)
    save_checkpoint(old, index, shard_size=2 * ELEMENTS * 4)
    assert len(shard_names(index)) == 2
    before = tree(index.parent)
    placements: list[str] = []
    real_link, real_replace = os.link, os.replace

    def failing(real: Callable[..., None]) -> Callable[..., None]:
        def place(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if str(src).endswith(".tmp"):
                placements.append(str(dst))
                if len(placements) == 2:
                    raise OSError(5, "Input/output error")
            real(src, dst, *args, **kwargs)

        return place

    monkeypatch.setattr(os, "link", failing(real_link))
    monkeypatch.setattr(os, "replace", failing(real_replace))

    with pytest.raises(CheckpointError):
        save_checkpoint(tensors(4, 9.0), index, force=True, shard_size=2 * ELEMENTS * 4)

    monkeypatch.undo()
    assert len(placements) == 2
    assert tree(index.parent) == before
    assert_same_tensors(load_checkpoint(index).state_dict, old)


def test_forced_layout_with_as_many_shards_switches_at_its_index(tmp_path):
    """A forced layout with as many shards gets new shard names; the old shards go only after the new index."""
    index = tmp_path / "model.safetensors.index.json"
    save_checkpoint(tensors(4, 1.0), index, shard_size=2 * ELEMENTS * 4)
    old_shards = shard_names(index)
    seen_during_write: list[list[str]] = []

    def look(_done: int, _total: int) -> None:
        seen_during_write.append(shard_names(index))

    save_checkpoint(tensors(4, 2.0), index, force=True, shard_size=2 * ELEMENTS * 4, progress=look)

    new_shards = shard_names(index)
    assert set(new_shards).isdisjoint(old_shards)
    assert all(name.startswith("model.1-") for name in new_shards)
    assert all(seen == old_shards for seen in seen_during_write)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([index.name, *new_shards])
    assert_same_tensors(load_checkpoint(index).state_dict, tensors(4, 2.0))
    assert_same_tensors(load_file(str(tmp_path / new_shards[0])), dict(list(tensors(4, 2.0).items())[:2]))


# --- 4. an index names files in its own directory only --------------------------------------------


def outside_shard(tmp_path: Path, how: str) -> Path:
    """Write a layout whose index puts ``b`` in a valid shard outside its directory, ``how`` it says so."""
    directory = tmp_path / "layout"
    directory.mkdir()
    save_file({"a": torch.ones(2)}, str(directory / "model-00001-of-00002.safetensors"))
    secret = tmp_path / "secret.safetensors"
    save_file({"b": torch.full((2,), 7.0)}, str(secret))
    if how == "dotdot":
        name = "../secret.safetensors"
    elif how == "absolute":
        name = str(secret)
    else:
        (directory / "model-00002-of-00002.safetensors").symlink_to(secret)
        name = "model-00002-of-00002.safetensors"
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": name}}))
    return index


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_index_naming_a_shard_outside_its_directory_is_refused_before_any_read(tmp_path, monkeypatch, how):
    """An index whose weight_map leads out of its directory (``..``, absolute, a link) is refused; no shard is read."""
    index = outside_shard(tmp_path, how)
    read: list[Path] = []
    real = formats.load_safetensors

    def spy(path: Path) -> Any:
        read.append(Path(path))
        return real(path)

    monkeypatch.setattr(formats, "load_safetensors", spy)

    with pytest.raises(UnreadableCheckpointError, match="index's directory"):
        load_checkpoint(index)

    assert read == []


def test_a_hugging_face_cache_snapshot_still_loads(tmp_path):
    """A hub cache layout (snapshot files linked into the repo's blobs/) loads; a link elsewhere does not."""
    repo = tmp_path / "models--org--name"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for number, value in ((1, 1.0), (2, 2.0)):
        blob = blobs / f"sha{number}"
        save_file({f"w{number}": torch.full((2,), value)}, str(blob))
        (snapshot / f"model-0000{number}-of-00002.safetensors").symlink_to(Path("..") / ".." / "blobs" / blob.name)
    index_blob = blobs / "index"
    weight_map = {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}
    index_blob.write_text(json.dumps({"weight_map": weight_map}))
    (snapshot / "model.safetensors.index.json").symlink_to(Path("..") / ".." / "blobs" / "index")
    loaded = load_checkpoint(snapshot / "model.safetensors.index.json").state_dict
    assert_same_tensors(loaded, {"w1": torch.full((2,), 1.0), "w2": torch.full((2,), 2.0)})
    elsewhere = tmp_path / "elsewhere.safetensors"
    save_file({"w2": torch.zeros(2)}, str(elsewhere))
    (snapshot / "model-00002-of-00002.safetensors").unlink()
    (snapshot / "model-00002-of-00002.safetensors").symlink_to(elsewhere)
    with pytest.raises(UnreadableCheckpointError, match="index's directory"):
        load_checkpoint(snapshot / "model.safetensors.index.json")


# --- 5. values as they are, and the reserved name --------------------------------------------------


@pytest.mark.parametrize("output_name", ["out.safetensors", "model.safetensors.index.json"])
def test_conjugate_and_negative_views_are_written_with_their_values(tmp_path, output_name):
    """A conjugate view and a negative view are written with the values they hold, for safetensors and shards."""
    base = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    plain = torch.tensor([1.0, -2.0, 3.0])
    state_dict = {"conj": base.conj(), "neg": torch._neg_view(plain)}  # noqa: SLF001 - the view under test
    expected = {"conj": base.conj().resolve_conj(), "neg": -plain}

    save_checkpoint(state_dict, tmp_path / output_name)

    loaded = load_checkpoint(tmp_path / output_name).state_dict
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), (key, loaded[key], tensor)


@pytest.mark.parametrize("output_name", ["out.safetensors", "model.safetensors.index.json"])
def test_a_tensor_named_metadata_is_refused(tmp_path, output_name):
    """A state-dict key ``__metadata__`` (reserved by safetensors) is refused by name; nothing is written."""
    with pytest.raises(CheckpointError, match="__metadata__"):
        save_checkpoint({"__metadata__": torch.ones(2), "w": torch.ones(2)}, tmp_path / output_name)

    assert list(tmp_path.iterdir()) == []


# --- 6. tensors without values are refused by key -------------------------------------------------

META_SCRIPT = """\
import sys, torch
from pathlib import Path
from ckpt_path.storage import save_checkpoint
from ckpt_path.errors import CkptPathError
out = Path(sys.argv[1])
cases = {
    "out.safetensors": {"w": torch.ones(2), "ghost": torch.empty(3, device="meta")},
    "layout/model.safetensors.index.json": {"w": torch.ones(2), "ghost": torch.empty(3, device="meta")},
    "out.pt": {"w": torch.ones(2), "ghost": torch.empty(3, device="meta")},
    "lightning.ckpt": {"state_dict": {"w": torch.ones(2)}, "optimizer_states": [{"m": torch.empty(2, device="meta")}]},
}
for name, obj in cases.items():
    try:
        save_checkpoint(obj, out / name)
    except CkptPathError as exc:
        print(name, "refused:", exc)
    else:
        print(name, "written")
"""


@pytest.mark.slow
def test_meta_tensors_are_refused_by_key_in_every_format(tmp_path):
    """A meta tensor (no values) is refused by key for every output format, anywhere in a torch checkpoint."""
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(  # a subprocess, because writing a meta tensor's memory crashed the interpreter
        [sys.executable, "-c", META_SCRIPT, str(out)], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    for line, key in zip(lines, ["ghost", "ghost", "ghost", "optimizer_states[0].m"], strict=True):
        assert "refused:" in line, line
        assert key in line, line
        assert "meta tensor" in line, line
    assert [str(p.relative_to(out)) for p in out.rglob("*")] == []


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")
@pytest.mark.parametrize("output_name", ["out.safetensors", "model.safetensors.index.json"])
@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: torch.eye(3).to_sparse(), "sparse_coo"),
        (lambda: torch.eye(3).to_sparse_csr(), "sparse_csr"),
    ],
    ids=["sparse-coo", "sparse-csr"],
)
def test_sparse_tensors_are_refused_by_key_for_safetensors(tmp_path, output_name, make, what):
    """A sparse tensor is refused for safetensors by key and layout, as one CheckpointError; nothing is written."""
    with pytest.raises(CheckpointError, match=rf"sparse_w.*{what}"):
        save_checkpoint({"w": torch.ones(2), "sparse_w": make()}, tmp_path / output_name)

    assert list(tmp_path.iterdir()) == []


# --- 7. a shard holds what its index says -----------------------------------------------------------


def test_tensor_in_a_shard_but_not_in_the_index_is_an_error(tmp_path):
    """A tensor a shard holds but the index does not list is one error naming the key and the shard."""
    index = tmp_path / "model.safetensors.index.json"
    save_file({"a": torch.ones(2), "hidden": torch.zeros(2)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))

    with pytest.raises(UnreadableCheckpointError, match=r"model-00001-of-00001\.safetensors' holds 'hidden'"):
        load_checkpoint(index)


# --- 8. headers the readers would refuse are never written ------------------------------------------


@pytest.mark.parametrize("output_name", ["out.safetensors", "model.safetensors.index.json"])
def test_header_over_the_readers_limit_is_refused_before_writing(tmp_path, monkeypatch, output_name):
    """A header larger than the limit the reader enforces is refused with its size; nothing is written."""
    monkeypatch.setattr(formats, "_MAX_HEADER", 4096)  # the same limit the reader applies, made small
    many = {f"layer.{i:04d}.weight": torch.zeros(1) for i in range(200)}

    with pytest.raises(CheckpointError, match=r"header would be .* MiB.*over"):
        save_checkpoint(many, tmp_path / output_name)

    assert list(tmp_path.iterdir()) == []


# --- 9. format suffixes in any case ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.SAFETENSORS", "out.SafeTensors", "LAYOUT/MODEL.SAFETENSORS.INDEX.JSON"])
def test_format_suffixes_are_case_insensitive(tmp_path, name):
    """``-o out.SAFETENSORS`` writes safetensors (not a torch zip), and it reads back as safetensors."""
    state_dict = tensors(2, 3.0)

    save_checkpoint(state_dict, tmp_path / name)

    loaded = load_checkpoint(tmp_path / name)
    assert loaded.format.startswith("safetensors")
    written = [p for p in (tmp_path / name).parent.iterdir() if p.name.lower().endswith(".safetensors")]
    assert written
    for file in written:
        assert load_file(str(file))  # the safetensors library reads every file written
    assert_same_tensors(loaded.state_dict, state_dict)


# --- 10. crafted headers are one clear error ----------------------------------------------------------


def entry(dtype: object = "F32", shape: object = (2,), offsets: object = (0, 8)) -> dict[str, object]:
    """Return a header entry, with any field replaced."""
    return {
        "dtype": dtype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets,
    }


def nested(depth: int) -> str:
    """Return JSON text of lists nested ``depth`` deep."""
    return "[" * depth + "]" * depth


CRAFTED_HEADERS: dict[str, bytes] = {
    "bool-offsets": safetensors_bytes({"w": entry("U8", (1,), [False, True])}, b"\x01"),
    "bool-shape": safetensors_bytes({"w": entry("U8", [True], (0, 1))}, b"\x01"),
    "zero-next-to-2**63": safetensors_bytes({"w": entry("F32", (0, 2**63), (0, 0))}),
    "zero-next-to-stride-overflow": safetensors_bytes({"w": entry("F32", (0, 2**62, 4), (0, 0))}),
    "nested-200k": struct.pack("<Q", 400_000) + nested(200_000).encode(),
    "dtype-list": safetensors_bytes({"w": entry(["F32"])}, bytes(8)),
    "dtype-object": safetensors_bytes({"w": entry({"F32": 1})}, bytes(8)),
    "overlapping": safetensors_bytes({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, bytes(12)),
    "metadata-number": safetensors_bytes({"__metadata__": {"format": 5}}),
    "history-number": safetensors_bytes({"__metadata__": {"ckpt_path.version": "1.0.0", "ckpt_path.history": "5"}}),
    "history-object": safetensors_bytes(
        {"__metadata__": {"ckpt_path.version": "1.0.0", "ckpt_path.history": '{"source": "0.9.0"}'}}
    ),
    "history-nested": safetensors_bytes(
        {"__metadata__": {"ckpt_path.version": "1.0.0", "ckpt_path.history": nested(100_000)}}
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_HEADERS))
def test_crafted_safetensors_header_is_one_unreadable_error(tmp_path, case):
    """A crafted header (bools as ints, overflowing shapes, deep nesting, garbage) is one UnreadableCheckpointError."""
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(CRAFTED_HEADERS[case])

    with pytest.raises(UnreadableCheckpointError) as info:
        load_checkpoint(path)

    assert str(path) in str(info.value)
    line = assert_one_line_error(cli("inspect", path))
    assert str(path) in line


def crafted_index(directory: Path, text: str) -> Path:
    """Write a valid shard and an index with the given text beside it."""
    save_file({"a": torch.ones(2)}, str(directory / "model-00001-of-00001.safetensors"))
    index = directory / "model.safetensors.index.json"
    index.write_text(text)
    return index


WEIGHT_MAP = '"weight_map": {"a": "model-00001-of-00001.safetensors"}'
CRAFTED_INDEXES: dict[str, str] = {
    "nested-100k": nested(100_000),
    "metadata-nested-100k": '{"metadata": {"x": ' + nested(100_000) + "}, " + WEIGHT_MAP + "}",
    "history-number": '{"metadata": {"ckpt_path.version": "1.0.0", "ckpt_path.history": 5}, ' + WEIGHT_MAP + "}",
    "history-object": '{"metadata": {"ckpt_path.version": "1.0.0", "ckpt_path.history": {"a": 1}}, ' + WEIGHT_MAP + "}",
    "history-json-object": '{"metadata": {"ckpt_path.version": "1.0.0", "ckpt_path.history": "{}"}, '
    + WEIGHT_MAP
    + "}",
    "version-number": '{"metadata": {"ckpt_path.version": 1}, ' + WEIGHT_MAP + "}",
    "metadata-list": '{"metadata": [1, 2], ' + WEIGHT_MAP + "}",
}


@pytest.mark.parametrize("case", sorted(CRAFTED_INDEXES))
def test_crafted_index_is_one_unreadable_error(tmp_path, case):
    """A crafted index (nested 100k deep, a history or metadata of the wrong type) is one UnreadableCheckpointError."""
    index = crafted_index(tmp_path, CRAFTED_INDEXES[case])

    with pytest.raises(UnreadableCheckpointError) as info:
        load_checkpoint(index)

    assert str(index) in str(info.value)
    assert_one_line_error(cli("inspect", index))


# --- 11. schemas and converter files that are not files ----------------------------------------------

SCHEMA_SCRIPT = """\
import sys
from ckpt_path.errors import CkptPathError
from ckpt_path.shapes import load_schema
try:
    load_schema(sys.argv[1])
except CkptPathError as exc:
    print("refused:", exc)
"""


def test_schema_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    """A schema file that is a FIFO is refused at once as not a regular file (it used to hang)."""
    fifo = tmp_path / "1.0.0.json"
    os.mkfifo(fifo)

    done = subprocess.run(  # a subprocess, so a hang is a timeout and not a stuck test run
        [sys.executable, "-c", SCHEMA_SCRIPT, str(fifo)], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused:"), done.stdout
    assert "not a regular file" in done.stdout
    assert str(fifo) in done.stdout


def test_dangling_converter_link_is_a_converter_file_error(tmp_path):
    """A converter file that is a link to nothing is a ConverterFileError naming it, not silently skipped."""
    directory = tmp_path / "converters"
    directory.mkdir()
    (directory / "001_step.py").write_text(
        'source = "1.0.0"\ntarget = "1.1.0"\n\n\ndef convert(ckpt):\n    return ckpt\n'
    )
    (directory / "002_gone.py").symlink_to(tmp_path / "nowhere.py")

    with pytest.raises(ConverterFileError, match=r"002_gone\.py.*does not exist") as info:
        read_converters(directory)

    assert info.value.file.endswith("002_gone.py")


# --- 13. replaced files keep their mode, links, and devices ---------------------------------------------


@pytest.mark.parametrize("output_name", ["out.ckpt", "out.safetensors"])
def test_replaced_file_keeps_its_mode(tmp_path, output_name):
    """A forced write over a 0600 file leaves it 0600 (not the umask's 0644)."""
    out = tmp_path / output_name
    save_checkpoint({"w": torch.ones(2)}, out)
    out.chmod(0o600)

    save_checkpoint({"w": torch.zeros(2)}, out, force=True)

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert torch.equal(load_checkpoint(out).state_dict["w"], torch.zeros(2))


@pytest.mark.parametrize("output_name", ["out.ckpt", "out.safetensors"])
def test_forced_write_through_a_symlink_keeps_the_link(tmp_path, output_name):
    """A forced write to a symbolic link replaces the file it points to and keeps the link."""
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / output_name
    save_checkpoint({"w": torch.ones(2)}, real)
    link = tmp_path / output_name
    link.symlink_to(real)

    save_checkpoint({"w": torch.zeros(2)}, link, force=True)

    assert link.is_symlink()
    assert link.resolve() == real.resolve()
    assert torch.equal(load_checkpoint(real).state_dict["w"], torch.zeros(2))
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == [output_name]


@pytest.mark.usefixtures("no_hang")
@pytest.mark.parametrize("output_name", ["out.ckpt", "out.safetensors", "model.safetensors.index.json"])
def test_forced_write_never_replaces_what_is_not_a_regular_file(tmp_path, output_name):
    """``--force`` onto a FIFO (as onto /dev/null) is refused: it is not a regular file, and it stays."""
    target = tmp_path / output_name
    os.mkfifo(target)

    with pytest.raises(SaveError, match="not a regular file"):
        save_checkpoint({"w": torch.ones(2)}, target, force=True)

    assert stat.S_ISFIFO(target.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [output_name]
