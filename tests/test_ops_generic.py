"""Ops generic over model sizes: wider templates, Stack/Unstack, sizes from the checkpoint, value and metadata ops."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ckpt_path
from ckpt_fixtures import assert_bitwise_equal, bits, clone, t
from ckpt_path import LossyPathError, Registry
from ckpt_path.converters import Converter, OpsCode
from ckpt_path.ops import (
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
    describe_ops,
    invert,
)
from ckpt_path.runner import run
from ckpt_path.shapes import signature
from ckpt_path.stamp import STAMP_KEY
from strategies import DTYPES, SHAPES, bystanders, tensors

# Ops are built here as converter files write them: lists and dotted paths. ckpt_path.ops types those fields as
# the tuples the constructors normalise them to, so such calls carry `type: ignore[arg-type]` until it
# types the accepted inputs (mypy then reports each ignore as unused).


@st.composite
def prefixes(draw: st.DrawFn) -> str:
    """Draw a base-model prefix of 0 to 3 dotted segments (``""``, ``model``, ``bert.encoder``...)."""
    segments = draw(st.lists(st.sampled_from(["model", "bert", "encoder", "backbone", "0", "1"]), max_size=3))
    return "".join(f"{s}." for s in segments)


@st.composite
def stacks(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw per-expert tensors of 1-3 layers (any number of experts each) and a Stack over the expert index."""
    shape = draw(SHAPES)
    dtype = draw(st.sampled_from(DTYPES))
    dim = draw(st.integers(-len(shape) - 1, len(shape)))
    prefix = draw(prefixes())
    state_dict = {}
    for layer in range(draw(st.integers(1, 3))):
        for expert in range(draw(st.integers(1, 12))):
            state_dict[f"{prefix}layers.{layer}.experts.{expert}.w1"] = draw(tensors(shape, dtype))
    op = Stack("{*p}.layers.{l}.experts.{e}.w1", into="{*p}.layers.{l}.experts.w1_stacked", dim=dim)
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def unstacks(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw fused expert tensors of 1-3 layers and an Unstack of each into one key per expert."""
    shape = draw(SHAPES)
    dtype = draw(st.sampled_from(DTYPES))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    state_dict = {f"m.layers.{i}.experts.fused": draw(tensors(shape, dtype)) for i in range(draw(st.integers(1, 3)))}
    op = Unstack("{*p}.experts.fused", into="{*p}.experts.{e}.w", dim=dim)
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def transposes(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Transpose of two dims (negative ones too) of every layer's weight, whatever its rank."""
    layers = {f"l.{i}.w": draw(tensors()) for i in range(draw(st.integers(1, 3)))}
    ndim = min(t.dim() for t in layers.values())
    dim0, dim1 = draw(st.integers(-ndim, ndim - 1)), draw(st.integers(-ndim, ndim - 1))
    return {**layers, **draw(bystanders())}, Transpose("l.{i}.w", dim0, dim1)


@st.composite
def squeezes(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw tensors with 1s inserted at the same positions (sizes differ per stage) and a Squeeze of them."""
    ndim = draw(st.integers(1, 3))
    ones = sorted(draw(st.lists(st.integers(0, ndim), min_size=1, max_size=3, unique=True)))
    total = ndim + len(ones)
    dtype = draw(st.sampled_from(DTYPES))
    state_dict = {}
    for stage in range(draw(st.integers(1, 4))):
        sizes = iter(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
        shape = tuple(1 if i in ones else next(sizes) for i in range(total))
        state_dict[f"stages.{stage}.grn.gamma"] = draw(tensors(shape, dtype))
    dims = tuple(d - total if draw(st.booleans()) else d for d in ones)
    return {**state_dict, **draw(bystanders())}, Squeeze("stages.{i}.grn.gamma", dims)


@st.composite
def unsqueezes(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw linear weights and an Unsqueeze to a 1x1 conv (or other new dims of size 1)."""
    shape = draw(SHAPES)
    total = len(shape) + draw(st.integers(1, 2))
    dims = tuple(
        draw(st.lists(st.integers(-total, total - 1), min_size=total - len(shape), max_size=total - len(shape)))
    )
    if len({d % total for d in dims}) != len(dims):
        dims = tuple(range(len(shape), total))
    state_dict = {f"blocks.{i}.fc.weight": draw(tensors(shape)) for i in range(draw(st.integers(1, 3)))}
    return {**state_dict, **draw(bystanders())}, Unsqueeze("{*b}.fc.weight", dims)


@st.composite
def slices(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a Slice of a range (negative bounds too) along any dim, moved out to its own key."""
    shape = list(draw(SHAPES))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    shape[dim] = max(shape[dim], 2)
    size = shape[dim]
    begin = draw(st.integers(0, size - 1))
    end = draw(st.integers(begin + 1, size))
    start = begin - size if draw(st.booleans()) else begin
    stop = None if end == size and draw(st.booleans()) else (end - size if draw(st.booleans()) and end < size else end)
    dtype = draw(st.sampled_from(DTYPES))
    state_dict = {f"l.{i}.pos_embed": draw(tensors(tuple(shape), dtype)) for i in range(draw(st.integers(1, 2)))}
    op = Slice("l.{i}.pos_embed", into="l.{i}.cls_pos", dim=dim, start=start, stop=stop)
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def unslices(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a tensor and a piece that fits it, and an Unslice putting the piece back anywhere."""
    shape = list(draw(SHAPES))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    dtype = draw(st.sampled_from(DTYPES))
    piece = list(shape)
    piece[dim] = draw(st.integers(1, 3))
    total = shape[dim] + piece[dim]
    begin = draw(st.integers(0, shape[dim]))
    end = begin + piece[dim]
    start = begin - total if draw(st.booleans()) else begin
    stop = None if end == total and draw(st.booleans()) else end
    state_dict = {"pos_embed": draw(tensors(tuple(shape), dtype)), "cls_pos": draw(tensors(tuple(piece), dtype))}
    op = Unslice("cls_pos", into="pos_embed", dim=dim, start=start, stop=stop)
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def named_reshapes(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw ConvNeXt-V2 GRN gammas [1, 1, 1, C], C different per stage, and one named Reshape to [C]."""
    dtype = draw(st.sampled_from(DTYPES))
    state_dict = {
        f"stages.{i}.blocks.{j}.grn.gamma": draw(tensors((1, 1, 1, draw(st.integers(1, 8))), dtype))
        for i in range(draw(st.integers(1, 4)))
        for j in range(draw(st.integers(1, 2)))
    }
    op = Reshape("{*b}.grn.gamma", ["C"], source_shape=[1, 1, 1, "C"])  # type: ignore[arg-type]
    return {**state_dict, **draw(bystanders())}, op


@st.composite
def referenced_reshapes(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw flat per-head weights and a Reshape to [heads, -1], heads read from another key's shape."""
    state_dict = {}
    for i in range(draw(st.integers(1, 3))):
        heads, width = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        state_dict[f"b.{i}.scale"] = draw(tensors((heads,)))
        state_dict[f"b.{i}.w"] = draw(tensors((heads * width,)))
    return state_dict, Reshape("b.{i}.w", ["b.{i}.scale[0]", -1], source_shape=["N"])  # type: ignore[arg-type]


@st.composite
def gqa_splits(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw grouped-query qkv weights, head counts differing per layer, and one Split sized by o_proj."""
    state_dict = {}
    dtype = draw(st.sampled_from(DTYPES))
    for i in range(draw(st.integers(1, 3))):
        q, kv, hidden = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
        state_dict[f"l.{i}.qkv.weight"] = draw(tensors((q + 2 * kv, hidden), dtype))
        state_dict[f"l.{i}.o_proj.weight"] = draw(tensors((hidden, q), dtype))
    into = ["l.{i}.q.weight", "l.{i}.k.weight", "l.{i}.v.weight"]
    return state_dict, Split("l.{i}.qkv.weight", into=into, sizes=["l.{i}.o_proj.weight[1]", -1, -1])  # type: ignore[arg-type]


@st.composite
def star_renames(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw LayerNorm gammas at random depths under random prefixes and one Rename for all of them."""
    state_dict = {}
    for _ in range(draw(st.integers(1, 4))):
        key = draw(prefixes()) + draw(st.sampled_from(["", "layer.3.", "attention.output."])) + "LayerNorm.gamma"
        state_dict[key] = draw(tensors())
    return {**state_dict, **draw(bystanders())}, Rename("{*m}.LayerNorm.gamma", "{*m}.LayerNorm.weight")


@st.composite
def shifts(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw Swin's downsample at the end of stages 0..N-2 (any N) and the stage shift to the start of the next."""
    state_dict = {}
    stages = draw(st.integers(1, 5))
    for i in range(stages):
        state_dict[f"layers.{i}.blocks.0.norm1.weight"] = draw(tensors())
        if i < stages - 1:
            for p in ("norm.weight", "norm.bias", "reduction.weight"):
                state_dict[f"layers.{i}.downsample.{p}"] = draw(tensors())
    return state_dict, Rename("layers.{i}.downsample.{*p}", "layers.{i+1}.downsample.{*p}", optional=True)


@st.composite
def dtype_casts(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw a checkpoint of mixed dtypes and a Cast of every float16 tensor to float32, others kept."""
    state_dict = {f"w.{i}": draw(tensors()) for i in range(draw(st.integers(1, 6)))}
    state_dict["half.0"] = draw(tensors(dtype=torch.float16))
    return state_dict, Cast("*", "float32", source_dtype="float16", others="keep")


@st.composite
def derived_drops(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw Swin blocks with their recomputed buffers and a DropDerived of them at every depth."""
    state_dict = {}
    for i in range(draw(st.integers(1, 3))):
        state_dict[f"layers.{i}.blocks.0.attn.relative_position_index"] = draw(tensors(dtype=torch.int64))
        state_dict[f"layers.{i}.blocks.0.attn.qkv.weight"] = draw(tensors())
    return state_dict, DropDerived("{*b}.relative_position_index")


@st.composite
def add_intos(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], Op]:
    """Draw DINOv2's class token and its position slice [1, 1, D], and an AddInto of one into the other."""
    width = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from((torch.float32, torch.float64, torch.int64)))
    state_dict = {"cls_token": draw(tensors((1, 1, width), dtype)), "cls_pos": draw(tensors((1, 1, width), dtype))}
    return {**state_dict, **draw(bystanders())}, AddInto("cls_pos", into="cls_token")


INVERTIBLE = {
    "Stack": stacks(),
    "Unstack": unstacks(),
    "Transpose": transposes(),
    "Squeeze": squeezes(),
    "Unsqueeze": unsqueezes(),
    "Slice": slices(),
    "Unslice": unslices(),
    "Reshape-named": named_reshapes(),
    "Reshape-referenced": referenced_reshapes(),
    "Split-referenced": gqa_splits(),
    "Rename-star": star_renames(),
    "Rename-shift": shifts(),
}
"""New ops (and new forms of old ones) with an exact inverse, each drawn with a state dict it fits."""

EVERY_NEW_OP = {**INVERTIBLE, "Cast-keep": dtype_casts(), "DropDerived": derived_drops(), "AddInto": add_intos()}
"""Every new op, those without an inverse included."""


@pytest.mark.parametrize("kind", sorted(EVERY_NEW_OP))
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_new_op_predicts_exactly_what_it_does(kind, data):
    """What a new op predicts from the signature is exactly the signature after applying it."""
    state_dict, op = data.draw(EVERY_NEW_OP[kind])
    before = signature(state_dict)
    predicted = op.predict(before)
    assert signature(state_dict) == before, "predict changed its input"
    op.apply(state_dict)
    assert signature(state_dict) == predicted


@pytest.mark.parametrize("kind", sorted(INVERTIBLE))
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_new_op_then_its_inverse_is_bitwise_identity(kind, data):
    """Applying a new invertible op and then its inverse restores every key, shape, dtype and byte."""
    state_dict, op = data.draw(INVERTIBLE[kind])
    original = clone(state_dict)
    assert not op.is_lossy()
    op.apply(state_dict)
    inverse = op.inverse()
    assert inverse is not None
    assert inverse.predict(signature(state_dict)) == signature(original)
    inverse.apply(state_dict)
    assert_bitwise_equal(state_dict, original)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_stack_stacks_in_numeric_index_order(data):
    """Stack puts part e at position e of the new dim, for any expert count (10 after 9, not after 1)."""
    state_dict, op = data.draw(stacks())
    parts = {k: v.clone() for k, v in state_dict.items() if ".experts." in k}
    assert isinstance(op, Stack)
    op.apply(state_dict)
    for key, tensor in parts.items():
        head, expert = key.rsplit(".experts.", 1)
        index = int(expert.split(".")[0])
        stacked = state_dict[f"{head}.experts.w1_stacked"]
        assert torch.equal(bits(stacked.select(op.dim % stacked.dim(), index)), bits(tensor)), key


@settings(max_examples=50, deadline=None)
@given(data=st.data(), seed=st.integers(0, 1000))
def test_shift_gives_the_same_keys_whatever_the_key_order(data, seed):
    """The Swin stage shift renames every stage at once: any order of the keys gives the same result, no collision."""
    state_dict, op = data.draw(shifts())
    expected = dict(state_dict)
    op.apply(expected)
    keys = list(state_dict)
    random.Random(seed).shuffle(keys)  # noqa: S311 - a test order, not a secret
    shuffled = {k: state_dict[k] for k in keys}
    op.apply(shuffled)
    assert shuffled == expected


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_cast_by_dtype_casts_only_that_dtype(data):
    """Cast(others='keep') widens every float16 tensor to float32 and keeps every other tensor object."""
    state_dict, op = data.draw(dtype_casts())
    others = {k: v for k, v in state_dict.items() if v.dtype != torch.float16}
    halves = {k: v.clone() for k, v in state_dict.items() if v.dtype == torch.float16}
    op.apply(state_dict)
    assert all(state_dict[k] is v for k, v in others.items())
    for key, tensor in halves.items():
        assert state_dict[key].dtype == torch.float32
        assert torch.equal(state_dict[key].half(), tensor)


def test_add_into_adds_a_slice_as_dinov2_does():
    """Slice + AddInto give timm's cls_token + pos_embed[:, 0] and pos_embed[:, 1:] bitwise."""
    cls_token, pos_embed = torch.randn(1, 1, 4), torch.randn(1, 5, 4)
    state_dict = {"cls_token": cls_token.clone(), "pos_embed": pos_embed.clone()}
    Slice("pos_embed", into="cls_pos", dim=1, start=0, stop=1).apply(state_dict)
    AddInto("cls_pos", into="cls_token").apply(state_dict)
    assert sorted(state_dict) == ["cls_token", "pos_embed"]
    assert torch.equal(bits(state_dict["cls_token"]), bits(cls_token + pos_embed[:, 0]))
    assert torch.equal(bits(state_dict["pos_embed"]), bits(pos_embed[:, 1:]))


# Templates.


def test_star_placeholder_spans_segments_and_may_span_none():
    """``{*m}`` matches zero or more whole segments, never part of one."""
    keys = ["LayerNorm.gamma", "a.LayerNorm.gamma", "a.b.c.LayerNorm.gamma", "xLayerNorm.gamma", "LayerNorm.gamma.x"]
    mapping = Rename("{*m}.LayerNorm.gamma", "{*m}.LayerNorm.weight").mapping(keys)
    assert mapping == {
        "LayerNorm.gamma": "LayerNorm.weight",
        "a.LayerNorm.gamma": "a.LayerNorm.weight",
        "a.b.c.LayerNorm.gamma": "a.b.c.LayerNorm.weight",
    }


def test_prefix_rename_moves_a_whole_model_under_a_new_prefix():
    """``Rename("{*k}", "backbone.{*k}")`` puts every key under a prefix, and its inverse takes it off."""
    state_dict = {"a.w": t(1), "b.0.c": t(2)}
    op = Rename("{*k}", "backbone.{*k}")
    op.apply(state_dict)
    assert sorted(state_dict) == ["backbone.a.w", "backbone.b.0.c"]
    inverse = op.inverse()
    inverse.apply(state_dict)
    assert sorted(state_dict) == ["a.w", "b.0.c"]


def test_index_arithmetic_below_zero_is_an_op_error():
    """``{i-1}`` on index 0 is an OpError naming the template, never a key with -1."""
    with pytest.raises(OpError, match=r"\{i-1\}"):
        Rename("l.{i}.w", "l.{i-1}.w").apply({"l.0.w": t(1)})


def test_index_arithmetic_in_a_source_matches_only_numbers_it_can_undo():
    """``l.{i+1}.w`` matches l.1.w (i=0) but not l.0.w, nor l.01.w, nor l.x.w."""
    assert Rename("l.{i+1}.w", "m.{i}.w").mapping(["l.0.w", "l.1.w", "l.01.w", "l.x.w"]) == {"l.1.w": "m.0.w"}


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        pytest.param(lambda: Rename("a{*p}.w", "b.{*p}"), "whole segments", id="star-inside-a-segment"),
        pytest.param(lambda: Rename("{*p}{x}.w", "b"), "touches", id="star-next-to-a-placeholder"),
        pytest.param(lambda: Rename("{*p+1}.w", "b"), "cannot compute", id="star-with-arithmetic"),
        pytest.param(lambda: Rename("a.{i.w", "b"), "brace", id="stray-brace"),
        pytest.param(lambda: Stack("e.{e}.{j}.w", into="e.w"), "exactly one", id="Stack-two-indices"),
        pytest.param(lambda: Stack("e.w", into="e.s"), "exactly one", id="Stack-no-index"),
        pytest.param(lambda: Stack("{*e}.w", into="s"), "one segment", id="Stack-star-index"),
        pytest.param(lambda: Unstack("e.{l}.w", into="e.{l}.x"), "exactly one", id="Unstack-no-index"),
        pytest.param(lambda: Reshape("w", ["C"]), "not bound", id="Reshape-unbound-name"),  # type: ignore[arg-type]
        pytest.param(
            lambda: Reshape("w", [2, "C"], source_shape=[2, -1]),  # type: ignore[arg-type]
            "source_shape",
            id="Reshape-source-minus-one",
        ),
        pytest.param(lambda: Reshape("w", ["a b"]), "not a size", id="Reshape-bad-size"),  # type: ignore[arg-type]
        pytest.param(lambda: Split("w", into=["a", "b"], sizes=[1, 2, 3]), "3 part", id="Split-sizes-count"),  # type: ignore[arg-type]
        pytest.param(lambda: Squeeze("w", ()), "whole numbers", id="Squeeze-no-dims"),
        pytest.param(lambda: Cast("*", "float32", others="keep"), "source_dtype", id="Cast-keep-without-source"),
        pytest.param(lambda: Cast("*", "float32", others="nope"), "others", id="Cast-bad-others"),
        pytest.param(lambda: SetMeta("a..b", 1), "empty segment", id="SetMeta-bad-path"),  # type: ignore[arg-type]
        pytest.param(lambda: SetMeta("a", 1, old=0, replace=True), "not both", id="SetMeta-old-and-replace"),  # type: ignore[arg-type]
        pytest.param(lambda: MoveMeta("a.b", "a.b"), "both", id="MoveMeta-same"),  # type: ignore[arg-type]
    ],
)
def test_bad_new_op_is_refused_when_made(make, hint):
    """Arguments wrong whatever the state dict are an OpError as soon as the op is made."""
    with pytest.raises(OpError, match=hint):
        make()


# Stack and Unstack.


def test_stack_refuses_a_gap_in_the_indices():
    """Experts 0, 1, 3: Stack names the missing index 2 and changes nothing."""
    state_dict = {f"experts.{e}.w": t(2) for e in (0, 1, 3)}
    before = dict(state_dict)
    with pytest.raises(OpError, match=r"0\.\.N-1.*2 is missing"):
        Stack("experts.{e}.w", into="experts.w").apply(state_dict)
    assert state_dict == before


def test_stack_refuses_indices_not_starting_at_zero():
    """Experts 1..3: index 0 is missing, so Stack refuses rather than shift the experts."""
    with pytest.raises(OpError, match="0 is missing"):
        Stack("experts.{e}.w", into="experts.w").predict(signature({f"experts.{e}.w": t(2) for e in (1, 2, 3)}))


def test_stack_refuses_a_binding_that_is_not_an_index():
    """``experts.x.w`` under ``{e}`` is an OpError naming it, not a silently skipped part."""
    with pytest.raises(OpError, match=r"experts\.x\.w"):
        Stack("experts.{e}.w", into="experts.w").predict(signature({"experts.0.w": t(2), "experts.x.w": t(2)}))


def test_stack_refuses_unlike_parts():
    """Parts of different shapes cannot be stacked: the error names both."""
    with pytest.raises(OpError, match=r"experts\.1\.w.*experts\.0\.w"):
        Stack("experts.{e}.w", into="experts.w").predict(signature({"experts.0.w": t(2), "experts.1.w": t(3)}))


def test_unstack_refuses_to_overwrite_a_key():
    """Unstacking onto a key that exists is an OpError, never an overwrite."""
    state_dict = {"fused": t(2, 3), "part.1": t(3)}
    with pytest.raises(OpError, match=r"part\.1"):
        Unstack("fused", into="part.{e}").apply(state_dict)


def test_stack_then_concat_is_the_mixtral_fusion_for_any_expert_count():
    """One generic op list fuses w1/w3 (stacked, then concatenated on dim 1) and stacks w2, for 2 to 64 experts."""
    ops = (
        Stack("{*p}.experts.{e}.w1.weight", into="{*p}.experts.w1"),
        Stack("{*p}.experts.{e}.w3.weight", into="{*p}.experts.w3"),
        Concat(["{*p}.experts.w1", "{*p}.experts.w3"], into="{*p}.experts.gate_up_proj", dim=1),  # type: ignore[arg-type]
        Stack("{*p}.experts.{e}.w2.weight", into="{*p}.experts.down_proj"),
    )
    for experts in (2, 3, 64):
        state_dict = {
            f"model.layers.{i}.moe.experts.{e}.{w}.weight": torch.randn(5 if w != "w2" else 3, 3 if w != "w2" else 5)
            for i in range(2)
            for e in range(experts)
            for w in ("w1", "w2", "w3")
        }
        original = clone(state_dict)
        for op in ops:
            op.apply(state_dict)
        fused = state_dict["model.layers.1.moe.experts.gate_up_proj"]
        assert fused.shape == (experts, 10, 3)
        assert torch.equal(fused[experts - 1, 5:], original[f"model.layers.1.moe.experts.{experts - 1}.w3.weight"])
        inverse = invert(ops)
        assert inverse is not None
        for undo in inverse:
            undo.apply(state_dict)
        assert_bitwise_equal(state_dict, original)


# Sizes from the checkpoint.


def test_named_size_must_agree_within_a_key():
    """A name used twice in source_shape binds one size: [2, 3] does not fit ["n", "n"]."""
    with pytest.raises(OpError, match=r"expected shape \[n, n\]"):
        Reshape("w", [-1], source_shape=["n", "n"]).predict(signature({"w": t(2, 3)}))  # type: ignore[arg-type]


def test_size_from_a_missing_key_names_it():
    """A size read from a key that is not there is an OpError naming the key it looked for."""
    with pytest.raises(OpError, match=r"b\.0\.scale"):
        Reshape("b.{i}.w", ["b.{i}.scale[0]", -1]).predict(signature({"b.0.w": t(6)}))  # type: ignore[arg-type]


def test_squeeze_refuses_a_dim_that_is_not_one():
    """Squeezing a dim of size 3 is an OpError naming the key and the size."""
    with pytest.raises(OpError, match=r"w: dim 0 .* size 3"):
        Squeeze("w", (0,)).predict(signature({"w": t(3, 1)}))


def test_slice_refuses_an_empty_range():
    """A Slice whose range is empty is an OpError naming the key."""
    with pytest.raises(OpError, match=r"pos_embed"):
        Slice("pos_embed", into="x", dim=1, start=3, stop=3).predict(signature({"pos_embed": t(1, 5, 2)}))


def test_concat_with_minus_one_sizes_checks_the_rest_is_equal():
    """Concat sizes=[ref, -1, -1]: parts taking the rest must be equal, so the inverse Split is exact."""
    sig = signature({"q": t(4, 2), "k": t(1, 2), "v": t(2, 2), "o": t(2, 4)})
    with pytest.raises(OpError, match="have sizes"):
        Concat(["q", "k", "v"], into="qkv", sizes=["o[1]", -1, -1]).predict(sig)  # type: ignore[arg-type]


# Optional ops.


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(Rename("aux.{p}", "extra.{p}", optional=True), id="Rename"),
        pytest.param(DropDerived("{*b}.attn_mask", optional=True), id="DropDerived"),
        pytest.param(Stack("e.{e}.w", into="e.w", optional=True), id="Stack"),
        pytest.param(MoveIndex("nope", dim=0, index=0, to=1, optional=True), id="MoveIndex"),
        pytest.param(Cast("*", "float32", source_dtype="float16", others="keep", optional=True), id="Cast"),
    ],
)
def test_optional_op_may_match_nothing(op):
    """An optional op that matches nothing leaves the state dict as it is; the same op not optional fails."""
    state_dict = {"w": t(2)}
    op.apply(state_dict)
    assert list(state_dict) == ["w"]
    strict = dataclasses.replace(op, optional=False)
    with pytest.raises(OpError, match="no key"):
        strict.apply(state_dict)


# Lossiness and inverses.


def test_drop_derived_is_lossless_without_an_inverse():
    """DropDerived throws nothing away (the model recomputes it) but cannot be undone."""
    op = DropDerived("{*b}.relative_position_index")
    assert not op.is_lossy()
    assert op.inverse() is None
    assert Drop("x").is_lossy()


def test_cast_by_dtype_has_no_inverse():
    """Cast(others='keep') is lossless but has no inverse: the way back cannot tell which keys it widened."""
    op = Cast("*", "float32", source_dtype="float16", others="keep")
    assert not op.is_lossy()
    assert op.inverse() is None


def test_transpose_is_its_own_inverse():
    """Transpose(dim0, dim1) is undone by the same Transpose."""
    assert Transpose("w", 0, -1).inverse() == Transpose("w", 0, -1)


def test_named_reshape_inverse_reads_the_names_back():
    """The inverse of Reshape([C], source_shape=[1, 1, 1, C]) is Reshape([1, 1, 1, C], source_shape=[C])."""
    assert Reshape("g", ["C"], source_shape=[1, 1, 1, "C"]).inverse() == Reshape(  # type: ignore[arg-type]
        "g",
        [1, 1, 1, "C"],  # type: ignore[arg-type]
        source_shape=["C"],  # type: ignore[arg-type]
    )


# Metadata ops.


def lightning_checkpoint() -> dict[str, Any]:
    """Return a Lightning-like checkpoint: weights, hyper-parameters, loops and callbacks."""
    return {
        "state_dict": {"w": t(2)},
        "hyper_parameters": {"hidden": 4, "lr": 0.1, "data": {"path": "x"}},
        "loops": {"fit_loop": {"epoch_progress": {"current": 3}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val.loss'}": {"best": 1.5}},
    }


def metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Return everything of a checkpoint but its state dict and stamp."""
    return {k: v for k, v in ckpt.items() if k not in {"state_dict", STAMP_KEY}}


def test_meta_ops_move_rename_set_and_drop_outside_the_state_dict():
    """MoveMeta, SetMeta and DropMeta change the checkpoint around the state dict and leave the state dict alone."""
    ckpt = lightning_checkpoint()
    weights = ckpt["state_dict"]["w"]
    MoveMeta("hyper_parameters.hidden", "hyper_parameters.hidden_dim").apply_meta(ckpt, ("state_dict",))  # type: ignore[arg-type]
    MoveMeta("hyper_parameters.data.path", "hyper_parameters.data_path").apply_meta(ckpt, ("state_dict",))  # type: ignore[arg-type]
    SetMeta("hyper_parameters.version", "2.0").apply_meta(ckpt, ("state_dict",))  # type: ignore[arg-type]
    SetMeta("hyper_parameters.lr", 0.2, old=0.1).apply_meta(ckpt, ("state_dict",))  # type: ignore[arg-type]
    DropMeta(["callbacks", "ModelCheckpoint{'monitor': 'val.loss'}"]).apply_meta(ckpt, ("state_dict",))  # type: ignore[arg-type]
    assert ckpt["hyper_parameters"] == {"hidden_dim": 4, "lr": 0.2, "data": {}, "data_path": "x", "version": "2.0"}
    assert ckpt["callbacks"] == {}
    assert ckpt["state_dict"]["w"] is weights


@pytest.mark.parametrize(
    ("op", "hint"),
    [
        pytest.param(SetMeta("hyper_parameters.lr", 1.0), "already holds 0.1", id="SetMeta-over-a-value"),  # type: ignore[arg-type]
        pytest.param(SetMeta("hyper_parameters.lr", 1.0, old=0.5), "not 0.5", id="SetMeta-wrong-old"),  # type: ignore[arg-type]
        pytest.param(SetMeta("nothing.here", 1), "make it first", id="SetMeta-no-parent"),  # type: ignore[arg-type]
        pytest.param(
            MoveMeta("hyper_parameters.lr", "hyper_parameters.hidden"),  # type: ignore[arg-type]
            "never overwritten",
            id="MoveMeta-over",
        ),
        pytest.param(MoveMeta("hyper_parameters.nope", "x"), "not in the checkpoint", id="MoveMeta-absent"),  # type: ignore[arg-type]
        pytest.param(MoveMeta("state_dict.w", "w"), "in the state dict", id="MoveMeta-from-the-state-dict"),  # type: ignore[arg-type]
        pytest.param(SetMeta("state_dict", {}, replace=True), "in the state dict", id="SetMeta-the-state-dict"),  # type: ignore[arg-type]
        pytest.param(DropMeta(STAMP_KEY), "stamp", id="DropMeta-the-stamp"),  # type: ignore[arg-type]
        pytest.param(DropMeta("hyper_parameters.lr", value=0.5), "not 0.5", id="DropMeta-wrong-value"),  # type: ignore[arg-type]
    ],
)
def test_meta_op_that_does_not_fit_is_an_op_error(op, hint):
    """A metadata op never overwrites, never touches the state dict or the stamp, and says why it failed."""
    with pytest.raises(OpError, match=hint):
        op.apply_meta(lightning_checkpoint(), ("state_dict",))


def test_meta_ops_refuse_a_flat_state_dict():
    """A flat state dict holds no metadata: a metadata op says so."""
    with pytest.raises(OpError, match="flat state dict"):
        SetMeta("a", 1).apply_meta({"w": t(1)}, ())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(SetMeta("hyper_parameters.version", "2.0"), id="SetMeta-new"),  # type: ignore[arg-type]
        pytest.param(SetMeta("hyper_parameters.lr", 0.2, old=0.1), id="SetMeta-old"),  # type: ignore[arg-type]
        pytest.param(MoveMeta("loops.fit_loop", "loops.train_loop"), id="MoveMeta"),  # type: ignore[arg-type]
        pytest.param(DropMeta("hyper_parameters.data", value={"path": "x"}), id="DropMeta-value"),  # type: ignore[arg-type]
    ],
)
def test_meta_op_then_its_inverse_restores_the_checkpoint(op):
    """Each lossless metadata op is undone exactly by its inverse."""
    ckpt = lightning_checkpoint()
    weights = ckpt.pop("state_dict")
    original = dict(ckpt, state_dict=weights)
    ckpt = dict(original)
    op.apply_meta(ckpt, ("state_dict",))
    assert metadata(ckpt) != metadata(lightning_checkpoint())
    assert not op.is_lossy()
    inverse = op.inverse()
    assert inverse is not None
    inverse.apply_meta(ckpt, ("state_dict",))
    assert metadata(ckpt) == metadata(lightning_checkpoint())
    assert ckpt["state_dict"] is weights


NAMES = st.sampled_from(["hyper_parameters", "loops", "config", "lr", "hidden", "data", "x.y"])
TREES = st.recursive(
    st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2)),
    lambda children: st.dictionaries(NAMES, children, min_size=1, max_size=3),
    max_leaves=8,
)


def paths_in(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Return every path to a value of a nested dict."""
    found = []
    for key, value in tree.items() if isinstance(tree, dict) else ():
        found.append((*prefix, key))
        found += paths_in(value, (*prefix, key))
    return found


@settings(max_examples=150, deadline=None)
@given(tree=st.dictionaries(NAMES, TREES, min_size=1, max_size=3), data=st.data())
def test_meta_op_then_its_inverse_is_identity_on_any_metadata(tree, data):
    """On any nested metadata, a lossless MoveMeta, SetMeta or DropMeta then its inverse restores the checkpoint."""
    ckpt = {"state_dict": {"w": t(1)}, **tree}
    original = {k: v for k, v in ckpt.items() if k != "state_dict"}
    path = data.draw(st.sampled_from(paths_in(tree)))
    parents = [p for p in [(), *paths_in(tree)] if isinstance(lookup(tree, p), dict)]
    parent = data.draw(st.sampled_from(parents))
    fresh = (*parent, "fresh_key")
    kind = data.draw(st.sampled_from(["move", "set-new", "set-old", "drop"]))
    op = {
        "move": MoveMeta(list(path), list(fresh)),  # type: ignore[arg-type]
        "set-new": SetMeta(list(fresh), data.draw(TREES)),  # type: ignore[arg-type]
        "set-old": SetMeta(list(path), "changed", old=lookup(tree, path)),  # type: ignore[arg-type]
        "drop": DropMeta(list(path), value=lookup(tree, path)),  # type: ignore[arg-type]
    }[kind]
    if kind == "move" and fresh[: len(path)] == path:
        return  # moving an entry into itself is refused (and tested above)
    op.apply_meta(ckpt, ("state_dict",))
    inverse = op.inverse()
    assert inverse is not None
    inverse.apply_meta(ckpt, ("state_dict",))
    assert metadata(ckpt) == original


def lookup(tree: Any, path: tuple[str, ...]) -> Any:
    """Return the value at ``path`` of a nested dict."""
    for key in path:
        tree = tree[key]
    return tree


def test_lossy_meta_ops_have_no_inverse():
    """DropMeta without a value and SetMeta(replace=True) are lossy and cannot be undone."""
    for op in (DropMeta("a"), SetMeta("a", 1, replace=True)):  # type: ignore[arg-type]
        assert op.is_lossy()
        assert op.inverse() is None


def test_a_reversible_step_with_meta_ops_runs_there_and_back(tmp_path):
    """The runner gives metadata ops the whole checkpoint; a reversible step restores weights and metadata."""
    ops = (
        Rename("w", "weight"),
        MoveMeta("hyper_parameters.hidden", "hyper_parameters.hidden_dim"),  # type: ignore[arg-type]
        SetMeta("hyper_parameters.version", "1.1.0"),  # type: ignore[arg-type]
    )
    converter = Converter(
        source=ckpt_path.parse_version("1.0"),
        target=ckpt_path.parse_version("1.1"),
        name="meta",
        code=OpsCode(ops),
        reversible=True,
    )
    registry = Registry([converter], directory=tmp_path)
    forward = run(registry.plan("1.0", "1.1"), lightning_checkpoint())
    assert forward.checkpoint["hyper_parameters"]["hidden_dim"] == 4
    assert forward.checkpoint["hyper_parameters"]["version"] == "1.1.0"
    back = run(registry.plan("1.1", "1.0"), forward.checkpoint)
    result = {k: v for k, v in back.checkpoint.items() if k != STAMP_KEY}
    expected = lightning_checkpoint()
    assert result["hyper_parameters"] == expected["hyper_parameters"]
    assert result["loops"] == expected["loops"]
    assert_bitwise_equal(result["state_dict"], expected["state_dict"])


# Effects in the user's terms.


def test_effects_say_what_each_op_did():
    """describe_ops says 'renamed 128: a → b', 'stacked 8 into ...', 'moved index 3 → 1 ...' instead of key lists."""
    sig = signature(
        {f"model.layers.{i}.w": t(2) for i in range(128)}
        | {f"moe.experts.{e}.w1": t(3, 4) for e in range(8)}
        | {"output_map.weight": t(6, 2), "rel.relative_position_index": t(2)}
    )
    ops = [
        Rename("model.layers.{i}.w", "backbone.blocks.{i}.w"),
        Stack("moe.experts.{e}.w1", into="moe.experts.w1"),
        MoveIndex("output_map.weight", dim=0, index=3, to=1),
        DropDerived("{*b}.relative_position_index"),
        Rename("aux.{p}", "x.{p}", optional=True),
        SetMeta("hyper_parameters.version", "2"),  # type: ignore[arg-type]
    ]
    assert describe_ops(ops, sig) == [
        "renamed 128: model.layers.{i}.w → backbone.blocks.{i}.w",
        "stacked 8 into moe.experts.w1 along new dim 0: moe.experts.{e}.w1",
        "moved index 3 → 1 of dim 0 in output_map.weight",
        "dropped derived rel.relative_position_index (the model recomputes it)",
        "renamed nothing: aux.{p} (optional, matched nothing)",
        "set hyper_parameters.version = '2'",
    ]


def test_effects_stop_at_an_op_that_does_not_fit():
    """An op that does not fit the state dict is said to, with its error, and the list ends there."""
    lines = describe_ops([Rename("nope.{p}", "x.{p}"), Rename("a", "b")], signature({"a": t(1)}))
    assert lines == ["op 1 Rename does not fit: no key matches 'nope.{p}'"]


# Planning: derived buffers are not lossy, and the lossy-path error names the culprit.


def write_ops(directory, name: str, source: str, target: str, ops: str) -> None:
    """Write an ops converter file ``name.py`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    imports = "from ckpt_path.ops import Cast, Drop, DropDerived, Rename\n"
    (directory / f"{name}.py").write_text(
        f'"""{name}."""\n\n{imports}\nsource = "{source}"\ntarget = "{target}"\nops = {ops}\n', encoding="utf-8"
    )


def test_dropping_derived_buffers_keeps_the_path_lossless(tmp_path):
    """A step that only drops recomputed buffers (and renames) is planned without --allow-lossy."""
    write_ops(tmp_path, "a", "1.0", "2.0", '[DropDerived("{*b}.attn_mask"), Rename("head.{p}", "head.fc.{p}")]')
    plan = Registry.from_directory(tmp_path).plan("1.0", "2.0")
    assert not plan.lossy


def test_lossy_path_error_names_the_op_that_made_it_lossy(tmp_path):
    """Every path lossy: the error names the lossy op and its file, and keeps lossy_steps as before."""
    write_ops(tmp_path, "a", "1.0", "2.0", '[Rename("x.{p}", "y.{p}"), Drop("head.*")]')
    write_ops(tmp_path, "b", "2.0", "3.0", '[Cast("*", "float16", source_dtype="float32")]')
    with pytest.raises(LossyPathError) as caught:
        Registry.from_directory(tmp_path).plan("1.0", "3.0")
    error = caught.value
    assert error.lossy_steps == (("1.0", "2.0"), ("2.0", "3.0"))
    assert error.culprits is not None
    assert "Drop(pattern='head.*')" in error.culprits[0]
    assert "a.py" in error.culprits[0]
    assert "Cast(pattern='*', dtype='float16', source_dtype='float32')" in str(error)
    assert "Rename" not in str(error)


# Optimizer state follows the new ops.


def test_optimizer_state_follows_a_stack(tmp_path):
    """Adam moments of per-expert weights are stacked exactly as the weights are, under the fused name."""
    weights = {f"experts.{e}.w": torch.randn(2, 3) for e in range(3)}
    moments = {k: torch.randn(2, 3) for k in weights}
    names = sorted(weights)
    ckpt = {
        "state_dict": dict(weights),
        "optimizer_states": [
            {
                "state": {i: {"exp_avg": moments[n], "step": torch.tensor(7.0)} for i, n in enumerate(names)},
                "param_groups": [{"lr": 0.1, "params": list(range(3)), "param_names": names}],
            },
        ],
    }
    converter = Converter(
        source=ckpt_path.parse_version("1.0"),
        target=ckpt_path.parse_version("2.0"),
        name="stack",
        code=OpsCode((Stack("experts.{e}.w", into="experts.w"),)),
    )
    result = run(Registry([converter], directory=tmp_path).plan("1.0", "2.0"), ckpt)
    optimizer = result.checkpoint["optimizer_states"][0]
    assert optimizer["param_groups"][0]["param_names"] == ["experts.w"]
    (entry,) = optimizer["state"].values()
    assert torch.equal(entry["exp_avg"], torch.stack([moments[n] for n in names]))
    assert entry["step"] == 7.0
