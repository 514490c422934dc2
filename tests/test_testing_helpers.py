"""`ckpt_path.testing`: helpers and the fixture that projects use to unit-test their converters."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ckpt_path import Converter, Registry
from ckpt_path._synthetic import checkpoint_differences
from ckpt_path.errors import CkptPathError
from ckpt_path.registry import ENV_VAR
from ckpt_path.shapes import Schema, load_schema, signature
from ckpt_path.testing import (
    DEFAULT_DIM,
    assert_equal_checkpoints,
    assert_no_layout_drift,
    assert_outputs_preserved,
    assert_round_trip,
    ckpt_path_registry,  # noqa: F401 - the fixture under test, imported as a project would
    run_edge,
    synthetic_checkpoint,
)

SCALE_PAIR = '''"""{doc}"""

source = "{source}"
target = "{target}"
touches = ["w"]


def convert(ckpt):
    ckpt["state_dict"]["w"] = ckpt["state_dict"]["w"] * {factor}
    return ckpt
'''


@pytest.fixture
def registry(examples: Path) -> Registry:
    """Read the copied example converters."""
    return Registry.from_directory(examples)


@pytest.fixture
def schema(tmp_path: Path) -> Schema:
    """Load a schema with a named dimension, a glob key and several dtypes."""
    path = tmp_path / "2.0.0.json"
    tensors = {
        "embed.weight": {"shape": ["hidden", 3], "dtype": "float32"},
        "layers.*.weight": {"shape": ["hidden", "hidden"], "dtype": "float16"},
        "steps": {"shape": [], "dtype": "int64"},
        "mask": {"shape": [4], "dtype": "bool"},
    }
    path.write_text(json.dumps({"version": "2.0.0", "tensors": tensors}), encoding="utf-8")
    return load_schema(path)


# synthetic_checkpoint


def test_synthetic_checkpoint_follows_its_schema(schema):
    """Named dimensions bind to one size, glob keys become concrete, dtypes are those of the schema."""
    sd = synthetic_checkpoint(schema)["state_dict"]
    assert set(sd) == {"embed.weight", "layers.0.weight", "steps", "mask"}
    assert sd["embed.weight"].shape == (DEFAULT_DIM, 3)
    assert sd["layers.0.weight"].shape == (DEFAULT_DIM, DEFAULT_DIM)
    assert sd["steps"].shape == ()
    assert {k: v.dtype for k, v in sd.items()} == {
        "embed.weight": torch.float32,
        "layers.0.weight": torch.float16,
        "steps": torch.int64,
        "mask": torch.bool,
    }
    assert schema.check(signature(sd)) == []


def test_synthetic_checkpoint_takes_dimension_sizes(schema):
    """`dims` sets the size of a named dimension everywhere it appears."""
    sd = synthetic_checkpoint(schema, dims={"hidden": 5})["state_dict"]
    assert sd["embed.weight"].shape == (5, 3)
    assert sd["layers.0.weight"].shape == (5, 5)


def test_synthetic_checkpoint_is_seeded(schema):
    """The same seed gives the same values, another seed different ones."""
    first, again = synthetic_checkpoint(schema, seed=3), synthetic_checkpoint(schema, seed=3)
    other = synthetic_checkpoint(schema, seed=4)
    assert all(torch.equal(first["state_dict"][k], again["state_dict"][k]) for k in first["state_dict"])
    assert not torch.equal(first["state_dict"]["embed.weight"], other["state_dict"]["embed.weight"])


def test_synthetic_checkpoint_can_be_flat(schema):
    """`state_dict_key=None` returns the state dict itself; another key nests it there."""
    flat = synthetic_checkpoint(schema, state_dict_key=None)
    assert isinstance(flat["steps"], torch.Tensor)
    assert set(synthetic_checkpoint(schema, state_dict_key="model")) == {"model"}


def test_synthetic_checkpoint_of_an_example_schema_matches_it(registry):
    """A synthetic checkpoint of each example version passes that version's schema."""
    for version in ("0.1.0", "0.3.0", "1.0.0+lam", "1.1.0"):
        found = registry.schema(version)
        assert found is not None
        assert found.check(signature(synthetic_checkpoint(found)["state_dict"])) == []


# run_edge


def test_run_edge_runs_one_converter_without_touching_its_input(registry):
    """`run_edge` returns the converted checkpoint and leaves the (mutating) converter's input alone."""
    start = synthetic_checkpoint(registry.schema("0.1.0"))
    kept = copy.deepcopy(start)
    out = run_edge(registry, "0.1.0", "0.2.0", start)
    assert_equal_checkpoints(kept, start)
    assert "g2m_gnn.grid_mlp.weight" in out["state_dict"]
    assert "g2m_gnn.grid_mlp.0.weight" not in out["state_dict"]
    assert torch.equal(out["state_dict"]["g2m_gnn.grid_mlp.weight"], kept["state_dict"]["g2m_gnn.grid_mlp.0.weight"])


def test_run_edge_checks_the_result_against_the_target_schema(registry):
    """`run_edge` runs the step's checks: a checkpoint that lands off the target schema is an error."""
    start = synthetic_checkpoint(registry.schema("0.1.0"))
    del start["state_dict"]["output_map.bias"]
    with pytest.raises(CkptPathError, match=r"output_map\.bias"):
        run_edge(registry, "0.1.0", "0.2.0", start)


def test_run_edge_needs_a_direct_converter(registry):
    """`run_edge` runs exactly one edge: versions two steps apart are an AssertionError."""
    start = synthetic_checkpoint(registry.schema("0.1.0"))
    with pytest.raises(AssertionError, match=r"no converter 0\.1\.0 -> 0\.3\.0"):
        run_edge(registry, "0.1.0", "0.3.0", start)


# assert_round_trip


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("0.2.0", "0.3.0"),
        ("0.3.0", "0.2.0"),
        ("0.3.0", "1.0.0"),
        ("1.0.0", "0.3.0"),
        ("1.0.0", "1.0.0+lam"),
        ("1.0.0+lam", "1.0.0"),
        ("1.0.0", "1.1.0"),
    ],
)
def test_round_trip_passes_on_example_reversible_edges(registry, source, target):
    """The reversible example edges come back bitwise identical from a synthetic checkpoint."""
    assert_round_trip(registry, source, target)


def test_round_trip_fails_on_a_lossy_way_back(registry):
    """1.1.0 -> 1.0.0 drops the output scale, so the round trip from 1.1.0 fails."""
    with pytest.raises(AssertionError, match="output_scale"):
        assert_round_trip(registry, "1.1.0", "1.0.0")


@pytest.fixture
def non_inverse(tmp_path: Path) -> Registry:
    """Make a registry whose 1.0.0 -> 2.0.0 doubles ``w`` and whose way back triples it."""
    directory = tmp_path / "pair"
    directory.mkdir()
    up = SCALE_PAIR.format(doc="Double w.", source="1.0.0", target="2.0.0", factor=2)
    down = SCALE_PAIR.format(doc="Triple w.", source="2.0.0", target="1.0.0", factor=3)
    (directory / "001_up.py").write_text(up, encoding="utf-8")
    (directory / "002_down.py").write_text(down, encoding="utf-8")
    return Registry.from_directory(directory)


def test_round_trip_fails_on_a_non_inverse_pair(non_inverse):
    """A pair of converters that are not inverses fails the round trip with an AssertionError."""
    checkpoint = {"state_dict": {"w": torch.arange(4, dtype=torch.float32)}}
    with pytest.raises(AssertionError, match="w: values differ"):
        assert_round_trip(non_inverse, "1.0.0", "2.0.0", checkpoint)


def test_round_trip_without_a_schema_says_how_to_write_one(non_inverse):
    """Without a checkpoint and without a schema, the failure says to write the schema."""
    with pytest.raises(AssertionError, match="ckpt-path schema"):
        assert_round_trip(non_inverse, "1.0.0", "2.0.0")


WIDEN = '''"""Store w in float32."""

from ckpt_path.ops import Cast

source = "1.0.0"
target = "2.0.0"
reversible = True

ops = [Cast("*", "float32", source_dtype="float16")]
'''


def test_round_trip_derives_the_source_layout_from_the_target_schema(tmp_path):
    """With only the target's schema, the round trip starts from the source layout the inverse ops predict."""
    directory = tmp_path / "widen"
    (directory / "schemas").mkdir(parents=True)
    (directory / "001_widen.py").write_text(WIDEN, encoding="utf-8")
    schema = {"version": "2.0.0", "tensors": {"w": {"shape": [3], "dtype": "float32"}}}
    (directory / "schemas" / "2.0.0.json").write_text(json.dumps(schema), encoding="utf-8")
    assert_round_trip(Registry.from_directory(directory), "1.0.0", "2.0.0")


# assert_equal_checkpoints


def _state() -> dict[str, torch.Tensor]:
    return {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)}


def test_equal_checkpoints_pass():
    """Two equal checkpoints pass, nested or flat, whatever their non-tensor entries."""
    assert_equal_checkpoints({"state_dict": _state(), "epoch": 1}, {"state_dict": _state(), "epoch": 2})
    assert_equal_checkpoints(_state(), {"state_dict": _state()})


def test_equal_checkpoints_catch_a_one_element_difference():
    """A single changed element in one tensor fails, naming the key."""
    other = _state()
    other["a"][1, 2] += 1
    with pytest.raises(AssertionError, match="a: values differ"):
        assert_equal_checkpoints(_state(), other)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.update(b=torch.zeros(2, dtype=torch.float64)), r"b: expected \[2\] float32, got \[2\] float64"),
        (lambda sd: sd.update(b=torch.zeros(1, 2)), r"b: expected \[2\] float32, got \[1, 2\] float32"),
        (lambda sd: sd.update(b=-torch.zeros(2)), "b: values differ"),
        (lambda sd: sd.pop("b"), "b: missing"),
        (lambda sd: sd.update(c=torch.zeros(1)), "c: unexpected"),
    ],
    ids=["dtype", "shape", "negative-zero", "missing-key", "extra-key"],
)
def test_equal_checkpoints_catch_other_differences(change, message):
    """A dtype, shape, sign-of-zero or key difference fails, saying what differs."""
    other = _state()
    change(other)
    with pytest.raises(AssertionError, match=message):
        assert_equal_checkpoints(_state(), other)


def test_checkpoint_differences_lists_every_key_that_differs():
    """`checkpoint_differences` gives one line per differing key, sorted, and nothing for equal checkpoints."""
    assert checkpoint_differences({"state_dict": _state()}, _state()) == []
    other = _state()
    other["a"][0, 0] = -1
    other.pop("b")
    other["c"] = torch.zeros(1)
    other["d"] = torch.zeros(1)
    expected = {**_state(), "d": torch.zeros(1, dtype=torch.float16)}
    assert checkpoint_differences(expected, other) == [
        "a: values differ",
        "b: missing",
        "c: unexpected",
        "d: expected [1] float16, got [1] float32",
    ]


def test_equal_checkpoints_reports_every_difference_at_once():
    """A failure names every differing key, not only the first kind of difference found."""
    other = _state()
    other["a"][0, 0] = -1
    other.pop("b")
    with pytest.raises(AssertionError, match=r"a: values differ; b: missing"):
        assert_equal_checkpoints(_state(), other)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float16])
def test_equal_checkpoints_compare_scalar_tensors(dtype):
    """0-dim tensors (step counters, temperatures) compare like any other: equal pass, different fail."""
    assert_equal_checkpoints({"t": torch.tensor(3, dtype=dtype)}, {"t": torch.tensor(3, dtype=dtype)})
    with pytest.raises(AssertionError, match="t: values differ"):
        assert_equal_checkpoints({"t": torch.tensor(3, dtype=dtype)}, {"t": torch.tensor(4, dtype=dtype)})


# assert_outputs_preserved


class Old(nn.Module):
    """A tiny model whose layer is called ``lin``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer."""
        out: torch.Tensor = self.lin(x)
        return out


class New(nn.Module):
    """The same model after a rename of its layer to ``proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer."""
        out: torch.Tensor = self.proj(x)
        return out


def _rename(ckpt):
    sd = ckpt["state_dict"]
    for p in ("weight", "bias"):
        sd[f"proj.{p}"] = sd.pop(f"lin.{p}")
    return ckpt


def _rename_swapping_rows(ckpt):
    ckpt = _rename(ckpt)
    sd = ckpt["state_dict"]
    sd["proj.weight"] = sd["proj.weight"].flip(0)
    return ckpt


@pytest.mark.parametrize(("convert", "preserved"), [(_rename, True), (_rename_swapping_rows, False)])
def test_outputs_preserved_by_a_rename_only(convert, preserved):
    """A correct rename keeps the outputs; a conversion that also swaps rows fails with AssertionError."""
    torch.manual_seed(0)
    registry = Registry()
    registry.add(Converter.from_function("1.0.0", "2.0.0", convert, touches=["lin.*", "proj.*"]))
    inputs = (torch.randn(4, 3),)
    if preserved:
        assert_outputs_preserved(registry, Old(), New(), "1.0.0", "2.0.0", inputs)
    else:
        with pytest.raises(AssertionError, match="not equal"):
            assert_outputs_preserved(registry, Old(), New(), "1.0.0", "2.0.0", inputs)


# assert_no_layout_drift


@pytest.fixture
def layout_registry(tmp_path: Path) -> Registry:
    """Make converters 1.0.0 -> 2.0.0 (a rename) with the schema of 2.0.0 captured from ``New``."""
    directory = tmp_path / "layout"
    (directory / "schemas").mkdir(parents=True)
    (directory / "001_rename.py").write_text(
        '"""Rename lin to proj."""\n\nfrom ckpt_path.ops import Rename\n\n'
        'source = "1.0.0"\ntarget = "2.0.0"\nreversible = True\n\nops = [Rename("lin.{p}", "proj.{p}")]\n',
        encoding="utf-8",
    )
    schema = Schema.from_signature("2.0.0", signature(New().state_dict()))
    (directory / "schemas" / "2.0.0.json").write_text(schema.to_json(), encoding="utf-8")
    return Registry.from_directory(directory)


def test_no_layout_drift_passes_when_the_model_matches_latest(layout_registry):
    """A model whose state dict matches the latest schema passes."""
    assert_no_layout_drift(New(), layout_registry)
    assert_no_layout_drift(New(), layout_registry, "2.0.0")


class Wider(nn.Module):
    """``New`` after a code change that widened its layer and added a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)


@pytest.mark.parametrize("model", [Old, Wider], ids=["renamed", "resized"])
def test_layout_drift_asks_for_a_new_version_and_converter(layout_registry, model):
    """A model whose layout changed fails, saying to add a new version with `ckpt-path new` and a schema."""
    with pytest.raises(AssertionError) as info:
        assert_no_layout_drift(model(), layout_registry)
    message = str(info.value)
    assert "differs from the schema of 2.0.0" in message
    assert "Add a new version" in message
    assert "ckpt-path new NAME --from 2.0.0" in message
    assert "ckpt-path schema" in message


def test_layout_drift_without_a_schema_fails(layout_registry):
    """Checking against a version that has no schema fails instead of passing silently."""
    with pytest.raises(AssertionError, match="has no schema"):
        assert_no_layout_drift(Old(), layout_registry, "1.0.0")


# the ckpt_path_registry fixture


@pytest.fixture
def converters_env(examples: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``CKPT_PATH_CONVERTERS`` at the copied examples."""
    monkeypatch.setenv(ENV_VAR, str(examples))
    return examples


def test_registry_fixture_reads_the_converters_directory(converters_env, ckpt_path_registry):  # noqa: F811
    """Imported into a test module, the fixture reads the directory `CKPT_PATH_CONVERTERS` names."""
    assert ckpt_path_registry.directory == converters_env
    assert str(ckpt_path_registry.planner.resolve("latest")) == "1.1.0"
    assert ckpt_path_registry.schema("1.0.0") is not None
    assert_round_trip(ckpt_path_registry, "0.3.0", "1.0.0")


@pytest.fixture
def converters_env_with_next(converters_env: Path) -> Path:
    """Add a 1.1.0 -> 1.2.0 converter to the directory ``CKPT_PATH_CONVERTERS`` names."""
    (converters_env / "007_next.py").write_text(
        'source = "1.1.0"\ntarget = "1.2.0"\n\n\ndef convert(ckpt):\n    return ckpt\n',
        encoding="utf-8",
    )
    return converters_env


def test_registry_fixture_sees_the_tmp_directory(converters_env_with_next, ckpt_path_registry):  # noqa: F811
    """The fixture reads the tmp directory, not the repository's: a converter added there makes 1.2.0 latest."""
    assert ckpt_path_registry.directory == converters_env_with_next
    assert str(ckpt_path_registry.planner.resolve("latest")) == "1.2.0"
    checkpoint = synthetic_checkpoint(ckpt_path_registry.schema("1.1.0"))
    assert_equal_checkpoints(checkpoint, run_edge(ckpt_path_registry, "1.1.0", "1.2.0", checkpoint))
