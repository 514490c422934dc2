"""The declarative ops: exact shape effects, bitwise inverses, key templates and argument errors."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_fixtures import assert_bitwise_equal, clone, random_tensor, t
from ckpt_path.ops import (
    Add,
    AddInto,
    Cast,
    Concat,
    Drop,
    DropDerived,
    DropMeta,
    MoveIndex,
    MoveMeta,
    Op,
    OpError,
    Permute,
    Rename,
    Reshape,
    SetMeta,
    Slice,
    Split,
    Squeeze,
    Stack,
    Transpose,
    Unslice,
    Unsqueeze,
    Unstack,
    invert,
)
from ckpt_path.shapes import signature
from strategies import DTYPES, SEEDS, SHAPES, bystanders, dtype_name, tensors

# Ops are built here as converter files write them: lists and dotted paths. ckpt_path.ops types those fields as
# the tuples the constructors normalise them to, so such calls carry `type: ignore[arg-type]` until it
# types the accepted inputs (mypy then reports each ignore as unused).


WIDENING = (
    ("float16", "float32"),
    ("float16", "float64"),
    ("bfloat16", "float32"),
    ("bfloat16", "float64"),
    ("float32", "float64"),
    ("int32", "int64"),
    ("bool", "int32"),
    ("bool", "int64"),
)
"""Casts between the DTYPES above that keep every value: the ones with an exact inverse."""


@st.composite
def renames(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Rename of every layer's parameters, by templates."""
    layers = draw(st.integers(1, 3))
    params = draw(st.lists(st.sampled_from(["weight", "bias", "scale"]), min_size=1, max_size=3, unique=True))
    state_dict = {f"layers.{i}.{p}": draw(tensors()) for i in range(layers) for p in params}
    source, target = draw(
        st.sampled_from(
            [
                ("layers.{i}.{p}", "blocks.{i}.{p}"),
                ("layers.{i}.{p}", "{p}.of.{i}"),
                ("layers.{i}.{p}", "layers.{p}.{i}"),
            ],
        ),
    )
    return {**state_dict, **draw(bystanders())}, Rename(source, target)


@st.composite
def move_indexes(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a MoveIndex along any dim (negative ones too) of every layer's weight."""
    shape = draw(SHAPES)
    dtype = draw(st.sampled_from(DTYPES))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    index = draw(st.integers(0, shape[dim] - 1))
    to = draw(st.integers(0, shape[dim] - 1))
    layers = draw(st.integers(1, 3))
    state_dict = {f"layers.{i}.w": draw(tensors(shape, dtype)) for i in range(layers)}
    return {**state_dict, **draw(bystanders())}, MoveIndex("layers.{i}.w", dim=dim, index=index, to=to)


@st.composite
def permutes(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Permute of every layer's weight."""
    shape = draw(SHAPES)
    dtype = draw(st.sampled_from(DTYPES))
    dims = tuple(draw(st.permutations(range(len(shape)))))
    layers = draw(st.integers(1, 3))
    state_dict = {f"layers.{i}.w": draw(tensors(shape, dtype)) for i in range(layers)}
    return {**state_dict, **draw(bystanders())}, Permute("layers.{i}.w", dims)


@st.composite
def new_shapes(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Draw another shape with as many elements: permuted, flattened or with an inserted 1, maybe one -1."""
    new = list(draw(st.permutations(shape)))
    if draw(st.booleans()):
        new = [math.prod(shape)]
    if draw(st.booleans()):
        new.insert(draw(st.integers(0, len(new))), 1)
    if draw(st.booleans()):
        new[draw(st.integers(0, len(new) - 1))] = -1
    return tuple(new)


@st.composite
def reshapes(draw: st.DrawFn, *, with_source_shape: bool = True) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Reshape of every layer's weight, with its source shape (so it has an inverse) or without."""
    shape = draw(SHAPES)
    dtype = draw(st.sampled_from(DTYPES))
    layers = draw(st.integers(1, 3))
    state_dict = {f"layers.{i}.w": draw(tensors(shape, dtype)) for i in range(layers)}
    op = Reshape("layers.{i}.w", draw(new_shapes(shape)), source_shape=shape if with_source_shape else None)
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def part_sizes(draw: st.DrawFn) -> tuple[list[int], tuple[int, ...] | None]:
    """Draw the sizes of 2 or 3 parts along a dim, and the ``sizes`` argument: None only when they are equal."""
    parts = draw(st.integers(2, 3))
    if draw(st.booleans()):
        sizes = [draw(st.integers(1, 6))] * parts
    else:
        sizes = draw(st.lists(st.integers(1, 6), min_size=parts, max_size=parts))
    explicit = len(set(sizes)) > 1 or draw(st.booleans())
    return sizes, tuple(sizes) if explicit else None


@st.composite
def concats(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Concat of every layer's q, k (and v) along any dim, equal or with explicit sizes."""
    base = list(draw(SHAPES))
    dtype = draw(st.sampled_from(DTYPES))
    dim = draw(st.integers(-len(base), len(base) - 1))
    sizes, sizes_arg = draw(part_sizes())
    names = ["q", "k", "v"][: len(sizes)]
    state_dict = {}
    for i in range(draw(st.integers(1, 2))):
        for name, size in zip(names, sizes, strict=True):
            base[dim] = size
            state_dict[f"l.{i}.{name}"] = draw(tensors(tuple(base), dtype))
    op = Concat([f"l.{{i}}.{name}" for name in names], into="l.{i}.qkv", dim=dim, sizes=sizes_arg)  # type: ignore[arg-type]
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def splits(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Split of every layer's fused tensor along any dim, into equal parts or explicit sizes."""
    base = list(draw(SHAPES))
    dtype = draw(st.sampled_from(DTYPES))
    dim = draw(st.integers(-len(base), len(base) - 1))
    sizes, sizes_arg = draw(part_sizes())
    base[dim] = sum(sizes)
    state_dict = {f"l.{i}.qkv": draw(tensors(tuple(base), dtype)) for i in range(draw(st.integers(1, 2)))}
    into = [f"l.{{i}}.{name}" for name in ["q", "k", "v"][: len(sizes)]]
    return {**state_dict, **draw(bystanders())}, Split("l.{i}.qkv", into=into, dim=dim, sizes=sizes_arg)  # type: ignore[arg-type]


@st.composite
def widening_casts(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Cast that widens (source_dtype given), by glob or template."""
    source, target = draw(st.sampled_from(WIDENING))
    layers = draw(st.integers(1, 3))
    state_dict = {f"layers.{i}.w": draw(tensors(dtype=getattr(torch, source))) for i in range(layers)}
    pattern = draw(st.sampled_from(["layers.*", "layers.{i}.w"]))
    return {**state_dict, **draw(bystanders())}, Cast(pattern, target, source_dtype=source)


@st.composite
def any_casts(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Cast between any two dtypes, with or without source_dtype (maybe lossy)."""
    source = draw(st.sampled_from(DTYPES))
    target = draw(st.sampled_from(DTYPES))
    state_dict = {f"layers.{i}.w": draw(tensors(dtype=source)) for i in range(draw(st.integers(1, 3)))}
    source_dtype = draw(st.sampled_from([None, dtype_name(source)]))
    op = Cast("layers.{i}.w", dtype_name(target), source_dtype=source_dtype)
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def adds(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw an Add of a new parameter of any shape and dtype."""
    dtype = draw(st.sampled_from(DTYPES))
    fill = float(draw(st.integers(0, 1) if dtype == torch.bool else st.integers(-8, 8)))
    state_dict = {"layers.0.w": draw(tensors()), **draw(bystanders())}
    return state_dict, Add("extra.scale", draw(SHAPES), fill=fill, dtype=dtype_name(dtype))


@st.composite
def drops(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Drop by glob, template or plain key."""
    layers = draw(st.integers(1, 3))
    state_dict = {f"layers.{i}.{p}": draw(tensors()) for i in range(layers) for p in ("w", "b")}
    pattern = draw(st.sampled_from(["layers.*", "layers.{i}.w", "layers.0.*", "layers.0.b", "*.b"]))
    return {**state_dict, **draw(bystanders())}, Drop(pattern)


INVERTIBLE = {
    "Rename": renames(),
    "MoveIndex": move_indexes(),
    "Permute": permutes(),
    "Reshape": reshapes(),
    "Concat": concats(),
    "Split": splits(),
    "Cast": widening_casts(),
}
"""Ops with an exact inverse, each drawn with a state dict it fits."""

EVERY_OP = {
    **INVERTIBLE,
    "Reshape-without-source": reshapes(with_source_shape=False),
    "Cast-any": any_casts(),
    "Add": adds(),
    "Drop": drops(),
}
"""Every op, lossy ones included, each drawn with a state dict it fits."""


@pytest.mark.parametrize("kind", sorted(INVERTIBLE))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_invertible_op_round_trips_bitwise(kind, data):
    """Applying an invertible op and then its inverse restores every key, shape, dtype and byte."""
    state_dict, op = data.draw(INVERTIBLE[kind])
    original = clone(state_dict)
    assert not op.is_lossy()
    op.apply(state_dict)
    inverse = op.inverse()
    assert inverse is not None
    inverse.apply(state_dict)
    assert_bitwise_equal(state_dict, original)


@pytest.mark.parametrize("kind", sorted(EVERY_OP))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_predict_matches_apply(kind, data):
    """What an op predicts from the signature is exactly the signature after applying it."""
    state_dict, op = data.draw(EVERY_OP[kind])
    before = signature(state_dict)
    predicted = op.predict(before)
    assert before == signature(state_dict), "predict changed its input"
    op.apply(state_dict)
    assert signature(state_dict) == predicted


@pytest.mark.parametrize("kind", sorted([*INVERTIBLE, "Add"]))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_inverse_predicts_the_signature_back(kind, data):
    """The inverse's prediction from an op's prediction is the signature the op started from."""
    state_dict, op = data.draw({**INVERTIBLE, "Add": adds()}[kind])
    before = signature(state_dict)
    inverse = op.inverse()
    assert inverse is not None
    assert inverse.predict(op.predict(before)) == before


@pytest.mark.parametrize("kind", sorted(INVERTIBLE))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_keys_an_op_does_not_match_keep_their_tensor(kind, data):
    """Keys outside an op's pattern keep the very same tensor object."""
    state_dict, op = data.draw(INVERTIBLE[kind])
    untouched = {key: value for key, value in state_dict.items() if not key.startswith(("layers.", "l."))}
    op.apply(state_dict)
    assert all(state_dict[key] is value for key, value in untouched.items())


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_add_then_its_inverse_restores_the_state_dict(data):
    """Add followed by its inverse (Drop) leaves the state dict as it was."""
    state_dict, op = data.draw(adds())
    original = clone(state_dict)
    op.apply(state_dict)
    assert "extra.scale" in state_dict
    inverse = op.inverse()
    assert inverse is not None
    inverse.apply(state_dict)
    assert_bitwise_equal(state_dict, original)


def test_add_fills_with_its_value_shape_and_dtype():
    """Add makes a tensor of the given shape and dtype, every element the fill value."""
    state_dict: dict[str, Any] = {}
    Add("output_scale", (2, 3), fill=1.0, dtype="float16").apply(state_dict)
    assert torch.equal(state_dict["output_scale"], torch.ones(2, 3, dtype=torch.float16))


# The seed: neural-lam's input-feature reorder script (issue mllam/neural-lam#48).

REORDER_INPUT_DIMS = {
    "grid_prev_embedder.0.weight": {49: 34},
    "grid_current_embedder.0.weight": {66: 51},
}


def seed_move(param_tensor: torch.Tensor, from_dim: int, to_dim: int) -> torch.Tensor:
    """Move one input feature along dim 1 the way the seed script does, with two torch.cat calls."""
    moved_vec = param_tensor[:, from_dim : (from_dim + 1)]
    param_tensor = torch.cat((param_tensor[:, :from_dim], param_tensor[:, (from_dim + 1) :]), dim=1)
    return torch.cat((param_tensor[:, :to_dim], moved_vec, param_tensor[:, to_dim:]), dim=1)


def seed_reorder(state_dict: dict[str, torch.Tensor]) -> None:
    """Reorder input features in place exactly as the seed script does."""
    for param_name, reorder_dict in REORDER_INPUT_DIMS.items():
        param_tensor = state_dict[param_name]
        for from_dim, to_dim in reorder_dict.items():
            param_tensor = seed_move(param_tensor, from_dim, to_dim)
        state_dict[param_name] = param_tensor


SEED_OPS = (
    MoveIndex("grid_prev_embedder.0.weight", dim=1, index=49, to=34),
    MoveIndex("grid_current_embedder.0.weight", dim=1, index=66, to=51),
)


@settings(max_examples=100, deadline=None)
@given(
    hidden=st.integers(1, 8),
    prev_width=st.integers(50, 80),
    current_width=st.integers(67, 90),
    dtype=st.sampled_from(DTYPES),
    seed=SEEDS,
)
def test_move_index_is_the_seed_reorder(hidden, prev_width, current_width, dtype, seed):
    """The two MoveIndex ops give exactly the tensors of neural-lam's reorder script, and undo it."""
    state_dict = {
        "grid_prev_embedder.0.weight": random_tensor((hidden, prev_width), dtype, seed),
        "grid_prev_embedder.0.bias": random_tensor((hidden,), dtype, seed + 1),
        "grid_current_embedder.0.weight": random_tensor((hidden, current_width), dtype, seed + 2),
    }
    original = clone(state_dict)
    expected = clone(state_dict)
    seed_reorder(expected)
    for op in SEED_OPS:
        op.apply(state_dict)
    assert_bitwise_equal(state_dict, expected)
    inverse = invert(SEED_OPS)
    assert inverse is not None
    for undo in inverse:
        undo.apply(state_dict)
    assert_bitwise_equal(state_dict, original)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rows=st.integers(1, 5), width=st.integers(1, 12), seed=SEEDS)
def test_move_index_matches_the_seed_move_anywhere(data, rows, width, seed):
    """For any index and destination along dim 1, MoveIndex equals the seed's remove-then-insert move."""
    index = data.draw(st.integers(0, width - 1), "index")
    to = data.draw(st.integers(0, width - 1), "to")
    tensor = random_tensor((rows, width), torch.float32, seed)
    state_dict = {"w": tensor.clone()}
    MoveIndex("w", dim=1, index=index, to=to).apply(state_dict)
    assert torch.equal(state_dict["w"], seed_move(tensor, index, to))


def test_move_index_moves_one_slice_and_shifts_the_rest():
    """MoveIndex(index=3, to=1) on [0..5] gives [0, 3, 1, 2, 4, 5] (the neural-lam msl move)."""
    state_dict = {"output_map.bias": torch.arange(6)}
    MoveIndex("output_map.bias", dim=0, index=3, to=1).apply(state_dict)
    assert state_dict["output_map.bias"].tolist() == [0, 3, 1, 2, 4, 5]


# Templates.


def test_placeholder_matches_exactly_one_segment():
    """``layers.{i}.w`` matches layers.0.w and layers.10.w, not layers.0.x.w nor layers..w."""
    state_dict = {"layers.0.w": t(1), "layers.10.w": t(2), "layers.0.x.w": t(3), "layers..w": t(4)}
    Rename("layers.{i}.w", "blocks.{i}.w").apply(state_dict)
    assert sorted(state_dict) == ["blocks.0.w", "blocks.10.w", "layers..w", "layers.0.x.w"]
    assert torch.equal(state_dict["blocks.10.w"], t(2))


def test_one_op_covers_every_layer():
    """One templated Rename renames the attention of all twelve layers, both parameters each."""
    state_dict = {f"layers.{i}.attn.{p}": t(i + 1) for i in range(12) for p in ("weight", "bias")}
    Rename("layers.{i}.attn.{p}", "layers.{i}.self_attn.{p}").apply(state_dict)
    assert sorted(state_dict) == sorted(f"layers.{i}.self_attn.{p}" for i in range(12) for p in ("weight", "bias"))
    assert all(torch.equal(state_dict[f"layers.{i}.self_attn.bias"], t(i + 1)) for i in range(12))


def test_repeated_placeholder_binds_one_value():
    """A placeholder used twice in a template matches only keys where both segments are equal."""
    state_dict = {"l.1.to.1": t(1), "l.1.to.2": t(2)}
    Rename("l.{i}.to.{i}", "m.{i}").apply(state_dict)
    assert sorted(state_dict) == ["l.1.to.2", "m.1"]


def test_placeholders_bind_across_the_keys_of_a_concat():
    """Concat's part templates share bindings: each layer's q and k go into that layer's qk."""
    state_dict = {f"l.{i}.{p}": t(2) + 10 * i for i in range(2) for p in ("q", "k")}
    Concat(["l.{i}.q", "l.{i}.k"], into="l.{i}.qk").apply(state_dict)  # type: ignore[arg-type]
    assert sorted(state_dict) == ["l.0.qk", "l.1.qk"]
    assert state_dict["l.1.qk"].tolist() == [10, 11, 10, 11]


def test_template_special_characters_are_literal():
    """Outside placeholders a template is literal text: ``+`` and ``.`` are not regex syntax."""
    state_dict = {"a+b.0.w": t(1), "aab.0.w": t(1), "a+bx0.w": t(1)}
    Rename("a+b.{i}.w", "c.{i}.w").apply(state_dict)
    assert sorted(state_dict) == ["a+bx0.w", "aab.0.w", "c.0.w"]


def test_rename_onto_an_existing_key_fails_and_changes_nothing():
    """Renaming onto a key that stays is an OpError naming both keys; the state dict is untouched."""
    w0, old, new = t(2), t(3), t(4)
    state_dict = {"layers.0.w": w0, "old.w": old, "new.w": new}
    with pytest.raises(OpError, match=r"old\.w onto new\.w"):
        Rename("old.{p}", "new.{p}").apply(state_dict)
    assert list(state_dict) == ["layers.0.w", "old.w", "new.w"]
    assert state_dict["layers.0.w"] is w0
    assert state_dict["old.w"] is old
    assert state_dict["new.w"] is new


def test_rename_onto_an_existing_key_fails_in_predict():
    """Predicting refuses the overwrite too, so a run stops before any tensor moves."""
    with pytest.raises(OpError, match=r"new\.w"):
        Rename("old.{p}", "new.{p}").predict(signature({"old.w": t(1), "new.w": t(1)}))


def test_rename_of_two_keys_onto_one_fails_and_changes_nothing():
    """Two keys renamed onto one key is an OpError naming all three; nothing is renamed."""
    state_dict = {"enc.0.w": t(1), "enc.1.w": t(2)}
    with pytest.raises(OpError, match=r"enc\.0\.w and enc\.1\.w onto enc\.w"):
        Rename("enc.{i}.w", "enc.w").apply(state_dict)
    assert sorted(state_dict) == ["enc.0.w", "enc.1.w"]


def test_rename_may_rotate_keys():
    """A Rename whose targets are keys it moves away (a swap) is allowed: no key is overwritten."""
    a, b = t(2), t(3)
    state_dict = {"x.y": a, "y.x": b}
    op = Rename("{first}.{second}", "{second}.{first}")
    predicted = op.predict(signature(state_dict))
    op.apply(state_dict)
    assert state_dict["y.x"] is a
    assert state_dict["x.y"] is b
    assert signature(state_dict) == predicted


def test_rename_target_with_an_unbound_placeholder_is_an_op_error():
    """A target naming a placeholder the source does not bind is an OpError naming it."""
    with pytest.raises(OpError, match=r"\{j\}"):
        Rename("l.{i}.w", "m.{j}.w").apply({"l.0.w": t(1)})


def test_rename_with_a_glob_source_never_makes_a_key_with_a_star():
    """Rename takes templates; a glob source is an OpError, not a key literally named ``encoder.*``."""
    state_dict = {"enc.w": t(1)}
    with pytest.raises(OpError, match=r"enc\.\*"):
        Rename("enc.*", "encoder.*").apply(state_dict)
    assert list(state_dict) == ["enc.w"]


# Bad arguments: an OpError that names the key, from predict and from apply alike.

BAD_ARGUMENTS = [
    pytest.param(MoveIndex("enc.w", dim=1, index=4, to=0), ["enc.w", "index=4"], id="MoveIndex-index-too-big"),
    pytest.param(MoveIndex("enc.w", dim=1, index=-1, to=0), ["enc.w", "index=-1"], id="MoveIndex-index-negative"),
    pytest.param(MoveIndex("enc.w", dim=0, index=0, to=3), ["enc.w", "to=3"], id="MoveIndex-to-too-big"),
    pytest.param(MoveIndex("enc.w", dim=2, index=0, to=1), ["enc.w", "dim 2"], id="MoveIndex-dim-too-big"),
    pytest.param(MoveIndex("enc.w", dim=-3, index=0, to=1), ["enc.w", "dim -3"], id="MoveIndex-dim-too-small"),
    pytest.param(MoveIndex("nope.{i}", dim=0, index=0, to=1), ["nope.{i}"], id="MoveIndex-no-key"),
    pytest.param(Permute("enc.w", (0, 2, 1)), ["enc.w", "3 dims", "has 2"], id="Permute-too-many-dims"),
    pytest.param(Permute("enc.b", (1, 0)), ["enc.b", "has 1"], id="Permute-too-few-dims"),
    pytest.param(Permute("nope", (1, 0)), ["nope"], id="Permute-no-key"),
    pytest.param(Reshape("enc.w", (5,)), ["enc.w", "12 elements", "[5]"], id="Reshape-incompatible"),
    pytest.param(Reshape("enc.w", (-1, 5)), ["enc.w", "[-1, 5]"], id="Reshape-incompatible-inferred"),
    pytest.param(Reshape("enc.w", (-1, -1)), ["enc.w", "-1"], id="Reshape-two-inferred"),
    pytest.param(Reshape("enc.w", (12,), source_shape=(4, 3)), ["enc.w", "[4, 3]", "[3, 4]"], id="Reshape-source"),
    pytest.param(Reshape("nope", (1,)), ["nope"], id="Reshape-no-key"),
    pytest.param(Concat(["q", "k"], into="qk", dim=0), ["sizes=[1, 3]"], id="Concat-unequal"),  # type: ignore[arg-type]
    pytest.param(Concat(["q", "k"], into="qk", sizes=(2, 2)), ["sizes", "[1, 3]"], id="Concat-wrong-sizes"),  # type: ignore[arg-type]
    pytest.param(Concat(["l.{i}.q", "l.{i}.v"], into="l.{i}.qv"), ["l.0.v", "missing"], id="Concat-missing-part"),  # type: ignore[arg-type]
    pytest.param(Concat(["enc.w", "q"], into="x", dim=1), ["q", "does not fit"], id="Concat-shapes-do-not-fit"),  # type: ignore[arg-type]
    pytest.param(Concat(["l.0.q", "l.0.k"], into="enc.w"), ["enc.w", "exists"], id="Concat-into-existing"),  # type: ignore[arg-type]
    pytest.param(Concat(["nope.{i}", "q"], into="x"), ["nope.{i}"], id="Concat-no-key"),  # type: ignore[arg-type]
    pytest.param(Split("enc.w", into=["a", "b"], dim=0), ["enc.w", "sizes="], id="Split-unequal"),  # type: ignore[arg-type]
    pytest.param(Split("enc.w", into=["a", "b"], sizes=(1, 1)), ["enc.w", "[1, 1]"], id="Split-sizes-do-not-sum"),  # type: ignore[arg-type]
    pytest.param(Split("enc.w", into=["a", "b"], dim=2), ["enc.w", "dim 2"], id="Split-dim-too-big"),  # type: ignore[arg-type]
    pytest.param(Split("enc.w", into=["q", "b"], dim=1), ["q", "exist"], id="Split-onto-existing"),  # type: ignore[arg-type]
    pytest.param(Split("nope", into=["a", "b"]), ["nope"], id="Split-no-key"),  # type: ignore[arg-type]
    pytest.param(Drop("nope.*"), ["nope.*"], id="Drop-no-key"),
    pytest.param(Drop("layers.{i}.w"), ["layers.{i}.w"], id="Drop-template-no-key"),
    pytest.param(Rename("nope.{i}", "x.{i}"), ["nope.{i}"], id="Rename-no-key"),
    pytest.param(Add("enc.w", (3, 4)), ["enc.w", "already exists"], id="Add-existing"),
    pytest.param(Cast("enc.w", "float64", source_dtype="float16"), ["enc.w", "float16", "float32"], id="Cast-source"),
    pytest.param(Cast("nope.*", "float64"), ["nope.*"], id="Cast-no-key"),
]


def bad_arguments_state_dict() -> dict[str, torch.Tensor]:
    """Return the state dict every BAD_ARGUMENTS case is tried on."""
    return {"enc.w": t(3, 4), "enc.b": t(3), "q": t(1, 4), "k": t(3, 4), "l.0.q": t(2), "l.0.k": t(2)}


@pytest.mark.parametrize(("op", "named"), BAD_ARGUMENTS)
def test_bad_arguments_fail_in_predict_naming_the_key(op, named):
    """Predicting raises an OpError whose message names the key and the offending value."""
    with pytest.raises(OpError) as caught:
        op.predict(signature(bad_arguments_state_dict()))
    for text in named:
        assert text in str(caught.value)


@pytest.mark.parametrize(("op", "named"), BAD_ARGUMENTS)
def test_bad_arguments_fail_in_apply_naming_the_key(op, named):
    """Applying raises the same kind of OpError, naming the key, without a predict first."""
    with pytest.raises(OpError) as caught:
        op.apply(bad_arguments_state_dict())
    for text in named:
        assert text in str(caught.value)


@pytest.mark.parametrize(("op", "named"), BAD_ARGUMENTS)
def test_failed_apply_leaves_the_state_dict_unchanged(op, named):
    """An apply that raises OpError leaves every key and tensor of the state dict as it was."""
    state_dict = bad_arguments_state_dict()
    before = dict(state_dict)
    with pytest.raises(OpError, match=r".") as caught:
        op.apply(state_dict)
    assert named[0] in str(caught.value)
    assert list(state_dict) == list(before)
    assert all(state_dict[key] is value for key, value in before.items())


def test_failed_apply_over_several_keys_changes_none_of_them():
    """When the second of two matching keys does not fit, the first is not moved either."""
    first, second = t(4), t(2)
    state_dict = {"l.0.w": first, "l.1.w": second}
    with pytest.raises(OpError, match=r"l\.1\.w"):
        MoveIndex("l.{i}.w", dim=0, index=3, to=0).apply(state_dict)
    assert state_dict["l.0.w"] is first
    assert state_dict["l.1.w"] is second


@pytest.mark.parametrize(
    ("sizes", "hint"),
    [
        pytest.param((1, 3), "sizes=[1, 3]", id="total-splits-evenly"),
        pytest.param((1, 2), "sizes=[1, 2]", id="total-does-not-split-evenly"),
    ],
)
def test_concat_of_unequal_parts_suggests_their_sizes(sizes, hint):
    """Unequal parts with sizes=None: the OpError names a part and gives the sizes= to write."""
    state_dict = {"q": t(sizes[0], 4), "k": t(sizes[1], 4)}
    with pytest.raises(OpError) as caught:
        Concat(["q", "k"], into="qk").predict(signature(state_dict))  # type: ignore[arg-type]
    message = str(caught.value)
    assert hint in message
    assert "q" in message.replace("qk", "")


def test_reshape_to_negative_sizes_is_an_op_error():
    """A size below -1 is an OpError naming the key, from predict, not a shape with negative sizes."""
    state_dict = {"enc.w": t(3, 4)}
    with pytest.raises(OpError, match=r"enc\.w"):
        Reshape("enc.w", (-2, -6)).predict(signature(state_dict))
    with pytest.raises(OpError, match=r"enc\.w"):
        Reshape("enc.w", (-2, -6)).apply(state_dict)


def test_split_into_the_same_key_twice_is_an_op_error():
    """Split into ["a", "a"] is refused rather than keeping the second half and losing the first."""
    state_dict = {"w": t(4)}
    with pytest.raises(OpError, match=r"\ba\b"):
        Split("w", into=["a", "a"]).predict(signature(state_dict))  # type: ignore[arg-type]
    with pytest.raises(OpError, match=r"\ba\b"):
        Split("w", into=["a", "a"]).apply(state_dict)  # type: ignore[arg-type]
    assert torch.equal(state_dict["w"], t(4))


def test_split_of_two_keys_onto_the_same_parts_is_an_op_error():
    """A templated Split whose matches fill the same target keys is refused, never an overwrite."""
    state_dict = {"x.w": t(4), "y.w": t(4) + 100}
    op = Split("{layer}.w", into=["part.0", "part.1"])  # type: ignore[arg-type]
    with pytest.raises(OpError, match=r"part\.0"):
        op.predict(signature(state_dict))
    with pytest.raises(OpError, match=r"part\.0"):
        op.apply(state_dict)


def test_concat_of_two_groups_into_one_key_is_an_op_error():
    """A templated Concat whose groups fill the same ``into`` key is refused, never an overwrite."""
    state_dict = {"x.q": t(2), "x.k": t(2), "y.q": t(2) + 100, "y.k": t(2) + 100}
    op = Concat(["{layer}.q", "{layer}.k"], into="qk")  # type: ignore[arg-type]
    with pytest.raises(OpError, match=r"qk"):
        op.predict(signature(state_dict))
    with pytest.raises(OpError, match=r"qk"):
        op.apply(state_dict)


def test_cast_to_a_dtype_torch_lacks_is_an_op_error():
    """Cast to a name torch has no dtype for is an OpError naming it, not an AttributeError."""
    with pytest.raises(OpError, match="float24"):
        Cast("w", "float24").apply({"w": t(2)})


@pytest.mark.parametrize("alias", ["float", "double", "half", "long"])
def test_dtype_aliases_predict_what_torch_makes(alias):
    """Cast and Add to a torch alias (torch.float, torch.half, ...) predict the dtype the tensor gets."""
    for op in (Cast("w", alias), Add("extra", (2,), dtype=alias)):
        state_dict = {"w": t(2)}
        predicted = op.predict(signature(state_dict))
        op.apply(state_dict)
        assert signature(state_dict) == predicted, op


CONSTRUCTION_ERRORS = [
    pytest.param(lambda: Permute("w", (0, 0)), "permutation", id="Permute-not-a-permutation"),
    pytest.param(lambda: Permute("w", (1, 2)), "permutation", id="Permute-out-of-range"),
    pytest.param(lambda: Concat(["q"], into="qk"), "two", id="Concat-one-part"),  # type: ignore[arg-type]
    pytest.param(lambda: Split("w", into=["a"]), "two", id="Split-one-part"),  # type: ignore[arg-type]
    pytest.param(lambda: Add("l.{i}.w", (2,)), "template", id="Add-template"),
    pytest.param(lambda: Add("l.*", (2,)), "template", id="Add-glob"),
    pytest.param(lambda: Add("w", (2, -1)), "sizes", id="Add-negative-size"),
    pytest.param(lambda: Cast("w", "torch.float16"), "dtype name", id="Cast-not-a-name"),
    pytest.param(lambda: Cast("w", "float16", source_dtype="Float32"), "dtype name", id="Cast-bad-source"),
    pytest.param(lambda: Reshape("w", (6,), source_shape=(2, -1)), "source_shape", id="Reshape-inferred-source"),
    pytest.param(lambda: Reshape("w", (6,), source_shape=(-6,)), "source_shape", id="Reshape-negative-source"),
]


@pytest.mark.parametrize(("make", "hint"), CONSTRUCTION_ERRORS)
def test_bad_op_is_refused_when_made(make, hint):
    """Arguments wrong whatever the state dict are an OpError as soon as the op is made."""
    with pytest.raises(OpError, match=hint):
        make()


# Lossiness and inverses.


@pytest.mark.parametrize(
    ("op", "lossy"),
    [
        pytest.param(Drop("w"), True, id="Drop"),
        pytest.param(Cast("w", "float16"), True, id="Cast-without-source"),
        pytest.param(Cast("w", "float32"), True, id="Cast-without-source-widening"),
        pytest.param(Cast("w", "float16", source_dtype="float32"), True, id="Cast-narrowing"),
        pytest.param(Cast("w", "bfloat16", source_dtype="float16"), True, id="Cast-float16-to-bfloat16"),
        pytest.param(Cast("w", "float16", source_dtype="bfloat16"), True, id="Cast-bfloat16-to-float16"),
        pytest.param(Cast("w", "float32", source_dtype="int64"), True, id="Cast-int64-to-float32"),
        pytest.param(Cast("w", "int32", source_dtype="float32"), True, id="Cast-float-to-int"),
        pytest.param(Cast("w", "bool", source_dtype="int32"), True, id="Cast-to-bool"),
        pytest.param(Cast("w", "float32", source_dtype="float16"), False, id="Cast-widening"),
        pytest.param(Cast("w", "int64", source_dtype="int32"), False, id="Cast-int-widening"),
        pytest.param(Cast("w", "float32", source_dtype="float32"), False, id="Cast-same-dtype"),
        pytest.param(Rename("a", "b"), False, id="Rename"),
        pytest.param(MoveIndex("w", dim=0, index=1, to=0), False, id="MoveIndex"),
        pytest.param(Permute("w", (1, 0)), False, id="Permute"),
        pytest.param(Reshape("w", (-1,)), False, id="Reshape"),
        pytest.param(Concat(["q", "k"], into="qk"), False, id="Concat"),  # type: ignore[arg-type]
        pytest.param(Split("qk", into=["q", "k"]), False, id="Split"),  # type: ignore[arg-type]
        pytest.param(Add("w", (2,)), False, id="Add"),
        pytest.param(Stack("e.{e}.w", into="e.w"), False, id="Stack"),
        pytest.param(Unstack("e.w", into="e.{e}.w"), False, id="Unstack"),
        pytest.param(Transpose("w"), False, id="Transpose"),
        pytest.param(Squeeze("w", (0,)), False, id="Squeeze"),
        pytest.param(Unsqueeze("w", (0,)), False, id="Unsqueeze"),
        pytest.param(Slice("w", into="x", dim=0, start=0, stop=1), False, id="Slice"),
        pytest.param(Unslice("x", into="w", dim=0, start=0, stop=1), False, id="Unslice"),
        pytest.param(DropDerived("{*b}.attn_mask"), False, id="DropDerived"),
        pytest.param(AddInto("x", into="w"), True, id="AddInto"),
        pytest.param(Cast("*", "float32", source_dtype="float16", others="keep"), False, id="Cast-by-dtype-widening"),
        pytest.param(MoveMeta("a.b", "a.c"), False, id="MoveMeta"),  # type: ignore[arg-type]
        pytest.param(SetMeta("a.b", 1), False, id="SetMeta"),  # type: ignore[arg-type]
        pytest.param(SetMeta("a.b", 1, replace=True), True, id="SetMeta-replace"),  # type: ignore[arg-type]
        pytest.param(DropMeta("a.b", value=1), False, id="DropMeta-with-value"),  # type: ignore[arg-type]
        pytest.param(DropMeta("a.b"), True, id="DropMeta"),  # type: ignore[arg-type]
    ],
)
def test_op_lossiness(op, lossy):
    """Drop, AddInto, lossy casts and metadata ops that lose a value are lossy; shape-only ops and Add are not."""
    assert op.is_lossy() is lossy


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(Drop("w"), id="Drop"),
        pytest.param(Cast("w", "float32"), id="Cast-without-source"),
        pytest.param(Reshape("w", (-1,)), id="Reshape-without-source"),
        pytest.param(DropDerived("w"), id="DropDerived"),
        pytest.param(AddInto("x", into="w"), id="AddInto"),
        pytest.param(Cast("*", "float32", source_dtype="float16", others="keep"), id="Cast-by-dtype"),
        pytest.param(DropMeta("a"), id="DropMeta-without-value"),  # type: ignore[arg-type]
        pytest.param(SetMeta("a", 1, replace=True), id="SetMeta-replace"),  # type: ignore[arg-type]
    ],
)
def test_ops_without_an_inverse(op):
    """Drop, DropDerived, AddInto, casts blind to what they cast, reshapes without source_shape: no inverse."""
    assert op.inverse() is None
    assert invert([Rename("a", "b"), op]) is None


def test_add_inverse_is_a_lossy_drop():
    """Add's inverse is Drop of the same key, and that Drop is lossy."""
    inverse = Add("output_scale", (6,)).inverse()
    assert inverse == Drop("output_scale")
    assert inverse.is_lossy()


def test_widening_cast_inverse_narrows_and_is_lossy():
    """The inverse of float16 -> float32 is float32 -> float16 with source_dtype, which is lossy."""
    inverse = Cast("w", "float32", source_dtype="float16").inverse()
    assert inverse == Cast("w", "float16", source_dtype="float32")
    assert inverse.is_lossy()


def test_invert_reverses_the_order():
    """invert() returns each op's inverse, last op first."""
    ops = [Rename("a", "b"), Permute("b", (1, 0)), Reshape("b", (-1,), source_shape=(2, 3))]
    assert invert(ops) == (Reshape("b", (2, 3)), Permute("b", (1, 0)), Rename("b", "a"))


def test_inverse_of_permute_is_the_inverse_permutation():
    """Permute((2, 0, 1)) is undone by Permute((1, 2, 0)), not by the same dims."""
    assert Permute("w", (2, 0, 1)).inverse() == Permute("w", (1, 2, 0))


def test_concat_and_split_invert_each_other_with_their_sizes():
    """Concat's inverse is the Split with the same keys, dim and sizes, and back again."""
    concat = Concat(["l.{i}.q", "l.{i}.kv"], into="l.{i}.qkv", dim=1, sizes=(2, 4))  # type: ignore[arg-type]
    split = concat.inverse()
    assert split == Split("l.{i}.qkv", into=("l.{i}.q", "l.{i}.kv"), dim=1, sizes=(2, 4))
    assert split.inverse() == concat


CAST_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")
LOSSLESS_CASTS = [
    (source, target)
    for source, target in itertools.permutations(CAST_DTYPES, 2)
    if not Cast("w", target, source_dtype=source).is_lossy()
]


def extremes(name: str) -> torch.Tensor:
    """Return the hardest values of a dtype: its limits, smallest steps, zeros of both signs, infinities."""
    dtype = getattr(torch, name)
    if dtype == torch.bool:
        return torch.tensor([False, True])
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        zero = torch.zeros((), dtype=dtype)
        smallest = torch.nextafter(zero, torch.ones((), dtype=dtype))
        values = [info.max, -info.max, info.tiny, -info.tiny, info.eps, 0.0, -0.0, math.inf, -math.inf]
        return torch.cat([torch.tensor(values, dtype=dtype), smallest.reshape(1), -smallest.reshape(1)])
    limits = torch.iinfo(dtype)
    return torch.tensor([limits.min, limits.min + 1, -1, 0, 1, limits.max - 1, limits.max], dtype=dtype)


def test_lossless_casts_are_the_known_widenings():
    """The casts ops call lossless include the usual widenings and no narrowing."""
    assert ("float16", "float32") in LOSSLESS_CASTS
    assert ("int32", "int64") in LOSSLESS_CASTS
    assert ("float32", "float16") not in LOSSLESS_CASTS
    assert ("int64", "int32") not in LOSSLESS_CASTS
    assert len(LOSSLESS_CASTS) >= 10


@pytest.mark.parametrize(("source", "target"), LOSSLESS_CASTS)
def test_lossless_cast_keeps_even_extreme_values(source, target):
    """Every cast ops calls lossless keeps the extremes of its source dtype exactly, there and back."""
    op = Cast("w", target, source_dtype=source)
    original = extremes(source)
    state_dict = {"w": original.clone()}
    op.apply(state_dict)
    assert state_dict["w"].dtype == getattr(torch, target)
    inverse = op.inverse()
    assert inverse is not None
    inverse.apply(state_dict)
    assert_bitwise_equal(state_dict, {"w": original})
