"""Checkpoints on disk: safe loading, finding the state dict, the stamp, atomic saving."""

from __future__ import annotations

import os
import pickle
import stat
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from ckpt_fixtures import lightning, temp_files, v010_state_dict, write_ckpt, write_unsafe_checkpoint
from ckpt_path.checkpoint import find_state_dict
from ckpt_path.errors import (
    CheckpointError,
    CkptPathError,
    OutputExistsError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UsageError,
)
from ckpt_path.stamp import STAMP_KEY, Stamp, read_stamp, write_stamp
from ckpt_path.storage import load_checkpoint, save_checkpoint

HISTORY_ENTRY = {
    "source": "1.0.0",
    "target": "1.1.0",
    "converter": "a_upgrade",
    "digest": "sha256:0123456789abcdef",
    "at": "2025-01-02T03:04:05+00:00",
}


def small_model() -> nn.Module:
    """Return a two-layer model, whose state dict carries torch's own ``_metadata``."""
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def same_tensors(left: object, right: object) -> bool:
    """Whether two state dicts hold the same keys and equal tensors."""
    assert isinstance(left, dict)
    assert isinstance(right, dict)
    return list(left) == list(right) and all(torch.equal(left[k], right[k]) for k in left)


# --- finding the state dict -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrap", "expected_path"),
    [
        pytest.param(lightning, ("state_dict",), id="lightning"),
        pytest.param(lambda sd: {"model": sd, "optimizer": {"lr": 0.1}, "step": 9}, ("model",), id="model"),
        pytest.param(lambda sd: {"model_state_dict": sd, "epoch": 2}, ("model_state_dict",), id="model_sd"),
        pytest.param(lambda sd: sd, (), id="flat"),
        pytest.param(OrderedDict, (), id="flat-ordered"),
    ],
)
def test_load_finds_state_dict(tmp_path, wrap, expected_path):
    """load_checkpoint detects where the state dict lies in common checkpoint layouts."""
    sd = v010_state_dict()
    path = write_ckpt(tmp_path / "model.ckpt", wrap(sd))
    loaded = load_checkpoint(path)
    assert loaded.state_dict_at == expected_path
    assert loaded.format == "torch"
    assert loaded.file == path
    assert same_tensors(dict(loaded.state_dict), sd)


def test_state_dict_override_nested_dotted_key(tmp_path):
    """--state-dict model.ema picks a nested state dict over the one detection would find."""
    sd, ema = v010_state_dict(0), v010_state_dict(1)
    path = write_ckpt(tmp_path / "model.ckpt", {"state_dict": sd, "model": {"ema": ema, "decay": 0.99}})
    assert load_checkpoint(path).state_dict_at == ("state_dict",)
    loaded = load_checkpoint(path, state_dict_key="model.ema")
    assert loaded.state_dict_at == ("model", "ema")
    assert same_tensors(dict(loaded.state_dict), ema)


@pytest.mark.parametrize("key", ["nope", "model.nope", "state_dict.x.y", "epoch", "model.decay"])
def test_state_dict_override_wrong_key(tmp_path, key):
    """A --state-dict key that names nothing, or names a non-dict, is a CheckpointError naming it."""
    ckpt = {"state_dict": v010_state_dict(), "epoch": 3, "model": {"decay": 0.99}}
    path = write_ckpt(tmp_path / "model.ckpt", ckpt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, state_dict_key=key)
    assert key in str(info.value)
    with pytest.raises(CheckpointError):
        find_state_dict(ckpt, key)


def test_undetectable_state_dict_asks_for_override():
    """A dict with no recognisable state dict raises an error that suggests --state-dict."""
    with pytest.raises(CheckpointError, match="--state-dict"):
        find_state_dict({"weights_here": {"a": 1}, "epoch": 3})


# --- the stamp --------------------------------------------------------------------------------


def test_stamp_round_trip_dict_checkpoint(tmp_path):
    """A dict checkpoint keeps its stamp under a top-level ckpt_path key through save and load."""
    ckpt = lightning(v010_state_dict())
    stamp = Stamp(version="1.1.0", history=(HISTORY_ENTRY,))
    stamped = write_stamp(ckpt, ("state_dict",), stamp)
    save_checkpoint(stamped, tmp_path / "out.ckpt")

    loaded = load_checkpoint(tmp_path / "out.ckpt")
    assert loaded.obj[STAMP_KEY] == {"version": "1.1.0", "history": [HISTORY_ENTRY]}
    assert STAMP_KEY not in loaded.state_dict
    assert read_stamp(loaded.obj, loaded.state_dict_at) == stamp
    assert loaded.obj["epoch"] == 7


@pytest.mark.parametrize("as_plain_dict", [False, True], ids=["module-state-dict", "plain-dict"])
def test_stamp_round_trip_flat_state_dict(tmp_path, as_plain_dict):
    """A flat state dict keeps its stamp in _metadata; strict load_state_dict still works after it."""
    model = small_model()
    sd = dict(model.state_dict()) if as_plain_dict else model.state_dict()
    stamp = Stamp(version="2.0.0", history=(HISTORY_ENTRY,))
    stamped = write_stamp(sd, (), stamp)
    assert STAMP_KEY not in stamped
    save_checkpoint(stamped, tmp_path / "flat.pt")

    raw = torch.load(tmp_path / "flat.pt", weights_only=True)
    assert list(raw) == list(model.state_dict())
    assert raw._metadata[STAMP_KEY] == stamp.to_dict()  # noqa: SLF001 - where the contract puts it
    fresh = small_model()
    fresh.load_state_dict(raw, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())

    loaded = load_checkpoint(tmp_path / "flat.pt")
    assert loaded.state_dict_at == ()
    assert read_stamp(loaded.obj, loaded.state_dict_at) == stamp


@pytest.mark.parametrize(
    ("ckpt", "sd_path"),
    [
        pytest.param({"state_dict": {"w": torch.zeros(1)}}, ("state_dict",), id="dict"),
        pytest.param({"w": torch.zeros(1)}, (), id="flat-dict"),
        pytest.param(nn.Linear(2, 2).state_dict(), (), id="flat-module"),
    ],
)
def test_read_stamp_of_unstamped_checkpoint_is_none(ckpt, sd_path):
    """A checkpoint without a stamp reads as None, not as an error."""
    assert read_stamp(ckpt, sd_path) is None


@pytest.mark.parametrize("raw", ["1.0.0", {"history": []}, {"version": 3}, {"version": "not a version!"}])
def test_damaged_stamp_is_an_error(raw):
    """A stamp that is not {"version": PEP 440 string, ...} raises a one-line user error."""
    with pytest.raises(CkptPathError):
        read_stamp({"state_dict": {"w": torch.zeros(1)}, STAMP_KEY: raw}, ("state_dict",))


# --- files that cannot be read ------------------------------------------------------------------


def _truncated(directory: Path) -> Path:
    path = write_ckpt(directory / "full.ckpt", lightning(v010_state_dict()))
    data = path.read_bytes()
    cut = directory / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _truncated_legacy(directory: Path) -> Path:
    path = directory / "full-legacy.ckpt"
    torch.save(lightning(v010_state_dict()), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    cut = directory / "cut-legacy.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _text(text: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / "notes.ckpt"
        path.write_text(text, encoding="utf-8")
        return path

    return make


def _empty(directory: Path) -> Path:
    path = directory / "empty.ckpt"
    path.touch()
    return path


def _missing(directory: Path) -> Path:
    return directory / "missing.ckpt"


def _directory(directory: Path) -> Path:
    path = directory / "a-directory.ckpt"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_truncated, id="truncated"),
        pytest.param(_truncated_legacy, id="truncated-legacy"),
        pytest.param(_text("hello world\n"), id="text-hello"),
        pytest.param(_text("not a checkpoint\n"), id="text-sentence"),
        pytest.param(_text('{"epoch": 3}\n'), id="text-json"),
        pytest.param(_empty, id="empty"),
        pytest.param(_missing, id="missing"),
        pytest.param(_directory, id="directory"),
    ],
)
def test_unreadable_file_is_one_line_error(tmp_path, make):
    """A truncated, text, empty or missing file raises UnreadableCheckpointError on one line."""
    path = make(tmp_path)
    with pytest.raises(UnreadableCheckpointError) as info:
        load_checkpoint(path)
    assert info.value.path == str(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message


def test_legacy_checkpoint_loads(tmp_path):
    """A checkpoint in the pre-1.6 (non-zip) format still loads, reported as torch-legacy."""
    sd = v010_state_dict()
    path = tmp_path / "legacy.ckpt"
    torch.save(lightning(sd), path, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path)
    assert loaded.format == "torch-legacy"
    assert loaded.state_dict_at == ("state_dict",)
    assert same_tensors(dict(loaded.state_dict), sd)
    assert loaded.obj["hyper_parameters"]["hidden"] == 16


# --- unsafe pickles -----------------------------------------------------------------------------


@pytest.mark.usefixtures("payload_modules")
@pytest.mark.parametrize("kind", ["instance", "reduce"])
def test_unsafe_checkpoint_is_refused_without_running_anything(tmp_path, kind):
    """A pickle that needs a foreign global is refused with its name; its module is never imported."""
    path, global_name, marks = write_unsafe_checkpoint(tmp_path, kind=kind)
    module = global_name.rpartition(".")[0]
    sys.path.insert(0, str(tmp_path))  # importable, so only the loader's refusal keeps it out
    try:
        with pytest.raises(UnsafeCheckpointError) as info:
            load_checkpoint(path)
    finally:
        sys.path.remove(str(tmp_path))
    assert info.value.global_name == global_name
    assert global_name in info.value.globals_needed
    assert f"--safe-global {global_name}" in str(info.value)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in marks.iterdir()) == []
    assert module not in sys.modules


@pytest.mark.usefixtures("payload_modules")
def test_safe_global_allows_trusted_class(tmp_path, monkeypatch):
    """Naming the class in safe_globals loads the checkpoint that was refused without it."""
    path, global_name, _ = write_unsafe_checkpoint(tmp_path, kind="instance")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_checkpoint(path, safe_globals=(global_name,))
    assert type(loaded.obj["extra"]).__name__ == "Payload"
    assert loaded.obj["extra"].value == 3
    assert loaded.state_dict_at == ("state_dict",)


def test_safe_global_that_cannot_be_imported(tmp_path):
    """A --safe-global that names nothing importable is a UsageError naming it."""
    path = write_ckpt(tmp_path / "model.ckpt", lightning(v010_state_dict()))
    with pytest.raises(UsageError, match=r"no_such_module_xyz\.Thing"):
        load_checkpoint(path, safe_globals=("no_such_module_xyz.Thing",))


# --- saving -------------------------------------------------------------------------------------


def test_save_checkpoint_still_takes_the_old_name_of_state_dict_at(tmp_path):
    """``state_dict_path=`` was renamed ``state_dict_at=``; the old name works, with a DeprecationWarning."""
    ckpt = {"state_dict": OrderedDict(w=torch.ones(2)), "epoch": 1}
    with pytest.warns(DeprecationWarning, match="state_dict_at"):
        save_checkpoint(ckpt, tmp_path / "o.safetensors", state_dict_path=("state_dict",), state_dict_only=True)
    assert list(load_checkpoint(tmp_path / "o.safetensors").state_dict) == ["w"]


def test_a_torch_still_importing_is_no_tensor_yet(monkeypatch):
    """While another thread imports torch, ``sys.modules["torch"]`` has no Tensor yet: nothing is a tensor then."""
    import types

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    assert find_state_dict({"state_dict": {}, "epoch": 1}) == ("state_dict",)


def test_save_refuses_existing_output(tmp_path):
    """save_checkpoint without force refuses an existing file and leaves it as it was."""
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"old bytes")
    with pytest.raises(OutputExistsError) as info:
        save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, out)
    assert info.value.path == str(out)
    assert "--force" in str(info.value)
    assert out.read_bytes() == b"old bytes"
    assert temp_files(tmp_path) == []


def test_save_with_force_replaces_output(tmp_path):
    """save_checkpoint with force replaces an existing file with the new checkpoint."""
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"old bytes")
    save_checkpoint({"state_dict": {"w": torch.arange(3.0)}}, out, force=True)
    loaded = load_checkpoint(out)
    assert torch.equal(loaded.state_dict["w"], torch.arange(3.0))
    assert temp_files(tmp_path) == []


def test_save_success_leaves_no_temp_files(tmp_path):
    """A successful save leaves only OUTPUT in its directory."""
    save_checkpoint(lightning(v010_state_dict()), tmp_path / "out.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ckpt"]


class _Interrupt:
    def __reduce__(self) -> tuple[object, ...]:
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("bad", "raised"),
    [
        pytest.param(lambda: None, (pickle.PicklingError, AttributeError, TypeError, CheckpointError), id="lambda"),
        pytest.param(_Interrupt(), KeyboardInterrupt, id="ctrl-c"),
    ],
)
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-existing"])
def test_save_failure_leaves_nothing_behind(tmp_path, bad, raised, existing):
    """A save that fails while pickling leaves no temp file and no (or the old) OUTPUT."""
    out = tmp_path / "out.ckpt"
    if existing:
        out.write_bytes(b"old bytes")
    with pytest.raises(raised):
        save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "callback": bad}, out, force=existing)
    assert temp_files(tmp_path) == []
    if existing:
        assert out.read_bytes() == b"old bytes"
    else:
        assert not out.exists()


def test_save_into_missing_directory(tmp_path):
    """Saving into a directory that does not exist is a CheckpointError, not a traceback."""
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint({"w": torch.zeros(1)}, tmp_path / "nowhere" / "out.ckpt")


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_save_over_a_directory_is_a_checkpoint_error(tmp_path, force):
    """Saving to a path that is a directory raises a CheckpointError, leaves it alone and no temp file."""
    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.raises(CheckpointError):
        save_checkpoint({"w": torch.zeros(1)}, target, force=force)
    assert target.is_dir()
    assert list(target.iterdir()) == []
    assert temp_files(tmp_path) == []


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test, and restore it afterwards."""
    original = os.umask(0o022)
    os.umask(original)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(original)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_saved_file_mode_follows_umask(tmp_path, umask, mask, mode):
    """OUTPUT gets the mode a plain open() would give it (not mkstemp's private 0600)."""
    umask(mask)
    out = save_checkpoint({"w": torch.zeros(1)}, tmp_path / "out.ckpt")
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_newer_pickle_protocol_is_one_clear_error(tmp_path):
    """A file saved with pickle_protocol=4 is refused, naming the protocol, with no torch warning."""
    path = tmp_path / "p4.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path, pickle_protocol=4)
    with pytest.raises(UnreadableCheckpointError, match="pickle_protocol above 2"):
        load_checkpoint(path)
