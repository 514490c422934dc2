"""The runner: apply a plan one step at a time and check the state dict after every step.

After each step the runner compares the state dict's signature (shapes and dtypes, never
data) with the one before. What a step is checked against decides what it is:

- **verified**: the landing version has a schema (``schemas/<version>.json``) and the whole
  state dict matches it;
- **self-consistent** (unverified): only the step's own declarations held, each op's
  predicted shapes (``ops``) and keys outside ``touches`` unchanged (``touches``), which
  cannot see a key the converter forgot (a third expert left behind by an op written for two);
- **unchecked**: neither.

``strict`` refuses every step that is not verified. This module does not import torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

from ckpt_path import optimizer
from ckpt_path._converter_code import describe_exception, load_converter_code
from ckpt_path.checkpoint import Checkpoint, get_state_dict
from ckpt_path.converters import Converter, FileCode, FunctionCode, MovesCode, OpsCode
from ckpt_path.errors import CkptPathError, ShapeMismatchError, StepError, UnverifiedStepError, UsageError
from ckpt_path.ops import Op, OpError, describe_ops
from ckpt_path.planner import Plan, Step
from ckpt_path.shapes import Schema, ShapeDiff, TensorSpec, check_untouched, diff_signatures, signature
from ckpt_path.stamp import Stamp
from ckpt_path.versions import parse_version

__all__ = ["RunResult", "StepReport", "load_converter_code", "predict", "run", "run_plan"]

SchemaLookup = Callable[[Version], Schema | None]
OnStep = Callable[[int, int, Step], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepReport:
    """What one step did, and how it was checked."""

    step: Step
    applied: bool
    """False when the converter's ``when`` guard declined the checkpoint."""
    diff: ShapeDiff
    checked: tuple[str, ...]
    """The checks that ran: ``ops``, ``touches``, ``schema``; empty when none could."""
    verified: bool
    """The state dict after the step matched the landing version's schema."""
    predicted: bool = True
    """False in a dry run or a prediction when the step's effect is known only when it runs."""
    note: str = ""
    """Why a step was not predicted, for people."""
    optimizer: str = ""
    """What happened to the checkpoint's optimizer state, when the step changed it (or dropped it)."""

    @property
    def described(self) -> list[str] | None:
        """What each op of an ops step did, in the user's terms (``renamed 128: a.{i}.w → b.{i}.w``); else None."""
        ops = self.step.ops
        if ops is None or not self.applied or not self.predicted:
            return None
        return describe_ops(ops, self.diff.before)

    @property
    def status(self) -> str:
        """``verified``, ``unverified`` (only its own checks held), ``unchecked`` or ``not predicted``."""
        if not self.predicted:
            return "not predicted"
        if self.verified:
            return "verified"
        return "unverified" if self.checked else "unchecked"

    def to_dict(self) -> dict[str, Any]:
        """Return the report as the contract's ``convert --json`` step object."""
        return {
            "source": str(self.step.source),
            "target": str(self.step.target),
            "converter": self.step.name,
            "file": self.step.file,
            "applied": self.applied,
            "added": list(self.diff.added),
            "removed": list(self.diff.removed),
            "changed": list(self.diff.changed),
            "checked": list(self.checked),
            "verified": self.verified,
            "predicted": self.predicted,
            "status": self.status,
            "note": self.note,
            "optimizer": self.optimizer,
            "ops": self.described,
        }


@dataclass(slots=True, kw_only=True)
class RunResult:
    """The converted checkpoint object and a report per step."""

    checkpoint: Any
    plan: Plan
    steps: list[StepReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _code(
    converter: Converter, state_dict_at: tuple[str, ...]
) -> tuple[Callable[[Any], Any], Callable[[Any], Any] | None]:
    """Return what the step runs and its ``when`` guard: its ops, its function, or its file's code."""
    code = converter.code
    if isinstance(code, FunctionCode):
        return code.convert, code.when
    module = load_converter_code(converter) if code.with_when or isinstance(code, FileCode) else None
    found = getattr(module, "when", None)
    when = found if callable(found) else None
    if isinstance(code, OpsCode):
        return _ops_convert(code.ops, state_dict_at), when
    if isinstance(code, MovesCode):
        return _unchanged, when
    convert = getattr(module, "convert", None)
    if not callable(convert):
        raise StepError(str(converter.source), str(converter.target), converter.origin, "convert is not callable")
    return convert, when


def _unchanged(checkpoint: Any) -> Any:
    return checkpoint


def _ops_convert(ops: Sequence[Op], state_dict_at: tuple[str, ...]) -> Callable[[Any], Any]:
    """Turn ops into a convert function that checks each op's result against its prediction.

    State-dict ops get the state dict; metadata ops (``SetMeta``, ``MoveMeta``, ``DropMeta``)
    get the whole checkpoint object and where its state dict is, which they never touch.
    """

    def convert(checkpoint: Any) -> Any:
        state_dict = get_state_dict(checkpoint, state_dict_at)
        for index, op in enumerate(ops, 1):
            try:
                expected = op.predict(signature(state_dict))
                if op.meta:  # hyper-parameters, loop and callback state: the whole checkpoint
                    op.apply_meta(checkpoint, state_dict_at)
                else:
                    op.apply(state_dict)
            except OpError as exc:
                raise OpError(f"op {index} {op!r}: {exc}") from None
            got = signature(state_dict)
            if got != expected:
                problems = [p.replace(" (not in touches)", "") for p in check_untouched(expected, got, ())]
                raise OpError(f"op {index} {op!r} did not do what it predicts: {'; '.join(problems[:5])}")
        return checkpoint

    return convert


def run_plan(  # noqa: PLR0913 - each option is a documented knob of a run
    checkpoint: Checkpoint,
    plan: Plan,
    *,
    schemas: SchemaLookup | None = None,
    strict: bool = False,
    dry_run: bool = False,
    drop_optimizer_state: bool = False,
    on_step: OnStep | None = None,
) -> tuple[list[StepReport], list[str]]:
    """Apply ``plan`` to ``checkpoint`` in place, step by step, checked; stamp it with the target.

    Returns a report per step and warnings. Raises :class:`StepError` when a converter fails or
    returns something that is not a checkpoint, :class:`ShapeMismatchError` when a step leaves
    the state dict in a shape it must not have, and with ``strict``
    :class:`UnverifiedStepError` for a step no schema verified. With ``dry_run`` (meta tensors)
    a step whose effect is known only when it runs on real data is reported as not predicted,
    and so is every step after it. Optimizer state follows each step's parameters (see
    :mod:`ckpt_path.optimizer`) or the step is refused; ``drop_optimizer_state`` drops it instead.
    """
    stamp = checkpoint.stamp or Stamp(version=str(plan.source))
    reports: list[StepReport] = []
    warnings: list[str] = []
    unknown = ""
    for index, step in enumerate(plan.steps):
        if on_step is not None:
            on_step(index, len(plan.steps), step)
        if unknown:
            reports.append(_not_predicted(step, f"follows step {unknown}, whose effect is not known"))
        else:
            try:
                reports.append(
                    _run_step(step, checkpoint, schemas, strict=strict, dry_run=dry_run, drop=drop_optimizer_state)
                )
            except _Unpredictable as exc:
                reports.append(_not_predicted(step, exc.note))
                unknown = f"{step.source} -> {step.target}"
        report = reports[-1]
        if report.optimizer:
            warnings.append(f"step {step.source} -> {step.target}: {report.optimizer}")
        if report.predicted and not report.checked:
            warnings.append(
                f"step {step.source} -> {step.target} ({step.origin}) is unchecked: it declares no "
                f"touches and version {step.target} has no schema",
            )
        stamp = stamp.advanced(
            source=str(step.source),
            target=str(step.target),
            converter=step.name,
            digest=step.digest or None,
        )
    if stamp.version != str(plan.target):
        stamp = Stamp(version=str(plan.target), history=stamp.history, optimizer_parameters=stamp.optimizer_parameters)
    if checkpoint.stamp is not None:  # optimizer.follow_step keeps the parameter names current there
        stamp = dataclasses.replace(stamp, optimizer_parameters=checkpoint.stamp.optimizer_parameters)
    checkpoint.restamp(stamp)
    return reports, warnings


class _Unpredictable(Exception):  # noqa: N818 - a signal inside the runner, never raised to users
    def __init__(self, note: str) -> None:
        self.note = note
        super().__init__(note)


def _not_predicted(step: Step, note: str) -> StepReport:
    return StepReport(step=step, applied=True, diff=ShapeDiff(), checked=(), verified=False, predicted=False, note=note)


def _run_step(  # noqa: PLR0913 - a step, where it runs, and the run's options
    step: Step,
    checkpoint: Checkpoint,
    schemas: SchemaLookup | None,
    *,
    strict: bool,
    dry_run: bool,
    drop: bool,
) -> StepReport:
    converter = step
    src, tgt, origin = str(step.source), str(step.target), converter.origin
    at = checkpoint.state_dict_at
    tensors = dict(checkpoint.state_dict)  # the objects themselves: what each key held before the step
    before = signature(tensors)
    convert, when = _code(converter, at)
    state_before = optimizer.snapshot(checkpoint)
    applied, output = _call(step, convert, when, checkpoint.obj, dry_run=dry_run)
    if applied:
        if output is None:
            raise StepError(src, tgt, origin, "convert returned None; return the checkpoint (mutating it is fine)")
        if not isinstance(output, Mapping):
            raise StepError(src, tgt, origin, f"convert returned a {type(output).__name__}, not a checkpoint dict")
        checkpoint.obj = output
    try:
        state_dict = checkpoint.state_dict
    except (KeyError, TypeError, CkptPathError):
        where = ".".join(at) or "the checkpoint"
        raise StepError(src, tgt, origin, f"the state dict at {where} is gone after the step") from None
    followed = ""
    if not dry_run:
        _refuse_meta(state_dict, step)
    after = signature(state_dict)
    checked, verified = _check_step(step, before, after, schemas, strict=strict)
    if applied:  # on a dry run too: the optimizer state is meta then, and refused or dropped alike
        followed = optimizer.follow_step(checkpoint, step, tensors, drop=drop, optimizer_before=state_before) or ""
    return StepReport(
        step=step,
        applied=applied,
        diff=diff_signatures(before, after),
        checked=checked,
        verified=verified,
        optimizer=followed,
    )


def _call(
    step: Step,
    convert: Callable[[Any], Any],
    when: Callable[[Any], Any] | None,
    obj: Any,
    *,
    dry_run: bool,
) -> tuple[bool, Any]:
    """Run a step's guard and code; return whether it applied and what it returned."""
    converter = step
    try:
        if when is not None and not when(obj):
            return False, obj
        return True, convert(obj)
    except OpError as exc:
        raise StepError(str(step.source), str(step.target), converter.origin, str(exc)) from None
    except CkptPathError:
        raise
    except (Exception, SystemExit) as exc:
        # A converter that calls sys.exit() fails the step like any other; Ctrl-C still stops.
        said = describe_exception(exc, converter.file)
        if dry_run and (converter.ops is None or when is not None):
            raise _Unpredictable(f"its code needs real tensor data ({said})") from None
        raise StepError(str(step.source), str(step.target), converter.origin, said) from exc


def _refuse_meta(state_dict: Mapping[str, Any], step: Step) -> None:
    """Fail a step that left a tensor without data (meta), before anything is written."""
    empty = sorted(k for k, v in state_dict.items() if getattr(getattr(v, "device", None), "type", None) == "meta")
    if empty:
        raise StepError(
            str(step.source),
            str(step.target),
            step.origin,
            f"it left tensors without data (device meta): {', '.join(empty[:10])}",
        )


def _check_step(
    step: Step,
    before: Mapping[str, TensorSpec],
    after: Mapping[str, TensorSpec],
    schemas: SchemaLookup | None,
    *,
    strict: bool,
) -> tuple[tuple[str, ...], bool]:
    """Check the state dict after a step; return which checks ran and whether a schema verified it."""
    converter = step
    src, tgt, origin = str(step.source), str(step.target), converter.origin
    checked: list[str] = []
    problems: list[str] = []
    if converter.ops is not None:
        checked.append("ops")  # each op's result was compared with its predicted shapes
    if converter.touches is not None:
        checked.append("touches")
        problems += check_untouched(before, after, converter.touches)
    schema = schemas(step.target) if schemas is not None else None
    if schema is not None:
        checked.append("schema")
        problems += schema.check(after)
    if problems:
        where = (schema.file or f"the schema of {tgt}") if schema is not None else None
        raise ShapeMismatchError(src, tgt, origin, _one_per_key(problems), schema=where)
    verified = schema is not None
    if strict and not verified:
        raise UnverifiedStepError(src, tgt, origin, checked)
    return tuple(checked), verified


def _one_per_key(problems: Sequence[str]) -> list[str]:
    """Say each key's problem once: the first found (``touches`` comes first and says why), in key order."""
    by_key: dict[str, str] = {}
    for problem in problems:
        by_key.setdefault(problem.split(": ", 1)[0], problem)
    return [by_key[key] for key in sorted(by_key)]


def run(  # noqa: PLR0913 - each option is a documented knob of a run
    plan: Plan,
    checkpoint: Any,
    *,
    state_dict_key: str | None = None,
    schemas: SchemaLookup | None = None,
    strict: bool = False,
    on_step: OnStep | None = None,
) -> RunResult:
    """Apply ``plan`` to a checkpoint object in memory and stamp the result.

    The object may be modified in place; ``RunResult.checkpoint`` is the converted object. A
    checkpoint stamped with another version than the plan starts at is refused
    (:class:`UsageError`): it would be converted from the wrong layout.
    ``state_dict_key`` (dotted) says where the state dict is when detection cannot tell. See
    :func:`run_plan` for the checks and errors.
    """
    held = Checkpoint.from_object(checkpoint, state_dict_key=state_dict_key)
    if held.stamp is not None and plan.steps:
        stamped = parse_version(held.stamp.version)
        if stamped not in {plan.source, plan.requested_source}:
            raise UsageError(
                f"the checkpoint is stamped {held.stamp.version} but the plan starts at {plan.source}; plan from "
                f"{held.stamp.version}, or override the stamp with ckpt_path.upgrade(..., source=VERSION)",
            )
    reports, warnings = run_plan(held, plan, schemas=schemas, strict=strict, on_step=on_step)
    return RunResult(checkpoint=held.obj, plan=plan, steps=reports, warnings=warnings)


def predict(plan: Plan, sig: Mapping[str, TensorSpec], schemas: SchemaLookup | None = None) -> list[StepReport]:
    """Predict each step's effect on a state dict's shapes without running any converter code.

    Ops are data, so their effect is known from shapes alone; a ``convert`` function (or a
    ``when`` guard) is known only when it runs, so that step is reported as not predicted.
    Later steps are predicted from the landing version's schema when it names exactly one
    layout (the run checks that the step lands on it); otherwise they are not predicted either.
    """
    reports: list[StepReport] = []
    current: dict[str, TensorSpec] | None = dict(sig)
    unknown = ""
    for step in plan.steps:
        converter = step
        if current is None:
            reports.append(_not_predicted(step, f"follows step {unknown}, whose effect is known only when it runs"))
            continue
        if converter.kind == "moves" and not converter.has_when:
            reports.append(StepReport(step=step, applied=True, diff=ShapeDiff(), checked=(), verified=False))
            continue
        if converter.ops is None or converter.has_when:
            what = "a when() guard" if converter.ops is not None else "a convert function"
            schema = schemas(step.target) if schemas is not None else None
            current = schema.signature() if schema is not None else None
            later = f"; later steps are predicted from schema {step.target}" if current is not None else ""
            reports.append(_not_predicted(step, f"{what}: its effect is known only when it runs{later}"))
            unknown = f"{step.source} -> {step.target}"
            continue
        after = dict(current)
        for index, op in enumerate(converter.ops, 1):
            try:
                after = op.predict(after)
            except OpError as exc:
                where = (str(step.source), str(step.target), converter.origin)
                raise StepError(*where, f"op {index} {op!r}: {exc}") from None
        checked: tuple[str, ...] = ("ops",)
        schema = schemas(step.target) if schemas is not None else None
        if schema is not None:  # as the run will check it: a prediction that misses the schema fails here
            problems = schema.check(after)
            if problems:
                file = schema.file or f"the schema of {step.target}"
                raise ShapeMismatchError(
                    str(step.source), str(step.target), converter.origin, _one_per_key(problems), schema=file
                )
            checked = ("ops", "schema")
        diff = diff_signatures(current, after)
        reports.append(StepReport(step=step, applied=True, diff=diff, checked=checked, verified=schema is not None))
        current = after
    return reports
