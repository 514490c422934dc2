"""`ckpt-path check` and `ckpt-path new`: the authoring tools for converter directories."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import Result

from ckpt_fixtures import CKPT_PATH_BIN
from ckpt_path.check import Finding, check_directory
from ckpt_path.converter_files import read_converter_file
from ckpt_path.errors import CkptPathError
from ckpt_path.registry import Registry
from ckpt_path.scaffold import scaffold_converter
from ckpt_path.testing import assert_equal_checkpoints, run_edge, synthetic_checkpoint
from helpers import cli, write_schema

RESIZE_TO_1_2 = '''"""Go to 1.2.0."""

source = "1.1.0"
target = "1.2.0"


def convert(ckpt):
    return ckpt
'''


def check(directory: Path) -> Result:
    """Run ``ckpt-path check --converters DIRECTORY`` in process."""
    return cli("check", "--converters", directory)


def new(directory: Path, *args: str) -> Result:
    """Run ``ckpt-path new ARGS --converters DIRECTORY`` in process."""
    return cli("new", *args, "--converters", directory)


def errors(result: Result) -> list[str]:
    """Return the ``error:`` lines of a failed check, asserting exit 1."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def problems(directory: Path) -> list[Finding]:
    """Return the problems (not the notes) ``check_directory`` finds."""
    return [f for f in check_directory(directory) if f.problem]


def assert_reported(directory: Path, file: Path, *fragments: str) -> None:
    """Assert both the CLI and ``check_directory`` report ``file`` with every fragment."""
    lines = errors(check(directory))
    assert any(str(file) in line and all(f in line for f in fragments) for line in lines), lines
    found = [f for f in problems(directory) if Path(f.file) == file]
    assert any(all(frag in f.message for frag in fragments) for f in found), found


def test_clean_example_directory_passes(examples):
    """The example converters pass: exit 0, "converters OK", no errors and no problems."""
    result = check(examples)
    assert result.exit_code == 0, result.output
    assert "converters OK" in result.stdout
    assert "error:" not in result.output
    assert problems(examples) == []


@pytest.mark.slow
def test_installed_command_passes_the_examples(examples):
    """The installed `ckpt-path check` accepts the example directory, as a user runs it."""
    done = subprocess.run(
        [str(CKPT_PATH_BIN), "check", "--converters", str(examples)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "converters OK" in done.stdout


def test_file_that_does_not_parse_is_reported_with_its_line(examples):
    """A converter file with a syntax error is an error naming the file and its line."""
    bad = examples / "007_broken.py"
    bad.write_text('source = "1.1.0"\ntarget = "1.2.0"\n\n\ndef convert(:\n    return ckpt\n', encoding="utf-8")
    assert_reported(examples, bad, "syntax error")
    (finding,) = [f for f in problems(examples) if Path(f.file) == bad]
    assert finding.line == 5


def test_file_whose_import_fails_is_reported(examples):
    """A `convert` file that raises when imported is an error naming the file and the exception."""
    bad = examples / "007_raises.py"
    bad.write_text(
        RESIZE_TO_1_2.replace("\n\ndef convert", '\nraise RuntimeError("boom at import")\n\n\ndef convert'),
        encoding="utf-8",
    )
    assert_reported(examples, bad, "boom at import")


def test_file_whose_import_is_missing_is_reported(examples):
    """A `convert` file importing a module that does not exist is an error naming the file."""
    bad = examples / "007_missing_module.py"
    bad.write_text(RESIZE_TO_1_2.replace("\n\ndef convert", "\nimport no_such_module_xyz\n\n\ndef convert"))
    assert_reported(examples, bad, "no_such_module_xyz")


def test_non_literal_source_is_bad_metadata(examples):
    """A `source` that is not a literal string is an error naming the file."""
    bad = examples / "007_computed.py"
    bad.write_text(RESIZE_TO_1_2.replace('source = "1.1.0"', 'source = "1.1" + ".0"'), encoding="utf-8")
    lines = errors(check(examples))
    assert any(str(bad) in line and "source" in line for line in lines), lines
    assert any(Path(f.file) == bad and "source" in f.message for f in problems(examples))


def test_two_files_for_one_edge_are_reported(examples):
    """Two files claiming the same edge give one error naming both files."""
    clash = examples / "007_scale_again.py"
    clash.write_text(RESIZE_TO_1_2.replace('"1.1.0"', '"1.0.0"').replace('"1.2.0"', '"1.1.0"'), encoding="utf-8")
    lines = errors(check(examples))
    duplicate = [line for line in lines if "two converters for 1.0.0 -> 1.1.0" in line]
    assert len(duplicate) == 1, lines
    assert str(clash) in duplicate[0]
    assert str(examples / "006_output_scale.py") in duplicate[0]
    assert any(Path(f.file) == clash and "two converters" in f.message for f in problems(examples))


def test_explicit_file_clashing_with_an_inverse_is_reported(examples):
    """A file for an edge that a reversible file already provides as its inverse is an error."""
    clash = examples / "007_lam_back.py"
    text = RESIZE_TO_1_2.replace('"1.1.0"', '"1.0.0+lam"').replace('"1.2.0"', '"1.0.0"')
    clash.write_text(text, encoding="utf-8")
    lines = errors(check(examples))
    duplicate = [line for line in lines if "two converters for 1.0.0+lam -> 1.0.0" in line]
    assert len(duplicate) == 1, lines
    assert str(examples / "004_lam_head.py") + " (inverse of reversible)" in duplicate[0]
    assert str(clash) in duplicate[0]


def test_version_that_cannot_reach_latest_is_reported(examples):
    """A version with no path to latest is an error naming the version and the file reaching it."""
    dead_end = examples / "007_downgrade.py"
    dead_end.write_text(RESIZE_TO_1_2.replace('"1.2.0"', '"0.9.0"'), encoding="utf-8")
    assert_reported(examples, dead_end, "version 0.9.0 cannot reach latest (1.1.0)")


def test_narrowing_reversible_cast_is_refused(examples):
    """A reversible float32 -> float16 cast loses bits, so the file is refused as reversible."""
    cast = examples / "007_half.py"
    cast.write_text(
        '"""Store the scale in half precision."""\n\n'
        "from ckpt_path.ops import Cast\n\n"
        'source = "1.1.0"\ntarget = "1.2.0"\nreversible = True\n\n'
        'ops = [Cast("output_scale", "float16", source_dtype="float32")]\n',
        encoding="utf-8",
    )
    assert_reported(examples, cast, "reversible = True, but Cast is lossy")


def test_round_trip_that_changes_the_key_set_is_reported(tmp_path):
    """A reversible rename whose inverse also catches other keys fails the round trip (schema mismatch)."""
    directory = tmp_path / "converters"
    (directory / "schemas").mkdir(parents=True)
    nest = directory / "001_nest.py"
    nest.write_text(
        '"""Nest x under y."""\n\nfrom ckpt_path.ops import Rename\n\n'
        'source = "1.0.0"\ntarget = "2.0.0"\nreversible = True\n\nops = [Rename("x.{p}", "x.y.{p}")]\n',
        encoding="utf-8",
    )
    (directory / "schemas" / "1.0.0.json").write_text(
        '{"version": "1.0.0", "tensors": {"x.b": {"shape": [2], "dtype": "float32"},'
        ' "x.y.c": {"shape": [3], "dtype": "float32"}}}',
        encoding="utf-8",
    )
    assert_reported(directory, nest, "round trip 1.0.0 -> 2.0.0 -> 1.0.0 fails", "x.y.c: missing")


def test_round_trip_of_a_checkpoint_with_a_scalar_tensor_passes(tmp_path):
    """A correct reversible rename passes check even when the schema holds a 0-dim tensor."""
    directory = tmp_path / "converters"
    (directory / "schemas").mkdir(parents=True)
    (directory / "001_rename.py").write_text(
        '"""Rename x to z."""\n\nfrom ckpt_path.ops import Rename\n\n'
        'source = "1.0.0"\ntarget = "2.0.0"\nreversible = True\n\nops = [Rename("x.{p}", "z.{p}")]\n',
        encoding="utf-8",
    )
    (directory / "schemas" / "1.0.0.json").write_text(
        '{"version": "1.0.0", "tensors": {"x.b": {"shape": [2], "dtype": "float32"},'
        ' "step": {"shape": [], "dtype": "int64"}}}',
        encoding="utf-8",
    )
    result = check(directory)
    assert result.exit_code == 0, result.output
    assert "converters OK" in result.stdout


def test_disagreeing_paths_are_reported_once(examples):
    """Paths 1.0.0 -> 1.1.0 and via 1.0.0+lam giving different scales are reported once, not per ancestor."""
    scale = examples / "006_output_scale.py"
    scale.write_text(scale.read_text(encoding="utf-8").replace("fill=1.0", "fill=2.0"), encoding="utf-8")
    lines = errors(check(examples))
    pair = "paths 1.0.0 -> 1.1.0 and 1.0.0 -> 1.0.0+lam -> 1.1.0 give different checkpoints"
    reported = [line for line in lines if pair in line]
    assert len(reported) == 1, lines
    assert "output_scale: values differ" in reported[0]
    disagreements = [f for f in problems(examples) if "give different checkpoints" in f.message]
    assert [f for f in disagreements if pair in f.message], disagreements
    assert all(f.message.startswith(("paths 1.0.0 ", "paths 1.0.0+lam ")) for f in disagreements), disagreements
    assert all(Path(f.file).parent == examples for f in disagreements)


def test_missing_schemas_are_notes_not_errors(examples):
    """Without schemas the round trips are not checked: notes on stdout naming each reversible file, exit 0."""
    shutil.rmtree(examples / "schemas")
    result = check(examples)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    for name in ("002_move_msl.py", "003_fuse_qkv.py", "004_lam_head.py", "006_output_scale.py"):
        assert any(str(examples / name) in n and "round trip not checked: no schema" in n for n in notes), notes
    assert "converters OK" in result.stdout
    findings = check_directory(examples)
    assert findings
    assert not [f for f in findings if f.problem]


PYTEST_BLOCKED = (
    "import sys; sys.modules['pytest'] = None; from ckpt_path.cli import main; "
    "sys.argv = ['ckpt-path', 'check', '--converters', sys.argv[1]]; main()"
)


@pytest.mark.slow
def test_check_needs_no_pytest(examples, tmp_path):
    """`ckpt-path check` passes the examples in a process where pytest cannot be imported (no dev extras)."""
    done = subprocess.run(
        [sys.executable, "-c", PYTEST_BLOCKED, str(examples)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "converters OK" in done.stdout
    assert "Traceback" not in done.stderr


def write_ops(directory: Path, name: str, ops: str, *, reversible: bool = True) -> Path:
    """Write an ops converter 1.0.0 -> 2.0.0 named ``name`` with ``ops`` (the text of the list)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(
        f'"""{name}."""\n\nfrom ckpt_path.ops import Cast, Rename, Reshape\n\n'
        f'source = "1.0.0"\ntarget = "2.0.0"\nreversible = {reversible}\n\nops = {ops}\n',
        encoding="utf-8",
    )
    return path


def test_widening_cast_with_only_the_wider_schema_passes(tmp_path):
    """A reversible float16 -> float32 Cast passes when only 2.0.0 (float32) has a schema: checked from 1.0.0."""
    directory = tmp_path / "converters"
    widen = write_ops(directory, "001_widen", '[Cast("*", "float32", source_dtype="float16")]')
    write_schema(directory, "2.0.0", {"w": ([3, 2], "float32"), "b": ([3], "float32")})
    result = check(directory)
    assert result.exit_code == 0, result.output
    assert "converters OK" in result.stdout
    findings = [f for f in check_directory(directory) if Path(f.file) == widen]
    assert findings == [], findings  # checked (no "not checked" note) and not broken


def test_round_trip_from_the_target_schema_names_the_file_direction(tmp_path):
    """A target-only schema the file's ops cannot produce is a problem named source -> target -> source."""
    directory = tmp_path / "converters"
    nest = write_ops(directory, "001_nest", '[Rename("x.{p}", "x.y.{p}")]')
    write_schema(directory, "2.0.0", {"z.b": ([2], "float32")})
    assert_reported(directory, nest, "round trip 1.0.0 -> 2.0.0 -> 1.0.0 fails", "schema of 2.0.0")


def test_reshape_with_an_inferred_source_shape_is_refused_with_its_line(tmp_path):
    """`Reshape(..., source_shape=[2, -1])` would fail every run, so check refuses the file at its line."""
    directory = tmp_path / "converters"
    reshape = write_ops(directory, "001_flatten", '[\n    Reshape("w", [6], source_shape=[2, -1]),\n]')
    write_schema(directory, "1.0.0", {"w": ([2, 3], "float32")})
    assert_reported(directory, reshape, "source_shape")
    (finding,) = [f for f in problems(directory) if Path(f.file) == reshape]
    assert finding.line == 10


def test_versions_without_a_schema_get_a_note(examples):
    """A version with no schema is a note (not a problem) saying its steps cannot be verified and how to write one."""
    (examples / "schemas" / "1.1.0.json").unlink()
    result = check(examples)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ") and "has no schema" in line]
    expected = (
        f"note: {examples / 'schemas' / '1.1.0.json'}: version 1.1.0 has no schema: steps landing on it cannot be "
        "verified; write one with `ckpt-path schema CKPT --version 1.1.0`"
    )
    assert notes == [expected], notes


def test_import_failure_is_reported_by_its_reason_whatever_the_path(tmp_path):
    """An import failure is reported by the error's reason, even when the file's path holds ": "."""
    directory = tmp_path / "converters: old"
    directory.mkdir()
    bad = directory / "001_raises.py"
    bad.write_text(
        RESIZE_TO_1_2.replace("\n\ndef convert", '\nraise RuntimeError("boom at import")\n\n\ndef convert'),
        encoding="utf-8",
    )
    (finding,) = [f for f in problems(directory) if Path(f.file) == bad]
    assert finding.message.startswith("importing the converter failed: RuntimeError: boom at import"), finding


def test_every_problem_is_found_at_once(examples):
    """Several broken files are all reported in one run, one error line per problem and a count."""
    (examples / "007_broken.py").write_text("def (:\n", encoding="utf-8")
    (examples / "008_downgrade.py").write_text(RESIZE_TO_1_2.replace('"1.2.0"', '"0.9.0"'), encoding="utf-8")
    result = check(examples)
    lines = errors(result)
    assert any("007_broken.py" in line for line in lines), lines
    assert any("008_downgrade.py" in line for line in lines), lines
    assert f"{len(lines)} problem(s)" in result.stderr


def test_missing_directory_is_a_problem(tmp_path):
    """Checking a directory that does not exist is a problem, not a pass."""
    result = check(tmp_path / "nowhere")
    assert result.exit_code == 1, result.output
    assert "converters OK" not in result.output


# ckpt-path new


def test_new_writes_the_next_numbered_convert_file(examples):
    """`new` writes NNN_name.py after the highest number, readable as a convert step with its versions."""
    result = new(examples, "rename head", "--from", "1.1.0", "--to", "1.2.0")
    assert result.exit_code == 0, result.output
    path = examples / "007_rename_head.py"
    assert str(path) in result.stdout
    converter = read_converter_file(path)
    assert (str(converter.source), str(converter.target)) == ("1.1.0", "1.2.0")
    assert converter.kind == "convert"
    assert not converter.reversible


def test_new_in_an_empty_directory_starts_at_001(tmp_path):
    """In a directory that has no converters yet, `new` creates it and writes 001_name.py."""
    directory = tmp_path / "fresh"
    path = scaffold_converter(directory, "first-step", "0.1.0", "0.2.0")
    assert path == directory / "001_first_step.py"
    assert path.is_file()


def test_new_with_ops_writes_a_reversible_ops_file(examples):
    """`new --ops` writes a declarative, reversible ops file that reads back with its versions."""
    result = new(examples, "fuse_qkv", "--from", "1.1.0", "--to", "1.2.0", "--ops")
    assert result.exit_code == 0, result.output
    converter = read_converter_file(examples / "007_fuse_qkv.py")
    assert (str(converter.source), str(converter.target)) == ("1.1.0", "1.2.0")
    assert converter.kind == "ops"
    assert converter.reversible


def test_scaffolded_convert_file_runs_as_a_no_op(examples):
    """A freshly scaffolded convert file imports and runs, leaving the checkpoint unchanged."""
    assert new(examples, "next", "--from", "1.1.0", "--to", "1.2.0").exit_code == 0
    registry = Registry.from_directory(examples)
    schema = registry.schema("1.1.0")
    assert schema is not None
    checkpoint = synthetic_checkpoint(schema)
    assert_equal_checkpoints(checkpoint, run_edge(registry, "1.1.0", "1.2.0", checkpoint))
    assert check(examples).exit_code == 0


@pytest.mark.parametrize(
    ("source", "target", "owner"),
    [("1.0.0", "1.1.0", "006_output_scale.py"), ("1.0.0+lam", "1.0.0", "004_lam_head.py")],
)
def test_new_refuses_an_existing_edge(examples, source, target, owner):
    """`new` refuses an edge a file (or a reversible file's inverse) already converts, naming that file."""
    before = sorted(p.name for p in examples.glob("*.py"))
    result = new(examples, "again", "--from", source, "--to", target)
    assert result.exit_code != 0
    assert owner in result.output
    assert f"already converts {source} -> {target}" in result.output
    assert sorted(p.name for p in examples.glob("*.py")) == before


@pytest.mark.parametrize(
    ("source", "target"),
    [("1.1.0", "1.1.0"), ("1.1.0", "1.1"), ("not-a-version", "1.2.0"), ("1.1.0", "one.two")],
)
def test_new_refuses_bad_versions(examples, source, target):
    """`new` refuses the same source and target, and invalid versions, without writing a file."""
    before = sorted(p.name for p in examples.glob("*.py"))
    result = new(examples, "bad", "--from", source, "--to", target)
    assert result.exit_code != 0
    assert "error" in result.output.lower()
    assert "Traceback" not in result.output
    assert sorted(p.name for p in examples.glob("*.py")) == before


@pytest.mark.parametrize("name", ["", "___", "!!"])
def test_new_refuses_a_name_without_letters(tmp_path, name):
    """A converter name with no letters or digits is refused."""
    with pytest.raises(CkptPathError):
        scaffold_converter(tmp_path, name, "1.0.0", "1.1.0")
    assert list(tmp_path.glob("*.py")) == []


# Steps that fail on a checkpoint their source's schema describes, and the notes of paths that fail.


def write_convert(directory: Path, name: str, source: str, target: str, body: str) -> Path:
    """Write a convert file ``name`` for ``source -> target`` whose ``convert`` runs ``body`` (one line)."""
    path = directory / f"{name}.py"
    path.write_text(
        f'"""{name}."""\n\nsource = "{source}"\ntarget = "{target}"\n\n\ndef convert(ckpt):\n    {body}\n',
        encoding="utf-8",
    )
    return path


def _same_layout_as_1_1_0(examples: Path) -> None:
    (examples / "schemas" / "1.2.0.json").write_text(  # 1.2.0 keeps the layout of 1.1.0
        (examples / "schemas" / "1.1.0.json").read_text(encoding="utf-8").replace('"1.1.0"', '"1.2.0"'),
        encoding="utf-8",
    )


@pytest.mark.parametrize(
    ("body", "said"),
    [("return None", "convert returned None"), ("return 3", "convert returned a int")],
    ids=["returns-none", "returns-an-int"],
)
def test_a_convert_function_that_returns_no_checkpoint_is_a_problem_of_its_file(examples, body, said):
    """A function that returns no checkpoint from a checkpoint of its source's schema fails check, on its file, once."""
    _same_layout_as_1_1_0(examples)
    broken = write_convert(examples, "007_broken", "1.1.0", "1.2.0", body)
    result = check(examples)
    assert "converters OK" not in result.stdout
    assert_reported(examples, broken, "step 1.1.0 -> 1.2.0 fails on 1.1.0's schema", said)
    findings = check_directory(examples)
    assert [f.file for f in findings if f.problem] == [str(broken)], [str(f) for f in findings]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('raise ValueError("boom")', "ValueError: boom"),
        ('return ckpt["state_dict"]["missing.weight"]', "KeyError: 'missing.weight'"),
        ('ckpt["state_dict"].pop("output_map.bias")\n    return ckpt', "output_map.bias: missing"),
        ('ckpt["hyper_parameters"]["heads"]\n    return ckpt', "KeyError: 'hyper_parameters'"),
        ('ckpt.pop("hyper_parameters")\n    return ckpt', "KeyError: 'hyper_parameters'"),
    ],
    ids=["raises", "missing-key", "wrong-layout", "reads-an-entry", "pops-an-entry"],
)
def test_a_convert_function_that_fails_on_a_synthetic_checkpoint_is_a_note(examples, body, said):
    """Any other failure on a synthetic checkpoint is one note on the file: a correct function may need real values."""
    _same_layout_as_1_1_0(examples)
    suspect = write_convert(examples, "007_suspect", "1.1.0", "1.2.0", body)
    result = check(examples)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith(f"note: {suspect}: ")]
    assert len(notes) == 1, result.stdout
    assert "step 1.1.0 -> 1.2.0 not verified on a synthetic checkpoint of 1.1.0's schema" in notes[0]
    assert said in notes[0]


def test_ops_that_do_not_fit_their_source_schema_are_a_problem_found_from_shapes(examples):
    """An ops step is predicted on its source schema's layout: an op that does not fit fails check, on its file."""
    _same_layout_as_1_1_0(examples)
    broken = examples / "007_ops.py"
    broken.write_text(
        'source = "1.1.0"\ntarget = "1.2.0"\nfrom ckpt_path.ops import Rename\nops = [Rename("no.such.key", "x")]\n',
        encoding="utf-8",
    )
    assert_reported(examples, broken, "step 1.1.0 -> 1.2.0 fails on 1.1.0's schema", "no.such.key")


def test_step_without_a_schema_for_its_source_fails_paths_as_one_note_on_its_file(examples):
    """A failing step from a version with no schema is one note on its file: its input came from unverified steps."""
    write_convert(examples, "007_next", "1.1.0", "1.2.0", "return ckpt")
    broken = write_convert(examples, "008_broken", "1.2.0", "1.3.0", 'raise ValueError("boom")')
    result = check(examples)
    assert result.exit_code == 0, result.output
    assert "converters OK" in result.stdout
    notes = [line for line in result.stdout.splitlines() if "ValueError: boom" in line]
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"note: {broken}: ")
    assert "step 1.2.0 -> 1.3.0" in notes[0]


def test_new_ops_template_is_reported_once_on_its_own_file(examples):
    """The unedited `new --ops` template fails its step: one problem on its file, no note on the files before it."""
    assert new(examples, "fuse_qkv", "--from", "1.1.0", "--to", "1.2.0", "--ops").exit_code == 0
    template = examples / "007_fuse_qkv.py"
    result = check(examples)
    lines = errors(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {template}: step 1.1.0 -> 1.2.0 fails"), lines
    assert "no key matches 'OLD.{p}'" in lines[0]
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert not [n for n in notes if "OLD.{p}" in n or "007_fuse_qkv" in n], notes
    assert len(notes) == len(set(notes)), notes


def test_version_no_step_lands_on_needs_no_schema(examples):
    """The first version, which no step lands on, gets no "has no schema" note; its step says it was not run alone."""
    (examples / "schemas" / "0.1.0.json").unlink()
    result = check(examples)
    assert result.exit_code == 0, result.output
    assert "has no schema:" not in result.stdout
    notes = [f.message for f in check_directory(examples) if "0.1.0" in f.message]
    assert notes == [
        "step 0.1.0 -> 0.2.0 not run on its own: 0.1.0 has no schema (`ckpt-path schema CKPT --version 0.1.0`)"
    ]


def test_new_ops_template_imports_every_op_its_comments_show(examples):
    """Every op the `new --ops` template shows in its comments is imported, and nothing else is."""
    import ast
    import re

    import ckpt_path.ops

    assert new(examples, "fuse_qkv", "--from", "1.1.0", "--to", "1.2.0", "--ops").exit_code == 0
    text = (examples / "007_fuse_qkv.py").read_text(encoding="utf-8")
    (imported,) = [node for node in ast.parse(text).body if isinstance(node, ast.ImportFrom)]
    names = {alias.name for alias in imported.names}
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    shown = set(re.findall(r"\b([A-Z][A-Za-z]+)\(", comments))
    assert names == shown, names ^ shown
    assert names <= set(ckpt_path.ops.__all__)


@pytest.mark.parametrize(
    ("name", "docstring"),
    [("bad name!", '"""Bad name."""'), ('say "hi" \\ now...', '"""Say hi now."""'), ("fuse_qkv", '"""Fuse qkv."""')],
)
@pytest.mark.parametrize("ops", [False, True])
def test_new_writes_the_name_as_one_plain_sentence(tmp_path, name, docstring, ops):
    """The docstring is the name's words and one period: no "!.", and no quote or backslash that breaks the file."""
    path = scaffold_converter(tmp_path, name, "1.0.0", "1.1.0", ops=ops)
    assert path.read_text(encoding="utf-8").splitlines()[0] == docstring
    assert read_converter_file(path).description == docstring.strip('"')
