"""Hostile and damaged checkpoints: one clear error, nothing run or written that was not asked for.

Checkpoints come from strangers. A forged stamp, a pickle that names a function through a moved
module, a zip whose pickle inflates a thousandfold, a flipped byte inside a tensor record, a
converter that calls ``sys.exit``: each ends in one ``error:`` line and exit 1 (or, for a
damaged stamp, a description and a warning), never a traceback, never a half-written output.
"""

from __future__ import annotations

import importlib
import sys
import uuid
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[1]


def _sd() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).reshape(2, 3)}


def _flat(metadata: object) -> OrderedDict[str, torch.Tensor]:
    sd = OrderedDict(_sd())
    sd._metadata = metadata  # type: ignore[attr-defined]  # noqa: SLF001 - what a hostile file carries
    return sd


DAMAGED_STAMPS: dict[str, tuple[Any, str]] = {
    "history is an object": (
        {"state_dict": _sd(), "ckpt_path": {"version": "1.0.0", "history": {"a": 1}}},
        "history is a dict, not a list",
    ),
    "history is a tensor": (
        {"state_dict": _sd(), "ckpt_path": {"version": "1.0.0", "history": torch.zeros(3)}},
        "history is a Tensor, not a list",
    ),
    "history entry is a list": (
        {"state_dict": _sd(), "ckpt_path": {"version": "1.0.0", "history": [[1, 2]]}},
        "history entry 0 is a list, not a mapping",
    ),
    "history field is a tensor": (
        {"state_dict": _sd(), "ckpt_path": {"version": "1.0.0", "history": [{"source": torch.zeros(1)}]}},
        "history entry 0 field 'source' is a Tensor, not a string",
    ),
    "version of a megabyte": (
        {"state_dict": _sd(), "ckpt_path": {"version": "1" * 1_000_000}},
        "version is 1000000 characters long",
    ),
    "version is a number": ({"state_dict": _sd(), "ckpt_path": {"version": 1.0}}, "version is a float, not a string"),
    "stamp is a list": ({"state_dict": _sd(), "ckpt_path": ["1.0.0"]}, "it is a list, not a mapping"),
    "_metadata is a list": (_flat([1, 2]), "the state dict's _metadata is a list, not a mapping"),
    "_metadata is a string": (_flat("x"), "the state dict's _metadata is a str, not a mapping"),
    "_metadata is an int": (_flat(3), "the state dict's _metadata is a int, not a mapping"),
    "_metadata is a tensor": (_flat(torch.zeros(2)), "the state dict's _metadata is a Tensor, not a mapping"),
}


@pytest.fixture
def converters(tmp_path: Path) -> Path:
    """Write a converters directory with one renaming step 1.0.0 -> 1.1.0."""
    directory = tmp_path / "converters"
    directory.mkdir()
    (directory / "001_rename.py").write_text(
        'source = "1.0.0"\ntarget = "1.1.0"\nfrom ckpt_path.ops import Rename\nops = [Rename("w", "v")]\n',
        encoding="utf-8",
    )
    return directory


@pytest.mark.parametrize("name", DAMAGED_STAMPS)
def test_a_damaged_stamp_is_reported_never_trusted(tmp_path, converters, name):
    """Convert refuses a damaged stamp with what is wrong; inspect describes the file; --from and stamp fix it."""
    obj, problem = DAMAGED_STAMPS[name]
    path = tmp_path / "in.ckpt"
    torch.save(obj, path)
    out = tmp_path / "out.ckpt"
    line = assert_one_line_error(cli("convert", path, "-o", out, "--converters", converters))
    assert f"the ckpt_path stamp is damaged ({problem})" in line
    assert not out.exists()
    described = cli("inspect", path, "--converters", converters)
    assert described.exit_code == 0, described.output
    assert "damaged stamp" in described.stdout
    assert problem in described.stderr
    given = cli("convert", path, "-o", out, "--converters", converters, "--from", "1.0.0")
    assert given.exit_code == 0, given.output
    assert "the stamp is damaged" in given.stderr
    restamped = cli("stamp", path, "1.0.0", "-o", tmp_path / "fixed.ckpt")
    assert restamped.exit_code == 0, restamped.output
    again = cli("convert", tmp_path / "fixed.ckpt", "-o", tmp_path / "again.ckpt", "--converters", converters)
    assert again.exit_code == 0, again.output


def test_a_state_dict_key_that_is_not_a_string_is_one_error(tmp_path, converters):
    """A flat state dict with an int key beside string keys is refused by key, no traceback."""
    path = tmp_path / "in.ckpt"
    torch.save(OrderedDict({"w": torch.zeros(2), 3: torch.zeros(1)}), path)
    for args in (("inspect", path), ("convert", path, "-o", tmp_path / "o.ckpt", "--from", "1.0.0")):
        line = assert_one_line_error(cli(*args, "--converters", converters))
        assert "has a key that is not a string (3 of type int)" in line


# --- what a pickle may make ckpt-path run ----------------------------------------------------


SHIFTY = """\
import os
import subprocess
from os import system
from subprocess import Popen


class Config:
    def __init__(self, x):
        self.x = x
"""


class _Call:
    """Pickles as a call of ``target`` with ``args``: what a malicious checkpoint does."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.target, self.args = target, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.target, self.args


@pytest.mark.parametrize("attribute", ["system", "Popen"])
def test_a_moved_module_supplies_only_its_own_classes(tmp_path, monkeypatch, attribute):
    """A checkpoint naming oldpkg.system where newpkg re-exports os.system is refused by name; nothing runs."""
    old, new = f"old_{uuid.uuid4().hex[:8]}", f"new_{uuid.uuid4().hex[:8]}"
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    (code / f"{old}.py").write_text(f"def {attribute}(*args):\n    return args\n", encoding="utf-8")
    importlib.invalidate_caches()
    module = importlib.import_module(old)
    marker = tmp_path / "RAN"
    path = tmp_path / "in.ckpt"
    torch.save({"state_dict": _sd(), "x": _Call(getattr(module, attribute), ["touch", str(marker)])}, path)
    sys.modules.pop(old)
    (code / f"{old}.py").unlink()
    (code / f"{new}.py").write_text(SHIFTY, encoding="utf-8")
    importlib.invalidate_caches()
    converters = tmp_path / "converters"
    converters.mkdir()
    (converters / "001_move.py").write_text(
        f'source = "1.0.0"\ntarget = "1.1.0"\nmoved_modules = {{"{old}": "{new}"}}\ntouches = []\n'
        "def convert(ckpt):\n    return ckpt\n",
        encoding="utf-8",
    )
    line = assert_one_line_error(
        cli("convert", path, "-o", tmp_path / "o.ckpt", "--converters", converters, "--from", "1.0.0")
    )
    assert f"the moved global {new}.{attribute} is" in line
    assert f"not a class defined under {new}" in line
    assert not marker.exists()
    assert not (tmp_path / "o.ckpt").exists()
    sys.modules.pop(new, None)


# --- zip bombs and flipped bytes ------------------------------------------------------------


def _rezip(source: Path, target: Path, *, compress: str) -> None:
    """Copy a torch zip, compressing the named record with deflate."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            kind = zipfile.ZIP_DEFLATED if info.filename.endswith(compress) else zipfile.ZIP_STORED
            new.writestr(info.filename, old.read(info), compress_type=kind)


def test_a_compressed_pickle_is_refused_before_it_is_inflated(tmp_path, converters, monkeypatch):
    """A data.pkl that inflates (a zip bomb's shape) is refused from the zip directory alone."""
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": _sd(), "ckpt_path": {"version": "1.0.0"}, "pad": "x" * 100_000}, plain)
    bomb = tmp_path / "bomb.ckpt"
    _rezip(plain, bomb, compress="data.pkl")
    calls: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *args, **_: calls.append(args))
    line = assert_one_line_error(cli("convert", bomb, "-o", tmp_path / "o.ckpt", "--converters", converters))
    assert "data.pkl is compressed" in line
    assert calls == []


def test_a_refused_zip_imports_nothing_a_safe_global_names(tmp_path):
    """The zip is checked before --safe-global imports anything: a bomb is refused unread (exit 1), the module unrun."""
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": _sd(), "ckpt_path": {"version": "1.0.0"}}, plain)
    bomb = tmp_path / "bomb.ckpt"
    _rezip(plain, bomb, compress="data.pkl")
    marker = tmp_path / "imported"
    (tmp_path / "loud_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nThing = dict\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        result = cli("inspect", bomb, "--safe-global", "loud_module.Thing")
    finally:
        sys.path.remove(str(tmp_path))
    assert result.exit_code == 1
    assert "data.pkl is compressed" in assert_one_line_error(result)
    assert not marker.exists()
    sys.modules.pop("loud_module", None)


def test_an_oversized_pickle_is_refused_unless_the_limit_is_raised(tmp_path, converters, monkeypatch):
    """A data.pkl over CKPT_PATH_MAX_PICKLE_MB is refused naming the variable; raising it lets the file through."""
    path = tmp_path / "in.ckpt"
    torch.save({"state_dict": _sd(), "ckpt_path": {"version": "1.0.0"}, "notes": "x" * 3_000_000}, path)
    monkeypatch.setenv("CKPT_PATH_MAX_PICKLE_MB", "1")
    line = assert_one_line_error(cli("convert", path, "-o", tmp_path / "o.ckpt", "--converters", converters))
    assert "over the 1 MiB limit" in line
    assert "CKPT_PATH_MAX_PICKLE_MB" in line
    monkeypatch.setenv("CKPT_PATH_MAX_PICKLE_MB", "8")
    assert cli("convert", path, "-o", tmp_path / "o.ckpt", "--converters", converters).exit_code == 0


def _flip_in_record(path: Path, suffix: str) -> None:
    """Flip one byte in the middle of the data of the first record whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    data = bytearray(path.read_bytes())
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


MOVE_W = (
    'source = "1.0.0"\ntarget = "1.1.0"\nfrom ckpt_path.ops import MoveIndex\n'
    'ops = [MoveIndex("w", dim=0, index=3, to=1)]\n'
)
CODE_W = 'source = "1.0.0"\ntarget = "1.1.0"\ntouches = []\n\n\ndef convert(ckpt):\n    return ckpt\n'


def _damaged(tmp_path: Path) -> Path:
    path = tmp_path / "in.ckpt"
    torch.save({"state_dict": {"w": torch.arange(64.0)}, "ckpt_path": {"version": "1.0.0"}}, path)
    _flip_in_record(path, "/data/0")
    return path


@pytest.mark.parametrize("converter", [MOVE_W, CODE_W], ids=["an op reads it", "code may read it"])
def test_a_flipped_byte_in_a_record_that_is_read_is_refused(tmp_path, converter):
    """A record whose bytes are read (an op computes from it, or code ran) must match its CRC-32, else no output."""
    converters = tmp_path / "converters"
    converters.mkdir()
    (converters / "001_step.py").write_text(converter, encoding="utf-8")
    out = tmp_path / "o.ckpt"
    line = assert_one_line_error(cli("convert", _damaged(tmp_path), "-o", out, "--converters", converters))
    assert "record" in line
    assert "CRC-32 does not match" in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_flipped_byte_is_refused_when_the_output_is_a_dcp_directory(tmp_path, converters):
    """A DCP output copies nothing from a torch input: every record it read must match its CRC-32, else no output."""
    out = tmp_path / "o.dcp"
    line = assert_one_line_error(cli("convert", _damaged(tmp_path), "-o", out, "--converters", converters))
    assert "CRC-32 does not match" in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["convert", "stamp"])
def test_a_flipped_byte_in_a_record_copied_unread_keeps_its_crc(tmp_path, converters, command):
    """A record copied unread (a rename, a restamp) keeps the CRC it came with: the damage stays detectable."""
    path = _damaged(tmp_path)
    out = tmp_path / "o.ckpt"
    args = (
        ("convert", path, "-o", out, "--converters", converters)
        if command == "convert"
        else ("stamp", path, "1.0.0", "-o", out)
    )
    assert cli(*args).exit_code == 0
    with zipfile.ZipFile(out) as archive:
        assert (archive.testzip() or "").endswith("/data/0")


def test_a_damaged_zip_directory_is_one_error(tmp_path):
    """A zip whose zip64 locator claims several disks is one error line, not zipfile's traceback."""
    path = tmp_path / "in.ckpt"
    torch.save({"state_dict": _sd()}, path)
    data = bytearray(path.read_bytes())
    locator = data.rfind(b"PK\x06\x07")
    data[locator + 16] = 2  # total number of disks
    path.write_bytes(bytes(data))
    line = assert_one_line_error(cli("inspect", path))
    assert "cannot read" in line


# --- converters that exit or leave tensors without data -------------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("import sys\n    sys.exit()", "SystemExit"),
        ("raise SystemExit(0)", "SystemExit"),
        ('ckpt["state_dict"]["w"] = torch.empty(2, 3, device="meta")\n    return ckpt', "device meta"),
    ],
    ids=["sys.exit()", "SystemExit(0)", "meta tensor"],
)
def test_a_converter_that_exits_or_leaves_no_data_fails_the_conversion(tmp_path, body, said):
    """Exit 1, the step and file named, nothing written: a converter cannot end the run as a success."""
    converters = tmp_path / "converters"
    converters.mkdir()
    (converters / "001_bad.py").write_text(
        f'import torch\nsource = "1.0.0"\ntarget = "1.1.0"\ntouches = ["*"]\n\n\ndef convert(ckpt):\n    {body}\n',
        encoding="utf-8",
    )
    path = tmp_path / "in.ckpt"
    torch.save({"state_dict": _sd(), "ckpt_path": {"version": "1.0.0"}}, path)
    out = tmp_path / "o.ckpt"
    line = assert_one_line_error(cli("convert", path, "-o", out, "--converters", converters))
    assert "step 1.0.0 -> 1.1.0" in line
    assert "001_bad.py" in line
    assert said in line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converters", "in.ckpt"]


def test_convert_without_an_output_is_a_usage_error(tmp_path, converters):
    """`convert IN` without -o or --dry-run exits 2 (bad usage), with one error line."""
    path = tmp_path / "in.ckpt"
    torch.save({"state_dict": _sd(), "ckpt_path": {"version": "1.0.0"}}, path)
    result = cli("convert", path, "--converters", converters)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: convert needs an output path (-o OUTPUT), or --dry-run"]


def test_stamp_to_another_output_never_touches_the_input(tmp_path):
    """`stamp -o` writing a layout whose shard would replace the input is refused; the input stays."""
    from safetensors.torch import save_file

    source = tmp_path / "model-00001-of-00001.safetensors"
    save_file({"w": torch.ones(2)}, str(source))
    before = source.read_bytes()
    line = assert_one_line_error(
        cli("stamp", source, "1.0.0", "-o", tmp_path / "model.safetensors.index.json", "--force")
    )
    assert "a file of the input" in line
    assert source.read_bytes() == before
