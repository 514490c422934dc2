"""The runner: apply a plan one step at a time and check the state dict after every step.

After each step the runner compares the state dict's signature (shapes and dtypes, never
data) with the one before: keys outside the converter's ``touches`` must come through
unchanged, and where the landing version has a schema the whole state dict must match it.
A step with neither check is reported as unchecked (an error with ``strict``).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.version import Version

from ckpt_path.checkpoint import Stamp, find_state_dict, get_state_dict, read_stamp, write_stamp
from ckpt_path.converters import Converter, file_digest
from ckpt_path.errors import CkptPathError, ShapeMismatchError, StepError
from ckpt_path.ops import Op, OpError
from ckpt_path.planner import Plan, Step
from ckpt_path.shapes import Schema, ShapeDiff, TensorSpec, check_untouched, diff_signatures, signature

__all__ = ["RunResult", "StepReport", "load_converter_code", "run"]

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
    """``touches`` and/or ``schema``; empty when the step could not be checked."""
    seconds: float

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
        }


@dataclass(slots=True, kw_only=True)
class RunResult:
    """The converted checkpoint object and a report per step."""

    checkpoint: Any
    plan: Plan
    steps: list[StepReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


_modules: dict[tuple[str, str], ModuleType] = {}


def load_converter_code(converter: Converter) -> ModuleType:
    """Import a converter file (once per file content) and return its module.

    The file is read once; its digest must still be the one the graph was built from, so a
    file edited between planning and running is refused rather than half-trusted.
    """
    if converter.file is None:
        raise StepError(str(converter.source), str(converter.target), converter.origin, "has no code")
    key = (converter.file, converter.digest)
    if key in _modules:
        return _modules[key]
    path = Path(converter.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StepError(str(converter.source), str(converter.target), converter.file, str(exc)) from None
    if file_digest(data) != converter.digest:
        raise StepError(
            str(converter.source),
            str(converter.target),
            converter.file,
            "the file changed after the graph was read; run the command again",
        )
    module = ModuleType(f"ckpt_path_converter_{path.stem}")
    module.__file__ = str(path)
    directory = str(path.parent.resolve())
    sys.path.insert(0, directory)  # lets a converter import its `_helpers.py` neighbours
    try:
        exec(compile(data, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own converter
    except Exception as exc:
        raise StepError(
            str(converter.source),
            str(converter.target),
            converter.file,
            f"importing the converter failed: {_describe(exc, converter.file)}",
        ) from exc
    finally:
        sys.path.remove(directory)
    _modules[key] = module
    return module


def _describe(exc: BaseException, file: str | None) -> str:
    """``ValueError: message (at converters/x.py:12)``, pointing into the converter file."""
    line = None
    if file is not None:
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename).resolve() == Path(file).resolve():
                line = frame.lineno
    where = f" (at {file}:{line})" if line is not None else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{where}" if message else f"{type(exc).__name__}{where}"


def _code(
    converter: Converter,
    sd_path: tuple[str, ...],
) -> tuple[Callable[[Any], Any], Callable[[Any], Any] | None]:
    """Return the step's convert function and its ``when`` guard."""
    if converter.ops is not None:
        module = load_converter_code(converter) if converter.has_when else None
        when = getattr(module, "when", None)
        return _ops_convert(converter.ops, sd_path), when if callable(when) else None
    if converter.convert is not None:
        return converter.convert, converter.when
    if converter.kind == "moves":  # only pickled globals moved: the checkpoint stays as it is
        module = load_converter_code(converter) if converter.has_when else None
        when = getattr(module, "when", None)
        return _unchanged, when if callable(when) else None
    module = load_converter_code(converter)
    convert = getattr(module, "convert", None)
    if not callable(convert):
        raise StepError(str(converter.source), str(converter.target), converter.origin, "convert is not callable")
    when = getattr(module, "when", None)
    return convert, when if callable(when) else None


def _unchanged(checkpoint: Any) -> Any:  # noqa: ANN401
    return checkpoint


def _ops_convert(ops: Sequence[Op], sd_path: tuple[str, ...]) -> Callable[[Any], Any]:
    """Turn ops into a convert function that checks each op's result against its prediction."""

    def convert(checkpoint: Any) -> Any:  # noqa: ANN401
        state_dict = get_state_dict(checkpoint, sd_path)
        for index, op in enumerate(ops, 1):
            try:
                expected = op.predict(signature(state_dict))
                op.apply(state_dict)
            except OpError as exc:
                raise OpError(f"op {index} {op!r}: {exc}") from None
            got = signature(state_dict)
            if got != expected:
                problems = check_untouched(expected, got, ())
                raise OpError(f"op {index} {op!r} did not do what it predicts: {'; '.join(problems[:5])}")
        return checkpoint

    return convert


def run(  # noqa: PLR0913 - each option is a documented knob of a run
    plan: Plan,
    checkpoint: Any,  # noqa: ANN401 - a checkpoint is whatever torch.load returned
    *,
    state_dict_path: Sequence[str] | None = None,
    schemas: SchemaLookup | None = None,
    strict: bool = False,
    on_step: OnStep | None = None,
) -> RunResult:
    """Apply ``plan`` to a checkpoint object in memory and stamp the result.

    The checkpoint may be modified in place. Raises :class:`StepError` when a converter
    fails or returns something that is not a checkpoint, and :class:`ShapeMismatchError`
    when a step leaves the state dict in a shape it must not have; ``strict`` also makes an
    unchecked step an error.
    """
    sd_path = tuple(state_dict_path) if state_dict_path is not None else find_state_dict(checkpoint)
    stamp = read_stamp(checkpoint, sd_path) or Stamp(version=str(plan.source))
    result = RunResult(checkpoint=checkpoint, plan=plan)
    for index, step in enumerate(plan.steps):
        if on_step is not None:
            on_step(index, len(plan.steps), step)
        checkpoint, report = _run_step(step, checkpoint, sd_path, schemas, strict=strict)
        result.steps.append(report)
        if not report.checked:
            result.warnings.append(
                f"step {step.source} -> {step.target} ({step.converter.origin}) is unchecked: "
                "it declares no touches and version "
                f"{step.target} has no schema",
            )
        stamp = stamp.advanced(
            source=str(step.source),
            target=str(step.target),
            converter=step.name,
            digest=step.converter.digest or None,
        )
    if stamp.version != str(plan.target):
        stamp = Stamp(version=str(plan.target), history=stamp.history)
    result.checkpoint = write_stamp(checkpoint, sd_path, stamp)
    return result


def _run_step(
    step: Step,
    checkpoint: Any,  # noqa: ANN401
    sd_path: tuple[str, ...],
    schemas: SchemaLookup | None,
    *,
    strict: bool,
) -> tuple[Any, StepReport]:
    converter = step.converter
    src, tgt, origin = str(step.source), str(step.target), converter.origin
    started = time.perf_counter()
    before = signature(get_state_dict(checkpoint, sd_path))
    convert, when = _code(converter, sd_path)
    applied = True
    try:
        if when is not None and not when(checkpoint):
            applied = False
        else:
            output = convert(checkpoint)
    except CkptPathError:
        raise
    except OpError as exc:
        raise StepError(src, tgt, origin, str(exc)) from None
    except Exception as exc:
        raise StepError(src, tgt, origin, _describe(exc, converter.file)) from exc
    if applied:
        if output is None:
            raise StepError(src, tgt, origin, "convert returned None; return the checkpoint (mutating it is fine)")
        if not isinstance(output, Mapping):
            raise StepError(src, tgt, origin, f"convert returned a {type(output).__name__}, not a checkpoint dict")
        checkpoint = output
    try:
        state_dict = get_state_dict(checkpoint, sd_path)
    except (KeyError, TypeError, CkptPathError):
        where = ".".join(sd_path) or "the checkpoint"
        raise StepError(src, tgt, origin, f"the state dict at {where} is gone after the step") from None
    checked = _check_step(step, before, signature(state_dict), schemas, strict=strict)
    report = StepReport(
        step=step,
        applied=applied,
        diff=diff_signatures(before, signature(state_dict)),
        checked=tuple(checked),
        seconds=time.perf_counter() - started,
    )
    return checkpoint, report


def _check_step(
    step: Step,
    before: Mapping[str, TensorSpec],
    after: Mapping[str, TensorSpec],
    schemas: SchemaLookup | None,
    *,
    strict: bool,
) -> tuple[str, ...]:
    """Check the state dict after a step; return which checks ran."""
    converter = step.converter
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
        problems += [f"{p} (schema {schema.file or tgt})" for p in schema.check(after)]
    if problems:
        raise ShapeMismatchError(src, tgt, origin, sorted(set(problems)))
    if not checked and strict:
        raise StepError(
            src,
            tgt,
            origin,
            f"unchecked: declare touches in the converter or add schemas/{tgt}.json (--strict)",
        )
    return tuple(checked)
