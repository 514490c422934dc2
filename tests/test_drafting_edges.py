"""Drafting ops from two schemas (`ckpt-path new --infer`) for the kinds of change the other tests do not draft.

Each case gives the layout before and after; the draft must be the op a person would write,
with the comment that says what to check, and running it on real tensors of the layout
before must give exactly the layout after.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckpt_path.drafting import draft_ops, why_not_reversible
from ckpt_path.ops import Drop, Op, Rename, Reshape, Split, Unsqueeze, Unstack
from ckpt_path.shapes import Schema, TensorSpec, load_schema, signature

GUESSED_ORDER = "the order of the parts is a guess: check it"
GUESSED_SHAPE = "a guess from the shapes alone: check it"


def schema(version: str, shapes: dict[str, tuple[int, ...]]) -> Schema:
    """Return a float32 schema of ``version`` with the given key -> shape."""
    return Schema.from_signature(version, {k: TensorSpec(s, "float32") for k, s in shapes.items()})


@pytest.mark.parametrize(
    ("before", "after", "drafted"),
    [
        pytest.param(
            {"experts": (4, 3, 2), "head": (2,)},
            {**{f"experts.{e}.w": (3, 2) for e in range(4)}, "head": (2,)},
            [(Unstack("experts", into="experts.{e}.w"), "")],
            id="unstack",
        ),
        pytest.param(
            {"attn.qkv": (12, 4)},
            {"attn.q": (4, 4), "attn.k": (4, 4), "attn.v": (4, 4)},
            [(Split("attn.qkv", into=("attn.q", "attn.k", "attn.v")), GUESSED_ORDER)],
            id="split-in-q-k-v-order",
        ),
        pytest.param(
            {"attn.fused": (10, 4)},
            {"attn.beta": (6, 4), "attn.alpha": (4, 4)},
            [(Split("attn.fused", into=("attn.alpha", "attn.beta"), sizes=(4, 6)), GUESSED_ORDER)],
            id="split-uneven-by-name",
        ),
        pytest.param({"w": (3,)}, {"w": (3, 1)}, [(Unsqueeze("w", (1,)), "")], id="unsqueeze"),
        pytest.param(
            {"w": (2, 6)}, {"w": (3, 4)}, [(Reshape("w", (3, 4), source_shape=(2, 6)), GUESSED_SHAPE)], id="reshape"
        ),
    ],
)
def test_draft_is_the_op_a_person_would_write_and_it_runs(before, after, drafted):
    """The draft names the op and what to check, and on real tensors of the layout before it gives the layout after."""
    draft = draft_ops(schema("1.0", before), schema("2.0", after))
    assert list(draft.ops) == drafted
    assert draft.todo == ()
    assert draft.problems == ()
    state_dict = {key: torch.randn(shape) for key, shape in before.items()}
    ops: list[Op] = [op for op, _ in draft.ops]
    for op in ops:
        op.apply(state_dict)
    assert signature(state_dict) == {key: TensorSpec(shape, "float32") for key, shape in after.items()}


def test_draft_reads_named_dimensions_as_one_size_in_both_schemas(tmp_path: Path):
    """Schemas that name a dimension ("hidden") draft the rename as if it had one size in both."""
    for version, key in (("1.0", "enc.w"), ("2.0", "embed.w")):
        body = {"version": version, "tensors": {key: {"shape": ["hidden", 4], "dtype": "float32"}}}
        (tmp_path / f"{version}.json").write_text(json.dumps(body), encoding="utf-8")
    draft = draft_ops(load_schema(tmp_path / "1.0.json"), load_schema(tmp_path / "2.0.json"))
    assert list(draft.ops) == [(Rename("enc.w", "embed.w"), "")]
    assert draft.problems == ()


@pytest.mark.parametrize(
    ("ops", "before", "after", "said"),
    [
        pytest.param([Rename("a", "b")], {"a": (2,)}, {"b": (2,)}, "", id="inverts"),
        pytest.param([Drop("a")], {"a": (2,), "b": (3,)}, {"b": (3,)}, "op 1 (Drop) has no inverse", id="no-inverse"),
        pytest.param(
            [Rename("{*p}.x", "{*p}.y")],
            {"x": (2,), "z.y": (3,)},
            {"y": (2,), "z.y": (3,)},
            "the inverse, predicted on the 2.0 layout, does not give 1.0: z.x: unexpected",
            id="inverse-takes-more",
        ),
        pytest.param(
            [Rename("m.{i}.b", "m.b")],
            {"m.0.b": (2,)},
            {"m.b": (2,)},
            "the inverse, predicted on the 2.0 layout, fails: template 'm.{i}.b' uses {i}",
            id="inverse-fails",
        ),
    ],
)
def test_why_not_reversible_predicts_the_inverse_on_the_target_layout(ops, before, after, said):
    """Ops are reversible when their inverse, predicted on the layout after, gives the one before; else it says why."""
    found = why_not_reversible(ops, schema("1.0", before), schema("2.0", after))
    assert found.startswith(said), found
    assert bool(found) == bool(said), found
