"""Importing converter files: each converters directory runs with its own helper modules."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

import ckpt_path
from ckpt_path import StepError
from ckpt_path.runner import load_converter_code, run

CONVERTER = '''"""Record which helper ran."""

{imports}

source = "1.0"
target = "1.1"
touches = []


def convert(ckpt):
    ckpt["who"] = {who}
    return ckpt
'''


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def converters(directory: Path, who: str, *, imports: str = "import _helpers", expr: str = "_helpers.WHO") -> Path:
    """Write a directory whose ``_helpers.py`` says ``WHO = who`` and whose converter records it."""
    write(directory / "_helpers.py", f"WHO = {who!r}\n")
    write(directory / "001_up.py", CONVERTER.format(imports=imports, who=expr))
    return directory


def who_ran(directory: Path) -> object:
    """Read ``directory`` as a registry, run 1.0 -> 1.1 and return what the converter recorded."""
    registry = ckpt_path.Registry.from_directory(directory)
    outcome = run(registry.plan("1.0", "1.1"), {"state_dict": {"w": torch.zeros(1)}})
    return outcome.checkpoint["who"]


def test_two_directories_used_alternately_each_use_their_own_helper(tmp_path):
    """Directories a, b, a, each with its own _helpers.py, run with their own helper every time."""
    a = converters(tmp_path / "a", "a")
    b = converters(tmp_path / "b", "b")
    assert [who_ran(a), who_ran(b), who_ran(a)] == ["a", "b", "a"]


def test_a_helper_importing_another_helper_gets_its_own_directory(tmp_path):
    """A helper that imports a second helper gets the second helper of its own directory."""
    for name in ("a", "b"):
        directory = converters(tmp_path / name, name)
        write(directory / "_helpers.py", "import _names\n\nWHO = _names.NAME\n")
        write(directory / "_names.py", f"NAME = {name!r}\n")
    assert [who_ran(tmp_path / "a"), who_ran(tmp_path / "b"), who_ran(tmp_path / "a")] == ["a", "b", "a"]


def test_a_helper_package_with_a_submodule_is_the_directory_own(tmp_path):
    """``import _common.names`` gives each directory its own helper package and submodule."""
    for name in ("a", "b"):
        directory = converters(tmp_path / name, name, imports="import _common.names", expr="_common.names.WHO")
        write(directory / "_common" / "__init__.py", "")
        write(directory / "_common" / "names.py", f"WHO = {name!r}\n")
    assert [who_ran(tmp_path / "a"), who_ran(tmp_path / "b")] == ["a", "b"]


RELATIVE = '''"""Import the helper when the step runs."""

source = "1.0"
target = "1.1"
touches = []


def convert(ckpt):
    from . import _helpers

    ckpt["who"] = _helpers.WHO
    return ckpt
'''


def test_relative_import_of_a_helper_works_inside_convert(tmp_path):
    """``from . import _helpers`` inside ``convert`` (at run time, not import time) finds the directory's helper."""
    for name in ("a", "b"):
        write(converters(tmp_path / name, name) / "001_up.py", RELATIVE)
    assert [who_ran(tmp_path / "a"), who_ran(tmp_path / "b")] == ["a", "b"]


def test_plain_helper_names_do_not_stay_in_sys_modules(tmp_path):
    """After a run, ``_helpers`` is not left in sys.modules, so a project's own ``_helpers`` still imports."""
    assert who_ran(converters(tmp_path / "a", "a")) == "a"
    assert "_helpers" not in sys.modules


def test_a_module_of_the_same_name_from_elsewhere_is_hidden_then_restored(tmp_path, monkeypatch):
    """A ``_helpers`` already imported from elsewhere does not reach the converter, and is back afterwards."""
    theirs = types.ModuleType("_helpers")
    theirs.WHO = "someone else"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_helpers", theirs)
    assert who_ran(converters(tmp_path / "a", "a")) == "a"
    assert sys.modules["_helpers"] is theirs


def test_standard_library_names_are_not_taken_from_the_directory(tmp_path):
    """A helper package named like a standard library module (``copy/``) does not replace the real one."""
    directory = converters(tmp_path / "a", "a", imports="import copy", expr="copy.__name__ + str(copy.deepcopy(1))")
    write(directory / "copy" / "__init__.py", "raise RuntimeError('the directory copy.py was imported')\n")
    assert who_ran(directory) == "copy1"


def test_a_sibling_package_without_underscore_still_imports_and_does_not_leak(tmp_path):
    """A plain ``import shared_names`` of a package beside the converters works per directory and is not left behind."""
    for name in ("a", "b"):
        directory = converters(tmp_path / name, name, imports="import shared_names", expr="shared_names.WHO")
        write(directory / "shared_names" / "__init__.py", f"WHO = {name!r}\n")
    assert [who_ran(tmp_path / "a"), who_ran(tmp_path / "b")] == ["a", "b"]
    assert "shared_names" not in sys.modules


def test_converter_edited_after_the_graph_was_read_is_refused(tmp_path):
    """A converter file changed between reading the graph and running it is a StepError, not run."""
    directory = converters(tmp_path / "a", "a")
    registry = ckpt_path.Registry.from_directory(directory)
    path = directory / "001_up.py"
    path.write_text(path.read_text(encoding="utf-8").replace("_helpers.WHO", "'edited'"), encoding="utf-8")
    with pytest.raises(StepError, match="changed after the graph was read"):
        run(registry.plan("1.0", "1.1"), {"state_dict": {"w": torch.zeros(1)}})


def test_module_is_cached_per_file_content(tmp_path):
    """Loading the same converter twice gives the same module; its name lies in the directory's own package."""
    directory = converters(tmp_path / "a", "a")
    (converter,) = ckpt_path.Registry.from_directory(directory).converters
    module = load_converter_code(converter)
    assert load_converter_code(converter) is module
    assert module.__name__.startswith("ckpt_path_converters_")
    assert module.__name__.endswith(".001_up")
    assert Path(module.__file__ or "") == (directory / "001_up.py").resolve()


def test_a_helper_that_fails_to_import_is_a_step_error_naming_the_converter(tmp_path):
    """A helper raising at import makes the step fail with a StepError naming the converter file and line."""
    directory = converters(tmp_path / "a", "a")
    write(directory / "_helpers.py", "raise ValueError('bad helper')\n")
    with pytest.raises(
        StepError, match=r"importing the converter failed: ValueError: bad helper \(at .*001_up\.py:3\)"
    ):
        who_ran(directory)
    assert "_helpers" not in sys.modules
