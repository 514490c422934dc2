"""Distributed checkpoints that are damaged, unusual, or written where they cannot be, and what a user sees then.

A DCP directory is trusted no further than its ``.metadata`` checks out: each field a damaged
or crafted ``.metadata`` can get wrong, each way a chunk's ``torch.save`` archive in a data file
can be damaged, and each way its files can go away while a conversion runs is one error that
names the problem, and nothing is written. The unusual but valid (tensors in lists,
non-contiguous tensors, zero-size tensors, stamps kept as entries, entries left unread) comes
back as it went in, and checkpoints written through DCP load with torch's own DCP loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import io
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ckpt_fixtures import assert_bitwise_equal, digest, lightning, t, v010_state_dict
from ckpt_path import _lazy, dcp
from ckpt_path.checkpoint import Written
from ckpt_path.errors import (
    InputOverwriteError,
    OutputExistsError,
    SaveError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)
from ckpt_path.pickles import Moves
from ckpt_path.stamp import Stamp, write_stamp
from ckpt_path.storage import load_checkpoint, save_checkpoint, write_checkpoint
from helpers import EXAMPLE_CONVERTERS, assert_one_line_error, cli, write_converter

W = "state_dict.w"
"""The DCP key of the weight every checkpoint here holds."""


def small() -> dict[str, Any]:
    """Return a checkpoint with a nested state dict of two tensors and one non-tensor entry."""
    return {"state_dict": {"w": t(2, 3), "b": t(3)}, "epoch": 3}


def save_dcp(obj: dict[str, Any], path: Path) -> Path:
    """Save ``obj`` with ``torch.distributed.checkpoint.save`` from this one process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp_save(obj, checkpoint_id=str(path))
    return path


def load_dcp(path: Path, template: dict[str, Any]) -> dict[str, Any]:
    """Fill copies of ``template``'s tensors (nested dicts allowed) from ``path`` with torch's own DCP loader."""

    def fresh(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fresh(v) for k, v in value.items()}
        return torch.empty_like(value) if isinstance(value, torch.Tensor) else value

    state = fresh(template)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(state, checkpoint_id=str(path))
    found: dict[str, Any] = state
    return found


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """Save the small checkpoint with torch's DCP as ``in``."""
    return save_dcp(small(), tmp_path / "in")


def read_metadata(directory: Path) -> Any:
    """Unpickle ``.metadata`` with plain pickle (the test trusts the files it wrote)."""
    with (directory / ".metadata").open("rb") as handle:
        return pickle.load(handle)  # noqa: S301 - written by this test


def write_metadata(directory: Path, metadata: object) -> None:
    """Pickle ``metadata`` over ``.metadata``."""
    (directory / ".metadata").write_bytes(pickle.dumps(metadata))


def storage_key(metadata: Any, fqn: str) -> Any:
    """Return the storage index of the (first) chunk of entry ``fqn``."""
    return next(index for index in metadata.storage_data if index.fqn == fqn)


def digests(directory: Path) -> dict[str, str]:
    """Every file of a directory and the SHA-256 of its bytes."""
    return {p.name: digest(p) for p in sorted(directory.iterdir()) if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    """Temporaries of this tool left in ``directory`` (files or directories)."""
    return sorted(p.name for p in directory.iterdir() if ".ckpt-path-" in p.name)


def to_file(directory: Path, out: Path) -> Any:
    """Convert ``directory`` to a torch file at the version it is (reads every tensor), through the command line."""
    return cli("convert", directory, "-o", out, "--from", "0.1.0", "--to", "0.1.0", "--converters", EXAMPLE_CONVERTERS)


# --- .metadata damaged field by field ----------------------------------------------------------------


def _entry(metadata: Any, fqn: str = W) -> Any:
    return metadata.state_dict_metadata[fqn]


def _info(metadata: Any, fqn: str = W) -> Any:
    return metadata.storage_data[storage_key(metadata, fqn)]


def _set_info(metadata: Any, fqn: str = W, **fields: Any) -> None:
    key = storage_key(metadata, fqn)
    metadata.storage_data[key] = dataclasses.replace(metadata.storage_data[key], **fields)


def _move_chunk(metadata: Any, offsets: tuple[int, ...]) -> None:
    key = storage_key(metadata, W)
    info = metadata.storage_data.pop(key)
    _entry(metadata).chunks[0] = dataclasses.replace(_entry(metadata).chunks[0], offsets=torch.Size(offsets))
    metadata.storage_data[dataclasses.replace(key, offset=torch.Size(offsets))] = info


def _rename_key(metadata: Any, new: object) -> None:
    metadata.state_dict_metadata = {(new if k == W else k): v for k, v in metadata.state_dict_metadata.items()}


METADATA_DAMAGE: dict[str, tuple[Callable[[Any], None], str]] = {
    "no storage entry for a chunk": (
        lambda m: m.storage_data.pop(storage_key(m, W)),
        "no valid storage entry for chunk 0 of 'state_dict.w'",
    ),
    "a negative offset": (lambda m: _set_info(m, offset=-1), "no valid storage entry for chunk 0"),
    "a length that is no int": (lambda m: _set_info(m, length="64"), "no valid storage entry for chunk 0"),
    "DCP extensions": (
        lambda m: _set_info(m, transform_descriptors=["zstd"]),
        "written through DCP extensions (zstd)",
    ),
    "a data file outside the directory": (
        lambda m: _set_info(m, relative_path="../in.ckpt"),
        "names the data file '../in.ckpt' for chunk 0 of 'state_dict.w', which is not a file of the directory",
    ),
    "an absolute data file": (lambda m: _set_info(m, relative_path="/etc/passwd"), "not a file of the directory"),
    "a key that is no string": (lambda m: _rename_key(m, 5), ".metadata is damaged: a key is a int"),
    "an empty planner path": (lambda m: m.planner_data.update({W: ()}), "bad planner path for 'state_dict.w'"),
    "a planner path of floats": (lambda m: m.planner_data.update({W: ("state_dict", 1.5)}), "bad planner path"),
    "a planner path starting with an index": (lambda m: m.planner_data.update({W: (0, "w")}), "bad planner path"),
    "an entry of another type": (
        lambda m: m.state_dict_metadata.update({W: "a tensor"}),
        "'state_dict.w' is a str",
    ),
    "a dtype that is a string": (
        lambda m: setattr(_entry(m).properties, "dtype", "float32"),
        "bad dtype, size or chunks for 'state_dict.w'",
    ),
    "a size that is an int": (lambda m: setattr(_entry(m), "size", 6), "bad dtype, size or chunks"),
    "a negative size": (lambda m: setattr(_entry(m), "size", torch.Size([-2, 3])), "bad dtype, size or chunks"),
    "chunks that are no list": (lambda m: setattr(_entry(m), "chunks", "all"), "bad dtype, size or chunks"),
    "a chunk outside its tensor": (lambda m: _move_chunk(m, (1, 0)), "chunk 0 of 'state_dict.w' lies outside it"),
    "chunks that do not cover their tensor": (
        lambda m: setattr(_entry(m), "size", torch.Size([4, 3])),
        "the chunks of 'state_dict.w' do not cover it",
    ),
    "two entries at one place": (
        lambda m: m.planner_data.update({"state_dict.b": ("state_dict", "w")}),
        "two entries at ('state_dict', 'w')",
    ),
    "entries that do not nest": (
        lambda m: m.planner_data.update({"epoch": ("state_dict", 0)}),
        "the entries at",
    ),
}
"""A damaged ``.metadata`` field (bit rot, a crafted file, a foreign writer) and what the error says."""


@pytest.mark.parametrize(("damage", "said"), METADATA_DAMAGE.values(), ids=METADATA_DAMAGE.keys())
def test_damaged_metadata_is_one_error_naming_the_field(demo, tmp_path, damage, said):
    """Each damaged field of .metadata is one error line naming it, from inspect and convert; nothing is written."""
    metadata = read_metadata(demo)
    damage(metadata)
    write_metadata(demo, metadata)
    assert_one_line_error(cli("inspect", demo), said)
    assert_one_line_error(to_file(demo, tmp_path / "out.pt"), said)
    assert not (tmp_path / "out.pt").exists()
    assert leftovers(tmp_path) == []


def test_metadata_that_is_no_dcp_metadata_is_one_error(demo):
    """A .metadata holding another pickle, or DCP metadata whose entries are no mapping, is refused in one line."""
    (demo / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
    assert_one_line_error(cli("inspect", demo), ".metadata does not hold DCP metadata")
    save_dcp(small(), demo.parent / "again")
    metadata = read_metadata(demo.parent / "again")
    metadata.state_dict_metadata = list(metadata.state_dict_metadata.items())
    write_metadata(demo, metadata)
    assert_one_line_error(cli("inspect", demo), ".metadata does not hold DCP metadata")


def test_metadata_that_cannot_be_opened_is_one_error(demo):
    """A .metadata that is a directory (a botched copy) is one error line saying why it cannot be read."""
    (demo / ".metadata").unlink()
    (demo / ".metadata").mkdir()
    assert_one_line_error(cli("inspect", demo), ".metadata: Is a directory")


def test_a_data_file_that_is_a_directory_is_one_error(demo):
    """Metadata naming a data file that is a directory is refused in one line, before anything is read."""
    (demo / "sub").mkdir()
    metadata = read_metadata(demo)
    _set_info(metadata, relative_path="sub")
    write_metadata(demo, metadata)
    assert_one_line_error(cli("inspect", demo), "data file sub is not a regular file")


def test_storage_entries_that_name_no_entry_are_ignored(demo, tmp_path):
    """A storage entry under a key that is no string names no entry: it is ignored, the checkpoint reads as it was."""
    metadata = read_metadata(demo)
    junk = dataclasses.replace(storage_key(metadata, W), fqn=7)
    metadata.storage_data[junk] = _info(metadata)
    write_metadata(demo, metadata)
    assert to_file(demo, tmp_path / "out.pt").exit_code == 0
    assert_bitwise_equal(torch.load(tmp_path / "out.pt", weights_only=True)["state_dict"], small()["state_dict"])


# --- chunks damaged inside the data files --------------------------------------------------------------


def archive_of(obj: object) -> bytes:
    """``torch.save(obj)``'s bytes: one chunk or entry as DCP stores it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rezipped(
    archive: bytes,
    *,
    drop: tuple[str, ...] = (),
    replace: dict[str, bytes] | None = None,
    compress: tuple[str, ...] = (),
) -> bytes:
    """Copy an archive record by record, leaving out, replacing or compressing records (by name suffix)."""
    replace = replace or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            short = info.filename.split("/", 1)[1]
            if short in drop:
                continue
            kind = zipfile.ZIP_DEFLATED if short in compress else zipfile.ZIP_STORED
            new.writestr(info.filename, replace.get(short, old.read(info)), compress_type=kind)
    return out.getvalue()


def with_broken_header(archive: bytes, name: str) -> bytes:
    """Break the signature of record ``name``'s local header; the central directory still names it."""
    with zipfile.ZipFile(io.BytesIO(archive)) as old:
        offset = next(i.header_offset for i in old.infolist() if i.filename.endswith(name))
    raw = bytearray(archive)
    raw[offset : offset + 4] = b"XXXX"
    return bytes(raw)


class _Lookalike(pickle.Pickler):
    """Pickles ``"marker"`` as a persistent id that is no storage reference."""

    def persistent_id(self, obj: object) -> object:
        return ("storage",) if obj == "marker" else None


def _pickled_lookalike() -> bytes:
    buffer = io.BytesIO()
    _Lookalike(buffer, protocol=2).dump("marker")
    return buffer.getvalue()


def replace_chunk(directory: Path, fqn: str, archive: bytes) -> None:
    """Append ``archive`` to the data file of ``fqn``'s first chunk and point ``.metadata`` at it."""
    metadata = read_metadata(directory)
    info = _info(metadata, fqn)
    data = directory / info.relative_path
    size = data.stat().st_size
    pad = -size % 64
    with data.open("ab") as handle:
        handle.write(b"\0" * pad + archive)
    _set_info(metadata, fqn, offset=size + pad, length=len(archive))
    write_metadata(directory, metadata)


CHUNK_DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "bytes that are no archive": (lambda _a: b"\0" * 4096, "is damaged (not a torch archive"),
    "a record whose header is broken": (lambda a: with_broken_header(a, "data/0"), "is damaged (record"),
    "a compressed record": (lambda a: rezipped(a, compress=("data/0",)), "is damaged (record"),
    "another byte order": (lambda a: rezipped(a, replace={"byteorder": b"big"}), "was saved with another byte order"),
    "no data.pkl": (lambda a: rezipped(a, drop=("data.pkl",)), "is damaged (no data.pkl)"),
    "a reference that is no storage": (
        lambda a: rezipped(a, replace={"data.pkl": _pickled_lookalike()}),
        "is damaged (a bad storage reference)",
    ),
    "its storage missing": (lambda a: rezipped(a, drop=("data/0",)), "is damaged (storage 0 is missing or short)"),
    "its storage short": (
        lambda a: rezipped(a, replace={"data/0": b"\0" * 8}),
        "is damaged (storage 0 is missing or short)",
    ),
    "a damaged pickle": (lambda a: rezipped(a, replace={"data.pkl": b"\x80\x02garbage"}), "is damaged ("),
    "a number, not a tensor": (lambda _a: archive_of(12345), "does not hold a tensor"),
    "a tensor of another shape": (
        lambda _a: archive_of(torch.zeros(3, 2)),
        "does not hold what the metadata says",
    ),
    "a tensor of another dtype": (
        lambda _a: archive_of(torch.zeros(2, 3, dtype=torch.float64)),
        "does not hold what the metadata says",
    ),
}
"""A chunk's archive damaged, or swapped for another (a data file of another save), and what the error says."""


@pytest.mark.parametrize(("damage", "said"), CHUNK_DAMAGE.values(), ids=CHUNK_DAMAGE.keys())
def test_a_damaged_chunk_is_one_error_when_it_is_read(demo, tmp_path, damage, said):
    """A damaged or foreign chunk archive is one error naming the chunk when its tensor is read; nothing is written."""
    replace_chunk(demo, W, damage(archive_of(t(2, 3))))
    assert cli("inspect", demo).exit_code == 0  # .metadata alone is fine
    assert_one_line_error(to_file(demo, tmp_path / "out.pt"), "chunk 0 of 'state_dict.w'", said)
    assert not (tmp_path / "out.pt").exists()
    assert leftovers(tmp_path) == []


ENTRY_DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "a damaged pickle": (lambda a: rezipped(a, replace={"data.pkl": b"\x80\x02garbage"}), "entry 'epoch' is damaged"),
    "no data.pkl": (lambda a: rezipped(a, drop=("data.pkl",)), "entry 'epoch' is damaged"),
    "bytes that are no archive": (lambda _a: b"\0" * 64, "entry 'epoch' in __0_0.distcp is damaged"),
}
"""A non-tensor entry's archive damaged, and what the error says."""


@pytest.mark.parametrize(("damage", "said"), ENTRY_DAMAGE.values(), ids=ENTRY_DAMAGE.keys())
def test_a_damaged_non_tensor_entry_is_one_error(demo, tmp_path, damage, said):
    """A damaged non-tensor entry (epoch, hyper-parameters) is one error naming it; nothing is written."""
    replace_chunk(demo, "epoch", damage(archive_of(3)))
    assert_one_line_error(to_file(demo, tmp_path / "out.pt"), said)
    assert not (tmp_path / "out.pt").exists()


# --- entries holding classes -------------------------------------------------------------------------


def test_an_entry_holding_a_class_is_refused_by_name_unless_allowed(tmp_path):
    """An entry holding an instance of a class (argparse.Namespace) is refused naming it; --safe-global reads it."""
    hyper = argparse.Namespace(lr=0.1, layers=4)
    save_dcp({"state_dict": {"w": t(2, 3)}, "hyper_parameters": hyper}, tmp_path / "in")
    with pytest.raises(UnsafeCheckpointError, match=r"needs the global argparse\.Namespace"):
        load_checkpoint(tmp_path / "in")
    allowed = load_checkpoint(tmp_path / "in", safe_globals=["argparse.Namespace"])
    assert allowed.obj["hyper_parameters"] == hyper


def _module(directory: Path, name: str, body: str) -> Any:
    (directory / f"{name}.py").write_text(body, encoding="utf-8")
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))


@pytest.fixture
def modules(tmp_path: Path, payload_modules: None) -> Iterator[Path]:  # noqa: ARG001 - forgets the modules after
    """Make a directory for modules the test writes, on ``sys.path`` while the test runs."""
    directory = tmp_path / "modules"
    directory.mkdir()
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))


def test_an_entry_holding_a_moved_class_is_read_through_the_moves(modules, tmp_path):
    """A class that moved to another module since the save is found through the converters' moves."""
    old = _module(modules, "ckpt_payload_old_config", "class Config:\n    pass\n")
    config = old.Config()
    config.width = 16
    save_dcp({"state_dict": {"w": t(2, 3)}, "config": config}, tmp_path / "in")
    (modules / "ckpt_payload_old_config.py").unlink()
    del sys.modules["ckpt_payload_old_config"]
    new = _module(modules, "ckpt_payload_new_config", "class Config:\n    pass\n")
    moves = Moves(modules={}, globals={"ckpt_payload_old_config.Config": "ckpt_payload_new_config.Config"})
    with pytest.raises(UnsafeCheckpointError, match=r"ckpt_payload_old_config\.Config"):
        load_checkpoint(tmp_path / "in")
    read = load_checkpoint(tmp_path / "in", moves=moves).obj["config"]
    assert type(read) is new.Config
    assert read.width == 16


def test_an_entry_naming_more_deleted_classes_than_the_bound_is_one_error(modules, tmp_path):
    """An entry whose pickle names 65 deleted classes (one per round) is refused after 64 rounds, not read forever."""
    many = _module(modules, "ckpt_payload_many", "".join(f"class C{i}:\n    pass\n\n\n" for i in range(65)))
    save_dcp({"state_dict": {"w": t(2, 3)}, "extra": [getattr(many, f"C{i}")() for i in range(65)]}, tmp_path / "in")
    moves = Moves(modules={}, globals={}, deleted=("ckpt_payload_many.*",))
    with pytest.raises(UnreadableCheckpointError, match="entry 'extra' needs too many moved globals"):
        load_checkpoint(tmp_path / "in", moves=moves)


# --- files that go away while a conversion runs ------------------------------------------------------


def test_a_data_file_removed_after_loading_is_one_error_when_its_tensors_are_needed(demo, tmp_path):
    """A data file removed after loading (pruned by a retention job) is one error when a tensor is read."""
    checkpoint = load_checkpoint(demo)
    (demo / "__0_0.distcp").unlink()
    with pytest.raises(UnreadableCheckpointError, match=r"__0_0\.distcp: .*No such file"):
        write_checkpoint(checkpoint.obj, tmp_path / "out.pt", state_dict_at=checkpoint.state_dict_at, source=checkpoint)
    assert not (tmp_path / "out.pt").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda data: data.unlink(), r"__0_0\.distcp: No such file or directory"),
        (lambda data: os.truncate(data, 0), r"data file __0_0\.distcp is truncated \(entry 'epoch'\)"),
    ],
    ids=["removed", "truncated"],
)
def test_an_entry_left_unread_whose_file_changed_is_one_error_when_read(demo, change, said):
    """An entry left unread (metadata only) whose data file was removed or cut short is one error when read later."""
    with dcp.metadata_only():
        checkpoint = load_checkpoint(demo)
    unread = checkpoint.obj["epoch"]
    assert repr(unread) == "<DCP entry 'epoch', not read>"
    change(demo / "__0_0.distcp")
    with pytest.raises(UnreadableCheckpointError, match=said):
        unread.read()


# --- stamps ------------------------------------------------------------------------------------------


def test_a_damaged_stamp_in_the_metadata_is_kept_as_damage(demo, tmp_path):
    """A damaged stamp in .metadata is not trusted: a conversion without --from says it is damaged."""
    assert cli("stamp", demo, "0.1.0").exit_code == 0
    metadata = read_metadata(demo)
    metadata.ckpt_path = {"version": 5, "history": []}
    write_metadata(demo, metadata)
    checkpoint = load_checkpoint(demo)
    assert checkpoint.stamp is None
    assert checkpoint.damaged_stamp is not None
    result = cli("convert", demo, "-o", tmp_path / "out.pt", "--converters", EXAMPLE_CONVERTERS)
    assert_one_line_error(result, "stamp", "damaged")
    assert not (tmp_path / "out.pt").exists()


def test_a_flat_checkpoint_keeps_its_stamp_in_entries_beside_the_state_dict(tmp_path):
    """A flat DCP state dict stamped Lightning-style (ckpt_path.* entries) has that version; they are no weights."""
    stamped = {"w": t(2, 3), "ckpt_path": {"version": "0.1.0", "history": []}}
    save_dcp(stamped, tmp_path / "flat")
    checkpoint = load_checkpoint(tmp_path / "flat")
    assert checkpoint.stamp is not None
    assert checkpoint.stamp.version == "0.1.0"
    assert list(checkpoint.obj) == ["w"]
    damaged = {"w": t(2, 3), "ckpt_path": {"version": 5, "history": []}}
    save_dcp(damaged, tmp_path / "damaged")
    checkpoint = load_checkpoint(tmp_path / "damaged")
    assert (checkpoint.stamp, checkpoint.damaged_stamp is not None) == (None, True)


def test_a_damaged_stamp_is_written_as_it_was_not_made_valid(tmp_path):
    """A checkpoint whose stamp is damaged gets no stamp in .metadata: the damage is still seen on reading."""
    obj = {"state_dict": {"w": t(2, 3)}, "ckpt_path": {"version": 5}}
    save_checkpoint(obj, tmp_path / "out.dcp", state_dict_at=("state_dict",))
    assert not hasattr(read_metadata(tmp_path / "out.dcp"), "ckpt_path")
    assert load_checkpoint(tmp_path / "out.dcp").damaged_stamp is not None


def test_an_unstamped_checkpoint_stays_unstamped(tmp_path):
    """A checkpoint without a stamp is written through DCP without one; nothing is invented."""
    save_checkpoint({"state_dict": {"w": t(2, 3)}}, tmp_path / "out.dcp")
    assert not hasattr(read_metadata(tmp_path / "out.dcp"), "ckpt_path")
    checkpoint = load_checkpoint(tmp_path / "out.dcp")
    assert (checkpoint.stamp, checkpoint.damaged_stamp) == (None, None)


# --- what is written through DCP -------------------------------------------------------------------


def test_tensors_in_lists_are_stored_as_torch_stores_them(tmp_path):
    """Tensors inside lists become entries of their own, with the keys torch's DCP gives them; it loads them back."""
    obj = {"optimizer": {"buffers": [t(2), {"x": t(3)}], "betas": [0.9, 0.999]}, "state_dict": {"w": t(2, 3)}}
    save_checkpoint(obj, tmp_path / "ours.dcp")
    save_dcp(obj, tmp_path / "torchs")
    ours = {e.fqn for e in dcp.read_layout(tmp_path / "ours.dcp").entries}
    assert ours == {e.fqn for e in dcp.read_layout(tmp_path / "torchs").entries}
    assert {"optimizer.buffers.0", "optimizer.buffers.1.x", "optimizer.betas"} <= ours
    template = {"optimizer": {"buffers": [t(2), {"x": t(3)}]}, "state_dict": {"w": t(2, 3)}}
    loaded = load_dcp(tmp_path / "ours.dcp", template)
    assert torch.equal(loaded["optimizer"]["buffers"][1]["x"], t(3))
    assert load_checkpoint(tmp_path / "ours.dcp").obj["optimizer"]["betas"] == [0.9, 0.999]


def test_non_contiguous_tensors_are_written_with_their_values(tmp_path):
    """A transposed tensor and a slice of a larger storage are written as their values, not their storages."""
    base = t(4, 5)
    obj = {"state_dict": {"transposed": base.t(), "sliced": base[1:3], "tail": t(10)[7:]}}
    save_checkpoint(obj, tmp_path / "out.dcp")
    expected = {k: v.contiguous() for k, v in obj["state_dict"].items()}
    assert_bitwise_equal(load_dcp(tmp_path / "out.dcp", {"state_dict": expected})["state_dict"], expected)


def test_state_dict_only_writes_the_state_dict_flat(tmp_path):
    """With state_dict_only a Lightning checkpoint's DCP output holds the state dict's keys at the top, nothing else."""
    ckpt = lightning(v010_state_dict(), "0.1.0")
    save_checkpoint(ckpt, tmp_path / "out.dcp", state_dict_at=("state_dict",), state_dict_only=True)
    assert {e.fqn for e in dcp.read_layout(tmp_path / "out.dcp").entries} == set(v010_state_dict())
    assert_bitwise_equal(load_dcp(tmp_path / "out.dcp", v010_state_dict()), v010_state_dict())


WRITE_REFUSALS: dict[str, tuple[object, str]] = {
    "two entries with one DCP key": (
        {"a.b": t(2), "a": {"b": t(3)}},
        "two entries would have the DCP key 'a.b'",
    ),
    "a list at the top": ([t(2)], "a DCP checkpoint holds a dict, not a list"),
    "a meta tensor": ({"w": torch.empty(2, 3, device="meta")}, "w: it is a meta tensor"),
    "a sparse tensor": ({"w": t(2, 3).to_sparse()}, "w: a DCP checkpoint holds dense tensors"),
    "a function": ({"w": t(2, 3), "hook": lambda x: x}, "torch.save cannot write it"),
}
"""What a DCP directory cannot hold, and what the error says."""


@pytest.mark.parametrize(("obj", "said"), WRITE_REFUSALS.values(), ids=WRITE_REFUSALS.keys())
def test_what_dcp_cannot_hold_is_refused_and_nothing_is_written(tmp_path, obj, said):
    """A checkpoint DCP cannot hold is refused with SaveError naming the entry; no OUTPUT, no temporary directory."""
    with pytest.raises(SaveError, match=said.replace("(", r"\(").replace(".", r"\.")):
        save_checkpoint(obj, tmp_path / "out.dcp")
    assert not (tmp_path / "out.dcp").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("out", ["out", "out.pt", "out.safetensors"])
def test_a_deferred_operation_that_fails_names_its_tensor(demo, tmp_path, out):
    """A step whose deferred work fails only on real values (an index out of range) is one error naming the tensor.

    Whatever the output's format: the error says which tensor could not be computed.
    """
    code = (
        "import torch\n\n\ndef convert(ckpt):\n"
        "    ckpt['state_dict']['w'] = ckpt['state_dict']['w'].index_select(0, torch.tensor([7]))\n"
        "    return ckpt\n"
    )
    write_converter(tmp_path / "conv", "001_pick", "0.1.0", "0.2.0", code=code)
    args = ("--from", "0.1.0", "--converters", tmp_path / "conv", "--state-dict-only")
    result = cli("convert", demo, "-o", tmp_path / out, *args)
    line = assert_one_line_error(result, "computing it failed", "IndexError")
    assert re.search(r"\b(state_dict\.)?w: computing it failed", line), line
    assert not (tmp_path / out).exists()
    assert leftovers(tmp_path) == []


# --- copies of unchanged chunks ----------------------------------------------------------------------


def rewrite(source: Path, out: Path) -> Written:
    """Load a DCP directory lazily and write it at ``out`` as a conversion does (unchanged chunks copied)."""
    checkpoint = load_checkpoint(source)
    return write_checkpoint(
        checkpoint.obj, out, state_dict_at=checkpoint.state_dict_at, source=checkpoint, protect=checkpoint.files
    )


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, None])
def test_chunks_are_copied_alike_where_the_kernel_cannot_copy(demo, tmp_path, monkeypatch, code):
    """Where copy_file_range is refused (or Python lacks it: None), chunks are read and written; the same bytes."""
    reference = rewrite(demo, tmp_path / "reference")
    if code is None:
        monkeypatch.delattr(os, "copy_file_range")
    else:

        def refuse(*_: Any) -> int:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "copy_file_range", refuse)
    written = rewrite(demo, tmp_path / "out")
    assert written.copied_bytes == reference.copied_bytes > 0
    assert digest(tmp_path / "out" / "__0_0.distcp") == digest(tmp_path / "reference" / "__0_0.distcp")
    assert_bitwise_equal(load_dcp(tmp_path / "out", small())["state_dict"], small()["state_dict"])


def test_a_full_disk_while_chunks_are_copied_is_one_error(demo, tmp_path, monkeypatch):
    """ENOSPC from copy_file_range is one SaveError; the temporary directory is removed and OUTPUT never appears."""

    def full(*_: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", full)
    with pytest.raises(SaveError, match="No space left on device"):
        rewrite(demo, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "reads"])
def test_a_data_file_cut_short_while_it_is_copied_is_one_error(demo, tmp_path, monkeypatch, kernel):
    """A data file cut short during the copy is one SaveError; the copy never spins on a file that ended."""
    data = demo / "__0_0.distcp"
    name = "copy_file_range" if kernel else "pread"
    real = getattr(os, name)

    def truncated_first(*args: Any) -> Any:
        if data.stat().st_size:
            os.truncate(data, 0)
        return real(*args)

    if not kernel:
        monkeypatch.delattr(os, "copy_file_range")
    monkeypatch.setattr(os, name, truncated_first)
    with pytest.raises(SaveError, match="the input file ended early"):
        rewrite(demo, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_entries_left_unread_are_copied_as_they_are(demo, tmp_path):
    """Entries loaded metadata-only are written back byte for byte into a DCP output, and read for a file output."""
    with dcp.metadata_only():
        checkpoint = load_checkpoint(demo)
    assert isinstance(checkpoint.obj["epoch"], dcp.Unread)
    for out in (tmp_path / "out", tmp_path / "out.pt"):
        write_checkpoint(checkpoint.obj, out, state_dict_at=checkpoint.state_dict_at, source=checkpoint)

    def entry_bytes(directory: Path) -> bytes:
        where = next(e.where for e in dcp.read_layout(directory).entries if e.fqn == "epoch")
        assert where is not None
        with (directory / where.file).open("rb") as handle:
            handle.seek(where.offset)
            return handle.read(where.length)

    assert entry_bytes(tmp_path / "out") == entry_bytes(demo)
    assert load_checkpoint(tmp_path / "out").obj["epoch"] == 3
    assert torch.load(tmp_path / "out.pt", weights_only=True)["epoch"] == 3


# --- output directories ----------------------------------------------------------------------------


def test_an_output_directory_holding_the_input_is_never_replaced(demo, tmp_path):
    """OUTPUT that contains the input DCP directory (``-o`` its parent, --force) is refused; the input is intact."""
    before = digests(demo)
    checkpoint = load_checkpoint(demo)
    with pytest.raises(InputOverwriteError, match="a file of the input"):
        write_checkpoint(checkpoint.obj, tmp_path, force=True, source=checkpoint, protect=checkpoint.files)
    assert digests(demo) == before


def _link(tmp_path: Path) -> Path:
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    return tmp_path / "out"


def _file(tmp_path: Path) -> Path:
    (tmp_path / "out").write_text("mine")
    return tmp_path / "out"


OUTPUT_REFUSALS: dict[str, tuple[Callable[[Path], Path], bool, str]] = {
    "a symbolic link": (_link, True, "it is a symbolic link; a DCP checkpoint is a directory"),
    "in a directory that does not exist": (lambda p: p / "missing" / "out", False, "does not exist"),
    "a regular file, with --force": (_file, True, "it is not a directory, and a DCP checkpoint is one"),
    "an existing checkpoint, without --force": (lambda p: save_dcp(small(), p / "out"), False, "already exists"),
}
"""Where a DCP directory is never written, and what the error says."""


@pytest.mark.parametrize(("make", "force", "said"), OUTPUT_REFUSALS.values(), ids=OUTPUT_REFUSALS.keys())
def test_an_output_that_cannot_be_a_dcp_directory_is_refused_before_writing(demo, tmp_path, make, force, said):
    """OUTPUT that is a link, a file, already a checkpoint, or has no parent is one error; what is there stays."""
    out = make(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    checkpoint = load_checkpoint(demo)
    with pytest.raises((SaveError, OutputExistsError), match=said):
        write_checkpoint(checkpoint.obj, out, force=force, source=checkpoint, protect=checkpoint.files)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_changed_tensors_are_not_written_in_place(demo):
    """Writing a DCP checkpoint over its own directory rewrites entries only; changed tensors are refused."""
    before = digests(demo)
    checkpoint = load_checkpoint(demo)
    checkpoint.obj["state_dict"]["w"] = torch.zeros(2, 3)
    with pytest.raises(SaveError, match="only the stamp and non-tensor entries"):
        write_checkpoint(checkpoint.obj, demo, force=True, state_dict_at=checkpoint.state_dict_at, source=checkpoint)
    assert digests(demo) == before
    assert leftovers(demo.parent) == []


def test_stamping_a_tensor_only_checkpoint_in_place_rewrites_only_its_metadata(tmp_path):
    """Stamping a flat DCP state dict in place adds no data file; data files it did not write (older ranks') stay."""
    flat = save_dcp({"w": t(2, 3), "b": t(3)}, tmp_path / "flat")
    (flat / "__1_0.distcp").write_bytes(b"a data file of an earlier save with two processes")
    data_before = digests(flat)
    data_before.pop(".metadata")
    assert cli("stamp", flat, "0.1.0").exit_code == 0
    after = digests(flat)
    assert after.pop(".metadata") != ""
    assert after == data_before
    assert load_checkpoint(flat).stamp.version == "0.1.0"  # type: ignore[union-attr]
    assert_bitwise_equal(load_dcp(flat, {"w": t(2, 3), "b": t(3)}), {"w": t(2, 3), "b": t(3)})


def test_many_processes_writing_a_file_format_is_a_usage_error(tmp_path):
    """--workers 2 with a single-file OUTPUT is refused before anything is read or written (exit 2, one line)."""
    save_dcp(small(), tmp_path / "in")
    args = ("--from", "0.1.0", "--to", "0.1.0", "--converters", EXAMPLE_CONVERTERS, "--workers", "2")
    result = cli("convert", tmp_path / "in", "-o", tmp_path / "out.pt", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "a conversion with 2 processes writes a DCP directory" in lines[0]
    assert not (tmp_path / "out.pt").exists()


# --- DCP to single files -----------------------------------------------------------------------------


def test_a_conversion_that_computes_nothing_maps_every_tensor_from_the_input(demo, tmp_path):
    """DCP to a torch file with no step: every tensor comes from its mapped chunk, bitwise; no scratch file is left."""
    assert to_file(demo, tmp_path / "out.pt").exit_code == 0
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert_bitwise_equal(got["state_dict"], small()["state_dict"])
    assert got["epoch"] == 3
    assert leftovers(tmp_path) == []


def test_computed_zero_size_tensors_come_through(tmp_path):
    """A step that computes an empty tensor (and others) writes it with its shape; the others keep their values."""
    save_dcp({"state_dict": {"empty": torch.zeros(0, 3), "w": t(2, 3)}}, tmp_path / "in")
    checkpoint = load_checkpoint(tmp_path / "in")
    state_dict = checkpoint.obj["state_dict"]
    state_dict["empty"] = state_dict["empty"] * 2
    state_dict["w"] = state_dict["w"] + 1
    assert isinstance(state_dict["empty"], _lazy.LazyTensor)
    write_checkpoint(checkpoint.obj, tmp_path / "out.pt", state_dict_at=checkpoint.state_dict_at, source=checkpoint)
    got = torch.load(tmp_path / "out.pt", weights_only=True)["state_dict"]
    assert_bitwise_equal(got, {"empty": torch.zeros(0, 3), "w": t(2, 3) + 1})
    assert leftovers(tmp_path) == []


def test_a_flat_stamped_checkpoint_keeps_its_stamp_in_a_torch_file(tmp_path):
    """A flat DCP state dict stamped in .metadata, converted to a torch file, keeps its stamp (in _metadata)."""
    save_dcp({"w": t(2, 3)}, tmp_path / "flat")
    assert cli("stamp", tmp_path / "flat", "0.1.0").exit_code == 0
    assert to_file(tmp_path / "flat", tmp_path / "out.pt").exit_code == 0
    assert load_checkpoint(tmp_path / "out.pt").stamp.version == "0.1.0"  # type: ignore[union-attr]
    assert list(torch.load(tmp_path / "out.pt", weights_only=True)) == ["w"]


def test_tuples_in_entries_stay_tuples(tmp_path):
    """Tuples in non-tensor entries (Adam's betas) come through a DCP to torch conversion as tuples."""
    ckpt = write_stamp(
        {"state_dict": {"w": t(2, 3)}, "optimizer": {"param_groups": [{"betas": (0.9, 0.999), "lr": 1e-3}]}},
        ("state_dict",),
        Stamp(version="0.1.0"),
    )
    save_dcp(ckpt, tmp_path / "in")
    assert to_file(tmp_path / "in", tmp_path / "out.pt").exit_code == 0
    betas = torch.load(tmp_path / "out.pt", weights_only=True)["optimizer"]["param_groups"][0]["betas"]
    assert betas == (0.9, 0.999)
    assert type(betas) is tuple
