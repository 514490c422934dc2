"""The command line at its edges: names that look like versions, JSON outputs, versions read from a key, terminals.

Each test runs ``ckpt-path`` as a user would (in process through typer, or the installed
command under a pseudo-terminal) and checks what the user sees: the exit code, stdout, and the
one-line messages on stderr.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ckpt_fixtures import CKPT_PATH_BIN, lightning, v010_state_dict, write_ckpt, write_v010
from ckpt_path import Registry
from ckpt_path.cli import app
from ckpt_path.commands import convert_file
from ckpt_path.registry import ENV_VAR
from helpers import EXAMPLE_CONVERTERS, ROOT, assert_one_line_error, cli, copy_examples, write_converter

# --- a file named like a version ------------------------------------------------------------------


def test_plan_reads_a_version_even_when_a_file_has_its_name(example_dir, tmp_path, monkeypatch):
    """`plan 1.0.0 ...` and `plan latest ...` plan from the version, not from a file of that name in the cwd."""
    monkeypatch.chdir(tmp_path)
    cases = [("1.0.0", "1.2.0"), ("latest", "1.1.0", "--allow-lossy"), ("lam@latest", "1.2.0")]
    expected = [cli("plan", *case, "--json", "--converters", example_dir) for case in cases]
    for name in ("1.0.0", "latest", "lam@latest"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    for case, before in zip(cases, expected, strict=True):
        result = cli("plan", *case, "--json", "--converters", example_dir)
        assert before.exit_code == 0, before.output
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == json.loads(before.stdout)


def test_plan_reads_a_file_whose_name_is_not_a_version(example_dir, tmp_path, monkeypatch):
    """A SOURCE that is a file but not a version (`v1.ckpt`) is read as a checkpoint: its stamp gives the version."""
    monkeypatch.chdir(tmp_path)
    write_ckpt(tmp_path / "v1.ckpt", lightning({"w": torch.zeros(1)}, "1.1.0"))
    result = cli("plan", "v1.ckpt", "1.2.0", "--json", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == "1.1.0"


# --- versions --json ----------------------------------------------------------------------------


def test_versions_json_lists_what_the_text_lists(example_dir):
    """`versions --json` gives each version newest first with its branch and notes, as the text output does."""
    write_converter(example_dir, "h_exp", "1.0.0", "1.0.0+exp")
    result = cli("versions", "--json", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"version": "1.2.0", "branch": None, "notes": ["latest"]},
        {"version": "1.1.0+lam", "branch": "lam", "notes": ["branch lam", "lam@latest"]},
        {"version": "1.1.0", "branch": None, "notes": []},
        {"version": "1.0.0+exp", "branch": "exp", "notes": ["branch exp", "exp@latest"]},
        {"version": "1.0.0", "branch": None, "notes": []},
    ]
    text = cli("versions", "--converters", example_dir).stdout.splitlines()
    assert [line.split()[0] for line in text] == [row["version"] for row in json.loads(result.stdout)]


# --- a distributed checkpoint with --json ---------------------------------------------------------


def test_dcp_conversion_prints_json_and_its_warning(tmp_path):
    """A DCP conversion with --json prints the result as JSON on stdout and each warning as one line on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp_save({"state_dict": v010_state_dict(), "epoch": 3}, checkpoint_id=str(tmp_path / "in"))
    out = tmp_path / "out"
    args = ["--from", "0.1.7", "--to", "0.2.0", "--json", "--converters", EXAMPLE_CONVERTERS]
    result = cli("convert", tmp_path / "in", "-o", out, *args)
    assert result.exit_code == 0, result.output
    said = json.loads(result.stdout)
    assert (said["requested_source"], said["source"], said["target"]) == ("0.1.7", "0.1.0", "0.2.0")
    assert said["output"] == str(out)
    note = "0.1.7 is not a version of the graph; it reads as 0.1.0, the highest version at or below it on its branch"
    assert said["warnings"] == [note]
    assert result.stderr.splitlines() == [f"warning: {note}"]
    assert (out / ".metadata").is_file()
    assert json.loads(cli("inspect", out, "--json").stdout)["version"] == "0.2.0"


# --- a version read from the project's version-key ------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Make a project whose pyproject.toml names the example converters and version-key = hyper_parameters.version."""
    copy_examples(tmp_path / "converters")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.ckpt-path]\nconverters = "converters"\nversion-key = "hyper_parameters.version"\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_inspect_says_which_graph_version_a_recorded_version_reads_as(project):
    """An unstamped checkpoint recording 0.1.7 (not in the graph) is shown as reading as 0.1.0, as convert uses it."""
    ckpt = lightning(v010_state_dict())
    ckpt["hyper_parameters"]["version"] = "0.1.7"
    path = write_ckpt(project / "old.ckpt", ckpt)
    text = cli("inspect", path)
    assert text.exit_code == 0, text.output
    assert (
        "version:     not stamped; 0.1.7 according to hyper_parameters.version "
        "(reads as 0.1.0, the highest version of the graph at or below it)"
    ) in text.stdout.splitlines()
    info = json.loads(cli("inspect", path, "--json").stdout)
    assert (info["inferred_version"], info["version_from"], info["reads_as"]) == (
        "0.1.7",
        "hyper_parameters.version",
        "0.1.0",
    )
    dry = json.loads(cli("convert", path, "--dry-run", "--json").stdout)
    assert dry["source"] == info["reads_as"]


# --- progress while writing -----------------------------------------------------------------------


def test_write_progress_never_passes_its_total(tmp_path):
    """The byte progress of a write (the bar `convert` shows on a terminal) ends at its total, never beyond it.

    A bar that reads "8.3/6.3 kB" tells the user the total was wrong.
    """
    path = write_v010(tmp_path / "in.ckpt", version="0.1.0")
    reports: list[tuple[int, int]] = []
    convert_file(
        path,
        tmp_path / "out.ckpt",
        registry=Registry.from_directory(EXAMPLE_CONVERTERS),
        on_write=lambda done, total: reports.append((done, total)),
    )
    assert reports
    assert all(done <= total for done, total in reports), reports[-1]


def run_on_a_terminal(*args: object, cwd: Path) -> tuple[int, str, str]:
    """Run the installed ``ckpt-path ARGS``, stderr on a pseudo-terminal; return (exit code, stdout, terminal text)."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR} | {"TERM": "xterm", "COLUMNS": "120"}
    with subprocess.Popen(
        [str(CKPT_PATH_BIN), *map(str, args)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=terminal
    ) as process:
        os.close(terminal)
        shown = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command has ended
                break
            if not chunk:
                break
            shown.append(chunk)
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        code = process.wait(timeout=120)
    os.close(controller)
    return code, stdout, b"".join(shown).decode(errors="replace")


def plain(terminal: str) -> str:
    """Drop the terminal's escape sequences from ``terminal``."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal)


@pytest.mark.slow
def test_convert_on_a_terminal_shows_each_step_then_clears_it(tmp_path):
    """On a terminal, convert shows each step and the bytes written, clears them, and prints its summary on stdout."""
    write_v010(tmp_path / "in.ckpt", version="0.1.0")
    code, stdout, shown = run_on_a_terminal(
        "convert", "in.ckpt", "-o", "out.ckpt", "--converters", EXAMPLE_CONVERTERS, cwd=tmp_path
    )
    assert code == 0, shown
    assert stdout.startswith("in.ckpt: 0.1.0 -> 1.1.0 in 4 step(s); written to out.ckpt\n")
    text = plain(shown)
    assert "step 1/4: 0.1.0 -> 0.2.0 (001_rename_grid_mlp)" in text
    assert "writing" in text
    assert shown.endswith("\x1b[2K")  # the progress display erased its last line: nothing left on the terminal
    assert "error" not in text
    assert (tmp_path / "out.ckpt").is_file()


@pytest.mark.slow
def test_batch_on_a_terminal_counts_the_files_then_clears_it(tmp_path):
    """On a terminal, a batch shows done/total files, clears the bar, and prints its table on stdout."""
    sweep = tmp_path / "sweep"
    write_v010(sweep / "a.ckpt", version="0.1.0")
    shutil.copy(sweep / "a.ckpt", sweep / "b.ckpt")
    code, stdout, shown = run_on_a_terminal(
        "convert", "sweep", "--output-dir", "out", "--converters", EXAMPLE_CONVERTERS, cwd=tmp_path
    )
    assert code == 0, shown
    assert stdout.splitlines()[0].strip() == "2 of 2 converted"
    assert "converting" in plain(shown)
    assert "2/2" in plain(shown)
    assert shown.endswith("\x1b[2K")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ckpt", "b.ckpt"]


@pytest.mark.slow
def test_json_on_a_terminal_shows_no_progress(tmp_path):
    """With --json nothing but warnings reaches the terminal, so the JSON on stdout can be piped on."""
    write_v010(tmp_path / "in.ckpt", version="0.1.0")
    code, stdout, shown = run_on_a_terminal(
        "convert", "in.ckpt", "-o", "out.ckpt", "--json", "--converters", EXAMPLE_CONVERTERS, cwd=tmp_path
    )
    assert code == 0, shown
    said: dict[str, Any] = json.loads(stdout)
    assert said["target"] == "1.1.0"
    assert shown == ""


# --- help, and options that do not go together ----------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "convert", "graph", "new"])
def test_help_shows_each_example_on_its_own_line(command):
    """`COMMAND --help` lists its examples one per line under "Examples:", with no backspace marker shown."""
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert "\\b" not in result.stdout
    assert "\b" not in result.stdout
    lines = result.stdout.splitlines()
    start = lines.index("  Examples:")
    examples = [line.strip() for line in lines[start + 1 :] if line.startswith("    ")]
    assert examples
    assert all(line.startswith(f"ckpt-path {command} ") for line in examples), examples
    assert all(line.count("ckpt-path ") == 1 for line in examples), examples


def test_plan_help_lists_its_two_examples():
    """`plan --help` shows both of its examples, each alone on its line."""
    lines = [line.strip() for line in cli("plan", "--help").stdout.splitlines()]
    assert "ckpt-path plan 0.1.0 latest" in lines
    assert "ckpt-path plan model.ckpt lam@latest --json" in lines


def test_help_names_option_values_plainly():
    """Option values read as words (DIR, N, MODULE.NAME), not as Python types such as `<list[str]>`."""
    text = cli("convert", "--help").stdout.split("Options:")[1]  # typer types every argument (`<list[Path]>`)
    for shown in ("--converters DIR", "--workers N", "--safe-global MODULE.NAME", "-o, --output OUTPUT", "--to TARGET"):
        assert shown in text, shown
    assert "list[" not in text
    assert "int range" not in text


def test_plan_of_a_missing_file_says_there_is_no_such_file(example_dir, tmp_path, monkeypatch):
    """A SOURCE that names a file (a suffix or a directory part) but is neither a file nor a version: no such file."""
    monkeypatch.chdir(tmp_path)
    for source in ("missing.ckpt", "runs/step-10"):
        result = cli("plan", source, "latest", "--converters", example_dir)
        assert_one_line_error(result, f"cannot read {source}: no such file")
    result = cli("plan", "1.0.x", "latest", "--converters", example_dir)
    assert_one_line_error(result, "invalid version '1.0.x'")  # not a file name: still a bad version


def test_output_and_output_dir_do_not_go_together(tmp_path):
    """One INPUT with both -o and --output-dir is bad usage (exit 2, one line), and nothing is written."""
    path = write_v010(tmp_path / "in.ckpt", version="0.1.0")
    result = cli(
        "convert",
        path,
        "-o",
        tmp_path / "out.ckpt",
        "--output-dir",
        tmp_path / "out",
        "--converters",
        EXAMPLE_CONVERTERS,
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        (
            "error: -o and --output-dir do not go together: -o names the OUTPUT of one INPUT, "
            "--output-dir DIR receives each INPUT as DIR/<its file name>"
        ),
    ]
    assert not (tmp_path / "out.ckpt").exists()
    assert not (tmp_path / "out").exists()


def test_workers_with_one_file_output_warns_that_one_process_writes_it(tmp_path):
    """`--workers 2` with one INPUT and a file OUTPUT converts, and says in one warning that one process wrote it."""
    path = write_v010(tmp_path / "in.ckpt", version="0.1.0")
    out = tmp_path / "w2.ckpt"
    result = cli("convert", path, "-o", out, "--workers", "2", "--converters", EXAMPLE_CONVERTERS)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    warnings_shown = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings_shown == [
        (
            "warning: --workers applies to DCP outputs (an OUTPUT ending in .dcp, or a DCP INPUT) and to several "
            f"inputs (--output-dir), so {out} is written by one process"
        ),
    ]
    quiet = cli("convert", path, "-o", tmp_path / "w1.ckpt", "--converters", EXAMPLE_CONVERTERS)
    assert quiet.exit_code == 0, quiet.output
    assert "--workers" not in quiet.stderr


def test_new_refuses_ops_and_infer_together(examples):
    """`new --ops --infer` is bad usage (exit 2, one line): the two scaffold different files; nothing is written."""
    before = sorted(p.name for p in examples.iterdir())
    result = cli("new", "x", "--from", "1.1.0", "--to", "1.2.0", "--ops", "--infer", "--converters", examples)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --ops and --infer do not go together: --infer drafts the ops, --ops leaves them to you"
    ]
    assert sorted(p.name for p in examples.iterdir()) == before


# --- the README says what the command line does -----------------------------------------------------

README = ROOT / "README.md"


def readme_section(title: str) -> str:
    """Return the README's section under the heading ``title`` (up to the next heading of its level)."""
    text = README.read_text(encoding="utf-8")
    level = title.split(" ", maxsplit=1)[0]
    section = text[text.index(f"\n{title}\n") + len(title) + 2 :]
    end = re.search(rf"\n{level} ", section)
    return section if end is None else section[: end.start()]


def test_readme_command_table_names_every_option_of_every_command():
    """The README's command table lists exactly the options each command's --help shows, and every command."""
    rows = [line for line in readme_section("## Command line").splitlines() if line.startswith("| `ckpt-path ")]
    said: dict[str, set[str]] = {}
    for row in rows:
        synopsis = row.split("`")[1]
        name = synopsis.split()[1]
        said.setdefault(name, set()).update(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", synopsis))
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    assert set(said) == set(group.commands)
    for name, command in group.commands.items():
        options = [param for param in command.params if param.param_type_name == "option" and param.name != "help"]
        missing = [param.opts[0] for param in options if not said[name] & set(param.opts)]
        known = {opt for param in options for opt in param.opts}
        assert missing == [], (name, missing)
        assert said[name] <= known, (name, said[name] - known)


def test_readme_converting_synopsis_names_every_convert_option():
    """The synopsis at the top of the README's *Converting* section names every option of `convert`."""
    synopsis = readme_section("## Converting").strip().splitlines()[0]
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for param in group.commands["convert"].params:
        if param.param_type_name == "option" and param.name != "help":
            assert any(re.search(rf"(?<![\w-]){opt}(?![\w-])", synopsis) for opt in param.opts), param.opts


@pytest.mark.slow
def test_readme_testing_example_passes(tmp_path):
    """The README's conftest.py and test_checkpoints.py, run by pytest on the bundled converters, pass."""
    block = readme_section("## Writing and testing converters").split("```python\n# conftest.py\n")[1]
    block = block.split("```")[0]
    conftest, tests = block.split("\n# test_checkpoints.py")
    (tmp_path / "conftest.py").write_text(conftest, encoding="utf-8")
    (tmp_path / "test_checkpoints.py").write_text(tests.split("\n", 1)[1], encoding="utf-8")
    copy_examples(tmp_path / "converters")
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_checkpoints.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout


@pytest.mark.parametrize(
    ("version", "said"),
    [
        ("1.0.0", None),
        ("1.0.3", "1.0.3 is not a version of the converters in converters; convert reads it as 1.0.0"),
        ("0.0.1", "the converters in converters do not know 0.0.1, so convert will refuse it"),
        ("1.0.0+foo", "the converters in converters do not know 1.0.0+foo"),
    ],
)
@pytest.mark.usefixtures("examples")  # the project's converters, in tmp_path/converters
def test_stamp_warns_when_the_project_reads_the_version_otherwise(tmp_path, monkeypatch, version, said):
    """`stamp` with a version the project's graph lacks still stamps (exit 0) and says what convert will make of it."""
    monkeypatch.chdir(tmp_path)
    write_v010(tmp_path / "in.ckpt")
    result = cli("stamp", "in.ckpt", version)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"stamped in.ckpt as {version}\n"
    if said is None:
        assert result.stderr == ""
    else:
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"warning: {said}"), line


@pytest.mark.usefixtures("examples")
def test_inspect_says_which_version_a_stamped_one_reads_as(tmp_path, monkeypatch):
    """A file stamped 1.0.3+lam reads as 1.0.0+lam, as convert reads it: inspect says so in text and JSON."""
    monkeypatch.chdir(tmp_path)
    write_v010(tmp_path / "in.ckpt", version="1.0.3+lam")
    shown = cli("inspect", "in.ckpt", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["reads_as"] == "1.0.0+lam"
    assert "1.0.3+lam (reads as 1.0.0+lam" in cli("inspect", "in.ckpt").stdout
    write_v010(tmp_path / "odd.ckpt", version="0.0.1")
    odd = cli("inspect", "odd.ckpt", "--json")
    assert json.loads(odd.stdout)["reads_as"] is None
    assert any("the converters do not know the stamped version" in w for w in json.loads(odd.stdout)["warnings"])


def test_versions_of_an_empty_directory_says_there_are_none(tmp_path):
    """`versions` on a directory without converters (empty, or a mistyped path) warns instead of printing nothing."""
    (tmp_path / "empty").mkdir()
    result = cli("versions", "--converters", tmp_path / "empty")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("warning: no converters in ")


def test_stamp_with_a_broken_project_still_stamps_and_warns_in_one_line(tmp_path, monkeypatch):
    """A pyproject.toml that cannot be read does not turn a written stamp into a traceback: one warning line, exit 0."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "converters").mkdir()
    (tmp_path / "pyproject.toml").write_text("[tool.ckpt-path\n", encoding="utf-8")
    write_v010(tmp_path / "in.ckpt")
    result = cli("stamp", "in.ckpt", "1.0.0")
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: could not read the project's converters to compare 1.0.0 with them: ")
