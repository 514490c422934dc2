"""The ops at their edges: arguments that do not fit, negative dims, sizes read from other keys, empty matches.

Each op is checked for what a user sees: ``apply`` gives the tensors a hand-written torch
expression gives (bitwise), ``predict`` gives the shapes ``apply`` gives, the inverse restores
the input bitwise, an argument that does not fit is an :class:`OpError` naming the op and the
key or size at fault, and ``describe_ops`` (what ``ckpt-path plan`` prints) says what it did.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from ckpt_fixtures import assert_bitwise_equal, clone, t
from ckpt_path.ops import (
    UNSET,
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
from ckpt_path.shapes import signature

# Ops are built here as converter files write them: lists and dotted paths. ckpt_path.ops types those fields as
# the tuples the constructors normalise them to, so such calls carry `type: ignore[arg-type]`.


def check(op: Op, state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Apply ``op``: the result is ``expected`` bitwise, its shapes are the predicted ones, the inverse undoes it."""
    original = clone(state_dict)
    predicted = op.predict(signature(state_dict))
    op.apply(state_dict)
    assert_bitwise_equal(state_dict, expected)
    assert predicted == signature(state_dict)
    undo = invert([op])
    assert undo is not None, f"{op!r} has no inverse"
    for inverse in undo:
        inverse.apply(state_dict)
    assert_bitwise_equal(state_dict, original)


def refuses(op: Op, state_dict: dict[str, torch.Tensor], message: str) -> None:
    """Assert ``op`` refuses ``state_dict`` in predict and in apply with ``message`` (a regex), changing nothing."""
    before = clone(state_dict)
    with pytest.raises(OpError, match=message):
        op.predict(signature(state_dict))
    with pytest.raises(OpError, match=message):
        op.apply(state_dict)
    assert_bitwise_equal(state_dict, before)


# --- arguments wrong whatever the state dict: refused when the op is made ------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            lambda: Slice("w", into="x", dim=0, start=1.5),  # type: ignore[arg-type]
            r"Slice: start must be a whole number, got 1\.5",
            id="Slice-float-start",
        ),
        pytest.param(
            lambda: Slice("w", into="x", dim=0, start=True),
            "Slice: start must be a whole number, got True",
            id="Slice-bool-start",
        ),
        pytest.param(
            lambda: Unslice("x", into="w", dim=0, start=0, stop="2"),  # type: ignore[arg-type]
            "Unslice: stop must be a whole number or None, got '2'",
            id="Unslice-text-stop",
        ),
        pytest.param(
            lambda: Split("w", into=["a", "b"], sizes=[True, 1]),  # type: ignore[arg-type]
            "Split: True is not a size",
            id="Split-bool-size",
        ),
        pytest.param(
            lambda: Split("w", into=["a", "b"], sizes=[-2, 3]),  # type: ignore[arg-type]
            "Split: sizes must be >= 0, or -1 to infer, got -2",
            id="Split-negative-size",
        ),
        pytest.param(
            lambda: Split("w", into=["a", "b"], sizes=[1.5, 1]),  # type: ignore[arg-type]
            r"Split: 1\.5 is not a size \(a number, or 'key\[dim\]'\)",
            id="Split-float-size",
        ),
        pytest.param(
            lambda: Reshape("w", [6], source_shape=[2, True]),  # type: ignore[arg-type]
            "Reshape w: True is not a size",
            id="Reshape-bool-source-size",
        ),
        pytest.param(
            lambda: Concat(["a", "a"], into="b"),  # type: ignore[arg-type]
            r"Concat names a key twice: \['a', 'a'\]",
            id="Concat-twice",
        ),
        pytest.param(
            lambda: Add("x", shape=[2], optional=True),  # type: ignore[arg-type]
            r"Add x: optional does not apply \(Add matches no key\)",
            id="Add-optional",
        ),
        pytest.param(
            lambda: Rename(["a.w"], "b.w"),  # type: ignore[arg-type]
            r"Rename: a key template must be a string, got \['a\.w'\]",
            id="Rename-list-key",
        ),
        pytest.param(
            lambda: Stack("e.{e}.w", into="{x}.w"),
            r"Stack: '\{x\}\.w' uses \{x\}, which 'e\.\{e\}\.w' does not bind",
            id="Stack-unbound-target-name",
        ),
        pytest.param(
            lambda: SetMeta(3, 1),  # type: ignore[arg-type]
            "SetMeta: a path is a dotted string or a list of keys, got 3",
            id="SetMeta-number-path",
        ),
        pytest.param(
            lambda: DropMeta(["callbacks", 1]),  # type: ignore[arg-type]
            r"DropMeta: a path is a dotted string or a list of keys, got \['callbacks', 1\]",
            id="DropMeta-list-with-a-number",
        ),
    ],
)
def test_bad_argument_is_refused_when_the_op_is_made(make, message):
    """An argument no state dict could fit is an OpError naming the op and the value, before anything runs."""
    with pytest.raises(OpError, match=message):
        make()


# --- Slice, Unslice, AddInto -------------------------------------------------------------------


def test_slice_with_a_negative_dim_and_start_moves_the_tail():
    """Slice(dim=-1, start=-2) moves the last two columns out and keeps the rest; Unslice puts them back."""
    w = t(2, 5)
    check(
        Slice("w", into="tail", dim=-1, start=-2),
        {"w": w.clone()},
        {"w": w[:, :3], "tail": w[:, 3:]},
    )


def test_slice_refuses_to_overwrite_its_target():
    """Slicing into a key that exists is an OpError naming both keys, never an overwrite."""
    refuses(
        Slice("pos", into="cls", dim=0, start=0, stop=1),
        {"pos": t(3, 2), "cls": t(1, 2)},
        "Slice pos into cls, which already exists",
    )


def test_unslice_puts_a_piece_back_at_its_position():
    """Unslice([1:3] of dim 0) inserts the piece between row 0 and the rest; its inverse Slice takes it out again."""
    whole, piece = t(3, 2), t(2, 2) + 100
    check(
        Unslice("piece", into="whole", dim=0, start=1, stop=3),
        {"whole": whole.clone(), "piece": piece.clone()},
        {"whole": torch.cat([whole[:1], piece, whole[1:]])},
    )


@pytest.mark.parametrize(
    ("state_dict", "message"),
    [
        pytest.param({"piece": t(2, 2)}, "Unslice piece into whole, which is not in the state dict", id="no-target"),
        pytest.param(
            {"piece": t(2, 2, dtype=torch.float16), "whole": t(3, 2)},
            r"Unslice: piece \[2, 2\] float16 does not fit whole \[3, 2\] float32 along dim 0",
            id="other-dtype",
        ),
        pytest.param(
            {"piece": t(2, 3), "whole": t(3, 2)},
            r"Unslice: piece \[2, 3\] float32 does not fit whole \[3, 2\] float32 along dim 0",
            id="other-width",
        ),
        pytest.param(
            {"piece": t(1, 2), "whole": t(3, 2)},
            "Unslice: piece has size 1 along dim 0, the range 2",
            id="piece-shorter-than-the-range",
        ),
    ],
)
def test_unslice_refuses_a_piece_that_does_not_fit(state_dict, message):
    """Unslice names the piece and the target when the target is missing or the piece does not fit the range."""
    refuses(Unslice("piece", into="whole", dim=0, start=1, stop=3), state_dict, message)


def test_add_into_adds_and_removes_the_piece():
    """AddInto leaves into = into + key (broadcast over rows) and drops key; lossy, so no inverse."""
    token, pos = t(1, 4), t(1, 4) * 10
    state_dict = {"cls_token": token.clone(), "cls_pos": pos.clone()}
    op = AddInto("cls_pos", into="cls_token")
    predicted = op.predict(signature(state_dict))
    op.apply(state_dict)
    assert_bitwise_equal(state_dict, {"cls_token": token + pos})
    assert predicted == signature(state_dict)
    assert op.is_lossy()
    assert invert([op]) is None


def test_add_into_with_leading_ones_keeps_the_shape_it_predicts():
    """A piece of shape [1, 3] broadcasts to an into of shape [3]: apply must give the [3] that predict promises.

    The README says AddInto adds ``key`` "broadcast" into ``into``, and the op accepts a piece with
    extra leading dims of size 1; the result must keep into's shape.
    """
    whole, piece = t(3), t(1, 3) + 1
    state_dict = {"w": whole.clone(), "p": piece.clone()}
    op = AddInto("p", into="w")
    predicted = op.predict(signature(state_dict))
    op.apply(state_dict)
    assert predicted == signature(state_dict)
    assert torch.equal(state_dict["w"].reshape(3), whole + piece.reshape(3))


@pytest.mark.parametrize(
    ("state_dict", "message"),
    [
        pytest.param(
            {"p": t(4), "w": t(3)},
            r"AddInto: p \[4\] float32 does not add into w \[3\] float32 \(same dtype, broadcastable\)",
            id="not-broadcastable",
        ),
        pytest.param(
            {"p": t(2, 3), "w": t(3)},
            r"AddInto: p \[2, 3\] float32 does not add into w \[3\] float32",
            id="would-grow-the-target",
        ),
        pytest.param(
            {"p": t(3, dtype=torch.float16), "w": t(3)},
            r"AddInto: p \[3\] float16 does not add into w \[3\] float32",
            id="other-dtype",
        ),
    ],
)
def test_add_into_refuses_a_piece_that_does_not_broadcast(state_dict, message):
    """AddInto names both keys and shapes when the piece would change into's shape or dtype."""
    refuses(AddInto("p", into="w"), state_dict, message)


def test_add_into_refuses_adding_a_key_into_itself():
    """AddInto(x, into=x) is an OpError: the target must be another key."""
    refuses(AddInto("w", into="w"), {"w": t(3)}, "AddInto w into w, which is not another key of the state dict")


# --- sizes: numbers, -1, and another key's size ---------------------------------------------------


def test_split_sizes_from_a_negative_dim_of_another_key():
    """sizes=["o[-1]", -1, -1]: q takes o's last size, k and v share the rest; Concat with the same sizes undoes it."""
    qkv, o = t(8, 2), t(3, 4)
    check(
        Split("qkv", into=["q", "k", "v"], sizes=["o[-1]", -1, -1]),  # type: ignore[arg-type]
        {"qkv": qkv.clone(), "o": o.clone()},
        {"q": qkv[:4], "k": qkv[4:6], "v": qkv[6:], "o": o},
    )


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        pytest.param([1, -1, -1], r"qkv: sizes \[1, -1, -1\] leave 3 of 4, which does not split into 2", id="odd-rest"),
        pytest.param([5, -1, 1], r"qkv: sizes \[5, -1, 1\] leave -2 of 4, which does not split into 1", id="too-big"),
        pytest.param(["o[2]", -1, -1], r"qkv: size 'o\[2\]': o has 2 dimension\(s\)", id="reference-past-the-end"),
        pytest.param(
            ["o[-3]", -1, -1], r"qkv: size 'o\[-3\]': o has 2 dimension\(s\)", id="reference-before-the-start"
        ),
    ],
)
def test_split_sizes_that_do_not_fit_name_the_key_and_the_sizes(sizes, message):
    """-1 parts that cannot share the rest equally, or a dim another key does not have, are OpErrors naming them."""
    op = Split("qkv", into=["q", "k", "v"], sizes=sizes)  # type: ignore[arg-type]
    refuses(op, {"qkv": t(4, 2), "o": t(3, 4)}, message)


def test_reshape_of_an_empty_tensor_keeps_it_empty():
    """Reshape [3, 0] -> [0, 3] (no element to count, no -1 to infer) gives the empty [0, 3]; the inverse goes back."""
    w = torch.zeros(3, 0)
    check(Reshape("w", [0, 3], source_shape=[3, 0]), {"w": w.clone()}, {"w": w.reshape(0, 3)})  # type: ignore[arg-type]


def test_reshape_refuses_a_tensor_of_another_rank_than_source_shape():
    """source_shape [2, 3] does not match a 1-D tensor of 6: an OpError showing both shapes."""
    refuses(Reshape("w", [3, 2], source_shape=[2, 3]), {"w": t(6)}, r"w: expected shape \[2, 3\], got \[6\]")  # type: ignore[arg-type]


def test_reshape_has_no_inverse_when_two_names_cannot_be_read_back():
    """Flattening source_shape [A, B] loses which of A*B was A: the op applies, but there is no inverse."""
    w = t(2, 3)
    state_dict = {"w": w.clone()}
    op = Reshape("w", [-1], source_shape=["A", "B"])  # type: ignore[arg-type]
    predicted = op.predict(signature(state_dict))
    op.apply(state_dict)
    assert_bitwise_equal(state_dict, {"w": w.reshape(6)})
    assert predicted == signature(state_dict)
    assert op.inverse() is None
    assert invert([op]) is None


# --- Squeeze, Unsqueeze, Unstack -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "state_dict", "message"),
    [
        pytest.param(
            Squeeze("w", (0, -2)), {"w": t(1, 3)}, r"w: Squeeze dims \[0, -2\] name a dimension twice", id="Squeeze"
        ),
        pytest.param(
            Unsqueeze("w", (0, -3)), {"w": t(3)}, r"w: Unsqueeze dims \[0, -3\] name a dimension twice", id="Unsqueeze"
        ),
    ],
)
def test_dims_naming_one_dimension_twice_are_refused(op, state_dict, message):
    """A positive and a negative dim that land on the same dimension are an OpError, not one squeeze or two."""
    refuses(op, state_dict, message)


def test_unstack_along_the_last_dim_and_back():
    """Unstack(dim=-1) makes e.i = fused[:, i]; Stack(dim=-1) puts the columns back as they were."""
    fused = t(2, 3)
    check(
        Unstack("fused", into="e.{i}", dim=-1),
        {"fused": fused.clone()},
        {f"e.{i}": fused[:, i] for i in range(3)},
    )


def test_unstack_refuses_a_dim_of_size_zero():
    """Unstacking along a dim of size 0 would make no key at all: an OpError naming the key."""
    refuses(Unstack("fused", into="e.{i}"), {"fused": torch.zeros(0, 3)}, "fused: dim 0 has size 0, nothing to unstack")


def test_unstack_refuses_two_keys_that_would_make_one():
    """Two keys whose bindings fill into= to the same key are an OpError naming both, never an overwrite."""
    refuses(
        Unstack("{a}.{b}.w", into="{a}_{b}.{e}"),
        {"p_q.r.w": t(2, 2), "p.q_r.w": t(2, 2)},
        r"Unstack: p\.q_r\.w and p_q\.r\.w would both make p_q_r\.0",
    )


def test_stack_refuses_to_overwrite_its_target():
    """Stacking into a key that exists (and is not a part) is an OpError naming it."""
    refuses(
        Stack("e.{i}.w", into="e.w"),
        {"e.0.w": t(2), "e.1.w": t(2), "e.w": t(2, 2)},
        r"Stack into e\.w, which already exists",
    )


# --- templates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "keys", "message"),
    [
        pytest.param(
            Rename("l.{i}.w", "l.{i+1}.w"),
            ["l.x.w"],
            r"template 'l\.\{i\+1\}\.w': \{i\} is 'x', not a number, so \{i\+1\} fails",
            id="arithmetic-on-a-word",
        ),
        pytest.param(
            Rename("{*p}.w", "{p}.x"),
            ["w"],
            r"template '\{p\}\.x': \{p\} is empty here \(bound by a \{\*p\}\)",
            id="empty-star-as-a-segment",
        ),
    ],
)
def test_a_binding_the_target_cannot_use_is_an_op_error(op, keys, message):
    """A target template that cannot be filled from a key's binding names the template and the binding."""
    refuses(op, {k: t(1) for k in keys}, message)


# --- optional ops that match nothing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "said"),
    [
        pytest.param(
            Concat(["a.{i}", "b.{i}"], into="c.{i}", optional=True),  # type: ignore[arg-type]
            "concatenated nothing: a.{i}",
            id="Concat",
        ),
        pytest.param(Split("q.{i}", into=["a.{i}", "b.{i}"], optional=True), "split nothing: q.{i}", id="Split"),  # type: ignore[arg-type]
        pytest.param(Stack("e.{i}.w", into="e.w", optional=True), "stacked nothing: e.{i}.w", id="Stack"),
        pytest.param(Unstack("e.w", into="e.{i}.w", optional=True), "unstacked nothing: e.w", id="Unstack"),
        pytest.param(Slice("pos", into="cls", dim=0, start=0, optional=True), "sliced nothing: pos", id="Slice"),
        pytest.param(Unslice("cls", into="pos", dim=0, start=0, optional=True), "put back nothing: cls", id="Unslice"),
        pytest.param(AddInto("cls", into="tok", optional=True), "added nothing: cls", id="AddInto"),
        pytest.param(MoveIndex("head", dim=0, index=0, to=1, optional=True), "moved nothing: head", id="MoveIndex"),
        pytest.param(Transpose("x.{i}", optional=True), "transposed dims 0 and 1 of nothing: x.{i}", id="Transpose"),
        pytest.param(Squeeze("x", (0,), optional=True), "squeezed nothing: x", id="Squeeze"),
        pytest.param(Cast("x*", "float16", optional=True), "cast nothing: x*", id="Cast"),
        pytest.param(Drop("aux.*", optional=True), "dropped nothing: aux.*", id="Drop"),
        pytest.param(DropDerived("{*b}.mask", optional=True), "dropped no derived buffer: {*b}.mask", id="DropDerived"),
    ],
)
def test_optional_op_that_matches_nothing_says_so_and_changes_nothing(op, said):
    """An optional op matching no key leaves the state dict bitwise as it was and `plan` says it matched nothing."""
    state_dict = {"w": t(2, 3)}
    op.apply(state_dict)
    assert_bitwise_equal(state_dict, {"w": t(2, 3)})
    assert op.predict(signature(state_dict)) == signature(state_dict)
    assert describe_ops([op], signature(state_dict)) == [f"{said} (optional, matched nothing)"]


# --- what `plan` says each op does ----------------------------------------------------------------


def layers(*shape: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Two layers' tensors ``l.0.w`` and ``l.1.w`` of ``shape``."""
    return {f"l.{i}.w": t(*shape, dtype=dtype) for i in range(2)}


@pytest.mark.parametrize(
    ("ops", "state_dict", "said"),
    [
        pytest.param(
            [Slice("{a}.pos", into="{a}.cls", dim=1, start=0, stop=1)],
            {"x.pos": t(1, 4), "y.pos": t(1, 4)},
            ["moved [0:1] of dim 1 of {a}.pos to {a}.cls, 2 times"],
            id="Slice-many",
        ),
        pytest.param(
            [Slice("pos", into="cls", dim=1, start=-1)],
            {"pos": t(1, 4)},
            ["moved [-1:] of dim 1 of pos to cls"],
            id="Slice-one",
        ),
        pytest.param(
            [Unslice("cls", into="pos", dim=0, start=0, stop=1)],
            {"cls": t(1, 4), "pos": t(3, 4)},
            ["put cls back into pos as [0:1] of dim 0"],
            id="Unslice-one",
        ),
        pytest.param(
            [Unslice("{a}.cls", into="{a}.pos", dim=0, start=0, stop=1)],
            {"x.cls": t(1, 4), "x.pos": t(3, 4), "y.cls": t(1, 4), "y.pos": t(3, 4)},
            ["put {a}.cls back into {a}.pos as [0:1] of dim 0, 2 times"],
            id="Unslice-many",
        ),
        pytest.param(
            [AddInto("cls_pos", into="cls_token")],
            {"cls_pos": t(1, 4), "cls_token": t(1, 4)},
            ["added cls_pos into cls_token (lossy)"],
            id="AddInto-one",
        ),
        pytest.param(
            [AddInto("{a}.p", into="{a}.w")],
            {"x.p": t(4), "x.w": t(4), "y.p": t(4), "y.w": t(4)},
            ["added {a}.p into {a}.w, 2 times (lossy)"],
            id="AddInto-many",
        ),
        pytest.param(
            [Split("qkv", into=["q", "k", "v"])],  # type: ignore[arg-type]
            {"qkv": t(6, 2)},
            ["split qkv into q, k, v along dim 0"],
            id="Split-one",
        ),
        pytest.param(
            [Split("l.{i}.w", into=["l.{i}.a", "l.{i}.b"], dim=1)],  # type: ignore[arg-type]
            layers(2, 4),
            ["split l.{i}.w into 2 along dim 1, 2 times"],
            id="Split-many",
        ),
        pytest.param(
            [Unstack("e", into="e.{i}")],
            {"e": t(3, 2)},
            ["unstacked e into 3 along dim 0: e.{i}"],
            id="Unstack-one",
        ),
        pytest.param(
            [Unstack("{m}.e", into="{m}.e.{i}", dim=1)],
            {"a.e": t(2, 2), "b.e": t(2, 3)},
            ["unstacked {m}.e into 2-3 along dim 1, 2 times: {m}.e.{i}"],
            id="Unstack-many",
        ),
        pytest.param(
            [Transpose("w")],
            {"w": t(2, 3)},
            ["transposed dims 0 and 1 of w [2, 3] → [3, 2]"],
            id="Transpose-one",
        ),
        pytest.param(
            [Transpose("l.{i}.w", 0, -1)],
            layers(2, 3),
            ["transposed dims 0 and -1 of 2: l.{i}.w"],
            id="Transpose-many",
        ),
        pytest.param(
            [Squeeze("w", (0,)), Unsqueeze("w", (-1,))],
            {"w": t(1, 3)},
            ["squeezed w [1, 3] → [3]", "unsqueezed w [3] → [3, 1]"],
            id="Squeeze-Unsqueeze",
        ),
        pytest.param(
            [Cast("w", "float32", source_dtype="float16")],
            {"w": t(2, dtype=torch.float16)},
            ["cast w from float16 to float32: w"],
            id="Cast-widening",
        ),
        pytest.param(
            [Cast("*", "float32", source_dtype="float16", others="keep")],
            {**layers(2, dtype=torch.float16), "scale": t(1)},
            ["cast 2 from float16 to float32: *, kept 1 of other dtypes"],
            id="Cast-by-dtype",
        ),
        pytest.param(
            [Cast("l.*", "float16")],
            layers(2),
            ["cast 2 to float16: l.* (lossy)"],
            id="Cast-lossy",
        ),
        pytest.param(
            [DropMeta("hyper_parameters.lr"), DropMeta(["callbacks", "EMA{'decay': 0.9}"], value={"n": 1})],  # type: ignore[arg-type]
            {"w": t(1)},
            ["dropped hyper_parameters.lr (lossy)", "dropped ['callbacks', \"EMA{'decay': 0.9}\"] (it held {'n': 1})"],
            id="DropMeta",
        ),
    ],
)
def test_plan_says_what_each_op_does(ops, state_dict, said):
    """describe_ops names the key for one match, the template and a count for several, and marks lossy ops."""
    assert describe_ops(ops, signature(state_dict)) == said


# --- metadata ops --------------------------------------------------------------------------------


def checkpoint() -> dict[str, Any]:
    """Return a checkpoint with weights, hyper-parameters and a list of callback states."""
    return {
        "state_dict": {"w": t(2)},
        "hyper_parameters": {"lr": 0.1, "data": {"path": "x"}},
        "callback_list": [{"best": 1.5}, {"best": 2.5}],
    }


def apply_meta(ops: Sequence[Op], ckpt: dict[str, Any]) -> dict[str, Any]:
    """Apply metadata ops in order to ``ckpt`` (state dict at ``state_dict``) and return all but its state dict."""
    for op in ops:
        op.apply_meta(ckpt, ("state_dict",))
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


def test_meta_path_through_a_list_reads_and_sets_by_index():
    """A number in a path indexes a list: SetMeta(old=...) changes that element; its inverse restores it."""
    op = SetMeta("callback_list.1.best", 3.0, old=2.5)  # type: ignore[arg-type]
    ckpt = checkpoint()
    assert apply_meta([op], ckpt)["callback_list"] == [{"best": 1.5}, {"best": 3.0}]
    inverse = op.inverse()
    assert inverse is not None
    assert apply_meta([inverse], ckpt) == apply_meta([], checkpoint())


@pytest.mark.parametrize(
    ("op", "message"),
    [
        pytest.param(
            SetMeta("callback_list.2.best", 3.0, old=2.5),  # type: ignore[arg-type]
            "SetMeta: callback_list.2.best is absent, not 2.5",
            id="index-past-the-end",
        ),
        pytest.param(
            SetMeta("callback_list.first.best", 3.0, old=2.5),  # type: ignore[arg-type]
            "SetMeta: callback_list.first.best is absent, not 2.5",
            id="word-into-a-list",
        ),
        pytest.param(
            SetMeta("hyper_parameters.lr.warmup", 5),  # type: ignore[arg-type]
            "SetMeta: hyper_parameters.lr is a float, not a dict",
            id="through-a-number",
        ),
        pytest.param(
            DropMeta("hyper_parameters.momentum"),  # type: ignore[arg-type]
            "DropMeta: hyper_parameters.momentum is not in the checkpoint",
            id="DropMeta-absent",
        ),
        pytest.param(
            MoveMeta("hyper_parameters", "hyper_parameters.old"),  # type: ignore[arg-type]
            "MoveMeta: hyper_parameters.old is inside hyper_parameters",
            id="MoveMeta-into-itself",
        ),
        pytest.param(
            DropMeta("callback_list.0"),  # type: ignore[arg-type]
            "DropMeta: callback_list.0 is not a key of a dict of the checkpoint",
            id="DropMeta-list-element",
        ),
        pytest.param(
            MoveMeta("callback_list.0", "hyper_parameters.best"),  # type: ignore[arg-type]
            "MoveMeta: callback_list.0 is not a key of a dict of the checkpoint",
            id="MoveMeta-list-element",
        ),
    ],
)
def test_meta_op_that_does_not_fit_names_the_path_and_changes_nothing(op, message):
    """A metadata op that cannot do what it says is an OpError naming the path, and leaves the checkpoint as it was."""
    ckpt = checkpoint()
    with pytest.raises(OpError, match=message):
        op.apply_meta(ckpt, ("state_dict",))
    assert apply_meta([], ckpt) == apply_meta([], checkpoint())


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(SetMeta("hyper_parameters.momentum", 0.9, old=0.8, optional=True), id="SetMeta-old"),  # type: ignore[arg-type]
        pytest.param(MoveMeta("hyper_parameters.momentum", "hyper_parameters.beta", optional=True), id="MoveMeta"),  # type: ignore[arg-type]
        pytest.param(DropMeta("hyper_parameters.momentum", optional=True), id="DropMeta"),  # type: ignore[arg-type]
    ],
)
def test_optional_meta_op_on_an_absent_path_changes_nothing(op):
    """optional=True lets a metadata op find its path absent (a model variant without it): nothing changes."""
    assert apply_meta([op], checkpoint()) == apply_meta([], checkpoint())
    with pytest.raises(OpError, match="momentum"):
        dataclasses.replace(op, optional=False).apply_meta(checkpoint(), ("state_dict",))


def test_meta_ops_leave_the_state_dict_and_its_shapes_alone():
    """A metadata op predicts the signature it is given and, applied to a state dict, changes no tensor."""
    state_dict = {"w": t(2, 3)}
    for op in (SetMeta("a", 1), MoveMeta("a", "b"), DropMeta("a")):  # type: ignore[arg-type]
        assert op.predict(signature(state_dict)) == signature(state_dict)
        op.apply(state_dict)
        assert_bitwise_equal(state_dict, {"w": t(2, 3)})


def test_unset_survives_pickling_and_copying():
    """An op without old=/value= keeps meaning "not given" after pickling (workers) and copying.

    A copied SetMeta without old= must still refuse to overwrite and still be undone by a
    DropMeta, not read the copy of the marker as an old value to compare with.
    """
    assert repr(UNSET) == "<unset>"
    assert copy.copy(UNSET) is UNSET
    assert copy.deepcopy(UNSET) is UNSET
    op = SetMeta("hyper_parameters.lr", 1.0)  # type: ignore[arg-type]
    unpickled = pickle.loads(pickle.dumps(op))  # noqa: S301 - bytes this test made
    for same in (unpickled, copy.copy(op), copy.deepcopy(op)):
        assert same.old is UNSET
        assert same == op
        assert same.inverse() == DropMeta("hyper_parameters.lr", value=1.0)  # type: ignore[arg-type]
        with pytest.raises(OpError, match=r"already holds 0\.1"):
            same.apply_meta(checkpoint(), ("state_dict",))
    assert pickle.loads(pickle.dumps(DropMeta("a"))).is_lossy()  # type: ignore[arg-type]  # noqa: S301 - bytes this test made


def test_meta_ops_with_unhashable_values_hash_by_what_they_say():
    """SetMeta with a dict value can be hashed (plans and sets hold ops); equal ops hash alike, others differ."""
    a = SetMeta("hyper_parameters.data", {"path": "x"})  # type: ignore[arg-type]
    b = SetMeta("hyper_parameters.data", {"path": "x"})  # type: ignore[arg-type]
    c = DropMeta("hyper_parameters.data", value={"path": "x"})  # type: ignore[arg-type]
    assert hash(a) == hash(b)
    assert len({a, b, c}) == 2
