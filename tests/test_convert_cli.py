"""The convert, inspect, stamp, schema and plan commands, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt_fixtures import (
    CKPT_PATH_BIN,
    V010_SHAPES,
    V110_KEYS,
    digest,
    lightning,
    temp_files,
    write_ckpt,
    write_unsafe_checkpoint,
    write_v010,
)
from ckpt_path.registry import ENV_VAR
from ckpt_path.stamp import STAMP_KEY, Stamp, write_stamp
from helpers import EXAMPLE_CONVERTERS, assert_one_line_error, cli, write_converter

EXAMPLE_PATH = ["001_rename_grid_mlp", "002_move_msl", "003_fuse_qkv", "006_output_scale"]
"""The converters that take 0.1.0 to latest (1.1.0) in the shipped example history."""

V010_BYTES = 4 * sum(torch.Size(shape).numel() for shape in V010_SHAPES.values())


def user_env() -> dict[str, str]:
    """Return the environment for the installed command, without a converters setting."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["COLUMNS"] = "200"
    return env


def run_installed(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ckpt-path`` as a user would, in ``cwd``."""
    return subprocess.run(
        [str(CKPT_PATH_BIN), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=user_env(),
        timeout=120,
        check=False,
    )


def load(path: Path) -> Any:
    """Load a checkpoint as a user would: weights only."""
    return torch.load(path, weights_only=True)


@pytest.fixture
def v010(tmp_path: Path) -> Path:
    """Write an unstamped Lightning checkpoint of the example model at 0.1.0."""
    return write_v010(tmp_path / "in" / "v010.ckpt")


@pytest.fixture
def v010_stamped(tmp_path: Path) -> Path:
    """Write the same checkpoint, stamped 0.1.0."""
    return write_v010(tmp_path / "in" / "v010-stamped.ckpt", version="0.1.0")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """Make an empty directory for outputs."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def write_small(path: Path, *, version: str | None = None) -> Path:
    """Write a small Lightning checkpoint (encoder and head); stamp it when ``version`` is given."""
    sd = {
        "encoder.weight": torch.randn(8, 4),
        "encoder.bias": torch.randn(8),
        "head.weight": torch.randn(2, 8),
        "head.bias": torch.randn(2),
    }
    ckpt = lightning(sd)
    if version is not None:
        ckpt = write_stamp(ckpt, ("state_dict",), Stamp(version=version))
    return write_ckpt(path, ckpt)


# --- convert: success -------------------------------------------------------------------------


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "unstamped-with-from"])
def test_convert_writes_stamped_output_and_keeps_input(v010, v010_stamped, out_dir, stamped, examples):
    """Convert writes OUTPUT at latest, stamped with its history, and leaves INPUT byte for byte."""
    source = v010_stamped if stamped else v010
    extra = [] if stamped else ["--from", "0.1.0"]
    before = digest(source)
    out = out_dir / "v110.ckpt"
    result = cli("convert", source, "-o", out, "--converters", examples, *extra)
    assert result.exit_code == 0, result.output
    assert "0.1.0 -> 1.1.0" in result.stdout
    assert digest(source) == before

    converted, original = load(out), load(source)
    assert set(converted["state_dict"]) == V110_KEYS
    assert converted[STAMP_KEY]["version"] == "1.1.0"
    assert [h["converter"] for h in converted[STAMP_KEY]["history"]] == EXAMPLE_PATH
    sd, old = converted["state_dict"], original["state_dict"]
    fused = torch.cat([old[f"processor.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(sd["processor.qkv_proj.weight"], fused)
    assert torch.equal(sd["g2m_gnn.grid_mlp.weight"], old["g2m_gnn.grid_mlp.0.weight"])
    assert converted["epoch"] == original["epoch"]
    assert converted["optimizer_states"][0]["param_groups"] == original["optimizer_states"][0]["param_groups"]
    assert converted["hyper_parameters"] == original["hyper_parameters"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["v110.ckpt"]


def test_convert_keeps_what_a_convert_function_changes_outside_the_state_dict(v010_stamped, out_dir, tmp_path):
    """A convert function may change the checkpoint outside its state dict; the output keeps that change."""
    converters = tmp_path / "converters"
    body = 'features = ckpt["hyper_parameters"]["features"]\nfeatures.insert(1, features.pop(3))\nreturn ckpt'
    write_converter(converters, "reorder_features", "0.1.0", "0.2.0", body, touches=[])
    out = out_dir / "v020.ckpt"
    result = cli("convert", v010_stamped, "-o", out, "--converters", converters)
    assert result.exit_code == 0, result.output
    assert load(out)["hyper_parameters"]["features"] == ["u", "msl", "v", "t", "q", "z"]
    assert load(v010_stamped)["hyper_parameters"]["features"] == ["u", "v", "t", "msl", "q", "z"]


def test_convert_with_the_repository_converters(v010, out_dir):
    """The repository's own converters take a hand-made 0.1.0 checkpoint to latest (1.1.0)."""
    before = digest(v010)
    out = out_dir / "v110.ckpt"
    result = cli("convert", v010, "--from", "0.1.0", "-o", out, "--converters", EXAMPLE_CONVERTERS, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "1.1.0"
    converted = load(out)
    assert set(converted["state_dict"]) == V110_KEYS
    assert converted[STAMP_KEY]["version"] == "1.1.0"
    assert digest(v010) == before


def test_convert_json_has_contract_keys(v010_stamped, out_dir, examples):
    """The JSON of convert --json has source, target, output and per-step converter, added, removed, changed."""
    out = out_dir / "v110.ckpt"
    result = cli("convert", v010_stamped, "-o", out, "--converters", examples, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"source", "target", "output", "steps"} <= set(report)
    assert (report["source"], report["target"], report["output"]) == ("0.1.0", "1.1.0", str(out))
    steps = report["steps"]
    assert [s["converter"] for s in steps] == EXAMPLE_PATH
    for step in steps:
        assert {"source", "target", "converter", "added", "removed", "changed"} <= set(step)
    assert [(s["source"], s["target"]) for s in steps] == [
        ("0.1.0", "0.2.0"),
        ("0.2.0", "0.3.0"),
        ("0.3.0", "1.0.0"),
        ("1.0.0", "1.1.0"),
    ]
    assert steps[0]["added"] == ["g2m_gnn.grid_mlp.bias", "g2m_gnn.grid_mlp.weight"]
    assert steps[0]["removed"] == ["g2m_gnn.grid_mlp.0.bias", "g2m_gnn.grid_mlp.0.weight"]
    assert steps[2]["added"] == ["processor.qkv_proj.bias", "processor.qkv_proj.weight"]
    assert len(steps[2]["removed"]) == 6
    assert steps[3]["added"] == ["output_scale"]
    assert all(s["changed"] == [] for s in steps)
    assert steps[0]["ops"] is None  # a convert function: its diff says what it did
    assert steps[2]["ops"] == ["concatenated 3 into processor.qkv_proj.{p} along dim 0, 2 times"]


def test_convert_reports_changed_keys(tmp_path, out_dir):
    """A step that reshapes a touched key lists it under changed."""
    converters = tmp_path / "converters"
    write_converter(
        converters,
        "widen",
        "1.0.0",
        "1.1.0",
        'ckpt["state_dict"]["head.weight"] = ckpt["state_dict"]["head.weight"].repeat(2, 1)\nreturn ckpt',
        touches=["head.*"],
    )
    source = write_small(tmp_path / "in" / "small.ckpt", version="1.0.0")
    result = cli("convert", source, "-o", out_dir / "x.ckpt", "--converters", converters, "--json")
    assert result.exit_code == 0, result.output
    (step,) = json.loads(result.stdout)["steps"]
    assert (step["added"], step["removed"], step["changed"]) == ([], [], ["head.weight"])
    assert load(out_dir / "x.ckpt")["state_dict"]["head.weight"].shape == (4, 8)


@pytest.mark.parametrize("with_output", [True, False], ids=["with-o", "without-o"])
def test_dry_run_writes_nothing_and_reports(v010_stamped, out_dir, with_output, examples):
    """--dry-run writes no file, leaves INPUT as it was, and still reports what each step adds and removes."""
    before = digest(v010_stamped)
    out_args = ["-o", out_dir / "v110.ckpt"] if with_output else []
    result = cli("convert", v010_stamped, *out_args, "--dry-run", "--converters", examples, "--json")
    assert result.exit_code == 0, result.output
    assert list(out_dir.iterdir()) == []
    assert list(v010_stamped.parent.iterdir()) == [v010_stamped]
    assert digest(v010_stamped) == before
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert report["output"] is None
    steps = report["steps"]
    assert [s["converter"] for s in steps] == EXAMPLE_PATH
    assert steps[0]["added"] == ["g2m_gnn.grid_mlp.bias", "g2m_gnn.grid_mlp.weight"]
    assert steps[0]["removed"] == ["g2m_gnn.grid_mlp.0.bias", "g2m_gnn.grid_mlp.0.weight"]
    assert steps[3]["added"] == ["output_scale"]


def test_dry_run_text_says_nothing_written(v010_stamped, out_dir, examples):
    """The text report of --dry-run says that nothing was written and lists the keys."""
    result = cli("convert", v010_stamped, "-o", out_dir / "x.ckpt", "--dry-run", "--converters", examples)
    assert result.exit_code == 0, result.output
    assert "nothing written" in result.stdout
    assert "+ g2m_gnn.grid_mlp.weight [16, 16] float32" in result.stdout
    assert list(out_dir.iterdir()) == []


def test_convert_to_branch_target(v010_stamped, out_dir, examples):
    """--to lam@latest follows the branch edge: the output map is called head there."""
    out = out_dir / "lam.ckpt"
    result = cli("convert", v010_stamped, "-o", out, "--to", "lam@latest", "--converters", examples)
    assert result.exit_code == 0, result.output
    converted = load(out)
    assert converted[STAMP_KEY]["version"] == "1.0.0+lam"
    assert {"head.weight", "head.bias"} <= set(converted["state_dict"])
    assert "output_map.weight" not in converted["state_dict"]


def test_lossy_path_needs_allow_lossy(v010_stamped, out_dir, examples):
    """A downgrade through a lossy step fails without --allow-lossy and succeeds with it."""
    latest = out_dir / "v110.ckpt"
    assert cli("convert", v010_stamped, "-o", latest, "--converters", examples).exit_code == 0
    down = out_dir / "v100.ckpt"
    line = assert_one_line_error(cli("convert", latest, "-o", down, "--to", "1.0.0", "--converters", examples))
    assert "--allow-lossy" in line
    assert not down.exists()
    result = cli("convert", latest, "-o", down, "--to", "1.0.0", "--allow-lossy", "--converters", examples)
    assert result.exit_code == 0, result.output
    converted = load(down)
    assert converted[STAMP_KEY]["version"] == "1.0.0"
    assert "output_scale" not in converted["state_dict"]
    assert [h["converter"] for h in converted[STAMP_KEY]["history"]][-1] == "006_output_scale:inverse"


# --- convert: stamps and outputs ----------------------------------------------------------------


def test_missing_stamp_suggests_from_and_stamp(v010, out_dir, examples):
    """An unstamped INPUT without --from fails with a message that suggests --from and `ckpt-path stamp`."""
    line = assert_one_line_error(cli("convert", v010, "-o", out_dir / "x.ckpt", "--converters", examples))
    assert "--from" in line
    assert "ckpt-path stamp" in line
    assert list(out_dir.iterdir()) == []


def test_existing_output_without_force_is_kept(v010_stamped, out_dir, examples):
    """An existing OUTPUT without --force is an error and the file is left as it was."""
    out = out_dir / "v110.ckpt"
    out.write_bytes(b"precious")
    line = assert_one_line_error(cli("convert", v010_stamped, "-o", out, "--converters", examples))
    assert "--force" in line
    assert out.read_bytes() == b"precious"
    assert temp_files(out_dir) == []


def test_existing_output_with_force_is_replaced(v010_stamped, out_dir, examples):
    """With --force an existing OUTPUT is replaced by the converted checkpoint."""
    out = out_dir / "v110.ckpt"
    out.write_bytes(b"precious")
    result = cli("convert", v010_stamped, "-o", out, "--force", "--converters", examples)
    assert result.exit_code == 0, result.output
    assert load(out)[STAMP_KEY]["version"] == "1.1.0"
    assert temp_files(out_dir) == []


def test_output_that_is_the_input_is_refused(v010_stamped, examples):
    """Writing OUTPUT over INPUT is refused even with --force, and INPUT stays as it was."""
    before = digest(v010_stamped)
    line = assert_one_line_error(
        cli("convert", v010_stamped, "-o", v010_stamped, "--force", "--converters", examples),
    )
    assert "input" in line
    assert digest(v010_stamped) == before
    assert temp_files(v010_stamped.parent) == []


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_output_that_is_a_directory_is_refused(v010_stamped, out_dir, examples, force):
    """An OUTPUT that is a directory is one `error:` line (with or without --force) and stays a directory."""
    target = out_dir / "a-directory"
    target.mkdir()
    (target / "inside.txt").write_text("keep", encoding="utf-8")
    flags = ["--force"] if force else []
    assert_one_line_error(cli("convert", v010_stamped, "-o", target, *flags, "--converters", examples))
    assert target.is_dir()
    assert (target / "inside.txt").read_text(encoding="utf-8") == "keep"
    assert temp_files(out_dir) == []


def test_converter_mutating_tensors_in_place_leaves_input_alone(tmp_path, out_dir):
    """A converter that changes tensors in place (on a memory-mapped load) never writes through to INPUT."""
    converters = tmp_path / "converters"
    body = 'for tensor in ckpt["state_dict"].values():\n    tensor.mul_(2)\nreturn ckpt'
    write_converter(converters, "double", "1.0.0", "1.1.0", body, touches=["*"])
    source = write_small(tmp_path / "in" / "small.ckpt", version="1.0.0")
    before, original = digest(source), load(source)["state_dict"]
    out = out_dir / "doubled.ckpt"
    result = cli("convert", source, "-o", out, "--converters", converters)
    assert result.exit_code == 0, result.output
    assert digest(source) == before
    doubled = load(out)["state_dict"]
    assert all(torch.equal(doubled[k], v * 2) for k, v in original.items())


# --- convert: every failure ---------------------------------------------------------------------


Scenario = Callable[[Path, Path], tuple[Path, list[object], str]]
"""Build a failing case in (tmp_path, converters dir): return (INPUT, extra args, a part of the error)."""


def _one_converter(body: str, expected: str, **literals: Any) -> Scenario:
    def build(tmp: Path, converters: Path) -> tuple[Path, list[object], str]:
        write_converter(converters, "step", "1.0.0", "1.1.0", body, **literals)
        return write_small(tmp / "in" / "small.ckpt", version="1.0.0"), [], expected

    return build


def _input_file(make: Callable[[Path], Path], expected: str) -> Scenario:
    def build(tmp: Path, converters: Path) -> tuple[Path, list[object], str]:
        write_converter(converters, "step", "1.0.0", "1.1.0", touches=[])
        directory = tmp / "in"
        directory.mkdir(parents=True, exist_ok=True)
        return make(directory), ["--from", "1.0.0"], expected

    return build


def _truncated(directory: Path) -> Path:
    full = write_small(directory / "full.ckpt", version="1.0.0")
    data = full.read_bytes()
    cut = directory / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _text(directory: Path) -> Path:
    path = directory / "notes.ckpt"
    path.write_text("hello world\n", encoding="utf-8")
    return path


def _empty(directory: Path) -> Path:
    path = directory / "empty.ckpt"
    path.touch()
    return path


def _unsafe(directory: Path) -> Path:
    return write_unsafe_checkpoint(directory)[0]


def _graph(edges: list[tuple[str, str, dict[str, Any]]], args: list[object], expected: str) -> Scenario:
    def build(tmp: Path, converters: Path) -> tuple[Path, list[object], str]:
        for i, (source, target, literals) in enumerate(edges):
            write_converter(converters, f"edge{i}", source, target, **literals)
        return write_small(tmp / "in" / "small.ckpt", version="1.0.0"), args, expected

    return build


def _stamped_as(version: str | None, expected: str) -> Scenario:
    def build(tmp: Path, converters: Path) -> tuple[Path, list[object], str]:
        write_converter(converters, "step", "1.0.0", "1.1.0", touches=[])
        return write_small(tmp / "in" / "small.ckpt", version=version), [], expected

    return build


def _syntax_error(tmp: Path, converters: Path) -> tuple[Path, list[object], str]:
    converters.mkdir(parents=True, exist_ok=True)
    (converters / "broken.py").write_text('source = "1.0.0"\ntarget = "1.1.0"\ndef convert(ckpt)\n', encoding="utf-8")
    return write_small(tmp / "in" / "small.ckpt", version="1.0.0"), [], "broken.py"


def _missing_output_dir(tmp: Path, converters: Path) -> tuple[Path, list[object], str]:
    write_converter(converters, "step", "1.0.0", "1.1.0", touches=[])
    return write_small(tmp / "in" / "small.ckpt", version="1.0.0"), ["-o", tmp / "nowhere" / "x.ckpt"], "nowhere"


FAILURES: dict[str, Scenario] = {
    "shape mismatch": _one_converter(
        'ckpt["state_dict"]["encoder.weight"] = ckpt["state_dict"]["encoder.weight"][:, :2]\nreturn ckpt',
        "encoder.weight",
        touches=["head.*"],
    ),
    "undeclared key removed": _one_converter(
        'del ckpt["state_dict"]["encoder.bias"]\nreturn ckpt', "encoder.bias", touches=["head.*"]
    ),
    "converter raises": _one_converter('raise ValueError("boom in converter")', "ValueError: boom in converter"),
    "converter returns None": _one_converter("return None", "returned None", touches=[]),
    "converter returns a list": _one_converter("return [ckpt]", "returned a list", touches=[]),
    "converter import fails": _one_converter("import no_such_module_xyz\nreturn ckpt", "no_such_module_xyz"),
    "converter result cannot be saved": _one_converter('ckpt["callback"] = lambda: None\nreturn ckpt', "", touches=[]),
    "unchecked step with --strict": _graph([("1.0.0", "1.1.0", {})], ["--strict"], "unverified"),
    "touches-only step with --strict": _graph([("1.0.0", "1.1.0", {"touches": []})], ["--strict"], "unverified"),
    "unknown target": _graph([("1.0.0", "1.1.0", {"touches": []})], ["--to", "9.9.9"], "9.9.9"),
    "unknown stamped version": _stamped_as("0.5.0", "0.5.0"),
    "no path": _graph(
        [("1.0.0", "1.1.0", {"touches": []}), ("2.0.0", "2.1.0", {"touches": []})], ["--to", "2.1.0"], "no path"
    ),
    "lossy without --allow-lossy": _graph([("1.0.0", "1.1.0", {"lossy": True})], [], "--allow-lossy"),
    "bad converter file": _syntax_error,
    "missing output directory": _missing_output_dir,
    "no stamp": _stamped_as(None, "--from"),
    "unsafe pickle": _input_file(_unsafe, "--safe-global"),
    "truncated input": _input_file(_truncated, "cut.ckpt"),
    "text input": _input_file(_text, "notes.ckpt"),
    "empty input": _input_file(_empty, "empty.ckpt"),
    "missing input": _input_file(lambda d: d / "missing.ckpt", "missing.ckpt"),
}


@pytest.mark.usefixtures("payload_modules")
@pytest.mark.parametrize("scenario", FAILURES.values(), ids=FAILURES)
def test_convert_failure_is_one_line_and_writes_nothing(tmp_path, out_dir, scenario):
    """Every failed convert exits 1 with one `error:` line, no traceback, no OUTPUT and no temp file."""
    converters = tmp_path / "converters"
    source, extra, expected = scenario(tmp_path, converters)
    before = digest(source) if source.is_file() else None
    out = out_dir / "x.ckpt"
    args = ["-o", out, *extra] if "-o" not in extra else extra
    line = assert_one_line_error(cli("convert", source, *args, "--converters", converters))
    assert expected in line
    assert not out.exists()
    assert temp_files(out_dir) == []
    assert list(out_dir.iterdir()) == []
    if before is not None:
        assert digest(source) == before


@pytest.mark.parametrize(
    "name", ["shape mismatch", "converter raises", "converter result cannot be saved", "truncated input"]
)
def test_failed_convert_with_force_keeps_the_old_output(tmp_path, out_dir, name):
    """A failed convert with --force leaves an existing OUTPUT exactly as it was."""
    converters = tmp_path / "converters"
    source, extra, _ = FAILURES[name](tmp_path, converters)
    out = out_dir / "x.ckpt"
    out.write_bytes(b"the old output")
    assert_one_line_error(cli("convert", source, "-o", out, "--force", *extra, "--converters", converters))
    assert out.read_bytes() == b"the old output"
    assert temp_files(out_dir) == []


def test_unsafe_input_ran_nothing(tmp_path, out_dir):
    """Converting an unsafe pickle imports and runs none of its code."""
    source, global_name, marks = write_unsafe_checkpoint(tmp_path / "in")
    write_converter(tmp_path / "converters", "step", "1.0.0", "1.1.0", touches=[])
    line = assert_one_line_error(
        cli("convert", source, "-o", out_dir / "x.ckpt", "--from", "1.0.0", "--converters", tmp_path / "converters"),
    )
    assert f"--safe-global {global_name}" in line
    assert list(marks.iterdir()) == []
    assert global_name.rpartition(".")[0] not in sys.modules


# --- the installed command ----------------------------------------------------------------------


@pytest.mark.slow
def test_installed_command_converts(v010_stamped, out_dir, examples):
    """The installed ckpt-path converts a checkpoint in a subprocess and prints its JSON report."""
    out = out_dir / "v110.ckpt"
    before = digest(v010_stamped)
    done = run_installed("convert", v010_stamped, "-o", out, "--converters", examples, "--json", cwd=out_dir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["target"] == "1.1.0"
    assert load(out)[STAMP_KEY]["version"] == "1.1.0"
    assert digest(v010_stamped) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["truncated input", "text input", "shape mismatch"])
def test_installed_command_failure_has_no_traceback(tmp_path, out_dir, name):
    """The installed ckpt-path reports a failure as one `error:` line on stderr, exit 1, no traceback."""
    converters = tmp_path / "converters"
    source, extra, expected = FAILURES[name](tmp_path, converters)
    out = out_dir / "x.ckpt"
    done = run_installed("convert", source, "-o", out, *extra, "--converters", converters, cwd=out_dir)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert list(out_dir.iterdir()) == []


# --- inspect ------------------------------------------------------------------------------------


def test_inspect_text_of_unstamped_checkpoint(v010):
    """The inspect command describes format, the missing stamp, where the state dict is, tensors and bytes."""
    result = cli("inspect", v010)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "format:      torch" in text
    assert "not stamped" in text
    assert "state dict:  state_dict" in text
    assert "tensors:     14 (6.1 KiB); float32 x14" in text
    assert "history:" not in text


def test_inspect_json_of_unstamped_checkpoint(v010):
    """The JSON of inspect gives format, a null version, an empty history, tensors, bytes and the state dict."""
    result = cli("inspect", v010, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "torch"
    assert info["version"] is None
    assert info["history"] == []
    assert info["tensors"] == len(V010_SHAPES)
    assert info["bytes"] == V010_BYTES
    assert info["state_dict"] == "state_dict"


def test_inspect_shows_history_of_converted_checkpoint(v010_stamped, out_dir, examples):
    """After convert, inspect shows the new version and one history entry per step."""
    out = out_dir / "v110.ckpt"
    assert cli("convert", v010_stamped, "-o", out, "--converters", examples).exit_code == 0
    info = json.loads(cli("inspect", out, "--json").stdout)
    assert info["version"] == "1.1.0"
    assert [h["converter"] for h in info["history"]] == EXAMPLE_PATH
    assert info["tensors"] == len(V110_KEYS)
    text = cli("inspect", out).stdout
    assert "version:     1.1.0" in text
    assert "history:" in text
    assert all(name in text for name in EXAMPLE_PATH)


@pytest.mark.parametrize(
    ("make", "fmt", "state_dict"),
    [
        pytest.param(lambda p: torch.save({"w": torch.zeros(3, 2)}, p), "torch", "", id="flat"),
        pytest.param(
            lambda p: torch.save({"model": {"w": torch.zeros(3, 2)}}, p, _use_new_zipfile_serialization=False),
            "torch-legacy",
            "model",
            id="legacy-model",
        ),
    ],
)
def test_inspect_json_formats(tmp_path, make, fmt, state_dict):
    """The JSON of inspect names the legacy format and a flat state dict (empty path) correctly."""
    path = tmp_path / "m.pt"
    make(path)
    info = json.loads(cli("inspect", path, "--json").stdout)
    assert (info["format"], info["state_dict"], info["tensors"], info["bytes"]) == (fmt, state_dict, 1, 24)


def test_inspect_unreadable_is_one_line_error(tmp_path):
    """Inspecting a file that is not a checkpoint fails with one `error:` line."""
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint\n", encoding="utf-8")
    assert "notes.ckpt" in assert_one_line_error(cli("inspect", path))


# --- stamp --------------------------------------------------------------------------------------


def test_stamp_in_place(v010):
    """`ckpt-path stamp CKPT VERSION` records the version in the file itself, keeping the tensors and other content."""
    original = load(v010)
    result = cli("stamp", v010, "0.1.0")
    assert result.exit_code == 0, result.output
    stamped = load(v010)
    assert stamped[STAMP_KEY] == {"version": "0.1.0", "history": []}
    assert all(torch.equal(stamped["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert stamped["hyper_parameters"] == original["hyper_parameters"]
    assert temp_files(v010.parent) == []
    assert json.loads(cli("inspect", v010, "--json").stdout)["version"] == "0.1.0"


def test_stamp_to_another_file(v010, out_dir):
    """`ckpt-path stamp CKPT VERSION -o OUTPUT` writes a stamped copy and leaves CKPT as it was."""
    before = digest(v010)
    out = out_dir / "stamped.ckpt"
    result = cli("stamp", v010, "0.1.0", "-o", out)
    assert result.exit_code == 0, result.output
    assert digest(v010) == before
    assert load(out)[STAMP_KEY]["version"] == "0.1.0"
    assert STAMP_KEY not in load(v010)


def test_restamp_records_the_change(v010_stamped):
    """Stamping a stamped checkpoint again records the change in its history."""
    assert cli("stamp", v010_stamped, "0.2.0").exit_code == 0
    stamp = load(v010_stamped)[STAMP_KEY]
    assert stamp["version"] == "0.2.0"
    assert [(h["source"], h["target"], h["converter"]) for h in stamp["history"]] == [
        ("0.1.0", "0.2.0", "ckpt-path stamp"),
    ]


def test_restamping_with_the_same_version_changes_nothing_and_keeps_optimizer_names(tmp_path):
    """Stamping 0.1.0 again adds no history entry; a new version keeps the recorded optimizer parameter names."""
    path = write_v010(tmp_path / "in.ckpt")
    ckpt = load(path)
    ckpt[STAMP_KEY] = Stamp(version="0.1.0", optimizer_parameters=(("w",),)).to_dict()
    torch.save(ckpt, path)
    assert cli("stamp", path, "0.1.0").exit_code == 0
    assert load(path)[STAMP_KEY]["history"] == []
    assert cli("stamp", path, "0.2.0").exit_code == 0
    stamp = load(path)[STAMP_KEY]
    assert [h["target"] for h in stamp["history"]] == ["0.2.0"]
    assert stamp["optimizer_parameters"] == [["w"]]


def test_stamp_flat_state_dict_keeps_strict_loading(tmp_path):
    """Stamping a flat state dict keeps model.load_state_dict(strict=True) working."""
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "flat.pt"
    torch.save(model.state_dict(), path)
    assert cli("stamp", path, "1.0.0").exit_code == 0
    sd = load(path)
    torch.nn.Linear(3, 2).load_state_dict(sd, strict=True)
    assert sd._metadata[STAMP_KEY]["version"] == "1.0.0"  # noqa: SLF001 - where the contract puts it
    assert json.loads(cli("inspect", path, "--json").stdout)["version"] == "1.0.0"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["not a version"], "not a version", id="bad-version"),
        pytest.param(["0.1.0", "-o", "{existing}"], "--force", id="existing-output"),
    ],
)
def test_stamp_failure_changes_nothing(v010, out_dir, args, expected):
    """A stamp that cannot be done is one `error:` line and changes no file."""
    existing = out_dir / "existing.ckpt"
    existing.write_bytes(b"keep me")
    before = digest(v010)
    line = assert_one_line_error(cli("stamp", v010, *[a.format(existing=existing) for a in args]))
    assert expected in line
    assert digest(v010) == before
    assert existing.read_bytes() == b"keep me"
    assert temp_files(v010.parent) == []
    assert temp_files(out_dir) == []


# --- schema -------------------------------------------------------------------------------------


def test_schema_written_then_used_by_convert(tmp_path, v010):
    """`schema CKPT --version V` writes a schema that a later convert landing on V checks."""
    converters = tmp_path / "converters"
    write_converter(converters, "identity", "0.1.0", "0.2.0")
    result = cli("schema", v010, "--version", "0.2.0", "--converters", converters)
    assert result.exit_code == 0, result.output
    schema_file = converters / "schemas" / "0.2.0.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert schema["version"] == "0.2.0"
    assert schema["tensors"] == {k: {"shape": list(s), "dtype": "float32"} for k, s in V010_SHAPES.items()}

    out = tmp_path / "out" / "ok.ckpt"
    out.parent.mkdir()
    result = cli("convert", v010, "--from", "0.1.0", "-o", out, "--converters", converters, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"][0]["checked"] == ["schema"]
    assert "warning" not in result.stderr

    (converters / "identity.py").unlink()
    sd = 'ckpt["state_dict"]'
    body = f"{sd}['extra.weight'] = {sd}['output_map.bias'] * 2\nreturn ckpt"
    write_converter(converters, "breaks", "0.1.0", "0.2.0", body)
    broken = tmp_path / "out" / "broken.ckpt"
    line = assert_one_line_error(cli("convert", v010, "--from", "0.1.0", "-o", broken, "--converters", converters))
    assert "extra.weight: unexpected" in line
    assert "0.2.0.json" in line
    assert not broken.exists()


def test_schema_refuses_to_overwrite(tmp_path, v010):
    """The schema command does not replace an existing schema file without --force."""
    converters = tmp_path / "converters"
    (converters / "schemas").mkdir(parents=True)
    existing = converters / "schemas" / "0.1.0.json"
    existing.write_text("{}", encoding="utf-8")
    assert_one_line_error(cli("schema", v010, "--version", "0.1.0", "--converters", converters))
    assert existing.read_text(encoding="utf-8") == "{}"
    result = cli("schema", v010, "--version", "0.1.0", "--converters", converters, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads(existing.read_text(encoding="utf-8"))["version"] == "0.1.0"


# --- plan from a file ---------------------------------------------------------------------------


def test_plan_reads_the_stamp_of_a_file(v010_stamped, examples):
    """`plan CKPT latest` starts from the version stamped in CKPT."""
    result = cli("plan", v010_stamped, "latest", "--converters", examples, "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["source"], plan["target"]) == ("0.1.0", "1.1.0")
    assert [s["converter"] for s in plan["steps"]] == EXAMPLE_PATH
    text = cli("plan", v010_stamped, "latest", "--converters", examples)
    assert text.exit_code == 0, text.output
    assert "0.1.0 -> 1.1.0" in text.stdout


def test_plan_of_unstamped_file_suggests_stamp(v010, examples):
    """`plan CKPT latest` on an unstamped file fails with a message that suggests stamping it."""
    line = assert_one_line_error(cli("plan", v010, "latest", "--converters", examples))
    assert "ckpt-path stamp" in line


@pytest.mark.parametrize("trained", [False, True], ids=["weights only", "with Adam state"])
def test_dry_run_predicts_the_bytes_the_conversion_copies_and_writes(tmp_path, trained):
    """--dry-run --json gives the copied and written tensor bytes the real conversion reports, optimizer state too."""
    from ckpt_path.demo.models import make_model

    model = make_model("0.1.0", 0)
    ckpt: dict[str, Any] = {"state_dict": model.state_dict(), STAMP_KEY: {"version": "0.1.0"}}
    if trained:
        optimizer = torch.optim.Adam(model.named_parameters())
        for parameter in model.parameters():
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        ckpt["optimizer_states"] = [optimizer.state_dict()]
    path = tmp_path / "in.ckpt"
    torch.save(ckpt, path)
    args = ("--converters", EXAMPLE_CONVERTERS, "--json")
    predicted = cli("convert", path, "--dry-run", *args)
    assert predicted.exit_code == 0, predicted.output
    done = cli("convert", path, "-o", tmp_path / "out.ckpt", *args)
    assert done.exit_code == 0, done.output
    expected, got = json.loads(predicted.stdout), json.loads(done.stdout)
    assert (expected["copied_bytes"], expected["written_bytes"]) == (got["copied_bytes"], got["written_bytes"])
    assert got["written_bytes"] > 0


def test_a_failure_after_overriding_the_stamp_says_so_on_its_error_line(v010_stamped, out_dir, examples):
    """--from 0.3.0 on a file stamped 0.1.0 fails on the layout; the one error line says the stamp was overridden."""
    out = out_dir / "o.ckpt"
    result = cli("convert", v010_stamped, "-o", out, "--from", "0.3.0", "--converters", examples)
    line = assert_one_line_error(result)
    assert line.endswith("(note: " + f"{v010_stamped} is stamped 0.1.0 but --from 0.3.0 was given; using 0.3.0)")
    assert not out.exists()
