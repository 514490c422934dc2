"""Optimizer state at its edges: the slicing and unstacking ops, buffers, mixed dtypes, converters that fix the state.

Checkpoints here are built by hand (a few tensors, Adam-like state by index, the parameter names
recorded in the stamp as the Lightning mixin records them), so each test shows exactly which
moment must land where after a step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from ckpt_path import Converter, Registry
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.converters import OpsCode
from ckpt_path.errors import OptimizerStateError
from ckpt_path.ops import AddInto, MoveIndex, Op, Rename, Slice, Unslice, Unstack
from ckpt_path.optimizer import OptimizerStateFollowError, align, parameter_names, record_parameters
from ckpt_path.pipeline import Upgrade, upgrade
from ckpt_path.stamp import STAMP_KEY, Stamp, write_stamp
from ckpt_path.versions import parse_version


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return a reproducible random tensor."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def entry(weight: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Adam's state of one parameter: moments in its layout and a step count."""
    return {
        "exp_avg": randn(*weight.shape, seed=seed),
        "exp_avg_sq": randn(*weight.shape, seed=seed + 1).abs(),
        "step": torch.tensor(5.0),
    }


def adam_checkpoint(
    state_dict: dict[str, Any],
    parameters: Sequence[str],
    *,
    recorded: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Return a Lightning-style checkpoint at 1.0.0 whose one optimizer holds state for each of ``parameters``.

    The stamp records ``parameters`` as the names behind the state, or ``recorded`` when given.
    """
    state = {i: entry(state_dict[name], seed=10 * i) for i, name in enumerate(parameters)}
    ckpt = {
        "state_dict": state_dict,
        "optimizer_states": [{"state": state, "param_groups": [{"lr": 0.1, "params": list(range(len(parameters)))}]}],
    }
    names = (tuple(parameters),) if recorded is None else tuple(tuple(r) for r in recorded)
    stamped: dict[str, Any] = write_stamp(ckpt, ("state_dict",), Stamp(version="1.0.0", optimizer_parameters=names))
    return stamped


def convert(ckpt: dict[str, Any], *steps: Sequence[Op] | Callable[[Any], Any], drop: bool = False) -> Upgrade:
    """Convert ``ckpt`` along steps 1.0.0 -> 2.0.0 -> ...: ops, or a convert function touching any key."""
    registry = Registry()
    for number, code in enumerate(steps, 1):
        source, target = f"{number}.0.0", f"{number + 1}.0.0"
        if callable(code):
            registry.add(source, target, code, touches=["*"])
            continue
        converter = Converter(
            source=parse_version(source),
            target=parse_version(target),
            name=f"step{number}",
            code=OpsCode(tuple(code)),
            lossy=any(op.is_lossy() for op in code),
        )
        registry.add(converter)
    target = f"{len(steps) + 1}.0.0"
    return upgrade(Checkpoint.from_object(ckpt), registry, target, allow_lossy=True, drop_optimizer_state=drop)


def optimizer_of(ckpt: Any) -> dict[str, Any]:
    """Return the one optimizer state dict of a converted checkpoint."""
    found: dict[str, Any] = ckpt["optimizer_states"][0]
    return found


def recorded_names(ckpt: Any) -> list[list[str]]:
    """Return the parameter names the stamp records, per optimizer."""
    names: list[list[str]] = ckpt[STAMP_KEY]["optimizer_parameters"]
    return names


# --- the moments follow each op exactly as the weights do ------------------------------------------


def test_moments_follow_an_unstack_into_one_parameter_per_expert():
    """Unstack gives expert e the moments [e] of the fused tensor, at the fused tensor's place; step is kept."""
    ckpt = adam_checkpoint({"experts": randn(3, 2, 4, seed=1), "head": randn(4, seed=2)}, ["experts", "head"])
    old = optimizer_of(ckpt)["state"]
    fused, head = old[0], old[1]
    out = convert(ckpt, [Unstack("experts", into="experts.{e}")]).checkpoint.obj
    state = optimizer_of(out)["state"]
    assert optimizer_of(out)["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert recorded_names(out) == [["experts.0", "experts.1", "experts.2", "head"]]
    for e in range(3):
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[e][moment], fused[moment][e])
        assert torch.equal(state[e]["step"], fused["step"])
    assert state[3] is head


def test_moments_follow_a_slice_and_its_unslice():
    """Slice moves the moments' first column with the weight's, placed right after it; Unslice puts it back bitwise."""
    ckpt = adam_checkpoint({"pos": randn(1, 5, 2, seed=1), "head": randn(2, seed=2)}, ["pos", "head"])
    pos = {k: v.clone() for k, v in optimizer_of(ckpt)["state"][0].items()}
    sliced = convert(ckpt, [Slice("pos", into="pos_cls", dim=1, start=0, stop=1)]).checkpoint.obj
    state = optimizer_of(sliced)["state"]
    assert recorded_names(sliced) == [["pos", "pos_cls", "head"]]
    assert torch.equal(state[0]["exp_avg"], pos["exp_avg"][:, 1:])
    assert torch.equal(state[1]["exp_avg"], pos["exp_avg"][:, :1])
    assert torch.equal(state[1]["step"], pos["step"])
    back = convert(
        adam_checkpoint({"pos": randn(1, 5, 2, seed=1), "head": randn(2, seed=2)}, ["pos", "head"]),
        [Slice("pos", into="pos_cls", dim=1, start=0, stop=1)],
        [Unslice("pos_cls", into="pos", dim=1, start=0, stop=1)],
    ).checkpoint.obj
    assert recorded_names(back) == [["pos", "head"]]
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizer_of(back)["state"][0][moment], pos[moment])


def test_moments_of_a_piece_added_into_a_parameter_are_added_too():
    """AddInto adds the piece's moments into the target's as it adds the weights; the target keeps its place."""
    ckpt = adam_checkpoint(
        {"cls_pos": randn(1, 4, seed=1), "cls_token": randn(1, 4, seed=2), "head": randn(4, seed=3)},
        ["cls_token", "cls_pos", "head"],
    )
    token, piece, head = (optimizer_of(ckpt)["state"][i] for i in range(3))
    expected = {m: token[m] + piece[m] for m in ("exp_avg", "exp_avg_sq")}
    out = convert(ckpt, [AddInto("cls_pos", into="cls_token")]).checkpoint.obj
    state = optimizer_of(out)["state"]
    assert recorded_names(out) == [["cls_token", "head"]]
    for moment, value in expected.items():
        assert torch.equal(state[0][moment], value)
    assert state[1] is head


def test_moments_of_another_dtype_than_the_weight_are_moved_exactly():
    """float32 moments of a bfloat16 weight keep float32 and every bit through a MoveIndex, which only reorders rows."""
    ckpt = adam_checkpoint({"w": randn(3, 4, seed=1, dtype=torch.bfloat16)}, ["w"])
    moment = randn(3, 4, seed=7)
    optimizer_of(ckpt)["state"][0]["exp_avg"] = moment.clone()
    out = convert(ckpt, [MoveIndex("w", dim=0, index=2, to=0)]).checkpoint.obj
    moved = optimizer_of(out)["state"][0]["exp_avg"]
    assert moved.dtype == torch.float32
    assert torch.equal(moved, moment[[2, 0, 1]])


# --- parameters, buffers and other entries of the state dict -----------------------------------


def test_buffers_and_other_entries_stay_out_of_the_optimizer():
    """A buffer reordered with its weight and a non-tensor entry never become parameters; the weight's moments move."""
    ckpt = adam_checkpoint(
        {"w": randn(3, 2, seed=1), "running_mean": randn(3, seed=2), "note": "written by hand"}, ["w"]
    )
    moment = optimizer_of(ckpt)["state"][0]["exp_avg"].clone()
    ops = [MoveIndex("w", dim=0, index=2, to=0), MoveIndex("running_mean", dim=0, index=2, to=0)]
    out = convert(ckpt, ops).checkpoint.obj
    assert optimizer_of(out)["param_groups"][0]["params"] == [0]
    assert recorded_names(out) == [["w"]]
    assert torch.equal(optimizer_of(out)["state"][0]["exp_avg"], moment[[2, 0, 1]])
    assert out["state_dict"]["note"] == "written by hand"


def test_renaming_only_a_buffer_leaves_the_optimizer_state_as_it_is():
    """A step that renames a buffer and no parameter keeps every state entry (the same objects) and the names."""
    ckpt = adam_checkpoint({"w": randn(2, seed=1), "running_mean": randn(2, seed=2)}, ["w"])
    entry_before = optimizer_of(ckpt)["state"][0]
    upgraded = convert(ckpt, [Rename("running_mean", "stats.mean")])
    out = upgraded.checkpoint.obj
    assert optimizer_of(out)["state"][0] is entry_before
    assert recorded_names(out) == [["w"]]
    assert upgraded.warnings == []


# --- convert functions -----------------------------------------------------------------------------


def _drop_head_bias(ckpt: Any) -> Any:
    del ckpt["state_dict"]["head.bias"]
    return ckpt


def test_a_convert_function_that_drops_a_parameter_with_state_refuses_or_drops_it():
    """A function deleting a parameter with state is refused, naming it; with drop its state goes, the rest shift."""
    names = ["embed", "head.weight", "head.bias"]

    def fresh() -> dict[str, Any]:
        return adam_checkpoint({n: randn(2, seed=i) for i, n in enumerate(names)}, names)

    with pytest.raises(OptimizerStateFollowError, match=r"changes head\.bias") as raised:
        convert(fresh(), _drop_head_bias)
    assert raised.value.parameters == ("head.bias",)
    ckpt = fresh()
    kept = [optimizer_of(ckpt)["state"][i] for i in (0, 1)]
    upgraded = convert(ckpt, _drop_head_bias, drop=True)
    out = upgraded.checkpoint.obj
    assert optimizer_of(out)["param_groups"][0]["params"] == [0, 1]
    assert [optimizer_of(out)["state"][i] for i in (0, 1)] == kept
    assert sorted(optimizer_of(out)["state"]) == [0, 1]
    assert "dropped the optimizer state of head.bias" in upgraded.steps[0].optimizer


def _add_a_buffer(ckpt: Any) -> Any:
    ckpt["state_dict"]["running_mean"] = torch.zeros(2)
    return ckpt


def test_a_convert_function_that_adds_a_buffer_keeps_the_optimizer_state():
    """A function that only adds a key that is no parameter leaves every state entry and name as it was."""
    ckpt = adam_checkpoint({"w": randn(2, seed=1)}, ["w"])
    entry_before = optimizer_of(ckpt)["state"][0]
    upgraded = convert(ckpt, _add_a_buffer)
    assert optimizer_of(upgraded.checkpoint.obj)["state"][0] is entry_before
    assert upgraded.steps[0].optimizer == ""
    assert upgraded.warnings == []


def _scale_w(ckpt: Any) -> Any:
    ckpt["state_dict"]["w"] = ckpt["state_dict"]["w"] * 2
    return ckpt


def _replace_the_state(ckpt: Any) -> Any:
    _scale_w(ckpt)
    optimizer = ckpt["optimizer_states"][0]
    optimizer["state"] = {0: {**optimizer["state"][0], "exp_avg": optimizer["state"][0]["exp_avg"] * 2}}
    return ckpt


def _replace_a_group(ckpt: Any) -> Any:
    _scale_w(ckpt)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    groups[0] = {**groups[0], "lr": 0.05}
    return ckpt


def _rewrite_a_field(ckpt: Any) -> Any:
    _scale_w(ckpt)
    state = ckpt["optimizer_states"][0]["state"][0]
    state["exp_avg"] = state["exp_avg"] * 2
    return ckpt


@pytest.mark.parametrize("function", [_replace_the_state, _replace_a_group, _rewrite_a_field])
def test_a_convert_function_that_rewrites_the_optimizer_state_is_trusted(function):
    """A function that changes a parameter and rewrites its optimizer state itself (any part) keeps the state it wrote.

    Without such a rewrite the same change to ``w`` is refused (its state cannot follow).
    """
    with pytest.raises(OptimizerStateFollowError):
        convert(adam_checkpoint({"w": randn(2, seed=1)}, ["w"]), _scale_w)
    ckpt = adam_checkpoint({"w": randn(2, seed=1)}, ["w"])
    expected = function(adam_checkpoint({"w": randn(2, seed=1)}, ["w"]))["optimizer_states"][0]
    upgraded = convert(ckpt, function)
    written = optimizer_of(upgraded.checkpoint.obj)
    assert written["param_groups"] == expected["param_groups"]
    assert torch.equal(written["state"][0]["exp_avg"], expected["state"][0]["exp_avg"])
    assert upgraded.steps[0].optimizer == ""


# --- where the names come from ---------------------------------------------------------------------


def test_names_recorded_for_other_optimizers_are_not_trusted():
    """A stamp naming the parameters of two optimizers, on a checkpoint with one, does not name its state: refused."""
    ckpt = adam_checkpoint({"w": randn(3, seed=1)}, ["w"], recorded=[["w"], ["v"]])
    with pytest.raises(OptimizerStateError, match="--drop-optimizer-state"):
        convert(ckpt, [MoveIndex("w", dim=0, index=2, to=0)])


def test_recorded_names_that_are_not_keys_are_not_trusted():
    """Recorded names that are not keys of the state dict (a stale stamp) do not name the state: with drop it goes."""
    ckpt = adam_checkpoint({"w": randn(3, seed=1)}, ["w"], recorded=[["old_w"]])
    upgraded = convert(ckpt, [MoveIndex("w", dim=0, index=2, to=0)], drop=True)
    assert optimizer_of(upgraded.checkpoint.obj)["state"] == {}
    assert any("dropped the optimizer state in optimizer_states[0]" in w for w in upgraded.warnings)


def test_parameter_names_of_something_that_is_no_optimizer_state_are_unknown():
    """parameter_names() of a dict without state and param_groups is None, whatever is recorded."""
    assert parameter_names({"state": {}}, ["w"], ["w"]) is None
    assert parameter_names({"state": {}, "param_groups": [{"params": [0]}]}, ["w"], ["w"]) == ["w"]


def test_record_parameters_names_nothing_when_an_optimizer_holds_an_unnamed_tensor():
    """A tensor in an optimizer that is no named parameter makes the record None: no name is guessed."""
    model = torch.nn.Linear(2, 1)
    temperature = torch.nn.Parameter(torch.ones(1))
    named = torch.optim.SGD(model.parameters(), lr=0.1)
    assert record_parameters(model.named_parameters(), [named]) == (("weight", "bias"),)
    mixed = torch.optim.SGD([*model.parameters(), temperature], lr=0.1)
    assert record_parameters(model.named_parameters(), [named, mixed]) is None


# --- align: the live optimizer's order --------------------------------------------------------------


def test_align_leaves_what_it_cannot_match():
    """align() changes nothing and says nothing for a non-optimizer dict or another number of param groups."""
    assert align({"state": {}}, ["w"], [["w"]]) == ""
    state = {"state": {0: {"exp_avg": torch.zeros(1)}}, "param_groups": [{"params": [0]}]}
    assert align(state, ["w"], [["w"], ["v"]]) == ""
    assert state["param_groups"] == [{"params": [0]}]


def test_align_resizes_a_state_without_entries_to_the_live_groups():
    """A state that never stepped (no entries) and whose owners are unknown is renumbered to the live group sizes."""
    state: dict[str, Any] = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}, {"lr": 0.2, "params": [2]}]}
    assert align(state, None, [["a"], ["b", "c", "d"]]) == ""
    assert state["param_groups"] == [{"lr": 0.1, "params": [0]}, {"lr": 0.2, "params": [1, 2, 3]}]
    assert state["state"] == {}
