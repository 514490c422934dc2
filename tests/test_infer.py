"""`ckpt-path new NAME --from A --to B --infer`: an ops file drafted from two schemas, checked by running it."""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

import pytest
import torch

from ckpt_path import Registry, read_converter_file
from ckpt_path._synthetic import synthetic_checkpoint
from ckpt_path.check import check_directory
from ckpt_path.drafting import Draft, draft_ops
from ckpt_path.ops import (
    Cast,
    Concat,
    DropDerived,
    Rename,
    Split,
    Squeeze,
    Stack,
    Transpose,
    Unstack,
    invert,
    predict,
)
from ckpt_path.runner import RunResult, run
from ckpt_path.shapes import Schema, TensorSpec, load_schema
from helpers import cli, write_schema
from peers import mixtral

Tensors: TypeAlias = dict[str, tuple[tuple[int, ...], str]]
"""A layout as schemas describe it: key -> (shape, dtype)."""


def schema(version: str, tensors: Tensors) -> Schema:
    """Return a schema of ``version`` with the given key -> (shape, dtype)."""
    return Schema.from_signature(version, {k: TensorSpec(s, d) for k, (s, d) in tensors.items()})


def draft(directory: Path, source: str, target: str, name: str = "drafted") -> Path:
    """Draft a converter with the command line; return the file it wrote."""
    result = cli("new", name, "--from", source, "--to", target, "--infer", "--converters", directory)
    assert result.exit_code == 0, result.output
    (path,) = directory.glob(f"*_{name}.py")
    return path


def run_on_synthetic(directory: Path, source: str, target: str) -> RunResult:
    """Run the plan source -> target on a synthetic checkpoint of the source schema, checked against the target's."""
    registry = Registry.from_directory(directory)
    start = synthetic_checkpoint(load_schema(directory / "schemas" / f"{source}.json"))
    return run(registry.plan(source, target), start, schemas=registry.schema)


def layers(template: str, count: int, shape: tuple[int, ...], dtype: str = "float32") -> Tensors:
    """Return ``count`` schema entries from a key template with ``{i}``."""
    return {template.format(i=i): (shape, dtype) for i in range(count)}


# The rename-only case.

RENAMED_FROM = {
    **layers("model.layers.{i}.attn.q.weight", 12, (8, 8)),
    **layers("model.layers.{i}.attn.q.bias", 12, (8,)),
    **layers("model.layers.{i}.mlp.fc.weight", 12, (16, 8)),
    "model.embed.weight": ((30, 8), "float32"),
}
RENAMED_TO = {
    **layers("backbone.blocks.{i}.self_attn.q.weight", 12, (8, 8)),
    **layers("backbone.blocks.{i}.self_attn.q.bias", 12, (8,)),
    **layers("backbone.blocks.{i}.mlp.fc.weight", 12, (16, 8)),
    "backbone.embed.weight": ((30, 8), "float32"),
}


def test_drafted_renames_verify_against_the_target_schema(tmp_path):
    """The drafted file for a rename-only change runs on a checkpoint of A and lands verified on B's schema."""
    write_schema(tmp_path, "1.0.0", RENAMED_FROM)
    write_schema(tmp_path, "2.0.0", RENAMED_TO)
    path = draft(tmp_path, "1.0.0", "2.0.0")
    text = path.read_text(encoding="utf-8")
    assert "TODO" not in text
    assert "reversible = True" in text
    converter = read_converter_file(path)
    assert converter.ops is not None
    assert all(isinstance(op, Rename) for op in converter.ops)
    assert len(converter.ops) <= 3  # one per kind of change, not one per key
    result = run_on_synthetic(tmp_path, "1.0.0", "2.0.0")
    (report,) = result.steps
    assert report.verified
    back = run_on_synthetic(tmp_path, "1.0.0", "2.0.0")  # and the inverse edge lands back on A
    assert run(Registry.from_directory(tmp_path).plan("2.0.0", "1.0.0"), back.checkpoint).steps


def test_drafted_renames_are_written_once_for_every_layer():
    """Twelve layers of q weights become one Rename with {i}; a prefix change reaches every depth with {*s}."""
    ops = [op for op, _ in draft_ops(schema("1", RENAMED_FROM), schema("2", RENAMED_TO)).ops]
    assert Rename("model.layers.{i}.attn.q.{*s}", "backbone.blocks.{i}.self_attn.q.{*s}") in ops
    assert not [op for op in ops if isinstance(op, Rename) and ".0." in op.source]


def test_drafted_rename_covers_layer_norms_at_every_depth():
    """BERT's LayerNorm.gamma/beta, under the embeddings and in every layer, are renamed by two templates."""
    before = {
        "bert.embeddings.LayerNorm.gamma": ((8,), "float32"),
        "bert.embeddings.LayerNorm.beta": ((8,), "float32"),
        **layers("bert.encoder.layer.{i}.output.LayerNorm.gamma", 3, (8,)),
        **layers("bert.encoder.layer.{i}.output.LayerNorm.beta", 3, (8,)),
        **layers("bert.encoder.layer.{i}.output.dense.weight", 3, (8, 8)),
    }
    after = {k.replace("gamma", "weight").replace("beta", "bias"): v for k, v in before.items()}
    found = draft_ops(schema("1", before), schema("2", after))
    assert not found.todo
    assert not found.problems
    assert [op for op, _ in found.ops] == [
        Rename("{*p}.LayerNorm.beta", "{*p}.LayerNorm.bias"),
        Rename("{*p}.LayerNorm.gamma", "{*p}.LayerNorm.weight"),
    ]


# The MoE case, from transformers' own layouts.


def mixtral_layouts(experts: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Path]:
    """Return a tiny Mixtral's legacy state dict (as save_pretrained writes it), what from_pretrained loads, its dir."""
    import tempfile

    from safetensors.torch import load_file
    from transformers import MixtralForCausalLM

    directory = Path(tempfile.mkdtemp())
    mixtral(experts, directory)
    loaded = dict(MixtralForCausalLM.from_pretrained(directory).state_dict())
    return load_file(directory / "model.safetensors"), loaded, directory


def layout(state_dict: dict[str, torch.Tensor]) -> Tensors:
    """Return the schema entries of a real state dict."""
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state_dict.items()}


def test_drafted_moe_fusion_verifies_and_matches_transformers_for_another_expert_count(tmp_path):
    """Drafted from 4-expert layouts, the file verifies on B's schema and fuses 8 experts as transformers does."""
    legacy, loaded, _ = mixtral_layouts(4)
    write_schema(tmp_path, "4.0.0", layout(legacy))
    write_schema(tmp_path, "5.0.0", layout(loaded))
    path = draft(tmp_path, "4.0.0", "5.0.0", "fuse_experts")
    converter = read_converter_file(path)
    assert converter.ops is not None
    kinds = [type(op) for op in converter.ops]
    assert kinds.count(Stack) == 3
    assert kinds.count(Concat) == 1
    assert "TODO" not in path.read_text(encoding="utf-8")
    (report,) = run_on_synthetic(tmp_path, "4.0.0", "5.0.0").steps
    assert report.verified
    legacy8, loaded8, _ = mixtral_layouts(8)
    plan = Registry.from_directory(tmp_path).plan("4.0.0", "5.0.0")
    result = run(plan, {"state_dict": dict(legacy8)})
    got = result.checkpoint["state_dict"]
    assert sorted(got) == sorted(loaded8)
    for key, tensor in loaded8.items():
        assert torch.equal(got[key], tensor), key


def test_drafted_moe_split_back_verifies_and_matches_transformers_save_pretrained(tmp_path):
    """From fused to per-expert (B to A): drafted as the inverse of the fusion, equal to what save_pretrained writes."""
    legacy, loaded, _ = mixtral_layouts(4)
    write_schema(tmp_path, "4.0.0", layout(legacy))
    write_schema(tmp_path, "5.0.0", layout(loaded))
    path = draft(tmp_path, "5.0.0", "4.0.0", "split_experts")
    converter = read_converter_file(path)
    assert converter.ops is not None
    kinds = [type(op) for op in converter.ops]
    assert kinds.count(Unstack) == 3
    assert kinds.count(Split) == 1
    text = path.read_text(encoding="utf-8")
    assert "TODO" not in text
    assert "undoes a drafted Stack" in text
    assert "undoes a drafted Concat; 2 matches; the order of the parts is a guess" in text  # the forward draft's hint
    (report,) = run_on_synthetic(tmp_path, "5.0.0", "4.0.0").steps
    assert report.verified
    legacy8, loaded8, _ = mixtral_layouts(8)
    result = run(Registry.from_directory(tmp_path).plan("5.0.0", "4.0.0"), {"state_dict": dict(loaded8)})
    got = result.checkpoint["state_dict"]
    assert sorted(got) == sorted(legacy8)
    for key, tensor in legacy8.items():
        assert torch.equal(got[key], tensor), key


# What the draft cannot explain, and the other kinds of change.


def test_unexplained_keys_are_todo_comments(tmp_path):
    """Keys only in A or only in B are listed as TODO comments with a hint; the file still reads."""
    before: Tensors = {"w": ((3,), "float32"), "blocks.0.attn.relative_position_index": ((4, 4), "int64")}
    after: Tensors = {"w": ((3,), "float32"), "extra.scale": ((5,), "float32")}
    write_schema(tmp_path, "1.0.0", before)
    write_schema(tmp_path, "2.0.0", after)
    result = cli("new", "partial", "--from", "1.0.0", "--to", "2.0.0", "--infer", "--converters", tmp_path)
    assert result.exit_code == 0, result.output
    assert "TODO" in result.output
    (path,) = tmp_path.glob("*_partial.py")
    text = path.read_text(encoding="utf-8")
    assert "# TODO" in text
    assert 'DropDerived("blocks.0.attn.relative_position_index")' in text
    assert "extra.scale [5] float32: only in 2.0.0" in text
    assert "\nreversible = True" not in text
    read_converter_file(path)


def test_in_place_changes_are_drafted():
    """A dtype change becomes a Cast, dropped 1s a Squeeze, a reversed matrix a Transpose marked as a guess."""
    before = {"emb": ((4,), "float16"), "grn.gamma": ((1, 1, 1, 6), "float32"), "proj": ((3, 5), "float32")}
    after = {"emb": ((4,), "float32"), "grn.gamma": ((6,), "float32"), "proj": ((5, 3), "float32")}
    found = draft_ops(schema("1", before), schema("2", after))
    assert not found.problems
    ops = dict(found.ops)
    assert Squeeze("grn.gamma", (0, 1, 2)) in ops
    assert "guess" in ops[Transpose("proj", 0, 1)]
    assert any(isinstance(op, Cast) and op.source_dtype == "float16" for op in ops)


def test_swin_stage_shift_is_drafted_with_index_arithmetic():
    """Swin's downsample moving to the next stage is drafted as one Rename with {i+1}; its buffers as TODO."""
    before: Tensors = {}
    after: Tensors = {}
    for i, d in enumerate((4, 8, 16)):
        before[f"layers.{i}.blocks.0.norm1.weight"] = after[f"layers.{i}.blocks.0.norm1.weight"] = ((d,), "float32")
        before[f"layers.{i}.blocks.0.attn.relative_position_index"] = ((9, 9), "int64")
        if i < 2:  # the last stage has no downsample
            for name, shape in (
                ("norm.weight", (4 * d,)),
                ("norm.bias", (4 * d,)),
                ("reduction.weight", (2 * d, 4 * d)),
            ):
                before[f"layers.{i}.downsample.{name}"] = (shape, "float32")
                after[f"layers.{i + 1}.downsample.{name}"] = (shape, "float32")
    found = draft_ops(schema("1", before), schema("2", after))
    assert [op for op, _ in found.ops] == [Rename("layers.{i}.downsample.{*s}", "layers.{i+1}.downsample.{*s}")]
    assert len(found.todo) == 3
    assert all("DropDerived" in line for line in found.todo)
    assert DropDerived("x").inverse() is None


def test_infer_without_a_schema_is_one_error_line(tmp_path):
    """--infer with no schema for a version exits 1 saying which schema to write, and writes no file."""
    write_schema(tmp_path, "1.0.0", {"w": ((3,), "float32")})
    result = cli("new", "x", "--from", "1.0.0", "--to", "2.0.0", "--infer", "--converters", tmp_path)
    assert result.exit_code == 1
    assert "2.0.0" in result.stderr
    assert "ckpt-path schema" in result.stderr
    assert not list(tmp_path.glob("*.py"))


@pytest.mark.parametrize("ops_flag", [False, True])
def test_new_without_infer_still_scaffolds(tmp_path, ops_flag):
    """Without --infer, `new` writes the documented template as before (no schema needed)."""
    args = ["new", "step", "--from", "1.0.0", "--to", "1.1.0", "--converters", tmp_path] + (
        ["--ops"] if ops_flag else []
    )
    result = cli(*args)
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*_step.py")
    assert read_converter_file(path).kind == ("ops" if ops_flag else "convert")


# Reversible only when the way back is: a dropped index stays literal, and the inverse is predicted.


def test_drafted_rename_keeps_an_index_the_target_drops_literal(examples):
    """The examples' 0.1.0 -> 0.2.0 drops grid_mlp's "0": the draft keeps it literal, so check passes its inverse."""
    (examples / "001_rename_grid_mlp.py").unlink()
    path = draft(examples, "0.1.0", "0.2.0", name="step")
    text = path.read_text(encoding="utf-8")
    assert 'Rename("g2m_gnn.grid_mlp.0.bias", "g2m_gnn.grid_mlp.bias")' in text
    assert "{i}" not in text
    assert "\nreversible = True\n" in text
    assert [f for f in check_directory(examples) if f.problem] == []


def test_a_rename_that_drops_a_binding_is_never_drafted():
    """A template whose target leaves out a binding of its source cannot be inverted, so the draft stays literal."""
    before = {"mlp.0.weight": ((4, 4), "float32"), "mlp.0.bias": ((4,), "float32"), "head": ((2,), "float32")}
    after = {"mlp.weight": ((4, 4), "float32"), "mlp.bias": ((4,), "float32"), "head": ((2,), "float32")}
    found = draft_ops(schema("1", before), schema("2", after))
    ops = [op for op, _ in found.ops]
    assert sorted(ops, key=repr) == [Rename("mlp.0.bias", "mlp.bias"), Rename("mlp.0.weight", "mlp.weight")]
    inverse = invert(ops)
    assert inverse is not None
    sig = {k: TensorSpec(s, d) for k, (s, d) in before.items()}
    assert predict(inverse, predict(ops, sig)) == sig


def test_drafted_ops_whose_inverse_fails_are_not_written_reversible(tmp_path, monkeypatch):
    """Ops that give the target but whose inverse does not give the source back are not reversible, saying why."""
    write_schema(tmp_path, "1.0.0", {"mlp.0.bias": ((4,), "float32")})
    write_schema(tmp_path, "2.0.0", {"mlp.bias": ((4,), "float32")})
    dropped = Draft(ops=((Rename("mlp.{i}.bias", "mlp.bias"), ""),), todo=(), problems=())
    monkeypatch.setattr("ckpt_path.scaffold.draft_ops", lambda *_: dropped)
    path = draft(tmp_path, "1.0.0", "2.0.0")
    text = path.read_text(encoding="utf-8")
    assert "\nreversible = False  # " in text
    said = text.split("\nreversible = False  # ")[1].split("\n\n")[0].replace("\n#   ", " ")
    assert said.startswith("the inverse, predicted on the 2.0.0 layout, fails: template 'mlp.{i}.bias' uses {i}"), said
    converter = read_converter_file(path)
    assert not converter.reversible
    assert [f for f in check_directory(tmp_path) if f.problem] == []


def test_a_one_way_template_for_every_layer_beats_literal_ops_for_each():
    """layers.L.mlp.0.w -> layers.L.mlp.w for 3 layers: one template per parameter (every layer), not reversible."""
    from ckpt_path.drafting import why_not_reversible

    old = {**layers("layers.{i}.mlp.0.weight", 3, (8, 8)), **layers("layers.{i}.mlp.0.bias", 3, (8,))}
    new = {**layers("layers.{i}.mlp.weight", 3, (8, 8)), **layers("layers.{i}.mlp.bias", 3, (8,))}
    source, target = schema("1.0.0", old), schema("2.0.0", new)
    drafted = draft_ops(source, target)
    assert (drafted.todo, drafted.problems) == ((), ())
    assert [op for op, _ in drafted.ops] == [
        Rename("layers.{i}.mlp.{j}.bias", "layers.{i}.mlp.bias"),
        Rename("layers.{i}.mlp.{j}.weight", "layers.{i}.mlp.weight"),
    ]
    assert "the inverse" in why_not_reversible([op for op, _ in drafted.ops], source, target)
