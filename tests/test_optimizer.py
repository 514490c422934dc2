"""Optimizer state follows the parameters through a conversion, or the conversion is refused.

A tiny model (``embed``: Linear 4 -> 8, ``head``: Linear 8 -> 3) trains a few Adam steps; its
checkpoint holds the Adam state by index, with the parameter names recorded in the stamp as the
Lightning mixin records them. Converters are ops (or functions) registered in code.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.nn import functional

from ckpt_path import Converter, Registry
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.converters import OpsCode
from ckpt_path.errors import OptimizerStateError
from ckpt_path.ops import Add, Concat, Drop, MoveIndex, Op, Permute, Rename, Split
from ckpt_path.optimizer import OptimizerStateFollowError, align, follow_step, record_parameters, snapshot
from ckpt_path.pipeline import Upgrade, upgrade
from ckpt_path.stamp import STAMP_KEY, Stamp, write_stamp
from ckpt_path.versions import parse_version

# Ops are built here as converter files write them: lists and dotted paths. ckpt_path.ops types those fields as
# the tuples the constructors normalise them to, so such calls carry `type: ignore[arg-type]` until it
# types the accepted inputs (mypy then reports each ignore as unused).

LR = 1e-2
IN_ORDER = [0, 3, 1, 2]
"""Input feature 3 moved to position 1: the new order of the old columns."""
OUT_ORDER = [2, 0, 1]
"""Output feature 2 moved to position 0."""
MOVE = (MoveIndex("embed.weight", dim=1, index=3, to=1), MoveIndex("head.{p}", dim=0, index=2, to=0))


class Small(nn.Module):
    """Layout A and, with the features reordered in the data, layout B."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map the features to the outputs."""
        out: torch.Tensor = self.head(torch.tanh(self.embed(x)))
        return out


class Attention(nn.Module):
    """Separate q, k and v projections, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)
        self.v = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix q, k and v, then map to the outputs."""
        out: torch.Tensor = self.head(torch.tanh(self.q(x) * self.k(x) + self.v(x)))
        return out


class Fused(nn.Module):
    """The same model with q, k and v fused into ``qkv``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project once, split in three, mix, and map to the outputs."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out: torch.Tensor = self.head(torch.tanh(q * k + v))
        return out


def _batches(seed: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        x = torch.randn(8, 4, generator=generator)
        batches.append((x, torch.stack([x.sum(1), x[:, 0] * x[:, 1], x[:, 3]], dim=1)))
    return batches


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[tuple[torch.Tensor, ...]]) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _trained(model_class: type[nn.Module] = Small, groups: Callable[[Any], Any] | None = None) -> Any:
    torch.manual_seed(0)
    model = model_class()
    optimizer = torch.optim.Adam(groups(model) if groups else model.parameters(), lr=LR)
    _train(model, optimizer, _batches(1, 3))
    return model, optimizer


def _checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, *, record: bool = True) -> dict[str, Any]:
    """Return a Lightning-style checkpoint of ``model``, stamped 1.0.0, names recorded as the mixin does."""
    ckpt = {
        "state_dict": copy.deepcopy(model.state_dict()),
        "optimizer_states": [copy.deepcopy(optimizer.state_dict())],
    }
    names = record_parameters(model.named_parameters(), [optimizer]) if record else None
    stamped: dict[str, Any] = write_stamp(ckpt, ("state_dict",), Stamp(version="1.0.0", optimizer_parameters=names))
    return stamped


def _registry(*steps: Sequence[Op] | Callable[[Any], Any]) -> Registry:
    """Return a registry of the steps 1.0.0 -> 2.0.0 -> 3.0.0 ...: ops, or a convert function."""
    registry = Registry()
    for number, code in enumerate(steps, 1):
        source, target = f"{number}.0.0", f"{number + 1}.0.0"
        if callable(code):
            registry.add(source, target, code, touches=["*"])
        else:
            ops = tuple(code)
            registry.add(
                Converter(
                    source=parse_version(source),
                    target=parse_version(target),
                    name=f"step{number}",
                    code=OpsCode(ops),
                    lossy=any(op.is_lossy() for op in ops),
                )
            )
    return registry


def _convert(ckpt: Any, *steps: Sequence[Op] | Callable[[Any], Any], drop: bool = False) -> Upgrade:
    registry = _registry(*steps)
    return upgrade(
        Checkpoint.from_object(ckpt),
        registry,
        f"{len(steps) + 1}.0.0",
        allow_lossy=True,
        drop_optimizer_state=drop,
    )


def _state(ckpt: Any) -> dict[Any, Any]:
    state: dict[Any, Any] = ckpt["optimizer_states"][0]["state"]
    return state


def _params(ckpt: Any) -> list[list[Any]]:
    return [group["params"] for group in ckpt["optimizer_states"][0]["param_groups"]]


# -- the state follows the ops ------------------------------------------------------------------


def test_move_index_moves_the_moments_exactly_like_the_weights():
    """MoveIndex moves the exp_avg and exp_avg_sq rows and columns bitwise as it moves the weights."""
    ckpt = _checkpoint(*_trained())
    old = copy.deepcopy(_state(ckpt))
    out = _convert(ckpt, MOVE).checkpoint.obj
    state = _state(out)
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[0][moment], old[0][moment][:, IN_ORDER])
        assert torch.equal(state[1][moment], old[1][moment])
        assert torch.equal(state[2][moment], old[2][moment][OUT_ORDER])
        assert torch.equal(state[3][moment], old[3][moment][OUT_ORDER])
    assert torch.equal(out["state_dict"]["head.weight"], ckpt["state_dict"]["head.weight"])  # the same object
    assert all(torch.equal(state[i]["step"], old[i]["step"]) for i in range(4))
    assert _params(out) == [[0, 1, 2, 3]]


def test_permute_moves_the_moments_like_the_weights():
    """A Permute (and its inverse) reshapes the moments as the weight, so the model still loads the state."""
    ckpt = _checkpoint(*_trained())
    old = copy.deepcopy(_state(ckpt))
    out = _convert(ckpt, [Permute("embed.weight", (1, 0))]).checkpoint.obj
    assert torch.equal(_state(out)[0]["exp_avg"], old[0]["exp_avg"].T)


def test_resuming_after_a_move_index_trains_as_the_unconverted_run():
    """Resumed in layout B from a converted checkpoint, Adam gives the weights the true run gives (1e-6)."""
    model, optimizer = _trained()
    ckpt = _checkpoint(model, optimizer)
    later = _batches(2, 5)
    _train(model, optimizer, later)  # the true run: layout A trains on
    truth = _convert({"state_dict": model.state_dict(), STAMP_KEY: {"version": "1.0.0"}}, MOVE).checkpoint.obj

    converted = _convert(ckpt, MOVE).checkpoint.obj
    resumed = Small()
    resumed.load_state_dict(converted["state_dict"])
    adam = torch.optim.Adam(resumed.parameters(), lr=LR)
    adam.load_state_dict(converted["optimizer_states"][0])
    _train(resumed, adam, [(x[:, IN_ORDER], y[:, OUT_ORDER]) for x, y in later])
    worst = max(float((resumed.state_dict()[k] - v).abs().max()) for k, v in truth["state_dict"].items())
    assert worst < 1e-6


def test_concat_fuses_the_moments_and_keeps_positions():
    """Concat fuses the parts' moments in order; the fused parameter takes the first part's place and step."""
    ckpt = _checkpoint(*_trained(Attention))
    old = copy.deepcopy(_state(ckpt))
    ops = [Concat(["q.{p}", "k.{p}", "v.{p}"], into="qkv.{p}")]  # type: ignore[arg-type]
    upgraded = _convert(ckpt, ops)
    out = upgraded.checkpoint.obj
    state = _state(out)
    assert _params(out) == [[0, 1, 2, 3]]  # qkv.weight, qkv.bias, head.weight, head.bias
    for moment in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[0][moment], torch.cat([old[0][moment], old[2][moment], old[4][moment]]))
        assert torch.equal(state[1][moment], torch.cat([old[1][moment], old[3][moment], old[5][moment]]))
        assert torch.equal(state[2][moment], old[6][moment])
    assert torch.equal(state[0]["step"], old[0]["step"])
    assert upgraded.warnings == []


def test_resuming_after_a_concat_trains_as_the_unfused_run():
    """The fused model resumed from the converted checkpoint trains as the unfused one would."""
    model, optimizer = _trained(Attention)
    ckpt = _checkpoint(model, optimizer)
    ops = [Concat(["q.{p}", "k.{p}", "v.{p}"], into="qkv.{p}")]  # type: ignore[arg-type]
    later = _batches(2, 5)
    _train(model, optimizer, later)
    truth = _convert({"state_dict": model.state_dict(), STAMP_KEY: {"version": "1.0.0"}}, ops).checkpoint.obj
    converted = _convert(ckpt, ops).checkpoint.obj
    fused = Fused()
    fused.load_state_dict(converted["state_dict"])
    adam = torch.optim.Adam(fused.parameters(), lr=LR)
    adam.load_state_dict(converted["optimizer_states"][0])
    _train(fused, adam, later)
    worst = max(float((fused.state_dict()[k] - v).abs().max()) for k, v in truth["state_dict"].items())
    assert worst < 1e-6


def test_split_splits_the_moments_in_place():
    """Split gives each part its slice of the moments, at the place of the parameter it came from."""
    ckpt = _checkpoint(*_trained(Fused))
    old = copy.deepcopy(_state(ckpt))
    out = _convert(ckpt, [Split("qkv.weight", into=["q.weight", "k.weight", "v.weight"])]).checkpoint.obj  # type: ignore[arg-type]
    state = _state(out)
    assert _params(out) == [[0, 1, 2, 3, 4, 5]]  # q, k, v weights, qkv.bias, head.weight, head.bias
    for part in range(3):
        assert torch.equal(state[part]["exp_avg"], old[0]["exp_avg"][4 * part : 4 * part + 4])
        assert torch.equal(state[part]["step"], old[0]["step"])
    assert state[3] is old[1] or torch.equal(state[3]["exp_avg"], old[1]["exp_avg"])


def _two_groups(model: Small) -> list[dict[str, Any]]:
    return [
        {"params": list(model.embed.parameters())},
        {"params": list(model.head.parameters()), "lr": LR / 10},
    ]


def test_add_joins_the_last_group_without_state():
    """A parameter from Add gets no state (Adam starts it) and joins the last param group, at its end."""
    ckpt = _checkpoint(*_trained(groups=_two_groups))
    state = dict(_state(ckpt))
    out = _convert(ckpt, [Add("scale", shape=[3], fill=1.0)]).checkpoint.obj  # type: ignore[arg-type]
    assert _params(out) == [[0, 1], [2, 3, 4]]
    assert sorted(_state(out)) == [0, 1, 2, 3]
    assert all(_state(out)[i] is state[i] for i in range(4))
    assert out["optimizer_states"][0]["param_groups"][1]["lr"] == LR / 10


def test_drop_removes_the_parameter_and_its_state():
    """A dropped parameter loses its state entry and its index; later indices shift down."""
    ckpt = _checkpoint(*_trained(groups=_two_groups))
    state = dict(_state(ckpt))
    out = _convert(ckpt, [Drop("embed.bias")]).checkpoint.obj
    assert _params(out) == [[0], [1, 2]]
    assert [_state(out)[i] for i in range(3)] == [state[0], state[2], state[3]]


def test_concat_across_groups_rebuilds_every_index():
    """Fusing parameters of the first group renumbers the second group's indices and state."""
    ckpt = _checkpoint(
        *_trained(
            Attention,
            groups=lambda m: [
                {"params": [*m.q.parameters(), *m.k.parameters()]},
                {"params": [*m.v.parameters(), *m.head.parameters()]},
            ],
        )
    )
    old = copy.deepcopy(_state(ckpt))
    out = _convert(ckpt, [Concat(["q.weight", "k.weight"], into="qk.weight")]).checkpoint.obj  # type: ignore[arg-type]
    assert _params(out) == [[0, 1, 2], [3, 4, 5, 6]]  # qk.weight, q.bias, k.bias | v.*, head.*
    state = _state(out)
    assert torch.equal(state[0]["exp_avg"], torch.cat([old[0]["exp_avg"], old[2]["exp_avg"]]))
    assert torch.equal(state[1]["exp_avg"], old[1]["exp_avg"])
    assert torch.equal(state[2]["exp_avg"], old[3]["exp_avg"])
    assert torch.equal(state[6]["exp_avg"], old[7]["exp_avg"])


def test_follow_step_records_the_new_names_in_the_stamp():
    """The checkpoint's stamp names the parameters after the step (renamed, fused) at their new indices."""
    ckpt = _checkpoint(*_trained(Attention))
    held = Checkpoint.from_object(ckpt)
    before = dict(held.state_dict)
    ops = [Rename("head.{p}", "out.{p}"), Concat(["q.{p}", "k.{p}", "v.{p}"], into="qkv.{p}")]  # type: ignore[arg-type]
    for op in ops:
        op.apply(held.state_dict)
    step = _registry(ops).plan("1.0.0", "2.0.0").steps[0]
    assert follow_step(held, step, before, drop=False) is None
    assert held.stamp is not None
    assert held.stamp.optimizer_parameters == (("qkv.weight", "qkv.bias", "out.weight", "out.bias"),)


def test_the_written_stamp_names_the_parameters_after_the_conversion():
    """The stamp written into the converted checkpoint names the parameters as they are after it."""
    ckpt = _checkpoint(*_trained())
    out = _convert(ckpt, [Rename("embed.{p}", "encoder.{p}")], MOVE[1:]).checkpoint.obj
    assert out[STAMP_KEY]["optimizer_parameters"] == [["encoder.weight", "encoder.bias", "head.weight", "head.bias"]]


# -- where the names come from ------------------------------------------------------------------


def test_state_keyed_by_name_follows_without_recorded_names():
    """FQN-keyed state (get_optimizer_state_dict) follows a MoveIndex and a Rename by its own keys."""
    model, optimizer = _trained()
    ckpt = {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(get_optimizer_state_dict(model, optimizer)),
        STAMP_KEY: {"version": "1.0.0"},
    }
    old = copy.deepcopy(ckpt["optimizer"]["state"])
    out = _convert(ckpt, MOVE, [Rename("embed.{p}", "encoder.{p}")]).checkpoint.obj
    state = out["optimizer"]["state"]
    assert sorted(state) == ["encoder.bias", "encoder.weight", "head.bias", "head.weight"]
    assert out["optimizer"]["param_groups"][0]["params"] == [
        "encoder.weight",
        "encoder.bias",
        "head.weight",
        "head.bias",
    ]
    assert torch.equal(state["encoder.weight"]["exp_avg"], old["embed.weight"]["exp_avg"][:, IN_ORDER])
    assert torch.equal(state["head.bias"]["exp_avg_sq"], old["head.bias"]["exp_avg_sq"][OUT_ORDER])

    class Renamed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 8)
            self.head = nn.Linear(8, 3)

    new = Renamed()
    new.load_state_dict(out["model"])
    adam = torch.optim.Adam(new.parameters(), lr=LR)
    set_optimizer_state_dict(new, adam, out["optimizer"])
    assert torch.equal(adam.state[new.encoder.weight]["exp_avg"], state["encoder.weight"]["exp_avg"])


def test_param_names_in_the_groups_are_used_and_updated():
    """An optimizer built from named_parameters() names its state itself; the names follow a Rename."""
    torch.manual_seed(0)
    model = Small()
    optimizer = torch.optim.Adam(model.named_parameters(), lr=LR)
    _train(model, optimizer, _batches(1, 3))
    ckpt = _checkpoint(model, optimizer, record=False)
    old, entries = copy.deepcopy(_state(ckpt)), dict(_state(ckpt))
    out = _convert(ckpt, [*MOVE, Rename("embed.{p}", "encoder.{p}")]).checkpoint.obj
    group = out["optimizer_states"][0]["param_groups"][0]
    assert group["param_names"] == ["encoder.weight", "encoder.bias", "head.weight", "head.bias"]
    assert group["params"] == [0, 1, 2, 3]
    assert torch.equal(_state(out)[0]["exp_avg"], old[0]["exp_avg"][:, IN_ORDER])
    assert _state(out)[1] is entries[1]  # renamed only: the same state, at the same index


# -- refusals and drops -------------------------------------------------------------------------


def test_unknown_names_and_a_layout_change_refuse():
    """Without names, a step that changes parameters is refused naming them, the place and the flag."""
    ckpt = _checkpoint(*_trained(), record=False)
    state = dict(_state(ckpt))
    with pytest.raises(OptimizerStateError, match="--drop-optimizer-state") as raised:
        _convert(ckpt, MOVE)
    assert raised.value.parameters == ("embed.weight", "head.bias", "head.weight")
    assert raised.value.where == "optimizer_states[0]"
    assert "embed.weight, head.bias, head.weight" in str(raised.value)
    assert "ckpt_path_drop_optimizer_state = True in the Lightning mixin" in str(raised.value)  # its other switch
    assert all(_state(ckpt)[i] is state[i] for i in range(4))  # the optimizer state was not touched


@pytest.mark.parametrize("drop", [False, True])
def test_a_dry_run_refuses_or_drops_as_the_real_run_does(drop):
    """A dry run decides about the optimizer state as the conversion will: refused, or dropped with the same note."""
    ckpt = _checkpoint(*_trained(), record=False)
    registry = _registry(MOVE)
    dry = functools.partial(upgrade, registry=registry, target="2.0.0", dry_run=True, drop_optimizer_state=drop)
    if not drop:
        with pytest.raises(OptimizerStateError, match="--drop-optimizer-state"):
            dry(Checkpoint.from_object(copy.deepcopy(ckpt)))
        return
    predicted = dry(Checkpoint.from_object(copy.deepcopy(ckpt)))
    real = _convert(ckpt, MOVE, drop=True)
    assert predicted.steps[0].optimizer == real.steps[0].optimizer != ""


def test_unknown_names_refuse_only_where_state_could_be_misaligned():
    """Without names, renames and an optimizer that never stepped pass as they are; a reorder does not."""
    ckpt = _checkpoint(*_trained(), record=False)
    groups, state = copy.deepcopy(_params(ckpt)), dict(_state(ckpt))
    renamed = _convert(ckpt, [Rename("embed.{p}", "encoder.{p}")])
    assert renamed.warnings == []
    assert _params(renamed.checkpoint.obj) == groups
    assert all(_state(renamed.checkpoint.obj)[i] is state[i] for i in range(4))
    fresh = Small()
    assert (
        _state(_convert(_checkpoint(fresh, torch.optim.Adam(fresh.parameters()), record=False), MOVE).checkpoint.obj)
        == {}
    )
    with pytest.raises(OptimizerStateError):
        _convert(_checkpoint(*_trained(), record=False), MOVE)


def test_unknown_names_in_a_plain_torch_checkpoint_refuse():
    """The one optimizer state dict of a plain torch checkpoint (ckpt["optimizer"]) is guarded too."""
    model, optimizer = _trained()
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), STAMP_KEY: {"version": "1.0.0"}}
    with pytest.raises(OptimizerStateError, match="the optimizer state in optimizer cannot be matched"):
        _convert(ckpt, MOVE)


def test_drop_with_unknown_names_removes_the_state_and_says_so():
    """--drop-optimizer-state drops the state it cannot match, keeps the hyper-parameters, and warns."""
    ckpt = _checkpoint(*_trained(groups=_two_groups), record=False)
    upgraded = _convert(ckpt, [*MOVE, Add("scale", shape=[3])], drop=True)  # type: ignore[arg-type]
    out = upgraded.checkpoint.obj
    assert _state(out) == {}
    assert _params(out) == [[0, 1], [2, 3, 4]]  # the added parameter counted, in the last group
    assert out["optimizer_states"][0]["param_groups"][1]["lr"] == LR / 10
    assert "dropped the optimizer state in optimizer_states[0] (lossy" in upgraded.steps[0].optimizer
    assert any("dropped the optimizer state" in w for w in upgraded.warnings)


def _scale_head(ckpt: Any) -> Any:
    ckpt["state_dict"]["head.weight"] = ckpt["state_dict"]["head.weight"] * 2
    return ckpt


def test_a_convert_function_that_changes_a_parameter_refuses():
    """Even with names, state cannot follow a convert function's change to a parameter: refused, named."""
    ckpt = _checkpoint(*_trained())
    with pytest.raises(OptimizerStateFollowError, match=r"convert function changes head\.weight") as raised:
        _convert(ckpt, _scale_head)
    assert isinstance(raised.value, OptimizerStateError)
    assert raised.value.parameters == ("head.weight",)
    assert "--drop-optimizer-state" in str(raised.value)
    assert "ckpt_path_drop_optimizer_state = True in the Lightning mixin" in str(raised.value)


def test_drop_after_a_convert_function_drops_only_the_changed_state():
    """With drop, only the changed parameter loses its state; the others keep theirs at their index."""
    ckpt = _checkpoint(*_trained())
    state = dict(_state(ckpt))
    upgraded = _convert(ckpt, _scale_head, drop=True)
    out = upgraded.checkpoint.obj
    assert sorted(_state(out)) == [0, 1, 3]
    assert all(_state(out)[i] is state[i] for i in (0, 1, 3))
    assert "dropped the optimizer state of head.weight" in upgraded.steps[0].optimizer


def test_a_convert_function_that_renames_passes_and_renames_keyed_state():
    """Renames by a convert function keep the tensors, so the state follows them (here: its FQN keys)."""
    model, optimizer = _trained()
    ckpt = {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, optimizer)}
    ckpt[STAMP_KEY] = {"version": "1.0.0"}
    out = _convert(ckpt, _rename_model).checkpoint.obj
    assert sorted(out["optimizer"]["state"]) == ["encoder.bias", "encoder.weight", "head.bias", "head.weight"]


def _rename_model(ckpt: Any) -> Any:
    sd = ckpt["model"]
    for p in ("weight", "bias"):
        sd[f"encoder.{p}"] = sd.pop(f"embed.{p}")
    return ckpt


def _reorder_head_and_its_state(ckpt: Any) -> Any:
    ckpt["state_dict"]["head.weight"] = ckpt["state_dict"]["head.weight"][OUT_ORDER]
    state = ckpt["optimizer_states"][0]["state"]
    state[2] = {**state[2], "exp_avg": state[2]["exp_avg"][OUT_ORDER], "exp_avg_sq": state[2]["exp_avg_sq"][OUT_ORDER]}
    return ckpt


def test_a_convert_function_that_fixes_the_state_itself_is_trusted():
    """A convert function that rewrites the optimizer state itself keeps it as it made it (given the snapshot)."""
    held = Checkpoint.from_object(_checkpoint(*_trained()))
    before, taken = dict(held.state_dict), snapshot(held)
    _reorder_head_and_its_state(held.obj)
    fixed = _state(held.obj)[2]
    step = _registry(_reorder_head_and_its_state).plan("1.0.0", "2.0.0").steps[0]
    assert follow_step(held, step, before, drop=False, optimizer_before=taken) is None
    assert _state(held.obj)[2] is fixed
    with pytest.raises(OptimizerStateFollowError):  # without the snapshot, nothing tells it from a forgotten state
        follow_step(held, step, before, drop=False)


def test_state_in_another_layout_than_its_parameter_refuses():
    """A factored moment (a row vector for a matrix) cannot follow a MoveIndex: refused, or dropped with drop."""
    ckpt = _checkpoint(*_trained())
    _state(ckpt)[2]["exp_avg_sq_row"] = torch.ones(3)
    with pytest.raises(OptimizerStateFollowError, match="another layout than the parameter") as raised:
        _convert(copy.deepcopy(ckpt), MOVE)
    assert raised.value.parameters == ("head.weight",)
    assert "pass --drop-optimizer-state (or set ckpt_path_drop_optimizer_state = True" in str(raised.value)
    upgraded = _convert(ckpt, MOVE, drop=True)
    assert sorted(_state(upgraded.checkpoint.obj)) == [0, 1, 3]


# -- at load time -------------------------------------------------------------------------------


def test_align_reorders_state_to_the_live_optimizer_by_name():
    """align() puts each entry at the index of its parameter in the optimizer that will load it."""
    a, b, c = ({"exp_avg": torch.full((1,), float(i))} for i in range(3))
    state = {"state": {0: a, 1: b, 2: c}, "param_groups": [{"lr": 1.0, "params": [0, 1, 2]}]}
    assert align(state, ["a", "b", "c"], [["c", "a", "b"]]) == ""
    assert state["state"] == {0: c, 1: a, 2: b}
    assert state["param_groups"] == [{"lr": 1.0, "params": [0, 1, 2]}]


def test_align_names_parameters_without_state_and_state_without_parameters():
    """align() never guesses: a new parameter starts fresh, unused state is left out, and both are said."""
    a, b = {"exp_avg": torch.zeros(1)}, {"exp_avg": torch.ones(1)}
    state = {"state": {0: a, 1: b}, "param_groups": [{"params": [0, 1]}]}
    problem = align(state, ["a", "b"], [["b", "new"]])
    assert state["state"] == {0: b}
    assert "new have no optimizer state" in problem
    assert "the optimizer state of a was not used" in problem


def test_the_module_does_not_import_torch():
    """Importing ckpt_path.optimizer (the runner does, when it plans) does not import torch."""
    code = "import sys, ckpt_path.optimizer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
