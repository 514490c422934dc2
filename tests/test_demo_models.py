"""Every converter of the example history keeps the demo model's forecasts, feature by feature.

Each edge of the graph (inverse edges of reversible files included) runs through the runner
on a trained checkpoint of its source version, and the result is loaded strictly into the
model of its target version; both models then forecast the same named fields. They run in
float64, so rounding noise from a reordered sum stays near 1e-16 and the tolerance can stay
tight; wrong conversions miss by far more (asserted below).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt_path import Converter, Registry
from ckpt_path.demo.models import FEATURES, MODELS, arrange, disarrange, make_checkpoint, make_fields, outputs
from ckpt_path.testing import run_edge

CONVERTERS_DIR = Path(__file__).resolve().parents[1] / "converters"
REGISTRY = Registry.from_directory(CONVERTERS_DIR)
EDGES: list[Converter] = sorted(
    (data["converter"] for _, _, data in REGISTRY.graph.edges(data=True)),
    key=lambda c: (c.source, c.target),
)
"""Every edge of the example graph, inverse edges of reversible files included."""
LOSSY_EDGES = [c for c in EDGES if c.lossy]

SEED = 1
TRAIN_STEPS = 3
SAME = 1e-12
"""Largest difference two float64 forecasts may have and count as the same."""
DIFFERENT = 1e-6
"""Smallest difference a wrong conversion must make: a million times ``SAME``.

Observed: about 4e-3 with q and k swapped (attention scores of a barely trained model are
small, so that bug hides well) and 1e-2 to 0.7 for the others.
"""


def _edge_id(converter: Converter) -> str:
    return f"{converter.source}->{converter.target}"


def _convert(converter: Converter, ckpt: dict[str, Any]) -> dict[str, Any]:
    """Run one edge through the runner (shape checks and schemas included) on a copy."""
    result: dict[str, Any] = run_edge(REGISTRY, str(converter.source), str(converter.target), ckpt)
    return result


def _model(version: str, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load ``state_dict`` strictly into a model of ``version``, then widen it to float64."""
    model = MODELS[version]()
    fresh = model.state_dict()
    for key, tensor in state_dict.items():
        # load_state_dict casts silently, so a converter that changed a dtype would pass unseen
        assert tensor.dtype == fresh[key].dtype, key
    model.load_state_dict(state_dict, strict=True)
    return model.double()


def _difference(
    source: str, source_sd: dict[str, torch.Tensor], target: str, target_sd: dict[str, torch.Tensor]
) -> float:
    """Largest difference between the two versions' forecasts of the same fields, by name."""
    fields = {name: field.double() for name, field in make_fields(seed=SEED + 100, batch=3, nodes=7).items()}
    before = outputs(_model(source, source_sd), fields, source)
    after = outputs(_model(target, target_sd), fields, target)
    assert before.keys() == after.keys()
    return max((before[name] - after[name]).abs().max().item() for name in before)


def _dropped(converter: Converter, ckpt: dict[str, Any]) -> list[str]:
    """State-dict keys that ``converter`` removes from ``ckpt``."""
    converted = _convert(converter, ckpt)
    return sorted(ckpt["state_dict"].keys() - converted["state_dict"].keys())


def test_every_converter_version_has_a_model():
    """The demo models are exactly the versions the example converters connect."""
    versions = {str(v) for v in REGISTRY.versions}
    assert versions == set(MODELS) == set(FEATURES)


def test_example_history_declares_its_lossy_step():
    """The one step that throws a trained parameter away, dropping the output scale, is lossy."""
    assert [_edge_id(c) for c in LOSSY_EDGES] == ["1.1.0->1.0.0"]


@pytest.mark.parametrize("converter", EDGES, ids=_edge_id)
def test_converter_keeps_forecasts(converter):
    """A converted trained checkpoint loads strictly into the target model and forecasts the same."""
    source, target = str(converter.source), str(converter.target)
    ckpt = make_checkpoint(source, seed=SEED, train_steps=TRAIN_STEPS)
    if converter.lossy:
        # A lossy step may only lose what training put into the parameters it drops: give
        # them their initial values, as in a model that never trained them.
        initial = make_checkpoint(source, seed=SEED)["state_dict"]
        for key in _dropped(converter, ckpt):
            ckpt["state_dict"][key] = initial[key].clone()
    converted = _convert(converter, ckpt)["state_dict"]
    assert _difference(source, ckpt["state_dict"], target, converted) <= SAME


@pytest.mark.parametrize("converter", LOSSY_EDGES, ids=_edge_id)
def test_lossy_converter_loses_trained_parameters(converter):
    """With the dropped parameters trained, a lossy step changes the forecasts."""
    source, target = str(converter.source), str(converter.target)
    ckpt = make_checkpoint(source, seed=SEED, train_steps=TRAIN_STEPS)
    initial = make_checkpoint(source, seed=SEED)["state_dict"]
    dropped = _dropped(converter, ckpt)
    assert dropped
    assert all(not torch.equal(ckpt["state_dict"][key], initial[key]) for key in dropped)
    converted = _convert(converter, ckpt)["state_dict"]
    assert _difference(source, ckpt["state_dict"], target, converted) > DIFFERENT


MSL_MOVED = [0, 3, 1, 2, 4, 5]
"""Index in the 0.2.0 order of each feature in the 0.3.0 order."""


def _skip_msl_reorder(ckpt):
    """Leave the 0.2.0 feature order in place."""
    return ckpt


def _swap_msl(ckpt):
    """Swap msl with u10 instead of moving it, so u10 and v10 trade places."""
    sd = ckpt["state_dict"]
    swapped = [0, 3, 2, 1, 4, 5]
    sd["grid_prev_embedder.0.weight"] = sd["grid_prev_embedder.0.weight"][:, swapped]
    sd["output_map.weight"] = sd["output_map.weight"][swapped]
    sd["output_map.bias"] = sd["output_map.bias"][swapped]
    return ckpt


def _reorder_input_only(ckpt):
    """Move msl in the embedder but forget the output map."""
    sd = ckpt["state_dict"]
    sd["grid_prev_embedder.0.weight"] = sd["grid_prev_embedder.0.weight"][:, MSL_MOVED]
    return ckpt


def _fuse_kqv(ckpt):
    """Fuse the projections with q and k swapped."""
    sd = ckpt["state_dict"]
    for param in ("weight", "bias"):
        sd[f"processor.qkv_proj.{param}"] = torch.cat([sd.pop(f"processor.{p}_proj.{param}") for p in "kqv"])
    return ckpt


def _scale_twos(ckpt):
    """Add an output scale that is not ones."""
    sd = ckpt["state_dict"]
    sd["output_scale"] = torch.full_like(sd["output_map.bias"], 2.0)
    return ckpt


WRONG_CONVERSIONS: list[tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
    ("0.2.0", "0.3.0", _skip_msl_reorder),
    ("0.2.0", "0.3.0", _swap_msl),
    ("0.2.0", "0.3.0", _reorder_input_only),
    ("0.3.0", "1.0.0", _fuse_kqv),
    ("1.0.0", "1.1.0", _scale_twos),
]


@pytest.mark.parametrize(
    ("source", "target", "convert"),
    WRONG_CONVERSIONS,
    ids=[convert.__name__.lstrip("_") for *_, convert in WRONG_CONVERSIONS],
)
def test_wrong_conversion_changes_forecasts(source, target, convert):
    """A conversion that loads strictly but moves the wrong weights changes the forecasts."""
    ckpt = make_checkpoint(source, seed=SEED, train_steps=TRAIN_STEPS)
    converted = convert(copy.deepcopy(ckpt))
    assert _difference(source, ckpt["state_dict"], target, converted["state_dict"]) > DIFFERENT


@pytest.mark.parametrize("version", list(MODELS))
def test_arrange_and_disarrange_are_inverse(version):
    """Named fields survive arrange then disarrange, in the version's feature order."""
    fields = make_fields(seed=SEED)
    arranged = arrange(fields, version)
    assert arranged.shape == (2, 5, 6)
    assert torch.equal(arranged[..., FEATURES[version].index("msl")], fields["msl"])
    back = disarrange(arranged, version)
    assert list(back) == FEATURES[version]
    assert all(torch.equal(back[name], fields[name]) for name in fields)


def test_msl_moves_from_position_3_to_1_in_0_3_0():
    """The feature order changes exactly as converter 002 assumes."""
    assert FEATURES["0.2.0"].index("msl") == 3
    assert FEATURES["0.3.0"].index("msl") == 1
    assert [FEATURES["0.2.0"][i] for i in MSL_MOVED] == FEATURES["0.3.0"]


def test_arrange_names_missing_fields():
    """Arranging fields without one the version needs fails and names it."""
    fields = make_fields(seed=SEED)
    del fields["msl"]
    with pytest.raises(ValueError, match="msl"):
        arrange(fields, "0.1.0")


@pytest.mark.parametrize("version", list(MODELS))
def test_checkpoint_loads_with_weights_only(version):
    """A trained checkpoint survives torch.save and torch.load(weights_only=True) intact."""
    ckpt = make_checkpoint(version, seed=SEED, train_steps=TRAIN_STEPS)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["global_step"] == TRAIN_STEPS
    assert loaded["hyper_parameters"] == {"hidden": 16}
    assert len(loaded["optimizer_states"]) == 1
    assert loaded["state_dict"].keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    MODELS[version]().load_state_dict(loaded["state_dict"], strict=True)


def test_training_moves_every_parameter():
    """A few training steps move every parameter off its initial value, so the tests above bite."""
    trained = make_checkpoint("1.1.0", seed=SEED, train_steps=TRAIN_STEPS)["state_dict"]
    initial = make_checkpoint("1.1.0", seed=SEED)
    assert initial["optimizer_states"] == []
    assert all(not torch.equal(trained[key], initial["state_dict"][key]) for key in trained)


def test_checkpoint_is_reproducible_and_leaves_global_rng_alone():
    """The same seed gives the same checkpoint, and building one does not disturb torch's RNG."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = make_checkpoint("0.1.0", seed=SEED, train_steps=2)["state_dict"]
    assert torch.equal(torch.rand(3), expected)
    second = make_checkpoint("0.1.0", seed=SEED, train_steps=2)["state_dict"]
    other = make_checkpoint("0.1.0", seed=SEED + 1, train_steps=2)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
