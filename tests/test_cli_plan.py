from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_path import Registry, read_converters
from ckpt_path.registry import ENV_VAR
from helpers import EXAMPLE_CONVERTERS, assert_one_line_error, cli, write_converter

PLAN_KEYS = {"source", "requested_source", "target", "cost", "lossy", "steps"}
STEP_KEYS = {"source", "target", "converter", "file", "lossy", "cost", "description"}


def test_plan_prints_the_steps(example_dir):
    """`plan` prints a title with steps and cost, and every converter of the path."""
    result = cli("plan", "1.0.0", "latest", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "1.0.0 -> 1.2.0: 2 step(s), cost 2" in result.stdout
    assert "a_upgrade" in result.stdout
    assert "b_upgrade" in result.stdout
    assert "e_merge" not in result.stdout
    assert "LOSSY" not in result.stdout


def test_plan_marks_lossy_steps(example_dir):
    """With --allow-lossy a lossy plan is printed and marked as lossy."""
    result = cli("plan", "1.2.0", "1.0.0", "--allow-lossy", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    assert "1.2.0 -> 1.0.0: 2 step(s), cost 2, LOSSY" in result.stdout
    assert "f_drop [lossy]" in result.stdout
    assert "c_downgrade" in result.stdout


def test_plan_to_the_same_version(example_dir):
    """Planning from a version to itself says there is nothing to do."""
    result = cli("plan", "1.1.0", "1.1.0", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "1.1.0 is already 1.1.0: nothing to do"


def test_plan_json(example_dir):
    """`plan --json` prints the contract's object, and only that."""
    result = cli("plan", "1.1.0", "lam@latest", "--json", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == PLAN_KEYS
    assert data == {
        "source": "1.1.0",
        "requested_source": None,
        "target": "1.1.0+lam",
        "cost": 1.0,
        "lossy": False,
        "steps": [
            {
                "source": "1.1.0",
                "target": "1.1.0+lam",
                "converter": "d_branch",
                "file": str(example_dir / "d_branch.py"),
                "lossy": False,
                "cost": 1.0,
                "description": "Branch off to lam.",
            },
        ],
    }
    assert all(set(step) == STEP_KEYS for step in data["steps"])


def test_plan_from_a_version_between_converters(example_dir):
    """`plan 1.1.7 1.2.0` plans from 1.1.0 and says so, in the text output and as requested_source in JSON."""
    result = cli("plan", "1.1.7", "1.2.0", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "1.1.7 is not a version of the graph; it reads as 1.1.0, the highest version at or below it on its branch"
    )
    assert "1.1.0 -> 1.2.0: 1 step(s), cost 1" in result.stdout
    assert "b_upgrade" in result.stdout
    result = cli("plan", "1.1.7", "1.2.0", "--json", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["source"], data["requested_source"], data["target"]) == ("1.1.0", "1.1.7", "1.2.0")
    assert [s["converter"] for s in data["steps"]] == ["b_upgrade"]


def test_plan_json_lossy(example_dir):
    """A lossy plan in JSON says so at the top and on the lossy step."""
    result = cli("plan", "1.2.0", "1.1.0", "--json", "--allow-lossy", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["lossy"] is True
    assert [(s["converter"], s["lossy"]) for s in data["steps"]] == [("f_drop", True)]


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (
            ["plan", "1.0.0", "6.0.0"],
            "no path from 1.0.0 to 6.0.0: 1.0.0 reaches 1.1.0, 1.1.0+lam, 1.2.0; 6.0.0 is reached from 5.0.0",
        ),
        (["plan", "1.0.0", "1.3.0"], "unknown version 1.3.0; nearest known: "),
        (["plan", "0.9", "1.0.0"], "unknown version 0.9; nearest known: "),
        (["plan", "1.2.0", "1.0.0"], "every path from 1.2.0 to 1.0.0 has a lossy step (1.2.0 -> 1.1.0: "),
        (["plan", "1.0.0", "banana"], "invalid version 'banana'"),
        (["plan", "not.a.version", "1.0.0"], "invalid version 'not.a.version'"),
        (["plan", "1.0.0", "exp@latest"], "invalid version 'exp@latest': no branch 'exp'"),
        (["plan", "1.0.0", "@latest"], "invalid version '@latest'"),
    ],
)
def test_plan_failures_are_one_line(example_dir, args, start):
    """A plan that cannot be made exits 1 with one `error:` line on stderr and no traceback."""
    write_converter(example_dir, "z_island", "5.0.0", "6.0.0")
    assert_one_line_error(cli(*args, "--converters", example_dir), start=start)


def test_broken_converter_file(example_dir):
    """A converter file that cannot be read fails every command with its file and line."""
    broken = example_dir / "g_broken.py"
    broken.write_text('source = "1.2.0"\ntarget = "1.3.0"\ncost = -1\nops = []\n', encoding="utf-8")
    for command in (["plan", "1.0.0", "latest"], ["graph"], ["versions"]):
        result = cli(*command, "--converters", example_dir)
        assert_one_line_error(result, start=f"{broken}:3: cost must be a number")


def test_duplicate_converters(example_dir):
    """Two converters for one edge fail with both files named."""
    write_converter(example_dir, "a_again", "1.0.0", "1.1.0")
    result = cli("plan", "1.0.0", "latest", "--converters", example_dir)
    assert_one_line_error(result, start="two converters for 1.0.0 -> 1.1.0: ")
    assert str(example_dir / "a_upgrade.py") in result.stderr
    assert str(example_dir / "a_again.py") in result.stderr


def test_missing_converters_directory(tmp_path):
    """A converters directory that does not exist fails with its name."""
    result = cli("plan", "1.0", "1.1", "--converters", tmp_path / "nowhere")
    assert_one_line_error(result, start=f"{tmp_path / 'nowhere'}: converters directory not found")


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "1.0.0"],
        ["plan"],
        ["plan", "1.0.0", "1.1.0", "--bogus"],
        ["plan", "1.0.0", "1.1.0", "extra"],
        ["graph", "--format", "png"],
        ["no-such-command"],
    ],
)
def test_bad_usage_exits_2(example_dir, args):
    """Missing arguments, unknown options and bad choices are usage errors: exit 2 with usage help."""
    result = cli(*args, "--converters", example_dir)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Usage:" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("fmt", [None, "text", "mermaid", "dot"])
def test_graph_shows_every_edge(example_dir, fmt):
    """`graph` in every format contains every converter's edge."""
    args = ["graph", "--converters", example_dir] + (["--format", fmt] if fmt else [])
    result = cli(*args)
    assert result.exit_code == 0, result.output
    converters = read_converters(example_dir)
    assert len(converters) == 6
    # Mermaid ids are v0, v1, ... in version order; each node line names its version.
    ordered = sorted({v for c in converters for v in (c.source, c.target)})
    ids = {v: f"v{i}" for i, v in enumerate(ordered)}
    if fmt == "mermaid":
        assert all(f'{ids[v]}["{v}"]' in result.stdout for v in ordered)
    for c in converters:
        node = {v: ids[v] for v in (c.source, c.target)}
        expected = {
            None: f"{c.source} -> {c.target}  {c.name}",
            "text": f"{c.source} -> {c.target}  {c.name}",
            "mermaid": f"{node[c.source]} {'-.->' if c.lossy else '-->'}|{c.name}| {node[c.target]}",
            "dot": f'"{c.source}" -> "{c.target}" [label="{c.name}"',
        }[fmt]
        assert expected in result.stdout


def test_graph_text_flags(example_dir):
    """The text graph shows costs other than 1, lossy edges and descriptions."""
    result = cli("graph", "--converters", example_dir)
    lines = result.stdout.splitlines()
    assert "1.1.0+lam -> 1.2.0  e_merge cost=3  Merge lam back." in lines
    assert "1.2.0 -> 1.1.0  f_drop [lossy]  Drop the new head." in lines
    assert len(lines) == 6


def test_graph_mermaid_and_dot_are_wrapped(example_dir):
    """Mermaid output starts with its header and dot output is one digraph."""
    mermaid = cli("graph", "--format", "mermaid", "--converters", example_dir).stdout
    dot = cli("graph", "--format", "dot", "--converters", example_dir).stdout
    assert mermaid.splitlines()[0] == "graph LR"
    assert dot.splitlines()[0] == "digraph versions {"
    assert dot.rstrip().endswith("}")
    assert '"1.1.0+lam" [label="1.1.0+lam", style="dashed"];' in dot


def test_versions_newest_first(example_dir):
    """`versions` lists every version newest first, marking latest and each branch's latest."""
    write_converter(example_dir, "h_exp", "1.0.0", "1.0.0+exp")
    write_converter(example_dir, "i_lam2", "1.1.0+lam", "1.1.0+lam.2")
    result = cli("versions", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    rows = [line.split(maxsplit=1) for line in result.stdout.splitlines()]
    assert rows == [
        ["1.2.0", "(latest)"],
        ["1.1.0+lam.2", "(branch lam, lam@latest)"],
        ["1.1.0+lam", "(branch lam)"],
        ["1.1.0"],
        ["1.0.0+exp", "(branch exp, exp@latest)"],
        ["1.0.0"],
    ]


def test_converters_from_environment(example_dir, tmp_path, monkeypatch):
    """Without --converters, CKPT_PATH_CONVERTERS names the directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv(ENV_VAR, str(example_dir))
    result = cli("plan", "1.0.0", "latest", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "1.2.0"


def test_converters_option_beats_environment(example_dir, tmp_path, monkeypatch):
    """--converters wins over CKPT_PATH_CONVERTERS."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    result = cli("plan", "1.0.0", "latest", "--json", "--converters", example_dir)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "1.2.0"


def test_converters_from_pyproject(example_dir, tmp_path, monkeypatch):
    """Without option or environment, `[tool.ckpt-path] converters` in ./pyproject.toml is used."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        f'[tool.ckpt-path]\nconverters = "../{example_dir.name}"\n', encoding="utf-8"
    )
    monkeypatch.chdir(project)
    result = cli("versions")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("1.2.0")


def test_converters_in_the_working_directory(example_dir, monkeypatch):
    """Without any setting, ./converters is used."""
    monkeypatch.chdir(example_dir.parent)
    result = cli("plan", "1.0.0", "1.1.0", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"][0]["file"] == str(Path("converters", "a_upgrade.py"))


def console_script():
    """Find the installed `ckpt-path` next to this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("ckpt-path")
    found = str(beside) if beside.is_file() else shutil.which("ckpt-path")
    assert found is not None, "the ckpt-path console script is not installed"
    return found


@pytest.mark.slow
def test_installed_command_plans_the_example():
    """The installed `ckpt-path` plans the bundled example from 0.1.0 to latest, as the API does."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    done = subprocess.run(
        [console_script(), "plan", "0.1.0", "latest", "--json", "--converters", str(EXAMPLE_CONVERTERS)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == PLAN_KEYS
    assert all(set(step) == STEP_KEYS for step in data["steps"])
    registry = Registry.from_directory(EXAMPLE_CONVERTERS)
    latest = max(v for v in registry.versions if v.local is None)
    assert (data["source"], data["target"]) == ("0.1.0", str(latest))
    assert data["steps"][0]["source"] == "0.1.0"
    assert data["steps"][-1]["target"] == str(latest)
    assert data == registry.plan("0.1.0", "latest").to_dict()


@pytest.mark.slow
def test_installed_command_fails_cleanly(example_dir):
    """The installed `ckpt-path` reports an unknown version in one line, exit 1, no traceback."""
    done = subprocess.run(
        [console_script(), "plan", "1.0.0", "9.9.9", "--converters", str(example_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: unknown version 9.9.9; nearest known: 1.0.0, 1.1.0, 1.1.0+lam, 1.2.0",
    ]


def test_plan_of_a_checkpoint_predicts_each_steps_shapes(tmp_path):
    """`plan CKPT TARGET` adds each step's added and removed keys, predicted without tensor data."""
    import torch

    from ckpt_path.demo.models import make_checkpoint

    ckpt = make_checkpoint("0.1.0")
    ckpt["ckpt_path"] = {"version": "0.1.0", "history": []}
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)
    result = cli("plan", path, "1.0.0", "--converters", EXAMPLE_CONVERTERS)
    assert result.exit_code == 0, result.output
    assert "predicted on the shapes of" in result.stdout
    assert "concatenated 3 into processor.qkv_proj.{p} along dim 0, 2 times" in result.stdout
    # 001 is a convert function: not run, so not predicted; the steps after it start from schema 0.2.0.
    assert "001_rename_grid_mlp  [not predicted: a convert function" in result.stdout
    assert "later steps are predicted from schema 0.2.0" in result.stdout
    assert "- g2m_gnn.grid_mlp.0.weight" not in result.stdout


def test_plan_of_a_checkpoint_and_a_dry_run_label_each_step_alike(tmp_path):
    """`plan CKPT` checks a predicted step against its landing schema as the dry run does: both say verified."""
    import torch

    from ckpt_path.demo.models import make_checkpoint

    ckpt = make_checkpoint("0.2.0", seed=0)
    ckpt["ckpt_path"] = {"version": "0.2.0"}
    path = tmp_path / "in.ckpt"
    torch.save(ckpt, path)
    planned = cli("plan", path, "1.0.0", "--converters", EXAMPLE_CONVERTERS)
    dry = cli("convert", path, "--to", "1.0.0", "--dry-run", "--converters", EXAMPLE_CONVERTERS)
    assert planned.exit_code == 0, planned.output
    assert dry.exit_code == 0, dry.output

    def steps(output: str) -> list[str]:
        return [line.strip() for line in output.splitlines() if line.strip()[:2] in {"1.", "2."}]

    assert steps(planned.stdout) == steps(dry.stdout)
    assert all("[verified: ops+schema]" in line for line in steps(planned.stdout))
