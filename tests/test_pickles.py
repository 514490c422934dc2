"""Checkpoints that pickle classes which later moved, were renamed or were deleted.

Every test builds a real project in ``tmp_path``: version 1 of its code (``oldpkg.conf`` with a
dataclass ``Config`` and ``Optim``, ``oldpkg.legacy`` with ``Legacy`` and ``touch``) saves a
stamped Lightning-style checkpoint that holds instances of them; then the code changes as it
does in real projects (``oldpkg.conf`` becomes ``newpkg.conf``, ``Config`` becomes ``Settings``,
``oldpkg.legacy`` is deleted), and the checkpoint is read back through ckpt-path with converters
that declare ``moved_modules``, ``moved_globals`` and ``deleted_globals``.

``oldpkg.legacy`` leaves marks on disk when it is imported, when a ``Legacy`` is rebuilt and when
``touch`` is called, so a test can prove that nothing from the pickle ran.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt_path import CheckpointError, Registry, UnsafeCheckpointError
from ckpt_path.commands import convert_file, inspect_file, load
from ckpt_path.pickles import DeletedGlobal, everything_deleted
from ckpt_path.stamp import read_stamp
from ckpt_path.storage import load_checkpoint
from ckpt_path.testing import run_edge
from helpers import assert_one_line_error, cli

PACKAGES = ("oldpkg", "newpkg")
"""Top-level packages the tests write; no module of theirs may outlive a test."""

OLD_GLOBALS = {"oldpkg.conf.Config", "oldpkg.conf.Optim", "oldpkg.legacy.Legacy", "oldpkg.legacy.touch"}
"""Every global the version 1 checkpoint names."""

OLD_CONF = '''\
"""Version 1 of the project's configuration."""

from dataclasses import dataclass, field


@dataclass
class Config:
    hidden: int
    name: str
    features: list = field(default_factory=list)


@dataclass
class Optim:
    lr: float
    betas: tuple = (0.9, 0.999)
'''

NEW_CONF = '''\
"""Version 2: the module moved to newpkg, and Config is called Settings."""

from dataclasses import dataclass, field


@dataclass
class Settings:
    hidden: int
    name: str
    features: list = field(default_factory=list)


@dataclass
class Optim:
    lr: float
    betas: tuple = (0.9, 0.999)
'''

OLD_LEGACY = '''\
"""Version 1 only: every use of this module leaves a mark in {marks}."""

from pathlib import Path

MARKS = Path({marks!r})
(MARKS / "imported").write_text("oldpkg.legacy was imported")


def touch(name):
    (MARKS / "touched").write_text("touch was called")
    return name


class Legacy:
    def __init__(self, x):
        self.x = x

    def __setstate__(self, state):
        (MARKS / "setstate").write_text("a Legacy was rebuilt")
        self.__dict__.update(state)


class Hook:
    """Pickles as a call of touch: what a malicious pickle would do."""

    def __reduce__(self):
        return (touch, ("hooked",))
'''

MOVES = {
    "moved_modules": {"oldpkg.conf": "newpkg.conf"},
    "moved_globals": {"oldpkg.conf.Config": "newpkg.conf.Settings"},
    "deleted_globals": ["oldpkg.legacy.*"],
}
"""How version 2 of the code moved version 1's globals (the converter file literals)."""

DROP_LEGACY = """\
from ckpt_path.pickles import DeletedGlobal


def convert(ckpt):
    hparams = ckpt["hyper_parameters"]
    legacy, hook = hparams.pop("legacy"), hparams.pop("hook")
    if not isinstance(legacy, DeletedGlobal) or not isinstance(hook, DeletedGlobal):
        raise TypeError(f"expected placeholders, got {legacy!r} and {hook!r}")
    hparams["legacy_x"] = legacy.state["x"]
    hparams["legacy_was"] = legacy.__ckpt_path_global__
    hparams["hook_args"] = list(hook.args)
    return ckpt
"""
"""A convert function that reads the placeholders of the deleted globals and drops them."""


def render(source: str, target: str, code: str = "", **literals: object) -> str:
    """Return a converter file: docstring, source/target, the literals, then ``code``."""
    lines = [f'"""Converter {source} -> {target}."""', "", f"source = {source!r}", f"target = {target!r}"]
    lines += [f"{name} = {value!r}" for name, value in literals.items()]
    return "\n".join(lines) + "\n\n\n" + code


@dataclass
class Project:
    """A project on ``sys.path`` whose code changes between saving and loading a checkpoint."""

    root: Path
    marks: Path
    monkeypatch: pytest.MonkeyPatch

    def write(self, relative: str, text: str) -> None:
        """Write a source file of the project and make the import system see it."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("", encoding="utf-8")
        path.write_text(text, encoding="utf-8")
        importlib.invalidate_caches()

    def save_v1(self, path: Path, *, stamped: bool = True, legacy_format: bool = False) -> Path:
        """Save a 1.0.0 checkpoint with version 1's classes in ``hyper_parameters``.

        It is stamped unless ``stamped`` is false; ``hyper_parameters["version"]`` records
        1.0.0 either way. ``legacy_format`` writes torch's pre-zip format.
        """
        self.write("oldpkg/conf.py", OLD_CONF)
        self.write("oldpkg/legacy.py", OLD_LEGACY.format(marks=str(self.marks)))
        conf = importlib.import_module("oldpkg.conf")
        legacy = importlib.import_module("oldpkg.legacy")
        ckpt = {
            "epoch": 3,
            "state_dict": {"encoder.weight": torch.arange(12.0).reshape(3, 4), "encoder.bias": torch.zeros(3)},
            "hyper_parameters": {
                "config": conf.Config(hidden=16, name="gnn", features=["u", "v", "t"]),
                "optim": conf.Optim(lr=1e-3),
                "legacy": legacy.Legacy(x=3),
                "hook": legacy.Hook(),
                "version": "1.0.0",
            },
        }
        if stamped:
            ckpt["ckpt_path"] = {"version": "1.0.0", "history": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy_format)
        for mark in self.marks.iterdir():  # importing version 1 to save it left marks
            mark.unlink()
        return path

    def move_to_v2(self, *, keep_legacy: bool = False) -> None:
        """Change the code to version 2: oldpkg.conf is gone, newpkg.conf holds Settings.

        With ``keep_legacy`` the file of ``oldpkg.legacy`` stays on disk (importable, leaving
        marks if anything imports it); it is forgotten by ``sys.modules`` either way.
        """
        self.write("newpkg/conf.py", NEW_CONF)
        (self.root / "oldpkg" / "conf.py").unlink()
        if not keep_legacy:
            shutil.rmtree(self.root / "oldpkg")
        shutil.rmtree(self.root / "oldpkg" / "__pycache__", ignore_errors=True)
        for name in ("oldpkg.legacy", "oldpkg.conf", "oldpkg"):
            self.monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """Make an empty project directory on ``sys.path``, and work in ``tmp_path``.

    The project's own MonkeyPatch is undone first (it may put forgotten modules back), then every
    module of the project is dropped, so that no test sees another test's classes.
    """
    root = tmp_path / "code"
    root.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.chdir(tmp_path)
    assert not [name for name in sys.modules if name.split(".")[0] in PACKAGES]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield Project(root=root, marks=marks, monkeypatch=patch)
    for name in [n for n in sys.modules if n.split(".")[0] in PACKAGES]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def v1_ckpt(project: Project, tmp_path: Path) -> Path:
    """Save the version 1 checkpoint, then change the code to version 2 (oldpkg deleted)."""
    path = project.save_v1(tmp_path / "in" / "v1.ckpt")
    project.move_to_v2()
    return path


@pytest.fixture
def converters(tmp_path: Path) -> Path:
    """Make an empty converters directory."""
    directory = tmp_path / "converters"
    directory.mkdir()
    return directory


@pytest.fixture
def torch_loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every ``torch.load`` call (the calls still happen)."""
    calls: list[dict[str, Any]] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def write_file(directory: Path, name: str, text: str) -> Path:
    """Write ``<directory>/<name>.py`` and return it."""
    path = directory / f"{name}.py"
    path.write_text(text, encoding="utf-8")
    return path


def v2_converters(directory: Path, *, drop: bool = True) -> Path:
    """Write the 1.0.0 -> 2.0.0 converter with version 2's moves; it drops the placeholders if ``drop``."""
    code = DROP_LEGACY if drop else ""
    write_file(directory, "001_v2", render("1.0.0", "2.0.0", code, touches=[], **MOVES))
    return directory


def load_current(path: Path) -> Any:
    """Load a converted checkpoint as a user of version 2 would: weights only, its classes allowed."""
    conf = importlib.import_module("newpkg.conf")
    with torch.serialization.safe_globals([conf.Settings, conf.Optim]):
        return torch.load(path, weights_only=True)


def assert_current(hparams: dict[str, Any]) -> None:
    """Assert ``hyper_parameters`` hold version 2's classes with version 1's field values."""
    conf = sys.modules["newpkg.conf"]
    assert type(hparams["config"]) is conf.Settings
    assert hparams["config"] == conf.Settings(hidden=16, name="gnn", features=["u", "v", "t"])
    assert type(hparams["optim"]) is conf.Optim
    assert hparams["optim"] == conf.Optim(lr=1e-3, betas=(0.9, 0.999))


def leftovers(directory: Path) -> list[str]:
    """Return the names in ``directory`` other than the input checkpoint's."""
    return sorted(p.name for p in directory.iterdir() if p.name != "v1.ckpt")


# --- moved and renamed classes ------------------------------------------------------------------


def test_the_old_checkpoint_no_longer_loads_on_its_own(v1_ckpt):
    """Without moves the moved classes are refused by name, as weights-only loading must."""
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(v1_ckpt)
    assert set(caught.value.globals_needed) == OLD_GLOBALS
    assert "oldpkg.conf.Config" in str(caught.value)


def test_convert_file_writes_current_classes_with_the_same_fields(v1_ckpt, converters, tmp_path, torch_loads):
    """convert_file maps moved and renamed classes to version 2's, and the output loads weights-only."""
    result = convert_file(v1_ckpt, tmp_path / "out.ckpt", registry=Registry.from_directory(v2_converters(converters)))
    assert [(str(s.step.source), str(s.step.target)) for s in result.steps] == [("1.0.0", "2.0.0")]
    out = load_current(tmp_path / "out.ckpt")
    assert_current(out["hyper_parameters"])
    assert torch.equal(out["state_dict"]["encoder.weight"], torch.arange(12.0).reshape(3, 4))
    stamp = read_stamp(out, ("state_dict",))
    assert stamp is not None
    assert stamp.version == "2.0.0"
    assert torch_loads, "torch.load was never called"
    assert all(call.get("weights_only") is True for call in torch_loads), torch_loads


def test_legacy_format_checkpoint_converts_too(project, converters, tmp_path):
    """A pre-zip torch file (which names one refused global per attempt) maps its moved classes as well."""
    path = project.save_v1(tmp_path / "in" / "v1.ckpt", legacy_format=True)
    project.move_to_v2()
    registry = Registry.from_directory(v2_converters(converters))
    assert load_checkpoint(path, moves=everything_deleted()).format == "torch-legacy"
    convert_file(path, tmp_path / "out.ckpt", registry=registry)
    hparams = load_current(tmp_path / "out.ckpt")["hyper_parameters"]
    assert_current(hparams)
    assert hparams["legacy_x"] == 3


@pytest.mark.parametrize(
    ("settings", "source"),
    [
        ('version-key = "hyper_parameters.version"', None),
        ("", "1.0.0"),
        ("", "auto"),
    ],
    ids=["version-key", "from", "from-auto"],
)
def test_unstamped_checkpoint_with_moved_classes_finds_its_version(project, converters, tmp_path, settings, source):
    """The peek learns an unstamped file's version from version-key or the schemas, then the path's moves apply."""
    path = project.save_v1(tmp_path / "in" / "v1.ckpt", stamped=False)
    project.move_to_v2()
    (tmp_path / "pyproject.toml").write_text(f"[tool.ckpt-path]\n{settings}\n", encoding="utf-8")
    (converters / "schemas").mkdir()
    schema = '{"version": "1.0.0", "tensors": {"encoder.weight": {"shape": [3, 4]}, "encoder.bias": {"shape": [3]}}}'
    (converters / "schemas" / "1.0.0.json").write_text(schema, encoding="utf-8")
    result = convert_file(
        path, tmp_path / "out.ckpt", source=source, registry=Registry.from_directory(v2_converters(converters))
    )
    assert str(result.plan.source) == "1.0.0"
    out = load_current(tmp_path / "out.ckpt")
    assert_current(out["hyper_parameters"])
    assert out["ckpt_path"]["version"] == "2.0.0"


def test_convert_function_inspects_and_drops_deleted_globals(v1_ckpt, converters, tmp_path):
    """A deleted class and a deleted function reach convert as placeholders holding their pickled data."""
    convert_file(v1_ckpt, tmp_path / "out.ckpt", registry=Registry.from_directory(v2_converters(converters)))
    hparams = load_current(tmp_path / "out.ckpt")["hyper_parameters"]
    assert "legacy" not in hparams
    assert "hook" not in hparams
    assert hparams["legacy_x"] == 3
    assert hparams["legacy_was"] == "oldpkg.legacy.Legacy"
    assert hparams["hook_args"] == ["hooked"]


def test_load_upgrades_pickled_classes_in_memory(v1_ckpt, converters, torch_loads):
    """Load returns version 2's objects and leaves the file alone."""
    before = v1_ckpt.read_bytes()
    ckpt = load(v1_ckpt, registry=Registry.from_directory(v2_converters(converters)))
    assert_current(ckpt["hyper_parameters"])
    assert ckpt["hyper_parameters"]["legacy_x"] == 3
    stamp = read_stamp(ckpt, ("state_dict",))
    assert stamp is not None
    assert stamp.version == "2.0.0"
    assert v1_ckpt.read_bytes() == before
    assert all(call.get("weights_only") is True for call in torch_loads), torch_loads


def test_cli_convert_maps_moved_classes(v1_ckpt, converters, tmp_path):
    """`ckpt-path convert --converters DIR` writes a checkpoint of version 2's classes."""
    result = cli("convert", v1_ckpt, "-o", tmp_path / "out.ckpt", "--converters", v2_converters(converters))
    assert result.exit_code == 0, result.output
    assert "1.0.0 -> 2.0.0" in result.stdout
    out = load_current(tmp_path / "out.ckpt")
    assert_current(out["hyper_parameters"])
    assert out["ckpt_path"]["version"] == "2.0.0"


@pytest.mark.parametrize(
    "moves",
    [
        {"moved_modules": {"oldpkg": "newpkg"}, "moved_globals": {"oldpkg.conf.Config": "newpkg.conf.Settings"}},
        {
            "moved_globals": {
                "oldpkg.conf.Config": "newpkg.conf.Settings",
                "oldpkg.conf.Optim": "newpkg.conf.Optim",
            },
        },
    ],
    ids=["package-moved", "each-global-moved"],
)
def test_moves_can_name_a_parent_package_or_each_global(v1_ckpt, converters, tmp_path, moves):
    """A moved parent package carries its submodules; moved globals work one by one."""
    deleted = ["oldpkg.legacy.Legacy", "oldpkg.legacy.touch"]
    write_file(
        converters, "001_v2", render("1.0.0", "2.0.0", DROP_LEGACY, touches=[], deleted_globals=deleted, **moves)
    )
    convert_file(v1_ckpt, tmp_path / "out.ckpt", registry=Registry.from_directory(converters))
    assert_current(load_current(tmp_path / "out.ckpt")["hyper_parameters"])


def test_a_move_to_something_that_does_not_exist_is_one_line_error(v1_ckpt, converters, tmp_path):
    """A move whose target cannot be imported names the target and the converter file."""
    moves = {**MOVES, "moved_globals": {"oldpkg.conf.Config": "newpkg.conf.Missing"}}
    write_file(converters, "001_v2", render("1.0.0", "2.0.0", DROP_LEGACY, touches=[], **moves))
    result = cli("convert", v1_ckpt, "-o", tmp_path / "out.ckpt", "--converters", converters)
    line = assert_one_line_error(result)
    assert "newpkg.conf.Missing" in line
    assert "001_v2.py" in line
    assert not (tmp_path / "out.ckpt").exists()


# --- deleted globals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "deleted",
    [["oldpkg.legacy.Legacy", "oldpkg.legacy.touch"], ["oldpkg.legacy.*"], ["oldpkg.leg*"]],
    ids=["exact", "module-glob", "prefix-glob"],
)
def test_deleted_global_becomes_an_inert_placeholder(v1_ckpt, converters, deleted):
    """A deleted global loads as a DeletedGlobal that keeps its state (BUILD) or its arguments (REDUCE)."""
    moves = {**MOVES, "deleted_globals": deleted}
    write_file(converters, "001_v2", render("1.0.0", "2.0.0", touches=[], **moves))
    registry = Registry.from_directory(converters)
    assert registry.converters[0].kind == "moves"
    ckpt = load(v1_ckpt, registry=registry)
    legacy, hook = ckpt["hyper_parameters"]["legacy"], ckpt["hyper_parameters"]["hook"]
    assert isinstance(legacy, DeletedGlobal)
    assert legacy.__ckpt_path_global__ == "oldpkg.legacy.Legacy"
    assert legacy.state == {"x": 3}
    assert "oldpkg.legacy.Legacy" in repr(legacy)
    assert isinstance(hook, DeletedGlobal)
    assert hook.__ckpt_path_global__ == "oldpkg.legacy.touch"
    assert hook.args == ("hooked",)
    assert_current(ckpt["hyper_parameters"])


def test_placeholders_survive_the_copy_of_ckpt_path_testing_run_edge(v1_ckpt, converters):
    """run_edge (which deep-copies its input) hands convert placeholders with their own state and args."""
    # A converter's unit test loads the old checkpoint with the converter's moves and runs the edge;
    # the copy must not wrap a placeholder's attributes into its ``state``.
    registry = Registry.from_directory(v2_converters(converters))
    loaded = load_checkpoint(v1_ckpt, moves=registry.converters[0].moves)
    legacy = loaded.obj["hyper_parameters"]["legacy"]
    copied = copy.deepcopy(legacy)
    assert (copied.state, copied.args) == (legacy.state, legacy.args) == ({"x": 3}, ())
    converted = run_edge(registry, "1.0.0", "2.0.0", loaded.obj)
    assert converted["hyper_parameters"]["legacy_x"] == 3
    assert converted["hyper_parameters"]["hook_args"] == ["hooked"]


def test_saving_a_placeholder_nobody_dropped_fails_and_writes_nothing(v1_ckpt, converters, tmp_path):
    """convert_file refuses to save a leftover placeholder, naming the deleted global; nothing is written."""
    registry = Registry.from_directory(v2_converters(converters, drop=False))
    with pytest.raises(CheckpointError) as caught:
        convert_file(v1_ckpt, tmp_path / "in" / "out.ckpt", registry=registry)
    message = str(caught.value)
    assert "\n" not in message
    assert "deleted global oldpkg.legacy." in message
    assert leftovers(tmp_path / "in") == []


def test_cli_saving_a_placeholder_nobody_dropped_is_one_line_error(v1_ckpt, converters, tmp_path):
    """`convert` exits 1 with one line naming the deleted global, and OUTPUT is not created."""
    result = cli(
        "convert", v1_ckpt, "-o", tmp_path / "in" / "out.ckpt", "--converters", v2_converters(converters, drop=False)
    )
    line = assert_one_line_error(result)
    assert "oldpkg.legacy." in line
    assert "drop or replace it" in line
    assert leftovers(tmp_path / "in") == []


def test_cli_plan_reads_the_stamp_of_a_checkpoint_with_moved_classes(v1_ckpt, converters):
    """`plan CKPT latest` reads the stamp of a checkpoint whose classes moved, as inspect does."""
    # Reading a stamp needs no class: the file can be read with placeholders, importing nothing.
    result = cli("plan", v1_ckpt, "latest", "--json", "--converters", v2_converters(converters))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["source"], plan["target"]) == ("1.0.0", "2.0.0")
    assert [step["converter"] for step in plan["steps"]] == ["001_v2"]


# --- only the moves of the planned path ---------------------------------------------------------


@pytest.fixture
def branched(converters: Path) -> Path:
    """Write ``1.0.0 -> 2.0.0`` (no moves) and a branch ``1.0.0 -> 1.0.0+side`` with version 2's moves."""
    write_file(converters, "001_main", render("1.0.0", "2.0.0", DROP_LEGACY, touches=[]))
    write_file(converters, "002_side", render("1.0.0", "1.0.0+side", DROP_LEGACY, touches=[], **MOVES))
    return converters


def test_moves_of_a_converter_off_the_path_do_not_apply(v1_ckpt, branched, tmp_path):
    """Converting to 2.0.0 is refused, naming the moved global, though a branch declares the move."""
    with pytest.raises(UnsafeCheckpointError) as caught:
        convert_file(v1_ckpt, tmp_path / "out.ckpt", target="2.0.0", registry=Registry.from_directory(branched))
    assert "oldpkg.conf.Config" in caught.value.globals_needed
    assert "oldpkg.conf.Config" in str(caught.value)
    assert not (tmp_path / "out.ckpt").exists()
    assert "newpkg.conf" not in sys.modules


def test_cli_moves_of_a_converter_off_the_path_do_not_apply(v1_ckpt, branched, tmp_path):
    """`convert --to 2.0.0` exits 1 naming the global, with the branch's moves declared."""
    result = cli("convert", v1_ckpt, "-o", tmp_path / "out.ckpt", "--to", "2.0.0", "--converters", branched)
    line = assert_one_line_error(result)
    assert "oldpkg.conf.Config" in line
    assert not (tmp_path / "out.ckpt").exists()


def test_the_same_moves_on_the_path_apply(v1_ckpt, branched, tmp_path):
    """Converting along the branch that declares the moves works."""
    result = cli("convert", v1_ckpt, "-o", tmp_path / "out.ckpt", "--to", "side@latest", "--converters", branched)
    assert result.exit_code == 0, result.output
    out = load_current(tmp_path / "out.ckpt")
    assert_current(out["hyper_parameters"])
    assert out["ckpt_path"]["version"] == "1.0.0+side"


def test_moves_of_a_later_step_on_the_path_apply(v1_ckpt, converters, tmp_path):
    """Moves are declared by any step of the path: all are known before the checkpoint is loaded."""
    write_file(converters, "001_first", render("1.0.0", "1.5.0", touches=[], moved_globals={"x.Y": "x.Z"}))
    write_file(converters, "002_second", render("1.5.0", "2.0.0", DROP_LEGACY, touches=[], **MOVES))
    convert_file(v1_ckpt, tmp_path / "out.ckpt", registry=Registry.from_directory(converters))
    assert_current(load_current(tmp_path / "out.ckpt")["hyper_parameters"])


# --- nothing from the pickle runs ---------------------------------------------------------------


@pytest.fixture
def v1_ckpt_legacy_on_disk(project: Project, tmp_path: Path) -> Path:
    """Save the version 1 checkpoint; version 2 moves conf but ``oldpkg/legacy.py`` is still on disk."""
    path = project.save_v1(tmp_path / "in" / "v1.ckpt")
    project.move_to_v2(keep_legacy=True)
    assert importlib.util.find_spec("oldpkg.legacy") is not None  # it could be imported
    return path


@pytest.mark.parametrize(
    "moves",
    [
        {},
        {"moved_modules": MOVES["moved_modules"], "moved_globals": MOVES["moved_globals"]},
    ],
    ids=["no-converter-has-moves", "path-moves-miss-it"],
)
def test_a_global_no_converter_covers_is_refused_and_nothing_runs(
    v1_ckpt_legacy_on_disk, project, converters, torch_loads, moves
):
    """An uncovered global is refused by name; nothing is imported, rebuilt or called; no fallback load."""
    write_file(converters, "001_v2", render("1.0.0", "2.0.0", "def convert(ckpt):\n    return ckpt\n", **moves))
    output = v1_ckpt_legacy_on_disk.parent / "out.ckpt"
    with pytest.raises(UnsafeCheckpointError) as caught:
        convert_file(v1_ckpt_legacy_on_disk, output, registry=Registry.from_directory(converters))
    assert "oldpkg.legacy.Legacy" in caught.value.globals_needed
    assert "oldpkg.legacy.touch" in caught.value.globals_needed
    assert "oldpkg.legacy.Legacy" in str(caught.value)
    assert sorted(p.name for p in project.marks.iterdir()) == []
    assert "oldpkg.legacy" not in sys.modules
    assert torch_loads
    assert all(call.get("weights_only") is True for call in torch_loads), torch_loads
    assert not output.exists()


def test_the_peek_imports_and_runs_nothing(v1_ckpt_legacy_on_disk, project):
    """Reading with placeholders for every global imports no module and calls no pickled code."""
    before = set(sys.modules)
    loaded = load_checkpoint(v1_ckpt_legacy_on_disk, moves=everything_deleted())
    hparams = loaded.obj["hyper_parameters"]
    placeholders = [v for v in hparams.values() if isinstance(v, DeletedGlobal)]
    assert {type(v).__ckpt_path_global__ for v in placeholders} == OLD_GLOBALS
    assert hparams["config"].state == {"hidden": 16, "name": "gnn", "features": ["u", "v", "t"]}
    stamp = read_stamp(loaded.obj, loaded.state_dict_at)
    assert stamp is not None
    assert stamp.version == "1.0.0"
    assert set(sys.modules) == before
    assert sorted(p.name for p in project.marks.iterdir()) == []


def test_deleting_a_global_whose_module_still_exists_runs_none_of_it(
    v1_ckpt_legacy_on_disk, project, converters, tmp_path
):
    """A conversion that deletes oldpkg.legacy's globals never imports it, though it is importable."""
    registry = Registry.from_directory(v2_converters(converters))
    convert_file(v1_ckpt_legacy_on_disk, tmp_path / "out.ckpt", registry=registry)
    assert load_current(tmp_path / "out.ckpt")["hyper_parameters"]["legacy_x"] == 3
    assert sorted(p.name for p in project.marks.iterdir()) == []
    assert "oldpkg.legacy" not in sys.modules


# --- sys.modules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run",
    [
        lambda ckpt, registry, out: convert_file(ckpt, out, registry=registry),
        lambda ckpt, registry, _out: load(ckpt, registry=registry),
    ],
    ids=["convert_file", "load"],
)
def test_no_change_to_sys_modules_outlives_the_load(
    v1_ckpt, project, converters, tmp_path, run: Callable[[Path, Registry, Path], object]
):
    """After a load only version 2's target module is new in sys.modules; no alias of the old module exists."""
    # The move imports ``newpkg.conf`` by design: its ``Settings`` is what the checkpoint now holds.
    # A first run warms up torch's and ckpt-path's own lazy imports; then ``newpkg`` is forgotten
    # and the second run is measured.
    registry = Registry.from_directory(v2_converters(converters))
    run(v1_ckpt, registry, tmp_path / "warm.ckpt")
    for name in ("newpkg.conf", "newpkg"):
        project.monkeypatch.delitem(sys.modules, name)
    before, path_before = set(sys.modules), list(sys.path)
    run(v1_ckpt, registry, tmp_path / "out.ckpt")
    after = set(sys.modules)
    assert after - before == {"newpkg", "newpkg.conf"}
    assert before - after == set()
    assert sys.path == path_before
    for old in ("oldpkg", "oldpkg.conf", "oldpkg.legacy"):
        assert old not in sys.modules
    aliases = [name for name, module in sys.modules.items() if "oldpkg" in f"{name} {getattr(module, '__name__', '')}"]
    assert aliases == []


# --- inspect ------------------------------------------------------------------------------------


def test_inspect_file_lists_needed_globals_without_converters(v1_ckpt, project):
    """inspect_file describes the checkpoint with placeholders: stamp, tensors, and the globals it needs."""
    info = inspect_file(v1_ckpt)
    assert info.version == "1.0.0"
    assert info.state_dict == "state_dict"
    assert info.tensors == 2
    assert set(info.globals) == OLD_GLOBALS
    assert "newpkg.conf" not in sys.modules
    assert sorted(p.name for p in project.marks.iterdir()) == []


def test_cli_inspect_shows_needs_and_stamp_without_converters(v1_ckpt, tmp_path):
    """`inspect` with no converters directory prints the stamp and a needs: line naming each global."""
    assert not (tmp_path / "converters").exists()
    result = cli("inspect", v1_ckpt)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    version = next(line for line in lines if line.startswith("version:"))
    assert version.split() == ["version:", "1.0.0"]
    needs = next(line for line in lines if line.startswith("needs:"))
    for name in OLD_GLOBALS:
        assert name in needs


def test_cli_inspect_json_lists_globals(v1_ckpt):
    """`inspect --json` gives the stamp and the needed globals."""
    result = cli("inspect", v1_ckpt, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["version"] == "1.0.0"
    assert info["history"] == []
    assert set(info["globals"]) == OLD_GLOBALS
