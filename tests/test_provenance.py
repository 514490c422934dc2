"""Where a checkpoint's version comes from, which versions are still converted, and edited converters.

The project under test has four versions, each with a schema: ``0.1.0`` keeps its encoder in
``enc.0``, ``0.2.0`` calls it ``enc``, ``0.3.0`` widens the head from 2 to 3 outputs and ``1.0.0``
changes nothing in the state dict. The schemas name the hidden size (``["hidden", 4]``) and
``0.3.0`` and ``1.0.0`` use glob keys, so that a ``0.3.0`` state dict matches both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.version import Version

from ckpt_path import NoStampError, Registry, UnsupportedVersionError, VersionError, VersionInferenceError
from ckpt_path.commands import convert_file, inspect_file
from ckpt_path.provenance import SourceVersion, infer_version, source_version
from ckpt_path.storage import load_checkpoint
from helpers import assert_one_line_error, cli

CONVERTERS = {
    "001_flatten_encoder": '''\
"""The encoder is no longer a Sequential: enc.0 became enc."""

source = "0.1.0"
target = "0.2.0"
touches = ["enc.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("enc.0.")]:
        sd["enc." + key.removeprefix("enc.0.")] = sd.pop(key)
    return ckpt
''',
    "002_widen_head": '''\
"""The head predicts a third output, initialised to zero."""

import torch

source = "0.2.0"
target = "0.3.0"
touches = ["head.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in ("head.weight", "head.bias"):
        old = sd[key]
        sd[key] = torch.cat([old, torch.zeros_like(old[:1])])
    return ckpt
''',
    "003_release": '''\
"""Release 1.0.0: the state dict is unchanged."""

source = "0.3.0"
target = "1.0.0"
touches = []


def convert(ckpt):
    return ckpt
''',
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "0.1.0": {
        "enc.0.weight": {"shape": ["hidden", 4], "dtype": "float32"},
        "enc.0.bias": {"shape": ["hidden"], "dtype": "float32"},
        "head.weight": {"shape": [2, "hidden"], "dtype": "float32"},
        "head.bias": {"shape": [2], "dtype": "float32"},
    },
    "0.2.0": {
        "enc.weight": {"shape": ["hidden", 4], "dtype": "float32"},
        "enc.bias": {"shape": ["hidden"], "dtype": "float32"},
        "head.weight": {"shape": [2, "hidden"], "dtype": "float32"},
        "head.bias": {"shape": [2], "dtype": "float32"},
    },
    "0.3.0": {
        "enc.*": {"dtype": "float32"},
        "head.weight": {"shape": [3, "hidden"], "dtype": "float32"},
        "head.bias": {"shape": [3], "dtype": "float32"},
    },
    "1.0.0": {
        "enc.weight": {"shape": ["hidden", 4], "dtype": "float32"},
        "enc.bias": {"shape": ["hidden"], "dtype": "float32"},
        "head.weight": {"shape": [3, "hidden"], "dtype": "float32"},
        "head.b*": {"shape": [3]},
    },
}

PYPROJECT = """\
[project]
name = "mypkg"

[tool.ckpt-path]
converters = "converters"
"""


def state_dict(version: str, hidden: int = 8, head_hidden: int | None = None) -> dict[str, torch.Tensor]:
    """Return a state dict of ``version``; ``head_hidden`` breaks the binding of ``hidden``."""
    generator = torch.Generator().manual_seed(0)
    enc = "enc.0" if version == "0.1.0" else "enc"
    outputs = 2 if version in {"0.1.0", "0.2.0"} else 3
    shapes = {
        f"{enc}.weight": (hidden, 4),
        f"{enc}.bias": (hidden,),
        "head.weight": (outputs, head_hidden or hidden),
        "head.bias": (outputs,),
    }
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def write_ckpt(
    path: Path,
    sd: dict[str, torch.Tensor],
    *,
    stamp: str | None = None,
    recorded: object = None,
    history: list[dict[str, Any]] | None = None,
) -> Path:
    """Save a Lightning-style checkpoint; ``stamp`` stamps it, ``recorded`` goes to hyper_parameters.version."""
    hparams: dict[str, Any] = {"lr": 1e-3}
    if recorded is not None:
        hparams["version"] = recorded
    ckpt: dict[str, Any] = {"epoch": 2, "state_dict": sd, "hyper_parameters": hparams}
    if stamp is not None:
        ckpt["ckpt_path"] = {"version": stamp, "history": history or []}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the project (pyproject.toml, converters, schemas) in ``tmp_path`` and work there."""
    converters = tmp_path / "converters"
    (converters / "schemas").mkdir(parents=True)
    for name, text in CONVERTERS.items():
        (converters / f"{name}.py").write_text(text, encoding="utf-8")
    for version, tensors in SCHEMAS.items():
        schema = {"version": version, "tensors": tensors}
        (converters / "schemas" / f"{version}.json").write_text(json.dumps(schema, indent=1), encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def configure(project: Path, **settings: str) -> None:
    """Add settings to ``[tool.ckpt-path]``: ``configure(p, version_key="...")``."""
    lines = [f"{key.replace('_', '-')} = {json.dumps(value)}" for key, value in settings.items()]
    (project / "pyproject.toml").write_text(PYPROJECT + "\n".join(lines) + "\n", encoding="utf-8")


def registry() -> Registry:
    """Read the project's converters and settings, as every command does in the working directory."""
    return Registry.from_directory()


def history_of(path: Path) -> list[tuple[str, str]]:
    """Return the (source, target) steps in a checkpoint's stamp."""
    stamp = torch.load(path, weights_only=True)["ckpt_path"]
    return [(h["source"], h["target"]) for h in stamp["history"]]


# --- --from auto: the version from the schemas --------------------------------------------------


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
@pytest.mark.parametrize("hidden", [8, 5])
def test_infer_version_finds_the_one_matching_schema(project, version, hidden):
    """A state dict matching exactly one schema (whatever size binds "hidden") gives that version."""
    path = write_ckpt(project / "in.ckpt", state_dict(version, hidden=hidden))
    assert infer_version(load_checkpoint(path), registry()) == Version(version)


def test_infer_version_none_matches_lists_the_closest(project):
    """A state dict matching no schema is an error listing the closest versions and how many keys differ."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0", hidden=8, head_hidden=5))
    with pytest.raises(VersionInferenceError) as caught:
        infer_version(load_checkpoint(path), registry())
    error = caught.value
    assert error.matches == ()
    assert error.closeness == (("0.1.0", 1), ("0.3.0", 2), ("0.2.0", 4), ("1.0.0", 6))
    message = str(error)
    assert "matches no schema" in message
    assert "0.1.0 (1 key(s) differ)" in message
    assert "0.3.0 (2 key(s) differ)" in message
    assert "--from VERSION" in message


def test_infer_version_several_match_is_ambiguous(project):
    """A state dict matching several schemas (here through glob keys) is an error listing the candidates."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.3.0"))
    with pytest.raises(VersionInferenceError) as caught:
        infer_version(load_checkpoint(path), registry())
    assert caught.value.matches == ("0.3.0", "1.0.0")
    assert "matches the schemas of 0.3.0, 1.0.0: ambiguous" in str(caught.value)


def test_infer_version_without_schemas_says_so(project):
    """With no schemas at all, --from auto explains that no version has a schema."""
    for schema in (project / "converters" / "schemas").iterdir():
        schema.unlink()
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"))
    line = assert_one_line_error(cli("convert", path, "-o", project / "out.ckpt", "--from", "auto"))
    assert "no version has a schema" in line


def test_infer_version_ignores_a_stamp(project):
    """Inference reads the state dict only: a wrong stamp does not change its answer."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.2.0"), stamp="0.1.0")
    found = source_version(load_checkpoint(path), registry(), "auto")
    assert found == SourceVersion(version=Version("0.2.0"), version_from="schemas")


def test_convert_file_from_auto_converts_from_the_inferred_version(project):
    """convert_file(source="auto") plans from the inferred version and records it in the history."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"))
    result = convert_file(path, project / "out.ckpt", source="auto", registry=registry())
    assert result.plan.source == Version("0.1.0")
    assert result.plan.target == Version("1.0.0")
    assert history_of(project / "out.ckpt") == [("0.1.0", "0.2.0"), ("0.2.0", "0.3.0"), ("0.3.0", "1.0.0")]


@pytest.mark.parametrize(
    ("sd", "expected"),
    [
        (state_dict("0.3.0"), "ambiguous"),
        (state_dict("0.1.0", head_hidden=5), "matches no schema"),
    ],
    ids=["ambiguous", "none"],
)
def test_convert_file_from_auto_fails_without_one_match(project, sd, expected):
    """convert_file(source="auto") raises VersionInferenceError and writes nothing."""
    path = write_ckpt(project / "in.ckpt", sd)
    with pytest.raises(VersionInferenceError, match=expected):
        convert_file(path, project / "out.ckpt", source="auto", registry=registry())
    assert not (project / "out.ckpt").exists()


def test_cli_convert_from_auto(project):
    """`convert --from auto` converts an unstamped checkpoint from the version its schema says."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.2.0"))
    result = cli("convert", path, "-o", project / "out.ckpt", "--from", "auto")
    assert result.exit_code == 0, result.output
    assert "0.2.0 -> 1.0.0 in 2 step(s)" in result.stdout
    assert history_of(project / "out.ckpt") == [("0.2.0", "0.3.0"), ("0.3.0", "1.0.0")]


@pytest.mark.parametrize(
    ("sd", "expected"),
    [
        (state_dict("0.3.0"), ["0.3.0, 1.0.0", "ambiguous"]),
        (state_dict("0.1.0", head_hidden=5), ["matches no schema", "0.1.0 (1 key(s) differ)"]),
    ],
    ids=["ambiguous", "none"],
)
def test_cli_convert_from_auto_without_one_match_is_one_line_error(project, sd, expected):
    """`convert --from auto` exits 1 with one error line naming the candidates; nothing is written."""
    path = write_ckpt(project / "in.ckpt", sd)
    line = assert_one_line_error(cli("convert", path, "-o", project / "out.ckpt", "--from", "auto"))
    for text in expected:
        assert text in line
    assert not (project / "out.ckpt").exists()


def test_inspect_shows_the_inferred_version(project):
    """`inspect` of an unstamped checkpoint shows the version its schema gives, and says it is not stamped."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"))
    result = cli("inspect", path, "--converters", project / "converters")
    assert result.exit_code == 0, result.output
    assert "version:     not stamped; 0.1.0 according to schemas" in result.stdout
    info = json.loads(cli("inspect", path, "--converters", project / "converters", "--json").stdout)
    assert info["version"] is None
    assert info["inferred_version"] == "0.1.0"
    assert info["version_from"] == "schemas"
    assert inspect_file(path, registry=registry()).inferred_version == "0.1.0"


def test_inspect_warns_when_no_version_can_be_inferred(project):
    """`inspect` still describes an ambiguous checkpoint and warns why no version is shown."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.3.0"))
    result = cli("inspect", path, "--converters", project / "converters")
    assert result.exit_code == 0, result.output
    assert "not stamped" in result.stdout
    assert "ambiguous" in result.stderr
    assert result.stderr.startswith("warning: ")


# --- [tool.ckpt-path] version-key ---------------------------------------------------------------


def test_version_key_gives_the_version_of_an_unstamped_checkpoint(project):
    """With version-key set, a checkpoint that recorded "0.1.0" there converts without --from."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), recorded="0.1.0")
    result = convert_file(path, project / "out.ckpt", registry=registry())
    assert result.plan.source == Version("0.1.0")
    assert history_of(project / "out.ckpt")[0] == ("0.1.0", "0.2.0")


def test_cli_version_key_gives_the_version_of_an_unstamped_checkpoint(project):
    """`convert` with no --from and no --converters reads version-key and converts to latest."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), recorded="0.1.0")
    result = cli("convert", path, "-o", project / "out.ckpt")
    assert result.exit_code == 0, result.output
    assert "0.1.0 -> 1.0.0 in 3 step(s)" in result.stdout
    out = torch.load(project / "out.ckpt", weights_only=True)
    assert out["ckpt_path"]["version"] == "1.0.0"
    assert out["hyper_parameters"]["version"] == "0.1.0"  # the project's own record is left alone


def test_without_version_key_an_unstamped_checkpoint_needs_from(project):
    """Without the setting the same checkpoint is refused: its hyper_parameters.version is not read."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), recorded="0.1.0")
    with pytest.raises(NoStampError):
        convert_file(path, project / "out.ckpt", registry=registry())


@pytest.mark.parametrize("recorded", ["not-a-version", "1.0.0-final-final"])
def test_version_key_holding_no_version_is_one_line_error(project, recorded):
    """A value at version-key that is not a version is an error naming the key and the value."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), recorded=recorded)
    with pytest.raises(VersionError, match=r"hyper_parameters\.version"):
        convert_file(path, project / "out.ckpt", registry=registry())
    line = assert_one_line_error(cli("convert", path, "-o", project / "out.ckpt"))
    assert "hyper_parameters.version" in line
    assert repr(recorded) in line
    assert not (project / "out.ckpt").exists()


def test_version_key_missing_in_the_checkpoint_needs_from(project):
    """A checkpoint without the key (and without a stamp) is refused with the advice to pass --from."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"))
    line = assert_one_line_error(cli("convert", path, "-o", project / "out.ckpt"))
    assert "--from VERSION" in line


def test_stamp_wins_over_version_key(project):
    """A stamped checkpoint converts from its stamp, whatever its version-key says."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.2.0"), stamp="0.2.0", recorded="0.1.0")
    result = convert_file(path, project / "out.ckpt", registry=registry())
    assert result.plan.source == Version("0.2.0")
    assert history_of(project / "out.ckpt") == [("0.2.0", "0.3.0"), ("0.3.0", "1.0.0")]


@pytest.mark.parametrize("stamp", [None, "0.2.0"], ids=["unstamped", "stamped"])
def test_from_wins_over_stamp_and_version_key(project, stamp):
    """--from VERSION wins over both the stamp and version-key (and a contradicted stamp is warned about)."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.3.0"), stamp=stamp, recorded="0.1.0")
    result = cli("convert", path, "-o", project / "out.ckpt", "--from", "0.3.0")
    assert result.exit_code == 0, result.output
    assert history_of(project / "out.ckpt")[-1] == ("0.3.0", "1.0.0")
    assert len(history_of(project / "out.ckpt")) == 1
    assert ("stamped 0.2.0 but --from 0.3.0" in result.stderr) == (stamp is not None)


def test_inspect_shows_the_version_from_version_key(project):
    """`inspect` of an unstamped checkpoint shows the version read at version-key, and says where from."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), recorded="0.1.0")
    result = cli("inspect", path)
    assert result.exit_code == 0, result.output
    assert "version:     not stamped; 0.1.0 according to hyper_parameters.version" in result.stdout


@pytest.mark.parametrize(
    ("settings", "recorded"),
    [
        ({"version_key": "hyper_parameters.version"}, "not-a-version"),
        ({"version_key": "hyper_parameters.version"}, "0.0.1"),
        ({"version_key": "hyper_parameters.version", "oldest": "0.2.0"}, "0.1.0"),
    ],
    ids=["not-a-version", "unknown-version", "older-than-oldest"],
)
def test_inspect_describes_a_checkpoint_whose_recorded_version_cannot_be_used(project, settings, recorded):
    """`inspect` describes the file and warns, rather than failing, when its version-key value is unusable."""
    # A stamped checkpoint of the same version inspects fine, and a checkpoint no schema matches is
    # a warning too: inspect is where a user goes to learn what an old file is.
    configure(project, **settings)
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), recorded=recorded)
    result = cli("inspect", path)
    assert result.exit_code == 0, result.output
    assert "tensors:     4" in result.stdout
    assert "warning: " in result.stderr


def test_plan_of_a_checkpoint_file_reads_version_key(project):
    """`plan CKPT latest` finds an unstamped checkpoint's version where convert does: at version-key."""
    configure(project, version_key="hyper_parameters.version")
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), recorded="0.1.0")
    result = cli("plan", path, "latest", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == "0.1.0"


# --- oldest and last-release --------------------------------------------------------------------


def unsupported_cases(project: Path) -> dict[str, tuple[Path, str | None]]:
    """Write a 0.1.0 checkpoint known four ways; return name -> (file, --from)."""
    sd = state_dict("0.1.0")
    return {
        "stamp": (write_ckpt(project / "stamped.ckpt", sd, stamp="0.1.0"), None),
        "from": (write_ckpt(project / "bare.ckpt", sd), "0.1.0"),
        "version-key": (write_ckpt(project / "recorded.ckpt", sd, recorded="0.1.0"), None),
        "auto": (write_ckpt(project / "inferred.ckpt", sd), "auto"),
    }


@pytest.mark.parametrize("how", ["stamp", "from", "version-key", "auto"])
def test_older_than_oldest_is_refused_naming_the_last_release(project, how):
    """A 0.1.0 checkpoint is refused with oldest = 0.2.0, naming 0.2.0 and the release that reads it."""
    configure(project, version_key="hyper_parameters.version", oldest="0.2.0", last_release="mypkg 0.1.9")
    path, source = unsupported_cases(project)[how]
    with pytest.raises(UnsupportedVersionError) as caught:
        convert_file(path, project / "out.ckpt", source=source, registry=registry())
    error = caught.value
    assert (error.version, error.oldest, error.last_release) == ("0.1.0", "0.2.0", "mypkg 0.1.9")
    assert "older than 0.2.0" in str(error)
    assert "mypkg 0.1.9 is the last release that reads it" in str(error)
    assert not (project / "out.ckpt").exists()


@pytest.mark.parametrize("how", ["stamp", "from", "version-key", "auto"])
def test_cli_older_than_oldest_is_one_line_error(project, how):
    """`convert` exits 1 with one line naming 0.2.0 and "mypkg 0.1.9"; nothing is written."""
    configure(project, version_key="hyper_parameters.version", oldest="0.2.0", last_release="mypkg 0.1.9")
    path, source = unsupported_cases(project)[how]
    extra = ["--from", source] if source is not None else []
    line = assert_one_line_error(cli("convert", path, "-o", project / "out.ckpt", *extra))
    assert "0.1.0 is older than 0.2.0" in line
    assert "mypkg 0.1.9" in line
    assert not (project / "out.ckpt").exists()


def test_plan_from_a_version_older_than_oldest_is_refused_as_convert_refuses_it(project):
    """`plan 0.1.0 latest` under oldest = 0.2.0 is the same one-line refusal; `plan 0.2.0 latest` still plans."""
    configure(project, oldest="0.2.0", last_release="mypkg 0.1.9")
    line = assert_one_line_error(cli("plan", "0.1.0", "latest"))
    assert "0.1.0 is older than 0.2.0" in line
    assert "mypkg 0.1.9" in line
    assert cli("plan", "0.2.0", "latest").exit_code == 0
    configure(project, oldest="0.2.5")  # compared as convert compares it: the version asked for, not its node
    assert cli("plan", "0.2.7", "latest").exit_code == 0
    assert "0.2.3 is older than 0.2.5" in assert_one_line_error(cli("plan", "0.2.3", "latest"))


def test_older_than_oldest_without_last_release_says_none_is_recorded(project):
    """Without last-release the message says no release that reads the checkpoint is recorded."""
    configure(project, oldest="0.2.0")
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), stamp="0.1.0")
    line = assert_one_line_error(cli("convert", path, "-o", project / "out.ckpt"))
    assert "older than 0.2.0" in line
    assert "no release that reads it is recorded" in line
    assert "last-release" in line


def test_the_oldest_version_itself_converts(project):
    """A checkpoint of exactly the oldest version converts."""
    configure(project, oldest="0.2.0", last_release="mypkg 0.1.9")
    path = write_ckpt(project / "in.ckpt", state_dict("0.2.0"), stamp="0.2.0")
    result = cli("convert", path, "-o", project / "out.ckpt")
    assert result.exit_code == 0, result.output
    assert history_of(project / "out.ckpt") == [("0.2.0", "0.3.0"), ("0.3.0", "1.0.0")]


def test_oldest_must_be_a_version(project):
    """An oldest that is not a version is an error naming the value, the setting and pyproject.toml."""
    # The same file's other settings name pyproject.toml and the key when they have the wrong type.
    configure(project, oldest="someday")
    path = write_ckpt(project / "in.ckpt", state_dict("0.2.0"), stamp="0.2.0")
    line = assert_one_line_error(cli("convert", path, "-o", project / "out.ckpt"))
    assert "someday" in line
    assert "pyproject.toml" in line
    assert "oldest" in line
    assert not (project / "out.ckpt").exists()


# --- converters edited after they ran -----------------------------------------------------------


@pytest.fixture
def halfway(project: Path) -> Path:
    """Convert a 0.1.0 checkpoint to 0.2.0 (one step, by 001_flatten_encoder) and return the result."""
    path = write_ckpt(project / "in.ckpt", state_dict("0.1.0"), stamp="0.1.0")
    result = cli("convert", path, "-o", project / "mid.ckpt", "--to", "0.2.0")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return project / "mid.ckpt"


def edit(project: Path, name: str) -> Path:
    """Change a comment in a converter file (its behaviour stays the same); return its path."""
    path = project / "converters" / f"{name}.py"
    path.write_text(path.read_text(encoding="utf-8") + "\n# reviewed\n", encoding="utf-8")
    return path


def test_inspect_warns_about_a_converter_edited_after_it_ran(project, halfway):
    """`inspect --converters` warns that the step's converter changed, naming the step and the file."""
    edit(project, "001_flatten_encoder")
    result = cli("inspect", halfway, "--converters", "converters")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.stderr
    assert "step 0.1.0 -> 0.2.0" in warnings[0]
    assert "001_flatten_encoder" in warnings[0]
    assert str(Path("converters") / "001_flatten_encoder.py") in warnings[0]
    assert "edited after it ran" in warnings[0]
    info = inspect_file(halfway, registry=registry())
    assert len(info.warnings) == 1


def test_convert_warns_about_a_converter_edited_after_it_ran(project, halfway):
    """`convert` warns about an edited converter in the input's history, and still converts."""
    edit(project, "001_flatten_encoder")
    result = cli("convert", halfway, "-o", project / "out.ckpt", "--converters", "converters")
    assert result.exit_code == 0, result.output
    assert "warning: step 0.1.0 -> 0.2.0" in result.stderr
    assert "001_flatten_encoder.py" in result.stderr
    converted = convert_file(halfway, project / "out2.ckpt", registry=registry())
    assert [w for w in converted.warnings if "edited after it ran" in w]


@pytest.mark.parametrize("edited", [None, "002_widen_head"], ids=["nothing-edited", "edited-off-the-history"])
def test_no_warning_when_the_converters_that_ran_are_unchanged(project, halfway, edited):
    """Without an edit to a converter in the history, inspect and convert warn about nothing."""
    if edited is not None:
        edit(project, edited)
    inspected = cli("inspect", halfway, "--converters", "converters")
    assert inspected.exit_code == 0, inspected.output
    assert inspected.stderr == ""
    converted = cli("convert", halfway, "-o", project / "out.ckpt", "--converters", "converters")
    assert converted.exit_code == 0, converted.output
    assert converted.stderr == ""
