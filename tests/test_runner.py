"""The runner: steps applied in memory, the shape checks after each, and the stamp they leave."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt_fixtures import lightning
from ckpt_path import Converter, Registry
from ckpt_path.errors import ShapeMismatchError, StepError, UnverifiedStepError
from ckpt_path.runner import RunResult, run
from ckpt_path.shapes import Schema, load_schema, signature
from ckpt_path.stamp import STAMP_KEY, Stamp, read_stamp, write_stamp


def small_state_dict() -> dict[str, torch.Tensor]:
    """Return a tiny state dict: an encoder, a head and a scale."""
    return {
        "encoder.weight": torch.randn(8, 4),
        "encoder.bias": torch.randn(8),
        "head.weight": torch.randn(2, 8),
        "head.bias": torch.randn(2),
    }


def small_ckpt() -> dict[str, Any]:
    """Return a Lightning-style checkpoint of the tiny state dict."""
    return lightning(small_state_dict())


def one_step(
    convert: Callable[[Any], Any],
    *,
    touches: list[str] | None = None,
    when: Callable[[Any], bool] | None = None,
    name: str = "step",
) -> Registry:
    """Return a registry with the single converter 1.0.0 -> 1.1.0."""
    registry = Registry()
    registry.add("1.0.0", "1.1.0", convert, name=name, touches=touches, when=when)
    return registry


def run_registry(registry: Registry, ckpt: Any, target: str = "1.1.0", **options: Any) -> RunResult:
    """Plan from 1.0.0 to ``target`` and run it on ``ckpt`` with the registry's schemas."""
    return run(registry.plan("1.0.0", target), ckpt, schemas=registry.schema, **options)


# --- what each step did -----------------------------------------------------------------------


def _rename(ckpt: Any) -> Any:
    sd = ckpt["state_dict"]
    sd["decoder.weight"] = sd.pop("head.weight")
    sd["decoder.bias"] = sd.pop("head.bias")
    return ckpt


def _widen(ckpt: Any) -> Any:
    sd = ckpt["state_dict"]
    sd["head.weight"] = torch.zeros(3, 8)
    sd["head.bias"] = torch.zeros(3)
    return ckpt


def _to_half(ckpt: Any) -> Any:
    sd = ckpt["state_dict"]
    sd["encoder.weight"] = sd["encoder.weight"].half()
    return ckpt


def _add_scale(ckpt: Any) -> Any:
    ckpt["state_dict"]["scale"] = torch.ones(2)
    return ckpt


def _new_object(ckpt: Any) -> Any:
    sd = dict(ckpt["state_dict"])
    del sd["encoder.bias"]
    return {**ckpt, "state_dict": sd}


def _values_only(ckpt: Any) -> Any:
    ckpt["state_dict"]["head.weight"].mul_(2)
    return ckpt


DIFF_CASES = {
    "rename": (_rename, ["head.*", "decoder.*"], ["decoder.bias", "decoder.weight"], ["head.bias", "head.weight"], []),
    "reshape": (_widen, ["head.*"], [], [], ["head.bias", "head.weight"]),
    "dtype": (_to_half, ["encoder.weight"], [], [], ["encoder.weight"]),
    "add": (_add_scale, ["scale"], ["scale"], [], []),
    "new object": (_new_object, ["encoder.bias"], [], ["encoder.bias"], []),
    "values only": (_values_only, ["head.weight"], [], [], []),
}


@pytest.mark.parametrize(("convert", "touches", "added", "removed", "changed"), DIFF_CASES.values(), ids=DIFF_CASES)
def test_step_diff(convert, touches, added, removed, changed):
    """Each step's report lists the keys it added, removed and reshaped or re-typed, sorted."""
    result = run_registry(one_step(convert, touches=touches), small_ckpt())
    (report,) = result.steps
    assert report.applied
    assert list(report.diff.added) == added
    assert list(report.diff.removed) == removed
    assert list(report.diff.changed) == changed
    assert report.checked == ("touches",)
    assert result.warnings == []
    as_json = report.to_dict()
    assert (as_json["added"], as_json["removed"], as_json["changed"]) == (added, removed, changed)
    assert (as_json["source"], as_json["target"], as_json["converter"]) == ("1.0.0", "1.1.0", "step")


def test_each_step_of_a_chain_has_its_own_diff():
    """In a chain, every report describes only its own step, in plan order."""
    registry = Registry()
    registry.add("1.0.0", "1.1.0", _rename, name="rename", touches=["head.*", "decoder.*"])
    registry.add("1.1.0", "1.2.0", _add_scale, name="scale", touches=["scale"])
    result = run_registry(registry, small_ckpt(), target="1.2.0")
    assert [r.step.name for r in result.steps] == ["rename", "scale"]
    assert [r.diff.added for r in result.steps] == [("decoder.bias", "decoder.weight"), ("scale",)]
    assert [r.diff.removed for r in result.steps] == [("head.bias", "head.weight"), ()]
    assert sorted(result.checkpoint["state_dict"]) == [
        "decoder.bias",
        "decoder.weight",
        "encoder.bias",
        "encoder.weight",
        "scale",
    ]


# --- the touches check --------------------------------------------------------------------------


def test_reshape_outside_touches_is_a_shape_mismatch():
    """A step that reshapes a key outside its touches fails, naming step, converter, key, expected, got."""

    def widen_encoder(ckpt: Any) -> Any:
        ckpt["state_dict"]["head.weight"] = torch.zeros(2, 9)
        return ckpt

    registry = one_step(widen_encoder, touches=["encoder.*"], name="widen_encoder")
    with pytest.raises(ShapeMismatchError) as info:
        run_registry(registry, small_ckpt())
    error = info.value
    assert (error.source, error.target) == ("1.0.0", "1.1.0")
    assert "widen_encoder" in error.file
    assert len(error.problems) == 1
    message = str(error)
    assert "1.0.0 -> 1.1.0" in message
    assert "widen_encoder" in message
    assert "head.weight" in message
    assert "expected [2, 8] float32" in message
    assert "got [2, 9] float32" in message


def test_a_key_that_breaks_touches_and_the_schema_is_said_once():
    """A key outside touches that also misses the landing schema is one problem, saying it is not in touches."""

    def widen_head(ckpt: Any) -> Any:
        ckpt["state_dict"]["head.weight"] = torch.zeros(2, 9)
        return ckpt

    registry = one_step(widen_head, touches=["encoder.*"])
    registry.add_schema(Schema.from_signature("1.1.0", signature(small_state_dict())))
    with pytest.raises(ShapeMismatchError) as info:
        run_registry(registry, small_ckpt())
    assert len(info.value.problems) == 1
    assert info.value.problems[0].endswith("(not in touches)")


def test_dtype_change_outside_touches_is_a_shape_mismatch():
    """A step that re-types a key outside its touches fails, with both dtypes in the message."""
    registry = one_step(_to_half, touches=["head.*"])
    with pytest.raises(ShapeMismatchError) as info:
        run_registry(registry, small_ckpt())
    assert "encoder.weight" in str(info.value)
    assert "float32" in str(info.value)
    assert "float16" in str(info.value)


@pytest.mark.parametrize(
    ("convert", "key", "what"),
    [
        pytest.param(_new_object, "encoder.bias", "removed", id="removed"),
        pytest.param(_add_scale, "scale", "added", id="added"),
    ],
)
def test_undeclared_key_added_or_removed_is_a_shape_mismatch(convert, key, what):
    """A step that removes or adds a key its touches do not cover fails, naming the key."""
    with pytest.raises(ShapeMismatchError) as info:
        run_registry(one_step(convert, touches=["head.*"]), small_ckpt())
    assert any(p.startswith(f"{key}: {what}") for p in info.value.problems)


def test_mismatch_problems_are_sorted_by_key():
    """Several offending keys are listed once each, sorted by key."""

    def wreck(ckpt: Any) -> Any:
        sd = ckpt["state_dict"]
        sd["head.bias"] = torch.zeros(5)
        sd["encoder.weight"] = torch.zeros(1, 1)
        del sd["encoder.bias"]
        return ckpt

    with pytest.raises(ShapeMismatchError) as info:
        run_registry(one_step(wreck, touches=[]), small_ckpt())
    keys = [p.split(":")[0] for p in info.value.problems]
    assert keys == ["encoder.bias", "encoder.weight", "head.bias"]


# --- converters that misbehave ------------------------------------------------------------------


def test_converter_that_raises_is_a_step_error():
    """An exception in a converter becomes a StepError with the exception's type and message."""

    def explode(_ckpt: Any) -> Any:
        msg = "the head has no bias"
        raise ValueError(msg)

    with pytest.raises(StepError) as info:
        run_registry(one_step(explode, touches=[], name="explode"), small_ckpt())
    error = info.value
    assert (error.source, error.target) == ("1.0.0", "1.1.0")
    assert "ValueError: the head has no bias" in str(error)
    assert "explode" in str(error)
    assert isinstance(error.__cause__, ValueError)


@pytest.mark.parametrize(
    ("convert", "expected"),
    [
        pytest.param(lambda _ckpt: None, "returned None", id="none"),
        pytest.param(lambda ckpt: [ckpt], "returned a list", id="list"),
        pytest.param(lambda ckpt: ckpt["state_dict"]["head.weight"], "returned a Tensor", id="tensor"),
    ],
)
def test_converter_that_returns_no_checkpoint_is_a_step_error(convert, expected):
    """A converter that returns None or a non-dict fails its step and says what it returned."""
    with pytest.raises(StepError) as info:
        run_registry(one_step(convert, touches=[]), small_ckpt())
    assert expected in str(info.value)


def test_converter_that_loses_the_state_dict_is_a_step_error():
    """A converter that returns a dict without the state dict fails its step."""
    with pytest.raises(StepError, match="state dict"):
        run_registry(one_step(lambda ckpt: {"epoch": ckpt["epoch"]}, touches=[]), small_ckpt())


# --- when guards --------------------------------------------------------------------------------


def test_when_false_skips_the_step_but_stamps_it():
    """A step whose when() declines leaves the checkpoint as it is, yet appears in the history."""
    calls: list[str] = []

    def convert(ckpt: Any) -> Any:
        calls.append("convert")
        return _add_scale(ckpt)

    registry = one_step(convert, touches=["scale"], when=lambda ckpt: "scale" in ckpt["state_dict"])
    ckpt = small_ckpt()
    before = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    result = run_registry(registry, ckpt)
    (report,) = result.steps
    assert calls == []
    assert not report.applied
    assert not report.diff
    sd = result.checkpoint["state_dict"]
    assert list(sd) == list(before)
    assert all(torch.equal(sd[k], before[k]) for k in before)
    stamp = read_stamp(result.checkpoint, ("state_dict",))
    assert stamp is not None
    assert stamp.version == "1.1.0"
    assert [(h["source"], h["target"]) for h in stamp.history] == [("1.0.0", "1.1.0")]


def test_when_true_runs_the_step():
    """A step whose when() accepts runs the converter."""
    registry = one_step(_add_scale, touches=["scale"], when=lambda ckpt: ckpt["epoch"] == 7)
    (report,) = run_registry(registry, small_ckpt()).steps
    assert report.applied
    assert report.diff.added == ("scale",)


# --- schemas ------------------------------------------------------------------------------------


def write_schema(directory: Path, version: str, tensors: dict[str, Any]) -> Path:
    """Write ``<directory>/<version>.json`` with the given tensors entry."""
    path = directory / f"{version}.json"
    path.write_text(json.dumps({"version": version, "tensors": tensors}), encoding="utf-8")
    return path


def sized(**shapes: tuple[int, ...] | tuple[tuple[int, ...], torch.dtype]) -> dict[str, Any]:
    """Build a Lightning checkpoint whose state dict has tensors of the given shapes (zeros)."""
    sd = {}
    for key, spec in shapes.items():
        shape, dtype = spec if isinstance(spec[0], tuple) else (spec, torch.float32)
        sd[key.replace("__", ".")] = torch.zeros(shape, dtype=dtype)
    return lightning(sd)


SCHEMA_CASES = {
    "exact match": (
        {"a.weight": {"shape": [4, 2], "dtype": "float32"}, "a.bias": {"shape": [4], "dtype": "float32"}},
        sized(a__weight=(4, 2), a__bias=(4,)),
        [],
    ),
    "missing key": (
        {"a.weight": {"shape": [4, 2]}, "a.bias": {"shape": [4]}},
        sized(a__weight=(4, 2)),
        ["a.bias: missing (expected [4] any)"],
    ),
    "unexpected key": (
        {"a.weight": {"shape": [4, 2]}},
        sized(a__weight=(4, 2), extra=(3,)),
        ["extra: unexpected ([3] float32)"],
    ),
    "wrong shape": (
        {"a.weight": {"shape": [4, 2], "dtype": "float32"}},
        sized(a__weight=(4, 3)),
        ["a.weight: expected [4, 2] float32, got [4, 3] float32"],
    ),
    "wrong rank": (
        {"a.weight": {"shape": [4, 2]}},
        sized(a__weight=(8,)),
        ["a.weight: expected [4, 2] any, got [8] float32"],
    ),
    "wrong dtype": (
        {"a.weight": {"shape": [4, 2], "dtype": "float32"}},
        sized(a__weight=((4, 2), torch.bfloat16)),
        ["a.weight: expected [4, 2] float32, got [4, 2] bfloat16"],
    ),
    "named dimension bound consistently": (
        {"a.weight": {"shape": ["hidden", 2]}, "b.weight": {"shape": [3, "hidden"]}, "b.bias": {"shape": [3]}},
        sized(a__weight=(6, 2), b__weight=(3, 6), b__bias=(3,)),
        [],
    ),
    "named dimension bound inconsistently": (
        {"a.weight": {"shape": ["hidden", 2]}, "b.weight": {"shape": [3, "hidden"]}},
        sized(a__weight=(6, 2), b__weight=(3, 7)),
        ["b.weight: expected [3, hidden] any with hidden=6 (bound at a.weight), got [3, 7] float32"],
    ),
    "named dimension repeated in one shape": (
        {"square": {"shape": ["n", "n"]}},
        sized(square=(3, 4)),
        ["square: expected [n, n] any with n=3 (bound at square), got [3, 4] float32"],
    ),
    "glob keys": (
        {
            "layers.*.weight": {"shape": ["hidden", "hidden"], "dtype": "float32"},
            "layers.*.bias": {"shape": ["hidden"]},
        },
        sized(layers__0__weight=(5, 5), layers__0__bias=(5,), layers__1__weight=(5, 5), layers__1__bias=(5,)),
        [],
    ),
    "glob key with a wrong shape": (
        {"layers.*.weight": {"shape": ["hidden", "hidden"]}},
        sized(layers__0__weight=(5, 5), layers__1__weight=(5, 6)),
        ["layers.1.weight: expected [hidden, hidden] any with hidden=5 (bound at layers.0.weight), got [5, 6] float32"],
    ),
    "glob key that matches nothing": (
        {"a.weight": {"shape": [4, 2]}, "layers.*.weight": {"shape": [1]}},
        sized(a__weight=(4, 2)),
        ["layers.*.weight: no key matches (expected [1] any)"],
    ),
    "no shape given: any shape": (
        {"a.weight": {"dtype": "float32"}},
        sized(a__weight=(9, 9, 9)),
        [],
    ),
}


@pytest.mark.parametrize(("tensors", "ckpt", "problems"), SCHEMA_CASES.values(), ids=SCHEMA_CASES)
def test_schema_checks_the_landing_version(tmp_path, tensors, ckpt, problems):
    """After a step, the state dict is checked against the schema of the version it lands on."""
    registry = one_step(lambda c: c)
    schema = load_schema(write_schema(tmp_path, "1.1.0", tensors))
    registry.add_schema(schema)
    if not problems:
        (report,) = run_registry(registry, ckpt).steps
        assert report.checked == ("schema",)
        return
    with pytest.raises(ShapeMismatchError) as info:
        run_registry(registry, ckpt)
    assert [p.removesuffix(f" (schema {schema.file})") for p in info.value.problems] == problems
    assert str(tmp_path / "1.1.0.json") in str(info.value)


def test_schema_of_an_intermediate_version_is_checked(tmp_path):
    """A schema of a version in the middle of the path is checked after the step that lands there."""
    registry = Registry()
    registry.add("1.0.0", "1.1.0", _add_scale, name="add_scale", touches=["scale"])
    registry.add("1.1.0", "1.2.0", lambda c: c, name="identity", touches=[])
    registry.add_schema(load_schema(write_schema(tmp_path, "1.1.0", {"head.*": {"shape": [2, 8]}})))
    with pytest.raises(ShapeMismatchError) as info:
        run_registry(registry, small_ckpt(), target="1.2.0")
    assert (info.value.source, info.value.target) == ("1.0.0", "1.1.0")
    assert "encoder.weight: unexpected" in str(info.value)


def test_schema_and_touches_are_both_checked(tmp_path):
    """A step with touches landing on a version with a schema reports both checks."""
    registry = one_step(_add_scale, touches=["scale"])
    registry.add_schema(
        load_schema(write_schema(tmp_path, "1.1.0", {"*.weight": {}, "*.bias": {}, "scale": {"shape": [2]}})),
    )
    (report,) = run_registry(registry, small_ckpt()).steps
    assert report.checked == ("touches", "schema")


# --- unchecked steps ----------------------------------------------------------------------------


def test_unchecked_step_is_a_warning():
    """A step with no touches landing on a version with no schema runs, with a warning naming it."""
    result = run_registry(one_step(_add_scale, name="add_scale"), small_ckpt())
    (report,) = result.steps
    assert report.checked == ()
    assert len(result.warnings) == 1
    assert "1.0.0 -> 1.1.0" in result.warnings[0]
    assert "add_scale" in result.warnings[0]
    assert "unchecked" in result.warnings[0]


def test_unchecked_step_with_strict_is_a_step_error():
    """With strict=True, a step that nothing can check is an UnverifiedStepError (a StepError)."""
    with pytest.raises(StepError, match="nothing checked it"):
        run_registry(one_step(_add_scale), small_ckpt(), strict=True)


def test_step_checked_only_by_touches_is_refused_with_strict():
    """With strict=True, touches alone do not verify a step: its landing version needs a schema."""
    with pytest.raises(UnverifiedStepError, match=r"only its own checks ran \(touches\)"):
        run_registry(one_step(_add_scale, touches=["scale"]), small_ckpt(), strict=True)


def test_step_verified_by_a_schema_runs_with_strict():
    """With strict=True, a step whose landing version has a matching schema runs, reported verified."""
    registry = one_step(_add_scale, touches=["scale"])
    after = _add_scale(small_ckpt())["state_dict"]
    registry.add_schema(Schema.from_signature("1.1.0", signature(after)))
    result = run_registry(registry, small_ckpt(), strict=True)
    assert result.warnings == []
    assert result.steps[0].diff.added == ("scale",)
    assert (result.steps[0].verified, result.steps[0].status) == (True, "verified")


# --- the stamp ----------------------------------------------------------------------------------


def test_stamp_history_has_one_entry_per_step():
    """The result is stamped with the target and one history entry per step, in order."""
    registry = Registry()
    first = registry.add("1.0.0", "1.1.0", _add_scale, name="add_scale", touches=["scale"])
    registry.add("1.1.0", "1.2.0", lambda c: c, name="identity", touches=[])
    result = run_registry(registry, small_ckpt(), target="1.2.0")
    raw = result.checkpoint[STAMP_KEY]
    assert raw["version"] == "1.2.0"
    history = raw["history"]
    assert [set(h) for h in history] == [{"source", "target", "converter", "digest", "at"}] * 2
    assert [(h["source"], h["target"], h["converter"]) for h in history] == [
        ("1.0.0", "1.1.0", "add_scale"),
        ("1.1.0", "1.2.0", "identity"),
    ]
    assert history[0]["digest"] == first.digest
    assert all(h["digest"].startswith("sha256:") for h in history)
    assert all(datetime.fromisoformat(h["at"]).tzinfo is not None for h in history)


def test_stamp_history_continues_an_existing_stamp():
    """A checkpoint already stamped keeps its earlier history, with the new steps after it."""
    earlier = {
        "source": "0.9.0",
        "target": "1.0.0",
        "converter": "old",
        "digest": None,
        "at": "2024-01-01T00:00:00+00:00",
    }
    ckpt = write_stamp(small_ckpt(), ("state_dict",), Stamp(version="1.0.0", history=(earlier,)))
    result = run_registry(one_step(_add_scale, touches=["scale"]), ckpt)
    stamp = read_stamp(result.checkpoint, ("state_dict",))
    assert stamp is not None
    assert stamp.version == "1.1.0"
    assert [h["converter"] for h in stamp.history] == ["old", "step"]


def test_flat_state_dict_is_stamped_in_metadata():
    """Running on a flat state dict stamps its _metadata and adds no key to it."""
    result = run_registry(one_step(_widen_flat, touches=["head.*"]), small_state_dict())
    sd = result.checkpoint
    assert STAMP_KEY not in sd
    assert sd._metadata[STAMP_KEY]["version"] == "1.1.0"  # noqa: SLF001 - where the contract puts it
    assert result.steps[0].diff.changed == ("head.bias", "head.weight")


def _widen_flat(sd: Any) -> Any:
    sd["head.weight"] = torch.zeros(3, 8)
    sd["head.bias"] = torch.zeros(3)
    return sd


def test_non_tensor_content_comes_through_untouched():
    """Epoch, hyper-parameters and optimizer states pass through a step as they were."""
    ckpt = small_ckpt()
    first = next(iter(ckpt["state_dict"].values()))
    ckpt["optimizer_states"][0]["state"] = {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones_like(first)}}
    originals = {key: ckpt[key] for key in ("epoch", "global_step", "hyper_parameters", "optimizer_states")}
    expected_hparams = json.loads(json.dumps(ckpt["hyper_parameters"]))
    exp_avg = ckpt["optimizer_states"][0]["state"][0]["exp_avg"].clone()
    result = run_registry(one_step(_rename, touches=["head.*", "decoder.*"]), ckpt)
    out = result.checkpoint
    assert out["epoch"] == 7
    assert out["global_step"] == 1234
    assert out["hyper_parameters"] == expected_hparams
    assert out["optimizer_states"] is originals["optimizer_states"]
    assert torch.equal(out["optimizer_states"][0]["state"][0]["exp_avg"], exp_avg)
    assert out["optimizer_states"][0]["param_groups"] == [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]
    assert sorted(out) == sorted([*originals, "pytorch-lightning_version", "lr_schedulers", "state_dict", STAMP_KEY])


def test_converter_made_with_from_function_runs():
    """A Converter built with from_function and added as an object runs like one added by parts."""
    registry = Registry()
    registry.add(Converter.from_function("1.0.0", "1.1.0", _add_scale, touches=["scale"]))
    result = run_registry(registry, small_ckpt())
    assert result.steps[0].step.name == "_add_scale"
    assert "scale" in result.checkpoint["state_dict"]


def test_on_step_is_called_before_each_step():
    """The on_step callback gets (index, total, step) for every step, in order."""
    registry = Registry()
    registry.add("1.0.0", "1.1.0", lambda c: c, name="a", touches=[])
    registry.add("1.1.0", "1.2.0", lambda c: c, name="b", touches=[])
    seen: list[tuple[int, int, str]] = []
    run_registry(registry, small_ckpt(), target="1.2.0", on_step=lambda i, n, s: seen.append((i, n, s.name)))
    assert seen == [(0, 2, "a"), (1, 2, "b")]


def test_run_refuses_a_plan_that_starts_at_another_version_than_the_stamp(examples):
    """run(plan, ckpt) with ckpt stamped 0.1.0 and a plan from 0.3.0 is refused: it would convert the wrong layout."""
    from ckpt_path.demo.models import make_checkpoint
    from ckpt_path.errors import UsageError

    registry = Registry.from_directory(examples)
    ckpt = make_checkpoint("0.1.0", seed=0)
    ckpt[STAMP_KEY] = {"version": "0.1.0"}
    with pytest.raises(UsageError, match=r"stamped 0\.1\.0 but the plan starts at 0\.3\.0"):
        run(registry.plan("0.3.0", "latest"), ckpt)
    stamp = read_stamp(run(registry.plan("0.1.0", "latest"), ckpt).checkpoint, ("state_dict",))
    assert stamp is not None
    assert stamp.version == "1.1.0"
