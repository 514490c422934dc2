"""Optimizer state that follows the parameters through a conversion.

Adam keeps two moments per parameter, in the parameter's own layout, and torch stores them by
position (the index of the parameter in the optimizer), not by name. A step that reorders a
parameter's rows (``MoveIndex``), fuses parameters (``Concat``) or adds one changes what each
position and each row means, so resuming from the converted checkpoint would train on moments
that belong to other rows or other parameters: silently, or with a shape error that names no
parameter. This module makes the state follow the parameters, or refuses.

**Where optimizer state is** (nothing else is guessed): Lightning's ``ckpt["optimizer_states"]``
(a list of ``optimizer.state_dict()``), or one state dict at ``ckpt["optimizer"]`` or
``ckpt["optimizer_state_dict"]`` of a plain torch checkpoint.

**Which parameter each entry belongs to** is known when the state is keyed by parameter names
(as ``torch.distributed.checkpoint``'s ``get_optimizer_state_dict`` gives), when its param
groups carry ``param_names`` (an optimizer built from ``named_parameters()``), or when the
stamp records ``optimizer_parameters`` (the Lightning mixin does when it saves). The names must
all be keys of the state dict, or they are not trusted.

**What a step changed** is told by tensor identity, for ops and ``convert`` functions alike,
without reading data: a key that holds the same tensor object as before (maybe under another
key: a rename) is unchanged; a key gone, new, or holding a new object changed.

Then, per optimizer:

- only renames: index-keyed state stays valid; names (state keys, ``param_names``, the stamp's
  ``optimizer_parameters``) follow the renames;
- parameters changed and the names are known, by ops: the step's ops run once per state field
  (``exp_avg``, ...) on a stand-in state dict holding each parameter's field where the weights
  were (zeros elsewhere, as broadcast views that cost no memory), so the moments move exactly as
  the weights did; per-parameter values of another layout (Adam's ``step``) follow by name, a
  fused parameter taking its first part's; a parameter from ``Add`` starts without state (Adam
  initialises it lazily) at the end of the last param group; a dropped one loses its entry.
  Positions follow the parameters: a parameter made from others takes the place and group of
  its first part, so a model that registers its parameters as the old one did loads the state
  as it is (the Lightning mixin also reorders it by name for one that does not);
- parameters changed by a ``convert`` function, whose effect on values cannot be known, with
  state: refused (:class:`OptimizerStateFollowError`) unless ``drop``, which drops the state of
  those parameters only; unless the function rewrote that optimizer state itself (told by a
  :func:`snapshot` taken before the step), which is then the converter's to keep right;
- parameters changed and the names are not known: refused (:class:`OptimizerStateError`)
  unless ``drop``, which drops that optimizer's per-parameter state and keeps its param groups'
  hyper-parameters.

An optimizer without per-parameter state has nothing to misalign and is left as it is. This
module imports torch only inside the function that moves state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from ckpt_path.errors import DROP_OPTIMIZER_STATE, OptimizerStateError, StepError
from ckpt_path.ops import (
    Add,
    AddInto,
    Cast,
    Concat,
    Drop,
    MoveIndex,
    Op,
    OpError,
    Permute,
    Rename,
    Reshape,
    Slice,
    Split,
    Squeeze,
    Stack,
    Transpose,
    Unslice,
    Unsqueeze,
    Unstack,
)
from ckpt_path.shapes import TensorSpec, signature

if TYPE_CHECKING:  # the checkpoint module imports torch; this one does so only when state moves
    from ckpt_path.checkpoint import Checkpoint
    from ckpt_path.planner import Step

__all__ = [
    "OptimizerStateFollowError",
    "align",
    "follow_step",
    "parameter_names",
    "record_parameters",
    "snapshot",
]

LIST_PLACE = "optimizer_states"
"""Lightning's list of optimizer state dicts."""
SINGLE_PLACES = ("optimizer", "optimizer_state_dict")
"""Where a plain torch checkpoint keeps its one optimizer state dict."""
_STEP = "step"
"""Adam's (and most optimizers') step count: follows by name, never through the ops."""
_SHOWN = 10


class OptimizerStateFollowError(OptimizerStateError):
    """Optimizer state whose owners are known, but which cannot follow what the step did to them.

    A ``convert`` function changed the parameters (what it did to their values is unknown), or
    a parameter's state holds a tensor in another layout than the parameter (a factored second
    moment). ``parameters`` and ``where`` as in :class:`OptimizerStateError`; ``reason`` says why.
    """

    def __init__(  # noqa: PLR0913 - the step, the parameters, where, and why
        self,
        source: str,
        target: str,
        file: str,
        parameters: Sequence[str],
        where: str,
        *,
        reason: str,
    ) -> None:
        self.parameters = tuple(parameters)
        self.where = where
        StepError.__init__(self, source, target, file, reason)


# -- where the state is, and whose it is ------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """One optimizer state dict inside a checkpoint."""

    where: str
    position: int
    """Its index among the checkpoint's optimizers (the stamp's ``optimizer_parameters``)."""
    state_dict: MutableMapping[str, Any]

    @property
    def state(self) -> MutableMapping[Any, Any]:
        state: MutableMapping[Any, Any] = self.state_dict["state"]
        return state

    @property
    def groups(self) -> list[MutableMapping[str, Any]]:
        groups: list[MutableMapping[str, Any]] = self.state_dict["param_groups"]
        return groups

    @property
    def params(self) -> list[Any]:
        """The params entries (indices or names) of every group, in order."""
        return [p for group in self.groups for p in group["params"]]

    @property
    def group_of(self) -> list[int]:
        return [g for g, group in enumerate(self.groups) for _ in group["params"]]

    @property
    def by_name(self) -> bool:
        params = self.params
        return bool(params) and all(isinstance(p, str) for p in params)

    @property
    def has_state(self) -> bool:
        return any(isinstance(entry, Mapping) and entry for entry in self.state.values())


def _is_optimizer_state(value: object) -> TypeGuard[MutableMapping[str, Any]]:
    return (
        isinstance(value, MutableMapping)
        and isinstance(value.get("state"), MutableMapping)
        and isinstance(value.get("param_groups"), list)
        and all(isinstance(g, MutableMapping) and isinstance(g.get("params"), list) for g in value["param_groups"])
    )


def _held(obj: object, state_dict_at: Sequence[str]) -> list[_Held]:
    """Every optimizer state dict of the checkpoint, in the places this module knows."""
    if not state_dict_at or not isinstance(obj, Mapping):
        return []  # a flat state dict holds tensors only
    found: list[_Held] = []
    states = obj.get(LIST_PLACE)
    if isinstance(states, list) and state_dict_at[0] != LIST_PLACE:
        found += [_Held(f"{LIST_PLACE}[{i}]", i, state) for i, state in enumerate(states) if _is_optimizer_state(state)]
    for place in SINGLE_PLACES:
        state = obj.get(place)
        if place != state_dict_at[0] and _is_optimizer_state(state):
            found.append(_Held(place, 0, state))
    return found


def parameter_names(
    optimizer_state: Mapping[str, Any],
    recorded: Sequence[str] | None,
    keys: Iterable[str],
) -> list[str] | None:
    """Return the parameter name behind each entry of an optimizer state dict, or None when unknown.

    The names come from the state itself when it is keyed by name, else from its groups'
    ``param_names``, else from ``recorded`` (the stamp's ``optimizer_parameters`` for this
    optimizer). They are trusted only when they are distinct, one per entry, and each is a key
    of the state dict (``keys``).
    """
    if not _is_optimizer_state(optimizer_state):
        return None
    groups = optimizer_state["param_groups"]
    params = [p for group in groups for p in group["params"]]
    names: list[Any] | None = None
    if params and all(isinstance(p, str) for p in params):
        names = params
    elif params and all(
        isinstance(g.get("param_names"), list) and len(g["param_names"]) == len(g["params"]) for g in groups
    ):
        names = [n for group in groups for n in group["param_names"]]
    elif recorded is not None and len(recorded) == len(params):
        names = list(recorded)
    known = set(keys)
    if names is None or not all(isinstance(n, str) and n in known for n in names) or len(set(names)) != len(names):
        return None
    return names


def record_parameters(
    named_parameters: Iterable[tuple[str, object]],
    optimizers: Sequence[Any],
) -> tuple[tuple[str, ...], ...] | None:
    """Return, per optimizer, the name of the parameter behind each index of its state dict.

    ``optimizer.state_dict()`` numbers the parameters of its groups in order, so the names are
    read group by group. None when an optimizer holds a tensor that is not a named parameter.
    """
    name_of = {id(p): name for name, p in named_parameters}
    recorded = []
    for optimizer in optimizers:
        names = [name_of.get(id(p)) for group in optimizer.param_groups for p in group["params"]]
        if any(n is None for n in names):
            return None
        recorded.append(tuple(n for n in names if n is not None))
    return tuple(recorded)


# -- what a step did ----------------------------------------------------------------------------


def _is_tensor(value: object) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "numel")


@dataclass(slots=True)
class _Diff:
    """What a step did to the state dict, by tensor identity."""

    renamed: dict[str, str] = field(default_factory=dict)
    """Old key -> new key, for tensors that moved to another key unchanged."""
    gone: list[str] = field(default_factory=list)
    """Keys whose tensor is in the state dict no more."""
    fresh: list[str] = field(default_factory=list)
    """Keys holding a tensor that was not in the state dict (new, or replacing the one there)."""

    @property
    def changed(self) -> list[str]:
        return sorted(set(self.gone) | set(self.fresh))


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> _Diff:
    holders: dict[int, list[str]] = {}
    for key, value in before.items():
        if _is_tensor(value):
            holders.setdefault(id(value), []).append(key)
    diff = _Diff()
    for key, value in after.items():
        if not _is_tensor(value) or before.get(key) is value:
            continue
        moved = [
            old for old in holders.get(id(value), ()) if after.get(old) is not before[old] and old not in diff.renamed
        ]
        if moved:
            diff.renamed[moved[0]] = key
        else:
            diff.fresh.append(key)
    kept = {id(v) for v in after.values() if _is_tensor(v)}
    diff.gone = [k for k, v in before.items() if _is_tensor(v) and id(v) not in kept]
    return diff


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a key after an ops step comes from."""

    sources: tuple[str, ...]
    """The keys before the step it was made from, first part first."""
    order: tuple[int, ...] = ()
    """Tie-break among keys made from the same source (the parts of a Split, in order)."""
    added: bool = False
    """Made by Add, from nothing."""


def _trace(ops: Sequence[Op], before: Mapping[str, Any]) -> dict[str, _Origin] | None:
    """Follow each key through the ops by name; None when an op is of a kind not known here."""
    current: dict[str, _Origin] | None = {key: _Origin((key,)) for key in before}
    sig = signature(before)
    for op in ops:
        if current is None:
            break
        try:
            current = _trace_op(op, current, sig)
            sig = op.predict(sig)
        except OpError:
            return None  # the ops did not do what their names say: follow by identity only
    return current


def _merge(current: dict[str, _Origin], parts: Sequence[str], into: str) -> None:
    """Record that ``parts`` became ``into``: its sources are theirs, first part first."""
    merged = [current.pop(p) for p in parts]
    current[into] = _Origin(tuple(s for o in merged for s in o.sources), merged[0].order, merged[0].added)


def _part(current: dict[str, _Origin], key: str, parts: Sequence[str], *, keep: bool = False) -> None:
    """Record that ``key`` was cut into ``parts`` (in order); with ``keep`` the key stays as well."""
    origin = current[key] if keep else current.pop(key)
    for index, part in enumerate(parts, int(keep)):
        current[part] = _Origin(origin.sources, (*origin.order, index), origin.added)


def _trace_op(op: Op, current: dict[str, _Origin], sig: Mapping[str, TensorSpec]) -> dict[str, _Origin] | None:  # noqa: C901, PLR0911, PLR0912 - one branch per kind of op
    names = list(current)
    if op.meta or isinstance(op, MoveIndex | Permute | Transpose | Reshape | Squeeze | Unsqueeze | Cast):
        return current
    if isinstance(op, Rename):
        mapping = op.mapping(names)  # the op's own matching, so names agree
        return {mapping.get(k, k): origin for k, origin in current.items()}
    if isinstance(op, Concat | Stack):
        for parts, into in op.groups(names):
            _merge(current, parts, into)
        return current
    if isinstance(op, Split):
        for key, parts in op.groups(names):
            _part(current, key, parts)
        return current
    if isinstance(op, Unstack):
        for key, parts in op.groups(sig):
            _part(current, key, parts)
        return current
    if isinstance(op, Slice):
        for key, into in op.groups(names):
            _part(current, key, [into], keep=True)
        return current
    if isinstance(op, Unslice | AddInto):
        for key, into in op.groups(names):
            _merge(current, [into, key], into)
        return current
    if isinstance(op, Drop):
        shadow: dict[str, Any] = dict.fromkeys(names)
        op.apply(shadow)  # Drop only deletes keys: the same matching as on the tensors
        return {k: origin for k, origin in current.items() if k in shadow}
    if isinstance(op, Add):
        current[op.key] = _Origin((), (len(current),), added=True)
        return current
    return None


# -- one optimizer ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """What to do to one optimizer state dict: new names (in order, with groups) and entries."""

    held: _Held
    names: list[str] | None
    """The parameter names after the step, in order; None when not known."""
    groups: list[int] | None
    """The param group of each name."""
    entries: dict[str, Any]
    """The state entry of each name after the step (absent: no state)."""
    note: str = ""
    drop_all: bool = False
    """Unknown owners, dropped: clear the state and fit the last group to ``delta``."""
    delta: int = 0


@dataclass(slots=True)
class _Context:
    step: Step
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    diff: _Diff
    trace: dict[str, _Origin] | None
    drop: bool
    refused: list[tuple[str, list[str]]] = field(default_factory=list)
    """(where, parameters) of optimizers whose owners are unknown."""

    def fail(self, parameters: Sequence[str], where: str, reason: str) -> OptimizerStateFollowError:
        step = self.step
        return OptimizerStateFollowError(
            str(step.source), str(step.target), step.origin, parameters, where, reason=reason
        )


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown if len(items) <= _SHOWN else f"{shown} and {len(items) - _SHOWN} more"


def _entries(held: _Held, names: Sequence[str]) -> dict[str, Any]:
    state = held.state
    found = {name: state.get(p) for name, p in zip(names, held.params, strict=True)}
    return {name: entry for name, entry in found.items() if isinstance(entry, Mapping) and entry}


def _unknown(held: _Held, context: _Context) -> _Plan | None:
    """Follow a step whose state owners are unknown: fine for renames, else refuse or drop."""
    diff = context.diff
    if not diff.gone and not diff.fresh:
        return None  # positions are still right: the parameters are the same tensors
    if not held.has_state:
        return None  # nothing to misalign
    if not context.drop:
        context.refused.append((held.where, diff.changed))
        return None
    note = (
        f"dropped the optimizer state in {held.where} (lossy: training resumes with fresh optimizer state; "
        "the checkpoint does not record which state belongs to which parameter)"
    )
    return _Plan(held, None, None, {}, note=note, drop_all=True, delta=len(diff.fresh) - len(diff.gone))


def _by_identity(held: _Held, names: list[str], context: _Context) -> _Plan | None:
    """Follow a convert function (or an op not known here): follow renames, refuse or drop the rest."""
    diff, before, after = context.diff, context.before, context.after
    entries = _entries(held, names)
    new_names: list[str] = []
    groups: list[int] = []
    new_entries: dict[str, Any] = {}
    changed: list[str] = []
    for name, group in zip(names, held.group_of, strict=True):
        new = diff.renamed.get(name)
        if new is None and after.get(name) is not before[name]:
            changed.append(name)  # gone, or a new tensor under its name
            if name not in after:
                continue  # gone: no longer a parameter under that name
            new = name
        elif new is None:
            new = name
        new_names.append(new)
        groups.append(group)
        if name in entries and name not in changed:
            new_entries[new] = entries[name]
    stateful = [n for n in changed if n in entries]
    if stateful and not context.drop:
        raise context.fail(
            stateful,
            held.where,
            f"its convert function changes {_listing(stateful)}, whose optimizer state in {held.where} cannot "
            "follow (what the function did to the values is unknown); write the step as ops, which the state "
            f"follows, or {DROP_OPTIMIZER_STATE} to drop the state of those parameters (lossy: they resume "
            "with fresh optimizer state)",
        )
    note = (
        f"dropped the optimizer state of {_listing(stateful)} in {held.where} (lossy: they resume with fresh "
        "optimizer state; a convert function changed them)"
        if stateful
        else ""
    )
    if new_names == names and not stateful:
        return None
    return _Plan(held, new_names, groups, new_entries, note=note)


@dataclass(slots=True)
class _Owners:
    """One optimizer's state by parameter name, before the step."""

    held: _Held
    names: list[str]
    entries: dict[str, Any]
    position: dict[str, int]


def _by_ops(held: _Held, names: list[str], context: _Context, trace: dict[str, _Origin]) -> _Plan | None:
    """Place each parameter after an ops step, and run the ops on its state as on its weights."""
    owners = _Owners(held, names, _entries(held, names), {name: p for p, name in enumerate(names)})
    group_of = held.group_of
    last = max(len(held.groups) - 1, 0)
    placed: list[tuple[int, float, tuple[int, ...], str]] = []
    for key, origin in trace.items():
        firsts = [s for s in origin.sources if s in owners.position]
        if firsts:
            placed.append((group_of[owners.position[firsts[0]]], owners.position[firsts[0]], origin.order, key))
        elif origin.added:
            placed.append((last, math.inf, origin.order, key))
    placed.sort()
    new_names = [key for *_, key in placed]
    groups = [group for group, *_ in placed]
    new_entries, note = _follow_fields(owners, trace, new_names, context)
    if new_names == names and all(new_entries.get(n) is owners.entries.get(n) for n in names):
        return None
    return _Plan(held, new_names, groups, new_entries, note=note)


def _follow_fields(
    owners: _Owners,
    trace: dict[str, _Origin],
    new_names: list[str],
    context: _Context,
) -> tuple[dict[str, Any], str]:
    """Return the state entry of each parameter after the step, and a note when some was dropped."""
    entries = owners.entries
    new_entries: dict[str, Any] = {}
    moved: dict[str, list[str]] = {}  # field -> parameters whose field goes through the ops
    cannot: list[str] = []
    for key in new_names:
        sources = [s for s in trace[key].sources if s in entries]
        if not sources:
            continue  # no state (a new parameter, or one never stepped)
        if len(trace[key].sources) == 1 and context.after.get(key) is context.before[sources[0]]:
            new_entries[key] = entries[sources[0]]  # the same tensor: its state as it is
            continue
        entry = _entry_after(sources, entries, context.before)
        if entry is None:
            cannot.append(key)
            continue
        new_entries[key] = entry
        for name, value in entry.items():
            if value is _THROUGH_OPS:
                moved.setdefault(name, []).append(key)
    note = _cannot_follow(cannot, owners.held.where, context) if cannot else ""
    for name, keys in moved.items():
        results = _through_ops(name, owners, context)
        for key in keys:
            source = next(s for s in trace[key].sources if name in entries.get(s, {}))
            new_entries[key][name] = _own_dtype(
                results[key], entries[source][name], context.before[source], context.after[key]
            )
    return new_entries, note


def _cannot_follow(cannot: list[str], where: str, context: _Context) -> str:
    """Refuse parameters whose state is in another layout, or drop their state and say so."""
    if not context.drop:
        raise context.fail(
            cannot,
            where,
            f"it changes the layout of {_listing(cannot)}, whose optimizer state in {where} holds tensors "
            "in another layout than the parameter (e.g. a factored second moment), which cannot follow; "
            f"{DROP_OPTIMIZER_STATE} to drop the state of those parameters (lossy: they resume with fresh "
            "optimizer state)",
        )
    return (
        f"dropped the optimizer state of {_listing(cannot)} in {where} (lossy: they resume with fresh "
        "optimizer state; it is not in the parameters' layout)"
    )


_THROUGH_OPS = object()
"""Marks a state field that follows its parameter through the step's ops."""


def _entry_after(
    sources: Sequence[str], entries: Mapping[str, Any], before: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Return the state entry of a parameter made from ``sources``; None when a field cannot follow."""
    entry: dict[str, Any] = {}
    for name in dict.fromkeys(f for s in sources for f in entries[s]):
        having = [s for s in sources if name in entries[s]]
        values = [entries[s][name] for s in having]
        shaped = [
            _is_tensor(v) and tuple(v.shape) == tuple(before[s].shape) for s, v in zip(having, values, strict=True)
        ]
        if name != _STEP and all(shaped):
            entry[name] = _THROUGH_OPS
        elif any(_is_tensor(v) and v.numel() > 1 and not ok for v, ok in zip(values, shaped, strict=True)):
            return None
        else:
            entry[name] = values[0]  # a count or a scalar: the first part's
    return entry


def _through_ops(name: str, owners: _Owners, context: _Context) -> dict[str, Any]:
    """Run the step's ops on a stand-in state dict holding field ``name`` where the weights were.

    The field keeps its own dtype (float32 moments of bfloat16 weights lose no bit through a
    reorder) unless the step casts, or the ops refuse the mix of dtypes: then the stand-in takes
    the weights' dtypes, as the ops were written for them.
    """
    ops = context.step.ops or ()
    if not any(isinstance(op, Cast) for op in ops):
        try:
            return _run_stand_in(name, owners, context, own_dtype=True)
        except OpError:
            pass
    return _run_stand_in(name, owners, context, own_dtype=False)


def _run_stand_in(name: str, owners: _Owners, context: _Context, *, own_dtype: bool) -> dict[str, Any]:
    import torch

    fields = [owners.entries.get(key, {}).get(name) for key in context.before]
    dtypes = {value.dtype for value in fields if _is_tensor(value)}
    filler = next(iter(dtypes)) if own_dtype and len(dtypes) == 1 else None
    stand_in: dict[str, Any] = {}
    for key, tensor in context.before.items():
        if not _is_tensor(tensor):
            stand_in[key] = tensor
            continue
        value = owners.entries.get(key, {}).get(name)
        if _is_tensor(value) and tuple(value.shape) == tuple(tensor.shape):
            dtype = value.dtype if own_dtype else tensor.dtype
            stand_in[key] = value.to(device=tensor.device, dtype=dtype)
        else:  # zeros of the weight's exact shape, as a view that holds no memory
            dtype = filler or tensor.dtype
            stand_in[key] = torch.zeros((), dtype=dtype, device=tensor.device).expand(tensor.shape)
    for op in context.step.ops or ():
        op.apply(stand_in)
    return stand_in


def _own_dtype(value: Any, own: Any, weight_before: Any, weight_after: Any) -> Any:
    """Give a followed field its own dtype back when the step left the weight's dtype as it was."""
    if own.dtype != weight_before.dtype and weight_after.dtype == weight_before.dtype:
        return value.to(own.dtype)
    return value


# -- writing it back ----------------------------------------------------------------------------


def _write(plan: _Plan) -> None:
    held = plan.held
    state = held.state
    if plan.drop_all:
        state.clear()
        _resize_last_group(held, plan.delta)
        return
    assert plan.names is not None  # noqa: S101 - a plan that keeps state knows the names
    assert plan.groups is not None  # noqa: S101
    by_name = held.by_name
    state.clear()
    for index, name in enumerate(plan.names):
        if name in plan.entries:
            state[name if by_name else index] = plan.entries[name]
    for g, group in enumerate(held.groups):
        members = [(i, n) for i, (n, gi) in enumerate(zip(plan.names, plan.groups, strict=True)) if gi == g]
        group["params"] = [n if by_name else i for i, n in members]
        if "param_names" in group:
            group["param_names"] = [n for _, n in members]


def _resize_last_group(held: _Held, delta: int) -> None:
    """After a drop with unknown owners: the parameter count changed by ``delta``, at the end."""
    groups = held.groups
    if not delta or not groups or held.by_name:
        return
    sizes = [len(group["params"]) for group in groups]
    sizes[-1] = max(sizes[-1] + delta, 0)
    start = 0
    for group, size in zip(groups, sizes, strict=True):
        group["params"] = list(range(start, start + size))
        start += size


# -- the entry point ----------------------------------------------------------------------------


def snapshot(checkpoint: Checkpoint) -> dict[str, Any]:
    """Return what each optimizer state dict of ``checkpoint`` holds (the objects), before a step.

    Handed back to :func:`follow_step` as ``optimizer_before``, it tells an optimizer state that
    the step's own code rewrote (a converter that fixes ``optimizer_states`` itself, as it had
    to before this module existed) from one it left as it was. Holds references, copies nothing.
    """
    return {held.where: _contents(held.state_dict) for held in _held(checkpoint.obj, checkpoint.state_dict_at)}


def _contents(optimizer_state: Mapping[str, Any]) -> tuple[Any, ...]:
    state = optimizer_state["state"]
    entries = tuple(
        (key, entry, tuple(entry.items()) if isinstance(entry, Mapping) else ()) for key, entry in state.items()
    )
    groups = tuple((group, tuple(group["params"])) for group in optimizer_state["param_groups"])
    return (state, entries, groups)


def _rewritten(held: _Held, optimizer_before: Mapping[str, Any] | None) -> bool:
    """Whether the step's code changed this optimizer state itself (compared by identity)."""
    if optimizer_before is None:
        return False
    old = optimizer_before.get(held.where)
    return old is None or not _same(old, _contents(held.state_dict))  # None: the step made it


def _same(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    if old[0] is not new[0] or len(old[1]) != len(new[1]) or len(old[2]) != len(new[2]):
        return False
    if any(g is not h or p != q for (g, p), (h, q) in zip(old[2], new[2], strict=True)):
        return False
    for (key, entry, items), (new_key, new_entry, new_items) in zip(old[1], new[1], strict=True):
        if key != new_key or entry is not new_entry or len(items) != len(new_items):
            return False
        if any(f != g or v is not w for (f, v), (g, w) in zip(items, new_items, strict=True)):
            return False
    return True


def follow_step(
    checkpoint: Checkpoint,
    step: Step,
    before: Mapping[str, Any],
    *,
    drop: bool,
    optimizer_before: Mapping[str, Any] | None = None,
) -> str | None:
    """Bring the checkpoint's optimizer state in line with what ``step`` did to the parameters.

    ``before`` maps each state-dict key to its tensor as it was before the step (the same
    objects). ``optimizer_before`` is the :func:`snapshot` taken before the step, when there is
    one: an optimizer state the step's code changed itself is the converter's to keep right and
    is left as the step left it. Returns a note for the user when state was dropped (``drop``),
    else None. Raises :class:`OptimizerStateError` where the state cannot follow and ``drop`` is
    false; nothing is changed then.
    """
    every = _held(checkpoint.obj, checkpoint.state_dict_at)
    held = [one for one in every if not _rewritten(one, optimizer_before)]
    if not held:
        return None
    after = checkpoint.state_dict
    diff = _diff(before, after)
    if not diff.renamed and not diff.gone and not diff.fresh:
        return None
    ops = step.ops
    trace = _trace(ops, before) if ops is not None else None
    if trace is not None and set(trace) != set(after):
        trace = None  # the ops did not do what their names say: follow by identity only
    context = _Context(step, before, after, diff, trace, drop)
    stamp = checkpoint.stamp
    recorded = stamp.optimizer_parameters if stamp is not None else None
    if recorded is not None and len(recorded) != max(h.position for h in every) + 1:
        recorded = None  # recorded for other optimizers than the checkpoint holds: not trusted
    plans = [plan for one in held if (plan := _plan(one, recorded, context)) is not None]
    if context.refused:
        changed = sorted({p for _, params in context.refused for p in params})
        where = ", ".join(w for w, _ in context.refused)
        raise OptimizerStateError(str(step.source), str(step.target), step.origin, changed, where)
    for plan in plans:
        _write(plan)
    if recorded is not None and stamp is not None:
        updated = list(recorded)
        for plan in plans:
            if plan.names is not None:
                updated[plan.held.position] = tuple(plan.names)
        checkpoint.stamp = dataclasses.replace(stamp, optimizer_parameters=tuple(updated))
    return "; ".join(plan.note for plan in plans if plan.note) or None


def _plan(held: _Held, recorded: Sequence[Sequence[str]] | None, context: _Context) -> _Plan | None:
    names = parameter_names(held.state_dict, recorded[held.position] if recorded else None, context.before)
    if names is None:
        return _unknown(held, context)
    if context.trace is not None:
        return _by_ops(held, names, context, context.trace)
    return _by_identity(held, names, context)


# -- at load time: the live optimizer's order ---------------------------------------------------


def align(optimizer_state: MutableMapping[str, Any], names: Sequence[str] | None, live: Sequence[Sequence[str]]) -> str:
    """Reorder an optimizer state dict, in place, to the parameter order of a live optimizer.

    ``names`` is the parameter name behind each entry of the state (see :func:`parameter_names`),
    None when unknown; ``live`` lists each param group's parameter names in the optimizer that
    will load the state. torch loads state by position, so a model that registers its parameters
    in another order would get each parameter's state on another parameter. The state is matched
    by name; a state without per-parameter entries is only resized to the live groups. Returns a
    warning when some parameter has no state in the checkpoint, or some state no parameter
    (neither is guessed), else ``""``. Nothing changes when the number of groups differs (torch
    then refuses the state with its own message).
    """
    if not _is_optimizer_state(optimizer_state):
        return ""
    held = _Held("", 0, optimizer_state)
    if len(held.groups) != len(live):
        return ""
    flat = [n for group in live for n in group]
    sizes = [len(group) for group in live]
    if names is None:
        if not held.has_state and not held.by_name and [len(g["params"]) for g in held.groups] != sizes:
            held.state.clear()
            start = 0
            for group, size in zip(held.groups, sizes, strict=True):
                group["params"] = list(range(start, start + size))
                start += size
        return ""
    if list(names) == flat and [len(g["params"]) for g in held.groups] == sizes:
        return ""
    entries = _entries(held, names)
    groups = [g for g, group in enumerate(live) for _ in group]
    known, wanted = set(names), set(flat)
    missing = [n for n in flat if n not in known]
    unused = [n for n in names if n not in wanted and n in entries]
    _write(_Plan(held, flat, groups, {n: e for n, e in entries.items() if n in wanted}))
    problems = []
    if missing:
        problems.append(f"{_listing(missing)} have no optimizer state in the checkpoint (they start fresh)")
    if unused:
        problems.append(f"the optimizer state of {_listing(unused)} was not used (no such parameter to optimize)")
    return "; ".join(problems)
