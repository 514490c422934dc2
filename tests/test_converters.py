from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.version import Version

from ckpt_path import (
    Converter,
    ConverterFileError,
    DuplicateConverterError,
    Registry,
    build_graph,
    find_converters_dir,
    read_converter_file,
    read_converters,
)
from ckpt_path.converters import FileCode, FunctionCode
from ckpt_path.errors import SettingsError
from ckpt_path.registry import ENV_VAR
from helpers import EXAMPLE_CONVERTERS, build_registry, write_converter


def write(path: Path, text: str) -> Path:
    """Write dedented text to a file and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


OPS = 'from ckpt_path.ops import Rename\n\nops = [Rename("head.{p}", "output_map.{p}")]\n'
"""The code of a small reversible ops converter."""

SOURCE = 'source = "0.1.0"'
TARGET = 'target = "0.2.0"'
OPS_LINE = 'ops = [Drop("old.*")]'
CONVERT = "def convert(ckpt):\n    return ckpt"


def lines(*rows: str) -> str:
    """Join rows into the text of a file."""
    return "\n".join(rows) + "\n"


# Each case: file text, the line the error must name, a fragment of the reason.
BAD_FILES = {
    "syntax error": (lines(SOURCE, TARGET, "def convert(ckpt)", "    return ckpt"), 3, "syntax error"),
    "missing source": (lines(TARGET, OPS_LINE), 1, 'missing `source = "VERSION"`'),
    "missing target": (lines(SOURCE, OPS_LINE), 1, 'missing `target = "VERSION"`'),
    "call as source": (
        lines("from versions import make", "source = make()", TARGET, OPS_LINE),
        2,
        "source must be a plain literal",
    ),
    "name as target": (lines(SOURCE, 'NEXT = "0.2.0"', "target = NEXT", OPS_LINE), 3, "plain literal"),
    "f-string target": (lines(SOURCE, 'target = f"0.{2}.0"', OPS_LINE), 2, "plain literal"),
    "invalid version": (
        lines(SOURCE, "", 'target = "zero point two"', OPS_LINE),
        3,
        "target: invalid version 'zero point two'",
    ),
    "number as version": (lines("source = 0.1", TARGET, OPS_LINE), 1, "source must be a version string"),
    "source is target": (
        lines('source = "1.0"', 'target = "1.0.0"', OPS_LINE),
        2,
        "source and target are both 1.0",
    ),
    "function as source": (
        lines("def source():", '    return "0.1.0"', TARGET, OPS_LINE),
        1,
        "source must be a literal, not a function",
    ),
    "neither convert nor ops": (lines(SOURCE, TARGET), 1, "defines neither"),
    "both convert and ops": (lines(SOURCE, TARGET, CONVERT, OPS_LINE), 5, "either convert or ops, not both"),
    "reversible with convert": (lines(SOURCE, TARGET, "reversible = True", CONVERT), 3, "reversible = True needs ops"),
    "reversible not a bool": (lines(SOURCE, TARGET, "reversible = 1", OPS_LINE), 3, "True or False"),
    "lossy not a bool": (lines(SOURCE, TARGET, OPS_LINE, 'lossy = "yes"'), 4, "True or False"),
    "cost zero": (lines(SOURCE, TARGET, "cost = 0", OPS_LINE), 3, "cost must be a number >="),
    "cost negative": (lines(SOURCE, TARGET, "cost = -1.5", OPS_LINE), 3, "cost must be a number >="),
    "cost string": (lines(SOURCE, TARGET, 'cost = "2"', OPS_LINE), 3, "cost must be a number, got '2'"),
    "cost bool": (lines(SOURCE, TARGET, "cost = True", OPS_LINE), 3, "cost must be a number, got True"),
    "cost inf": (lines(SOURCE, TARGET, "cost = 1e999", OPS_LINE), 3, "cost must be a number >="),
    "cost nan": (lines(SOURCE, TARGET, 'cost = float("nan")', OPS_LINE), 3, "plain literal"),
    "cost huge int": (lines(SOURCE, TARGET, "cost = 1" + "0" * 400, OPS_LINE), 3, "cost must be a number >="),
    "touches of numbers": (lines(SOURCE, TARGET, 'touches = ["a.*", 3]', OPS_LINE), 3, "touches must be a list"),
    "touches a dict": (lines(SOURCE, TARGET, 'touches = {"a": 1}', OPS_LINE), 3, "touches must be a list"),
    "touches unhashable set": (lines(SOURCE, TARGET, 'touches = {["a"]}', OPS_LINE), 3, "plain literal"),
    "source bound twice": (
        lines(SOURCE, TARGET, OPS_LINE, 'source = "0.1.1"'),
        4,
        "source is bound twice (first on line 1)",
    ),
    "convert defined twice": (
        lines(SOURCE, TARGET, CONVERT, CONVERT),
        5,
        "convert is bound twice (first on line 3)",
    ),
    "annotated twice": (lines('source: str = "0.1.0"', TARGET, SOURCE, OPS_LINE), 3, "bound twice"),
}


@pytest.mark.parametrize(("text", "line", "reason"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_converter_file_names_file_and_line(tmp_path, text, line, reason):
    """Every problem in a converter file raises ConverterFileError naming the file and the line."""
    path = tmp_path / "bad.py"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConverterFileError) as info:
        read_converter_file(path)
    error = info.value
    assert (error.file, error.line) == (str(path), line)
    assert str(error).startswith(f"{path}:{line}: ")
    assert reason in error.reason


def test_null_bytes_name_the_file(tmp_path):
    """A file that is not Python text at all is a ConverterFileError naming the file."""
    path = tmp_path / "binary.py"
    path.write_bytes(b'source = "0.1.0"\x00\n')
    with pytest.raises(ConverterFileError) as info:
        read_converter_file(path)
    assert info.value.file == str(path)
    assert str(info.value).startswith(str(path))


def test_display_name_is_used_in_errors(tmp_path):
    """The display name given by the caller is the file an error names."""
    path = write(tmp_path / "bad.py", 'source = "0.1.0"\ntarget = "x"\nops = [Drop("old.*")]\n')
    with pytest.raises(ConverterFileError, match=r"^converters/bad\.py:2: target: invalid version 'x'"):
        read_converter_file(path, display="converters/bad.py")


def test_error_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    """Reading a directory below the working directory names files relative to it."""
    write_converter(tmp_path / "conv", "ok", "0.1.0", "0.2.0")
    write(tmp_path / "conv" / "broken.py", 'source = "0.2.0"\ntarget = "0.3.0"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConverterFileError) as info:
        read_converters(tmp_path / "conv")
    assert info.value.file == str(Path("conv", "broken.py"))


def test_reads_every_literal(tmp_path):
    """A converter file's literals become the converter's fields; the name is the file's stem."""
    path = write_converter(
        tmp_path,
        "004_fuse",
        "0.3.0",
        "1.0.0+lam",
        doc="Fuse q, k and v.\n\nMore detail that is not shown.",
        lossy=True,
        cost=2.5,
        touches=["processor.*", "head.bias"],
        code="def convert(ckpt):\n    return ckpt\n\n\ndef when(ckpt):\n    return True\n",
    )
    converter = read_converter_file(path)
    assert converter == Converter(
        source=Version("0.3.0"),
        target=Version("1.0.0+lam"),
        name="004_fuse",
        description="Fuse q, k and v.",
        file=str(path),
        lossy=True,
        cost=2.5,
        touches=("processor.*", "head.bias"),
        reversible=False,
        digest=converter.digest,
        inverse=False,
    )
    assert (converter.kind, converter.has_when, converter.code) == ("convert", True, FileCode(with_when=True))
    assert converter.digest.startswith("sha256:")


def test_defaults(tmp_path):
    """Without the optional literals a converter is lossless, costs 1 and may touch any key."""
    converter = read_converter_file(write_converter(tmp_path, "plain", "0.1.0", "0.2.0"))
    assert (converter.lossy, converter.cost, converter.touches, converter.reversible) == (False, 1.0, None, False)
    assert converter.has_when is False
    assert isinstance(converter.cost, float)


def test_annotated_literals_are_read(tmp_path):
    """`source: str = "..."` binds a literal like a plain assignment."""
    path = write(tmp_path / "typed.py", 'source: str = "0.1.0"\ntarget: str = "0.2.0"\ncost: float = 2\n' + OPS)
    converter = read_converter_file(path)
    assert (str(converter.source), str(converter.target), converter.cost) == ("0.1.0", "0.2.0", 2.0)


def test_single_touches_pattern_becomes_a_tuple(tmp_path):
    """`touches = "pattern"` is one pattern, not a sequence of characters."""
    converter = read_converter_file(write_converter(tmp_path, "one", "0.1.0", "0.2.0", touches="head.*"))
    assert converter.touches == ("head.*",)


@pytest.mark.parametrize(
    ("doc", "description"),
    [
        ("Rename the grid MLP.", "Rename the grid MLP."),
        ("\n    Rename the grid MLP.\n\n    Details follow.\n", "Rename the grid MLP."),
        ("First line.\nSecond line.", "First line."),
        ("   ", "0.1.0 -> 0.2.0"),
        (None, "0.1.0 -> 0.2.0"),
    ],
)
def test_description_is_the_docstring_first_line(tmp_path, doc, description):
    """The module docstring's first line describes the step; without one, the edge does."""
    converter = read_converter_file(write_converter(tmp_path, "c", "0.1.0", "0.2.0", doc=doc))
    assert converter.description == description


def test_digest_follows_the_file_content(tmp_path):
    """The digest is stable for the same bytes and changes when the file changes."""
    path = write_converter(tmp_path, "c", "0.1.0", "0.2.0")
    first = read_converter_file(path).digest
    assert read_converter_file(path).digest == first
    renamed = write_converter(tmp_path, "other_name", "0.1.0", "0.2.0")
    assert read_converter_file(renamed).digest == first
    write_converter(tmp_path, "c", "0.1.0", "0.2.0", code="def convert(ckpt):\n    return dict(ckpt)\n")
    assert read_converter_file(path).digest != first


def test_ops_file_is_kind_ops(tmp_path):
    """A file with `ops` instead of `convert` is an ops converter; one with convert is not."""
    ops = read_converter_file(write_converter(tmp_path, "o", "0.1.0", "0.2.0", code=OPS))
    convert = read_converter_file(write_converter(tmp_path, "c", "0.1.0", "0.2.0"))
    assert (ops.kind, convert.kind) == ("ops", "convert")


def test_convert_may_be_bound_by_assignment(tmp_path):
    """`convert = factory(...)` counts as defining convert: only literals must be literal."""
    path = write_converter(tmp_path, "c", "0.1.0", "0.2.0", code="convert = make_converter('a', 'b')\n")
    assert read_converter_file(path).kind == "convert"


def test_reading_does_not_run_the_file(tmp_path):
    """Reading converters, building the graph and planning never execute a converter file."""
    marker = tmp_path / "ran"
    code = (
        f"from pathlib import Path\n\nPath({str(marker)!r}).write_text('ran')\n"
        "raise RuntimeError('imported')\n\n\ndef convert(ckpt):\n    return ckpt\n"
    )
    directory = tmp_path / "converters"
    write_converter(directory, "loud", "0.1.0", "0.2.0", code=code)
    write_converter(directory, "also_loud", "0.2.0", "0.3.0", code=code)

    assert read_converter_file(directory / "loud.py").name == "loud"
    plan = Registry.from_directory(directory).plan("0.1.0", "0.3.0")

    assert [step.name for step in plan.steps] == ["loud", "also_loud"]
    assert not marker.exists()
    assert "loud" not in sys.modules


NO_TORCH_SCRIPT = """
import json, sys
from ckpt_path import Registry
plan = Registry.from_directory(sys.argv[1]).plan(sys.argv[2], "latest")
print(json.dumps({"torch": "torch" in sys.modules, "source": str(plan.source), "steps": len(plan)}))
"""


def plan_in_subprocess(directory, source):
    """Plan from `source` to latest in a fresh interpreter; report whether torch got imported."""
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(directory), source],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_planning_does_not_import_torch(tmp_path):
    """Reading converter files that `import torch` and planning over them leave torch unimported."""
    code = "import torch\n\n\ndef convert(ckpt):\n    return {k: torch.as_tensor(v) for k, v in ckpt.items()}\n"
    directory = tmp_path / "converters"
    write_converter(directory, "a", "0.1.0", "0.2.0", code=code)
    write_converter(directory, "b", "0.2.0", "0.3.0", code=code)
    assert plan_in_subprocess(directory, "0.1.0") == {"torch": False, "source": "0.1.0", "steps": 2}


def test_planning_the_bundled_example_does_not_import_torch():
    """Planning over the repository's converters/ from 0.1.0 to latest leaves torch unimported."""
    result = plan_in_subprocess(EXAMPLE_CONVERTERS, "0.1.0")
    assert result["torch"] is False
    assert result["steps"] > 0


def test_only_public_python_files_are_converters(tmp_path):
    """Helpers (`_*.py`), other files, schemas/ and directories are not read as converters."""
    directory = tmp_path / "converters"
    write_converter(directory, "b_second", "0.2.0", "0.3.0")
    write_converter(directory, "a_first", "0.1.0", "0.2.0")
    write(directory / "_helpers.py", "this is not even python (\n")
    write(directory / "__init__.py", "")
    write(directory / "notes.txt", 'source = "9.0"\n')
    write(directory / "old.py.bak", 'source = "9.0"\n')
    write(directory / "schemas" / "0.1.0.json", "{}")
    write(directory / "package.py" / "inner.py", "broken (\n")

    converters = read_converters(directory)

    assert [c.name for c in converters] == ["a_first", "b_second"]


def test_missing_directory(tmp_path):
    """A converters directory that does not exist is a ConverterFileError naming it."""
    with pytest.raises(ConverterFileError, match="converters directory not found") as info:
        read_converters(tmp_path / "nowhere")
    assert info.value.file == str(tmp_path / "nowhere")


def test_duplicate_edge_names_both_files(tmp_path):
    """Two files for the same source -> target raise DuplicateConverterError naming both."""
    directory = tmp_path / "converters"
    first = write_converter(directory, "a", "1.0.0", "1.1.0")
    second = write_converter(directory, "b", "1.0", "1.1.0", cost=2)
    registry = Registry.from_directory(directory)
    with pytest.raises(DuplicateConverterError) as info:
        _ = registry.graph
    error = info.value
    assert (Version(error.source), Version(error.target)) == (Version("1.0.0"), Version("1.1.0"))
    assert error.files == (str(first), str(second))
    assert str(first) in str(error)
    assert str(second) in str(error)


def test_every_duplicate_edge_is_reported_at_once(tmp_path):
    """Two edges each claimed twice are one DuplicateConverterError naming all four files."""
    directory = tmp_path / "converters"
    files = [
        write_converter(directory, "a1", "1.0.0", "1.1.0"),
        write_converter(directory, "a2", "1.0.0", "1.1.0"),
        write_converter(directory, "b1", "1.1.0", "1.2.0"),
        write_converter(directory, "b2", "1.1.0", "1.2.0"),
    ]
    with pytest.raises(DuplicateConverterError) as info:
        _ = Registry.from_directory(directory).graph
    assert info.value.clashes == (
        ("1.0.0", "1.1.0", (str(files[0]), str(files[1]))),
        ("1.1.0", "1.2.0", (str(files[2]), str(files[3]))),
    )
    assert all(str(f) in str(info.value) for f in files)


def test_reversible_ops_file_registers_the_inverse(tmp_path):
    """A reversible ops file adds both source -> target and target -> source."""
    directory = tmp_path / "converters"
    path = write_converter(directory, "swap", "1.0.0", "1.1.0", reversible=True, doc="Swap.", code=OPS)
    graph = Registry.from_directory(directory).graph

    forward = graph.edges[Version("1.0.0"), Version("1.1.0")]["converter"]
    backward = graph.edges[Version("1.1.0"), Version("1.0.0")]["converter"]
    assert graph.number_of_edges() == 2
    assert (forward.inverse, backward.inverse) == (False, True)
    assert (backward.name, backward.file, backward.kind) == ("swap:inverse", str(path), "ops")
    assert backward.digest == forward.digest
    assert backward.description == "undo: Swap."


@pytest.mark.parametrize("reversible_first", [True, False])
def test_inverse_clashing_with_a_file_is_a_duplicate(tmp_path, reversible_first):
    """The inverse of a reversible file and an explicit file for the same edge are duplicates."""
    directory = tmp_path / "converters"
    reversible = write_converter(directory, "swap", "1.0.0", "1.1.0", reversible=True, code=OPS)
    explicit = write_converter(directory, "unswap", "1.1.0", "1.0.0")
    converters = read_converters(directory)
    if not reversible_first:
        converters.reverse()
    with pytest.raises(DuplicateConverterError) as info:
        build_graph(converters)
    assert (info.value.source, info.value.target) == ("1.1.0", "1.0.0")
    assert set(info.value.files) == {f"{reversible} (inverse of reversible)", str(explicit)}


def test_duplicate_in_code_names_the_functions():
    """Two in-memory converters for one edge are named by their code origin."""
    registry = build_registry([("1.0", "1.1"), ("1.0", "1.1", {"cost": 2})])
    with pytest.raises(DuplicateConverterError, match=r"<code:1\.0->1\.1> and <code:1\.0->1\.1>"):
        registry.plan("1.0", "1.1")


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        (0, "cost must be a number >="),
        (-1, "cost must be a number >="),
        (float("nan"), "cost must be a number >="),
        (float("inf"), "cost must be a number >="),
        ("1", "cost must be a number, got '1'"),
        (True, "cost must be a number, got True"),
    ],
)
def test_from_function_checks_the_cost(cost, message):
    """Converters made in code reject the same costs as files do."""
    with pytest.raises(ConverterFileError, match=message):
        Converter.from_function("1.0", "1.1", lambda ckpt: ckpt, cost=cost)


def test_from_function_reads_the_docstring():
    """A converter made from a function takes its name and description from it."""

    def rename_head(ckpt):
        """Rename the head.

        Details.
        """
        return ckpt

    converter = Converter.from_function("1.0", "1.1", rename_head, touches=["head.*"])
    assert (converter.name, converter.description, converter.touches) == (
        "rename_head",
        "Rename the head.",
        ("head.*",),
    )
    assert converter.code == FunctionCode(rename_head)
    assert converter.origin == "<code:rename_head>"


class TestFindConvertersDir:
    """Where the converters directory comes from, in order of precedence."""

    def test_explicit_beats_everything(self, tmp_path, monkeypatch):
        """`--converters DIR` wins over the environment and pyproject.toml."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
        write(tmp_path / "pyproject.toml", '[tool.ckpt-path]\nconverters = "from-toml"\n')
        assert find_converters_dir(tmp_path / "explicit") == tmp_path / "explicit"

    def test_environment_beats_pyproject(self, tmp_path, monkeypatch):
        """CKPT_PATH_CONVERTERS wins over pyproject.toml."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
        write(tmp_path / "pyproject.toml", '[tool.ckpt-path]\nconverters = "from-toml"\n')
        assert find_converters_dir() == tmp_path / "from-env"

    def test_empty_environment_variable_is_ignored(self, tmp_path, monkeypatch):
        """An empty CKPT_PATH_CONVERTERS counts as unset."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv(ENV_VAR, "")
        assert find_converters_dir() == tmp_path / "converters"

    @pytest.mark.parametrize(
        ("setting", "expected"),
        [("from-toml", "from-toml"), ("../shared/conv", "../shared/conv"), ("", "")],
    )
    def test_pyproject_setting_is_relative_to_it(self, tmp_path, monkeypatch, setting, expected):
        """`[tool.ckpt-path] converters` in ./pyproject.toml is read relative to that file."""
        project = tmp_path / "project"
        write(project / "pyproject.toml", f'[project]\nname = "x"\n\n[tool.ckpt-path]\nconverters = "{setting}"\n')
        monkeypatch.chdir(project)
        assert find_converters_dir() == project / expected

    def test_pyproject_absolute_setting(self, tmp_path, monkeypatch):
        """An absolute path in pyproject.toml is used as it is."""
        write(tmp_path / "pyproject.toml", f'[tool.ckpt-path]\nconverters = "{(tmp_path / "abs").as_posix()}"\n')
        monkeypatch.chdir(tmp_path)
        assert find_converters_dir() == tmp_path / "abs"

    def test_default_is_converters_in_the_working_directory(self, tmp_path, monkeypatch):
        """Without any setting, ./converters; a pyproject.toml without the table changes nothing."""
        write(tmp_path / "pyproject.toml", '[tool.other]\nconverters = "no"\n')
        monkeypatch.chdir(tmp_path)
        assert find_converters_dir() == tmp_path / "converters"

    def test_cwd_argument(self, tmp_path):
        """The working directory can be given instead of changing it."""
        write(tmp_path / "pyproject.toml", '[tool.ckpt-path]\nconverters = "conv"\n')
        assert find_converters_dir(cwd=tmp_path) == tmp_path / "conv"

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("[tool.ckpt-path\n", "not valid TOML"),
            ("[tool.ckpt-path]\nconverters = 3\n", "converters: must be a path string"),
        ],
    )
    def test_bad_pyproject(self, tmp_path, monkeypatch, text, reason):
        """A pyproject.toml that cannot say where converters are is a SettingsError naming it."""
        write(tmp_path / "pyproject.toml", text)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SettingsError, match=reason) as info:
            find_converters_dir()
        assert info.value.file == str(tmp_path / "pyproject.toml")

    def test_registry_reads_the_found_directory(self, tmp_path, monkeypatch):
        """Registry.from_directory() without an argument reads the directory found."""
        write_converter(tmp_path / "project" / "conv", "a", "0.1.0", "0.2.0")
        write(tmp_path / "project" / "pyproject.toml", '[tool.ckpt-path]\nconverters = "conv"\n')
        monkeypatch.chdir(tmp_path / "project")
        registry = Registry.from_directory()
        assert registry.directory == tmp_path / "project" / "conv"
        assert [c.name for c in registry.converters] == ["a"]
