"""One pipeline behind every entry point: the same scenario gives the same outcome everywhere.

Each scenario is a checkpoint file plus what the user says about it (``--from``, safe globals,
project settings); each entry point is a way a user reaches a conversion: the command line,
``convert_file``, ``load``, ``upgrade`` on an object in memory, and the Lightning mixin.
A scenario either converts to the same state dict (bitwise) and stamp everywhere, or fails with
the same error class everywhere. Scenarios about pickled classes do not apply to the in-memory
entry points: there, someone else already unpickled the object.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import Result

import ckpt_path
from ckpt_path import CkptPathError, LossyPathError, NoPathError, NoStampError, Registry, UnsupportedVersionError
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.commands import convert_file, load
from ckpt_path.demo.models import make_checkpoint
from ckpt_path.lightning import CkptPathMixin
from ckpt_path.pipeline import upgrade
from ckpt_path.stamp import STAMP_KEY
from helpers import cli, copy_examples

MOVED = """\
from dataclasses import dataclass


@dataclass
class Config:
    hidden: int
    name: str
"""

ATTR_DICT = """\
class AttrDict(dict):
    def __getattr__(self, key):
        return self[key]
"""

EXTRA = """\
from dataclasses import dataclass


@dataclass
class Extra:
    note: str
"""


@dataclass
class Lab:
    """A project in ``tmp_path``: the example converters, a pyproject, and a code directory on sys.path."""

    root: Path
    code: Path
    converters: Path
    names: dict[str, str] = field(default_factory=dict)

    def settings(self, **values: str) -> None:
        """Write ``[tool.ckpt-path]`` of the project that owns the converters."""
        lines = ["[tool.ckpt-path]", *(f'{k.replace("_", "-")} = "{v}"' for k, v in values.items())]
        (self.root / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def declare(self, file: str, **literals: object) -> None:
        """Add module-level literals (moves, read_as_dict) to one of the copied converter files."""
        path = self.converters / file
        extra = "".join(f"{name} = {value!r}\n" for name, value in literals.items())
        path.write_text(path.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")

    def module(self, role: str, text: str) -> Any:
        """Write a uniquely named module of the project, import it and return it."""
        name = f"lab_{role}_{uuid.uuid4().hex[:10]}"
        (self.code / f"{name}.py").write_text(text, encoding="utf-8")
        importlib.invalidate_caches()
        self.names[role] = name
        return importlib.import_module(name)

    def forget(self, role: str) -> None:
        """Delete a module of the project: the code moved on, old pickles still name it."""
        name = self.names[role]
        (self.code / f"{name}.py").unlink()
        sys.modules.pop(name, None)
        importlib.invalidate_caches()

    def save(self, name: str, stamp: str | None, *, layout: str | None = None, **hyper: Any) -> Path:
        """Save a seed-1 demo checkpoint of ``layout`` (default: ``stamp``), stamped unless ``stamp`` is None."""
        ckpt = make_checkpoint(layout or stamp or "", seed=1)
        ckpt["hyper_parameters"].update(hyper)
        if stamp is not None:
            ckpt[STAMP_KEY] = {"version": stamp, "history": []}
        path = self.root / name
        torch.save(ckpt, path)
        return path


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """Make a project with a copy of the example converters; run from a directory outside it."""
    root = tmp_path / "project"
    code = tmp_path / "code"
    code.mkdir()
    copy_examples(root / "converters")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # settings must come from the converters' project, not the cwd
    monkeypatch.syspath_prepend(str(code))
    made = Lab(root=root, code=code, converters=root / "converters")
    yield made
    for name in made.names.values():
        sys.modules.pop(name, None)


# --- scenarios -----------------------------------------------------------------------------------


@dataclass
class Case:
    """A checkpoint file, what the user says about it, and what must happen."""

    file: Path
    target: str
    expected: str | type[CkptPathError]
    """The layout the result must have (a demo version), or the error class."""
    source: str | None = None
    safe_globals: tuple[str, ...] = ()
    allow_lossy: bool = False
    pickled_classes: bool = False
    """The file names classes, so only the file-reading entry points apply."""


def _stamped(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", "0.2.0"), target="0.3.0", expected="0.3.0")


def _version_key(lab: Lab) -> Case:
    lab.settings(version_key="hyper_parameters.version")
    return Case(file=lab.save("a.ckpt", None, layout="0.2.0", version="0.2.0"), target="0.3.0", expected="0.3.0")


def _auto(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", None, layout="0.1.0"), target="0.3.0", expected="0.3.0", source="auto")


def _from(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", None, layout="0.2.0"), target="0.3.0", expected="0.3.0", source="0.2.0")


def _nothing(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", None, layout="0.2.0"), target="0.3.0", expected=NoStampError)


def _between(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", "0.2.5", layout="0.2.0"), target="0.3.0", expected="0.3.0")


def _moved(lab: Lab, **extra: Any) -> Case:
    old = lab.module("old", MOVED)
    path = lab.save("a.ckpt", "0.2.0", config=old.Config(hidden=16, name="gnn"), **extra)
    lab.forget("old")
    lab.module("new", MOVED)
    lab.declare("002_move_msl.py", moved_modules={lab.names["old"]: lab.names["new"]})
    return Case(file=path, target="0.3.0", expected="0.3.0", pickled_classes=True)


def _moved_and_safe(lab: Lab) -> Case:
    extra = lab.module("extra", EXTRA)
    case = _moved(lab, extra=extra.Extra(note="kept"))
    case.safe_globals = (f"{lab.names['extra']}.Extra",)
    return case


def _moved_without_safe(lab: Lab) -> Case:
    case = _moved_and_safe(lab)
    case.safe_globals = ()
    case.expected = ckpt_path.UnsafeCheckpointError
    return case


def _dict_subclass(lab: Lab) -> Case:
    attr = lab.module("attr", ATTR_DICT)
    path = lab.save("a.ckpt", "0.2.0", extra=attr.AttrDict(lr=0.1, nested=attr.AttrDict(x=2)))
    lab.declare("002_move_msl.py", read_as_dict=[f"{lab.names['attr']}.AttrDict"])
    return Case(file=path, target="0.3.0", expected="0.3.0", pickled_classes=True)


def _lossy(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", "1.1.0"), target="1.0.0", expected=LossyPathError)


def _lossy_allowed(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", "1.1.0"), target="1.0.0", expected="1.0.0", allow_lossy=True)


def _no_path(lab: Lab) -> Case:
    return Case(file=lab.save("a.ckpt", "1.1.0"), target="0.1.0", expected=NoPathError)


def _too_old(lab: Lab) -> Case:
    lab.settings(oldest="0.2.0", last_release="forecaster 0.1.9")
    return Case(file=lab.save("a.ckpt", "0.1.0"), target="0.3.0", expected=UnsupportedVersionError)


SCENARIOS: dict[str, Callable[[Lab], Case]] = {
    "stamped": _stamped,
    "unstamped, version-key": _version_key,
    "unstamped, --from auto": _auto,
    "unstamped, --from VERSION": _from,
    "unstamped, nothing said": _nothing,
    "stamped between two versions": _between,
    "moved globals": _moved,
    "moved globals and --safe-global": _moved_and_safe,
    "moved globals, a global nobody allowed": _moved_without_safe,
    "dict subclass read as dict": _dict_subclass,
    "lossy path": _lossy,
    "lossy path allowed": _lossy_allowed,
    "no path": _no_path,
    "older than oldest": _too_old,
}


# --- entry points: each returns the converted checkpoint object, or raises ----------------------


def _registry(lab: Lab) -> Registry:
    return Registry.from_directory(lab.converters)


def via_cli(lab: Lab, case: Case) -> Any:
    out = lab.root / "out.ckpt"
    args = ["convert", str(case.file), "-o", str(out), "--to", case.target, "--converters", str(lab.converters)]
    args += ["--from", case.source] if case.source else []
    args += ["--allow-lossy"] if case.allow_lossy else []
    for name in case.safe_globals:
        args += ["--safe-global", name]
    result = cli(*args)
    if result.exit_code != 0:
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        (line,) = result.stderr.splitlines()
        raise _CliError(line)
    return torch.load(out, weights_only=False)


def via_convert_file(lab: Lab, case: Case) -> Any:
    out = lab.root / "out.ckpt"
    convert_file(
        case.file,
        out,
        target=case.target,
        source=case.source,
        registry=_registry(lab),
        allow_lossy=case.allow_lossy,
        safe_globals=case.safe_globals,
    )
    return torch.load(out, weights_only=False)


def via_load(lab: Lab, case: Case) -> Any:
    return load(
        case.file,
        case.target,
        registry=_registry(lab),
        source=case.source,
        allow_lossy=case.allow_lossy,
        safe_globals=case.safe_globals,
    )


def via_upgrade_in_memory(lab: Lab, case: Case) -> Any:
    held = Checkpoint.from_object(torch.load(case.file, weights_only=True))
    upgrade(held, _registry(lab), case.target, source=case.source, allow_lossy=case.allow_lossy)
    return held.obj


def via_lightning_mixin(lab: Lab, case: Case) -> Any:
    class Model(CkptPathMixin):
        ckpt_path_version = case.target
        ckpt_path_converters = lab.converters
        ckpt_path_unstamped = case.source
        ckpt_path_allow_lossy = case.allow_lossy

    ckpt = torch.load(case.file, weights_only=True)
    Model().on_load_checkpoint(ckpt)
    return ckpt


class _CliError(Exception):
    """The one ``error:`` line the command line printed."""


ENTRY_POINTS = {
    "cli": via_cli,
    "convert_file": via_convert_file,
    "load": via_load,
    "upgrade in memory": via_upgrade_in_memory,
    "lightning mixin": via_lightning_mixin,
}
IN_MEMORY = {"upgrade in memory", "lightning mixin"}


def _reference(version: str) -> dict[str, torch.Tensor]:
    """Return the state dict the example converters must produce: the seed-1 demo model's, moved by hand."""
    sd = {
        k: v.clone()
        for k, v in make_checkpoint("0.2.0" if version != "1.0.0" else "1.1.0", seed=1)["state_dict"].items()
    }
    if version == "1.0.0":  # 1.1.0 -> 1.0.0 drops the output scale
        del sd["output_scale"]
        return sd
    order = [0, 3, 1, 2, 4, 5]  # msl moves from position 3 to 1
    sd["grid_prev_embedder.0.weight"] = sd["grid_prev_embedder.0.weight"][:, order]
    sd["output_map.weight"] = sd["output_map.weight"][order]
    sd["output_map.bias"] = sd["output_map.bias"][order]
    return sd


def _reference_from_010() -> dict[str, torch.Tensor]:
    sd = dict(make_checkpoint("0.1.0", seed=1)["state_dict"])
    for part in ("weight", "bias"):
        sd[f"g2m_gnn.grid_mlp.{part}"] = sd.pop(f"g2m_gnn.grid_mlp.0.{part}")
    order = [0, 3, 1, 2, 4, 5]
    sd["grid_prev_embedder.0.weight"] = sd["grid_prev_embedder.0.weight"][:, order]
    sd["output_map.weight"] = sd["output_map.weight"][order]
    sd["output_map.bias"] = sd["output_map.bias"][order]
    return sd


PICKLED = {
    "moved globals",
    "moved globals and --safe-global",
    "moved globals, a global nobody allowed",
    "dict subclass read as dict",
}
"""Scenarios about the file's pickled classes: the in-memory entry points get objects already unpickled."""

TABLE = [
    pytest.param(scenario, entry, id=f"{scenario} | {entry}")
    for scenario in SCENARIOS
    for entry in ENTRY_POINTS
    if not (entry in IN_MEMORY and scenario in PICKLED)
]


@pytest.mark.parametrize(("scenario", "entry"), TABLE)
def test_every_entry_point_gives_the_same_outcome(lab, scenario, entry):
    """A scenario converts to the same tensors and stamp, or fails with the same error, at every entry point."""
    case = SCENARIOS[scenario](lab)
    assert case.pickled_classes == (scenario in PICKLED)
    run = ENTRY_POINTS[entry]
    if isinstance(case.expected, type):
        if entry == "cli":
            with pytest.raises(_CliError) as caught:
                run(lab, case)
            with pytest.raises(case.expected) as direct:
                via_convert_file(lab, case)
            assert str(caught.value) == f"error: {direct.value}"
        else:
            with pytest.raises(case.expected):
                run(lab, case)
        assert not (lab.root / "out.ckpt").exists()
        return
    result = run(lab, case)
    expected = _reference_from_010() if scenario == "unstamped, --from auto" else _reference(case.expected)
    got = result["state_dict"]
    assert sorted(got) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    assert result[STAMP_KEY]["version"] == case.expected


# --- the failures the pipeline issue found, each pinned -----------------------------------------


def test_mixin_refuses_an_unstamped_checkpoint_it_cannot_place(lab):
    """An unstamped 0.2.0 checkpoint is refused by 0.3.0 code, never loaded with msl scrambled."""
    case = _nothing(lab)
    ckpt = torch.load(case.file, weights_only=True)
    before = {k: v.clone() for k, v in ckpt["state_dict"].items()}

    class Model(CkptPathMixin):
        ckpt_path_version = "0.3.0"
        ckpt_path_converters = lab.converters

    with pytest.raises(NoStampError, match=r"set Model\.ckpt_path_unstamped"):
        Model().on_load_checkpoint(ckpt)
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in before.items())


def test_mixin_reports_converter_errors_as_they_are(lab):
    """A failing step reaches the user as its CkptPathError subclass, not wrapped in RuntimeError."""
    case = _no_path(lab)

    class Model(CkptPathMixin):
        ckpt_path_version = "0.1.0"
        ckpt_path_converters = lab.converters

    with pytest.raises(NoPathError):
        Model().on_load_checkpoint(torch.load(case.file, weights_only=True))


EXPERTS = '''\
"""Fuse the experts (written for two)."""

from ckpt_path.ops import Concat

source = "1.0.0"
target = "2.0.0"
ops = [Concat(["experts.0.w", "experts.1.w"], into="experts.w", dim=0)]
'''


def _experts(tmp_path: Path, count: int, *, schema: bool, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    converters = tmp_path / "experts"
    converters.mkdir(exist_ok=True)
    (converters / "001_fuse.py").write_text(EXPERTS, encoding="utf-8")
    if schema:
        (converters / "schemas").mkdir(exist_ok=True)
        entry = '{"shape": [4, 3], "dtype": "float32"}'
        (converters / "schemas" / "2.0.0.json").write_text(
            f'{{"version": "2.0.0", "tensors": {{"experts.w": {entry}}}}}', encoding="utf-8"
        )
    sd = {f"experts.{e}.w": torch.ones(2, 3, dtype=dtype) for e in range(count)}
    path = tmp_path / "moe.ckpt"
    torch.save({"state_dict": sd, STAMP_KEY: {"version": "1.0.0", "history": []}}, path)
    return converters, path


def _convert(*args: object) -> Result:
    return cli("convert", *args)


def test_half_converted_output_is_caught_by_the_schema(tmp_path):
    """An op written for two experts run on three leaves experts.2.w: the landing schema refuses it."""
    converters, path = _experts(tmp_path, 3, schema=True)
    result = _convert(path, "-o", tmp_path / "out.ckpt", "--converters", converters)
    assert result.exit_code == 1
    assert "experts.2.w: unexpected" in result.stderr
    assert not (tmp_path / "out.ckpt").exists()


def test_a_step_without_schema_is_reported_unverified_and_strict_refuses_it(tmp_path):
    """Without a schema the same step passes its own checks only: said in text and JSON; --strict refuses."""
    converters, path = _experts(tmp_path, 3, schema=False)
    result = _convert(path, "-o", tmp_path / "out.ckpt", "--converters", converters, "--json")
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.stdout)
    assert report["verified"] is False
    assert [(s["verified"], s["status"], s["checked"]) for s in report["steps"]] == [(False, "unverified", ["ops"])]
    text = _convert(path, "-o", tmp_path / "out2.ckpt", "--converters", converters)
    assert "[unverified: ops only]" in text.stdout
    assert "1 of 1 step(s) not verified" in text.stdout
    strict = _convert(path, "-o", tmp_path / "out3.ckpt", "--converters", converters, "--strict")
    assert strict.exit_code == 1
    assert "unverified: version 2.0.0 has no schema" in strict.stderr
    assert not (tmp_path / "out3.ckpt").exists()


def test_a_verified_step_says_so(tmp_path):
    """With two experts and a schema the step is verified, in text and JSON."""
    converters, path = _experts(tmp_path, 2, schema=True)
    result = _convert(path, "-o", tmp_path / "out.ckpt", "--converters", converters, "--strict")
    assert result.exit_code == 0, result.output
    assert "[verified: ops+schema]" in result.stdout


def test_a_schema_may_leave_dtypes_free(tmp_path):
    """A bfloat16 file is refused by a float32 schema, and verified by one written with --any-dtype."""
    converters, path = _experts(tmp_path, 2, schema=True, dtype=torch.bfloat16)
    refused = _convert(path, "-o", tmp_path / "out.ckpt", "--converters", converters)
    assert refused.exit_code == 1
    assert "expected [4, 3] float32, got [4, 3] bfloat16" in refused.stderr
    fp32 = tmp_path / "fp32.ckpt"
    torch.save({"state_dict": {"experts.w": torch.ones(4, 3)}}, fp32)
    written = cli("schema", fp32, "--version", "2.0.0", "--converters", converters, "--force", "--any-dtype")
    assert written.exit_code == 0, written.output
    assert "dtype" not in (converters / "schemas" / "2.0.0.json").read_text(encoding="utf-8")
    result = _convert(path, "-o", tmp_path / "out.ckpt", "--converters", converters, "--strict")
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "out.ckpt", weights_only=True)["state_dict"]["experts.w"].dtype == torch.bfloat16


def test_a_dict_subclass_nobody_declared_is_explained(lab):
    """A dict subclass is refused with what torch refuses and the read_as_dict fix, with or without --safe-global."""
    attr = lab.module("attr", ATTR_DICT)
    path = lab.save("a.ckpt", "0.2.0", extra=attr.AttrDict(lr=0.1))
    name = f"{lab.names['attr']}.AttrDict"
    for flags in ([], ["--safe-global", name]):
        result = _convert(path, "-o", lab.root / "out.ckpt", "--converters", lab.converters, *flags)
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert f"it holds a {name}, a dict subclass" in line
        assert f'read_as_dict = ["{name}"]' in line
        assert "--safe-global" not in line


@pytest.mark.slow
def test_the_unsafe_global_error_does_not_depend_on_the_hash_seed(lab):
    """The refusal of a global nobody allowed is the same line whatever PYTHONHASHSEED is."""
    import os
    import subprocess

    case = _moved_without_safe(lab)
    lines = set()
    extra = ["--converters", str(lab.converters)]
    for seed in ("0", "1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "ckpt_path", "convert", str(case.file), "-o", str(lab.root / "out.ckpt"), *extra],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(lab.code)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        errors = [text for text in done.stderr.splitlines() if text.startswith("error:")]
        assert len(errors) == 1, done.stderr
        lines.add(errors[0])
    assert len(lines) == 1, lines
    (line,) = lines
    assert f"needs the global {lab.names['extra']}.Extra" in line
    assert "DeletedGlobal" not in line


READS_VALUES = '''\
"""Scale the output map by its own first value (reads tensor data)."""

source = "0.3.0"
target = "1.0.0"
touches = ["output_map.*"]
(__import__("pathlib").Path(__file__).parent / "IMPORTED").write_text("yes")


def convert(ckpt):
    sd = ckpt["state_dict"]
    sd["output_map.bias"] = sd["output_map.bias"] * float(sd["output_map.bias"][0].item())
    return ckpt
'''


def test_plan_never_runs_converter_code_and_a_dry_run_reports_what_it_cannot_predict(lab):
    """`plan CKPT` imports no converter; `--dry-run` reports a value-reading step as not predicted; convert works."""
    (lab.converters / "003_fuse_qkv.py").unlink()
    (lab.converters / "003_values.py").write_text(READS_VALUES, encoding="utf-8")
    for name in ("004_lam_head.py", "005_lam_to_1_1.py", "006_output_scale.py"):
        (lab.converters / name).unlink()
    (lab.converters / "schemas" / "1.0.0.json").unlink()
    path = lab.save("a.ckpt", "0.2.0")
    planned = cli("plan", path, "1.0.0", "--converters", lab.converters)
    assert planned.exit_code == 0, planned.output
    assert "003_values  [not predicted: a convert function: its effect is known only when it runs]" in planned.stdout
    assert not (lab.converters / "IMPORTED").exists()
    dry = _convert(path, "--dry-run", "--to", "1.0.0", "--converters", lab.converters)
    assert dry.exit_code == 0, dry.output
    assert "003_values  [not predicted: its code needs real tensor data (RuntimeError" in dry.stdout
    real = _convert(path, "-o", lab.root / "out.ckpt", "--to", "1.0.0", "--converters", lab.converters)
    assert real.exit_code == 0, real.output


def test_load_logs_a_command_that_runs_as_printed(lab, caplog, monkeypatch):
    """The "to keep it" command `load` logs converts the file to the same checkpoint when run as printed."""
    import shlex

    case = _version_key(lab)
    with caplog.at_level("INFO", logger="ckpt_path"):
        in_memory = load(case.file, "0.3.0", registry=_registry(lab))
    (message,) = [r.getMessage() for r in caplog.records if "to keep it: " in r.getMessage()]
    words = shlex.split(message.split("to keep it: ", 1)[1])
    assert words[:2] == ["ckpt-path", "convert"]
    monkeypatch.chdir(lab.code)  # anywhere: the command names everything it needs
    result = cli(*words[1:])
    assert result.exit_code == 0, result.output
    written = torch.load(words[words.index("-o") + 1], weights_only=True)
    assert all(torch.equal(written["state_dict"][k], v) for k, v in in_memory["state_dict"].items())


def test_settings_come_from_the_converters_project_not_the_working_directory(lab, tmp_path):
    """A pyproject in the working directory does not change a run whose converters belong to another project."""
    lab.settings(version_key="hyper_parameters.version")
    (Path.cwd() / "pyproject.toml").write_text('[tool.ckpt-path]\noldest = "9.0.0"\n', encoding="utf-8")
    path = lab.save("a.ckpt", None, layout="0.2.0", version="0.2.0")
    result = _convert(path, "-o", tmp_path / "out.ckpt", "--to", "0.3.0", "--converters", lab.converters)
    assert result.exit_code == 0, result.output


def test_a_dry_run_leaves_the_callers_object_as_it_was(examples):
    """upgrade(..., dry_run=True) on an object in memory runs on a meta copy: the caller's tensors stay theirs."""
    ckpt = make_checkpoint("0.1.0", seed=0)
    ckpt[STAMP_KEY] = {"version": "0.1.0"}
    before = {key: value.clone() for key, value in ckpt["state_dict"].items()}
    keys = list(ckpt["state_dict"])
    done = upgrade(Checkpoint.from_object(ckpt), Registry.from_directory(examples), dry_run=True)
    assert done.plan.target is not None
    assert list(ckpt["state_dict"]) == keys
    assert all(value.device.type == "cpu" for value in ckpt["state_dict"].values())
    assert all(torch.equal(ckpt["state_dict"][key], value) for key, value in before.items())
    assert ckpt[STAMP_KEY] == {"version": "0.1.0"}


def test_a_dry_run_leaves_a_flat_state_dicts_stamp_as_it_was(examples):
    """A flat state dict keeps its stamp in _metadata: a dry run must not restamp the caller's copy."""
    from ckpt_path.stamp import Stamp, read_stamp, write_stamp

    state_dict = write_stamp(make_checkpoint("0.1.0", seed=0)["state_dict"], (), Stamp(version="0.1.0"))
    upgrade(Checkpoint.from_object(state_dict), Registry.from_directory(examples), dry_run=True)
    stamp = read_stamp(state_dict, ())
    assert stamp is not None
    assert stamp.version == "0.1.0"
