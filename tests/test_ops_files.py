"""Converter files that declare ``ops = [...]``: read without importing, planned, run and reversed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt_path
from ckpt_fixtures import assert_bitwise_equal, lightning, t
from ckpt_path import ConverterFileError, LossyPathError, Registry, StepError, read_converter_file
from ckpt_path.ops import Cast, Concat, MoveIndex, Permute, Rename, Reshape
from ckpt_path.runner import run
from ckpt_path.stamp import STAMP_KEY
from helpers import assert_one_line_error, cli

# Ops are built here as converter files write them: lists and dotted paths. ckpt_path.ops types those fields as
# the tuples the constructors normalise them to, so such calls carry `type: ignore[arg-type]` until it
# types the accepted inputs (mypy then reports each ignore as unused).

HEADER = """\
import torch
from ckpt_path import ops
from ckpt_path.ops import Add, Cast, Concat, Drop, MoveIndex, Permute, Rename, Reshape, Split
"""


def write_ops_file(directory: Path, name: str, body: str, *, doc: str = "Ops converter.") -> Path:
    """Write ``<directory>/<name>.py``: a docstring, the usual imports, then ``body`` (dedented)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(f'"""{doc}"""\n\n{HEADER}\n{textwrap.dedent(body)}', encoding="utf-8")
    return path


def line_of(path: Path, marker: str) -> int:
    """Return the 1-based number of the only line of ``path`` containing ``marker``."""
    lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if marker in line]
    assert len(lines) == 1, lines
    return lines[0]


def tripwire(marker: Path) -> str:
    """Return module-level code that leaves ``marker`` and raises if the file is ever executed."""
    return f'from pathlib import Path\nPath({str(marker)!r}).write_text("executed")\nraise SystemExit("executed")\n'


def v1_state_dict() -> dict[str, torch.Tensor]:
    """Return the state dict of version 1.0.0 of a tiny model."""
    return {
        "enc.weight": t(3, 5),
        "enc.bias": t(3),
        "l.0.q": t(2, 4),
        "l.0.k": t(2, 4) + 100,
        "l.1.q": t(2, 4) + 200,
        "l.1.k": t(2, 4) + 300,
        "head.weight": t(4, 3),
        "head.bias": t(6),
        "emb": t(5, dtype=torch.float16) / 7,
    }


REVERSIBLE_BODY = """\
source = "1.0.0"
target = "1.1.0"
reversible = True

ops = [
    Rename("enc.{p}", "encoder.{p}"),
    MoveIndex("encoder.weight", dim=1, index=3, to=0),
    Concat(["l.{i}.q", "l.{i}.k"], into="l.{i}.qk", dim=0),
    Permute("head.weight", (1, 0)),
    Reshape("head.bias", (2, 3), source_shape=(6,)),
]
"""

V11_KEYS = ["emb", "encoder.bias", "encoder.weight", "head.bias", "head.weight", "l.0.qk", "l.1.qk"]


def test_ops_file_is_never_executed(tmp_path):
    """Reading, planning and running an ops file never executes it: its module-level tripwire stays silent."""
    marker = tmp_path / "executed"
    converters = tmp_path / "converters"
    write_ops_file(converters, "rename", tripwire(marker) + REVERSIBLE_BODY)
    converter = read_converter_file(converters / "rename.py")
    assert converter.kind == "ops"
    registry = Registry.from_directory(converters)
    result = run(registry.plan("1.0.0", "1.1.0"), lightning(v1_state_dict()))
    assert sorted(result.checkpoint["state_dict"]) == V11_KEYS
    back = run(registry.plan("1.1.0", "1.0.0"), result.checkpoint)
    assert sorted(back.checkpoint["state_dict"]) == sorted(v1_state_dict())
    assert not marker.exists()


def test_ops_file_is_never_executed_by_the_cli(tmp_path):
    """``ckpt-path convert`` along an ops file writes the result without executing the file."""
    marker = tmp_path / "executed"
    converters = tmp_path / "converters"
    write_ops_file(converters, "rename", tripwire(marker) + REVERSIBLE_BODY)
    source, output = tmp_path / "in.ckpt", tmp_path / "out.ckpt"
    torch.save(lightning(v1_state_dict(), "1.0.0"), source)
    result = cli("convert", source, "-o", output, "--to", "1.1.0", "--converters", converters)
    assert result.exit_code == 0, result.output
    assert sorted(torch.load(output, weights_only=True)["state_dict"]) == V11_KEYS
    assert not marker.exists()


def test_reversible_registers_the_inverse_edge(tmp_path):
    """``reversible = True`` adds the edge target -> source, marked inverse, with the inverted ops."""
    path = write_ops_file(tmp_path, "fuse", REVERSIBLE_BODY)
    registry = Registry.from_directory(tmp_path)
    assert registry.graph.has_edge(ckpt_path.parse_version("1.0.0"), ckpt_path.parse_version("1.1.0"))
    plan = registry.plan("1.1.0", "1.0.0")
    (step,) = plan.steps
    assert step.inverse
    assert step.file == str(path)
    assert not step.lossy
    assert step.ops is not None
    assert step.ops[-1] == Rename("encoder.{p}", "enc.{p}")


def test_without_reversible_there_is_no_inverse_edge(tmp_path):
    """An ops file without ``reversible`` registers only its own edge."""
    write_ops_file(tmp_path, "fuse", REVERSIBLE_BODY.replace("reversible = True\n", ""))
    registry = Registry.from_directory(tmp_path)
    with pytest.raises(ckpt_path.NoPathError):
        registry.plan("1.1.0", "1.0.0")


def test_forward_then_back_restores_the_checkpoint_bitwise(tmp_path):
    """Running a reversible ops file forward and then its inverse edge gives back every tensor, bit for bit."""
    write_ops_file(tmp_path, "fuse", REVERSIBLE_BODY)
    registry = Registry.from_directory(tmp_path)
    original = lightning(v1_state_dict())
    forward = run(registry.plan("1.0.0", "1.1.0"), lightning(v1_state_dict()))
    moved = forward.checkpoint["state_dict"]
    assert moved["encoder.weight"][:, 0].tolist() == original["state_dict"]["enc.weight"][:, 3].tolist()
    assert moved["head.weight"].shape == (3, 4)
    assert moved["head.bias"].shape == (2, 3)
    back = run(registry.plan("1.1.0", "1.0.0"), forward.checkpoint)
    assert_bitwise_equal(back.checkpoint["state_dict"], original["state_dict"])
    assert {k: v for k, v in back.checkpoint.items() if k not in {"state_dict", STAMP_KEY}} == {
        k: v for k, v in original.items() if k != "state_dict"
    }
    assert back.checkpoint[STAMP_KEY]["version"] == "1.0.0"
    assert [h["converter"] for h in back.checkpoint[STAMP_KEY]["history"]] == ["fuse", "fuse:inverse"]


def test_reversible_widening_cast_has_a_lossy_inverse(tmp_path):
    """A reversible float16 -> float32 Cast is lossless forward; its inverse narrows, so it is lossy yet exact here."""
    write_ops_file(
        tmp_path,
        "widen",
        """\
        source = "1.0.0"
        target = "1.1.0"
        reversible = True
        ops = [Cast("emb", torch.float32, source_dtype=torch.float16)]
        """,
    )
    registry = Registry.from_directory(tmp_path)
    assert not registry.plan("1.0.0", "1.1.0").lossy
    with pytest.raises(LossyPathError):
        registry.plan("1.1.0", "1.0.0")
    forward = run(registry.plan("1.0.0", "1.1.0"), lightning(v1_state_dict()))
    assert forward.checkpoint["state_dict"]["emb"].dtype == torch.float32
    back = run(registry.plan("1.1.0", "1.0.0", allow_lossy=True), forward.checkpoint)
    assert_bitwise_equal(back.checkpoint["state_dict"], v1_state_dict())


@pytest.mark.parametrize(
    ("op", "name"),
    [
        pytest.param('Drop("head.*")', "Drop", id="Drop"),
        pytest.param('Cast("emb", "float32")', "Cast", id="Cast-without-source-dtype"),
        pytest.param('Reshape("head.bias", (2, 3))', "Reshape", id="Reshape-without-source-shape"),
    ],
)
def test_reversible_file_with_an_op_without_inverse_is_refused(tmp_path, op, name):
    """``reversible = True`` with an op that has no inverse is a ConverterFileError naming file, line and op."""
    path = write_ops_file(
        tmp_path,
        "bad",
        f"""\
        source = "1.0.0"
        target = "1.1.0"
        reversible = True  # HERE
        ops = [Rename("enc.{{p}}", "encoder.{{p}}"), {op}]
        """,
    )
    with pytest.raises(ConverterFileError) as caught:
        read_converter_file(path)
    assert caught.value.file == str(path)
    assert caught.value.line == line_of(path, "# HERE")
    assert f"{path}:{caught.value.line}" in str(caught.value)
    assert name in caught.value.reason
    with pytest.raises(ConverterFileError, match=r"bad\.py"):
        Registry.from_directory(tmp_path)


def test_file_with_a_lossy_op_is_lossy_without_saying_so(tmp_path):
    """A file whose ops include Drop is lossy although it does not set ``lossy = True``."""
    path = write_ops_file(tmp_path, "drop", 'source = "1.0.0"\ntarget = "2.0.0"\nops = [Drop("head.*")]\n')
    assert read_converter_file(path).lossy
    narrowing = write_ops_file(
        tmp_path, "narrow", 'source = "2.0.0"\ntarget = "3.0.0"\nops = [Cast("*", "float16", source_dtype="float32")]\n'
    )
    assert read_converter_file(narrowing).lossy
    lossless = write_ops_file(tmp_path, "rename", 'source = "3.0.0"\ntarget = "4.0.0"\nops = [Rename("a", "b")]\n')
    assert not read_converter_file(lossless).lossy


def test_planner_avoids_a_lossy_ops_file_when_a_lossless_path_exists(tmp_path):
    """A direct Drop file loses to a longer, costlier path of lossless ops files; alone it needs allow_lossy."""
    write_ops_file(tmp_path, "a_direct", 'source = "1.0.0"\ntarget = "2.0.0"\nops = [Drop("head.*")]\n')
    write_ops_file(
        tmp_path, "b_first", 'source = "1.0.0"\ntarget = "1.5.0"\ncost = 2\nops = [Rename("head.{p}", "out.{p}")]\n'
    )
    write_ops_file(tmp_path, "c_second", 'source = "1.5.0"\ntarget = "2.0.0"\nops = [Add("scale", (3,))]\n')
    registry = Registry.from_directory(tmp_path)
    plan = registry.plan("1.0.0", "2.0.0")
    assert [s.name for s in plan.steps] == ["b_first", "c_second"]
    assert not plan.lossy
    (tmp_path / "b_first.py").unlink()
    with pytest.raises(LossyPathError):
        Registry.from_directory(tmp_path).plan("1.0.0", "2.0.0")
    assert [s.name for s in Registry.from_directory(tmp_path).plan("1.0.0", "2.0.0", allow_lossy=True).steps] == [
        "a_direct"
    ]


@pytest.mark.parametrize(
    "ops_text",
    [
        pytest.param('[Rename("enc.{p}", "encoder.{p}"), Cast("emb", "float32")]', id="bare-and-string"),
        pytest.param('[ops.Rename("enc.{p}", "encoder.{p}"), ops.Cast("emb", torch.float32)]', id="module-and-torch"),
        pytest.param(
            '(Rename(source="enc.{p}", target="encoder.{p}"), ops.Cast("emb", dtype=torch.float32))',
            id="keywords-in-a-tuple",
        ),
    ],
)
def test_op_spellings_read_alike(tmp_path, ops_text):
    """``Rename(...)`` or ``ops.Rename(...)``, ``"float32"`` or ``torch.float32``: the same ops, and they run."""
    path = write_ops_file(tmp_path, "spell", f'source = "1.0.0"\ntarget = "1.1.0"\nops = {ops_text}\n')
    converter = read_converter_file(path)
    assert converter.ops == (Rename("enc.{p}", "encoder.{p}"), Cast("emb", "float32"))
    result = run(Registry([converter]).plan("1.0.0", "1.1.0", allow_lossy=True), lightning(v1_state_dict()))
    assert result.checkpoint["state_dict"]["emb"].dtype == torch.float32
    assert "encoder.weight" in result.checkpoint["state_dict"]


@pytest.mark.parametrize(
    ("dtype_text", "dtype"),
    [
        pytest.param('"float32"', torch.float32, id="string"),
        pytest.param("torch.float32", torch.float32, id="torch-dtype"),
        pytest.param("torch.half", torch.float16, id="torch-alias-half"),
    ],
)
def test_dtype_spellings_run(tmp_path, dtype_text, dtype):
    """A Cast written with a dtype string, a torch dtype or a torch alias runs and gives that dtype."""
    write_ops_file(tmp_path, "cast", f'source = "1.0.0"\ntarget = "1.1.0"\nops = [Cast("enc.*", {dtype_text})]\n')
    registry = Registry.from_directory(tmp_path)
    ckpt = lightning({"enc.w": t(2, 2, dtype=torch.float64)})
    result = run(registry.plan("1.0.0", "1.1.0", allow_lossy=True), ckpt)
    assert result.checkpoint["state_dict"]["enc.w"].dtype == dtype


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        pytest.param(
            'ops = [Rename(f"l.{i}", f"m.{i}") for i in range(3)]  # HERE\n', "literal list", id="comprehension"
        ),
        pytest.param("ops = BASE + [Drop('x')]  # HERE\n", "literal list", id="concatenation"),
        pytest.param("ops = make_ops()  # HERE\n", "literal list", id="call-for-the-list"),
        pytest.param(
            "ops = [\n    Rename('a', 'b'),\n    make_rename('a', 'b'),  # HERE\n]\n", "Rename", id="unknown-fn"
        ),
        pytest.param("ops = [\n    Rename('a', 'b'),\n    RENAME,  # HERE\n]\n", "one of", id="a-name"),
        pytest.param("ops = [\n    Rename(prefix + 'a', 'b'),  # HERE\n]\n", "literal", id="computed-argument"),
        pytest.param("ops = [\n    Rename(*pair),  # HERE\n]\n", "*args", id="starred-argument"),
        pytest.param("ops = [\n    Rename('a', 'b', 'c'),  # HERE\n]\n", "Rename", id="too-many-arguments"),
        pytest.param("ops = [\n    Permute('w', (0, 0)),  # HERE\n]\n", "permutation", id="bad-permutation"),
        pytest.param("ops = []  # HERE\n", "empty", id="empty"),
    ],
)
def test_non_literal_ops_are_refused_with_the_line(tmp_path, body, hint):
    """An ops value that is not a literal list of op calls is a ConverterFileError naming file and line."""
    path = write_ops_file(tmp_path, "bad", 'source = "1.0.0"\ntarget = "1.1.0"\n' + body)
    with pytest.raises(ConverterFileError) as caught:
        read_converter_file(path)
    assert caught.value.file == str(path)
    assert caught.value.line == line_of(path, "# HERE")
    assert hint in caught.value.reason


def test_reshape_with_a_negative_source_shape_is_refused_when_read(tmp_path):
    """A reversible Reshape whose source_shape holds -1 (it would fail every run) is refused with file and line."""
    body = (
        'source = "1.0.0"\ntarget = "1.1.0"\nreversible = True\n'
        'ops = [\n    Reshape("w", (6,), source_shape=(2, -1)),  # HERE\n]\n'
    )
    path = write_ops_file(tmp_path, "flatten", body)
    with pytest.raises(ConverterFileError) as caught:
        read_converter_file(path)
    assert caught.value.file == str(path)
    assert caught.value.line == line_of(path, "# HERE")
    assert "Reshape" in caught.value.reason
    assert "source_shape" in caught.value.reason


def move_index_out_of_range(directory: Path) -> Path:
    """Write a converter 1.0.0 -> 1.1.0 whose MoveIndex does not fit enc.weight of shape [3, 5]."""
    return write_ops_file(
        directory,
        "reorder",
        'source = "1.0.0"\ntarget = "1.1.0"\nops = [Rename("l.{i}.q", "l.{i}.query"), '
        'MoveIndex("enc.weight", dim=1, index=9, to=0)]\n',
    )


def test_bad_op_argument_at_run_time_is_a_step_error(tmp_path):
    """An op that does not fit the real tensors makes run raise StepError naming the step, op and key."""
    path = move_index_out_of_range(tmp_path)
    plan = Registry.from_directory(tmp_path).plan("1.0.0", "1.1.0")
    with pytest.raises(StepError) as caught:
        run(plan, lightning(v1_state_dict()))
    error = caught.value
    assert (error.source, error.target, error.file) == ("1.0.0", "1.1.0", str(path))
    message = str(error)
    assert "1.0.0 -> 1.1.0" in message
    assert str(path) in message
    assert "MoveIndex" in message
    assert "enc.weight" in message
    assert "index=9" in message


def test_bad_op_argument_through_the_cli_is_one_error_line(tmp_path):
    """``convert`` exits 1 with one ``error:`` line naming op and key, no traceback, and writes nothing."""
    converters = tmp_path / "converters"
    move_index_out_of_range(converters)
    source, output = tmp_path / "in.ckpt", tmp_path / "out.ckpt"
    torch.save(lightning(v1_state_dict(), "1.0.0"), source)
    before = source.read_bytes()
    line = assert_one_line_error(cli("convert", source, "-o", output, "--converters", converters))
    assert "MoveIndex" in line
    assert "enc.weight" in line
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converters", "in.ckpt"]
    assert source.read_bytes() == before


def test_dry_run_reports_each_ops_step(tmp_path):
    """``convert --dry-run --json`` lists per step the keys the ops add, remove and reshape, and writes nothing."""
    marker = tmp_path / "executed"
    converters = tmp_path / "converters"
    write_ops_file(
        converters,
        "a_fuse",
        tripwire(marker)
        + 'source = "1.0.0"\ntarget = "1.1.0"\nops = [Concat(["l.{i}.q", "l.{i}.k"], into="l.{i}.qk")]\n',
    )
    write_ops_file(
        converters,
        "b_scale",
        'source = "1.1.0"\ntarget = "1.2.0"\n'
        'ops = [Add("scale", (3,)), Rename("enc.{p}", "encoder.{p}"), Permute("head.weight", (1, 0)),'
        ' MoveIndex("encoder.weight", dim=1, index=4, to=0)]\n',
    )
    source = tmp_path / "in.ckpt"
    torch.save(lightning(v1_state_dict(), "1.0.0"), source)
    result = cli("convert", source, "--dry-run", "--json", "--converters", converters)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["source"], report["target"], report["output"]) == ("1.0.0", "1.2.0", None)
    steps = [
        (s["source"], s["target"], s["converter"], s["added"], s["removed"], s["changed"]) for s in report["steps"]
    ]
    assert steps == [
        ("1.0.0", "1.1.0", "a_fuse", ["l.0.qk", "l.1.qk"], ["l.0.k", "l.0.q", "l.1.k", "l.1.q"], []),
        (
            "1.1.0",
            "1.2.0",
            "b_scale",
            ["encoder.bias", "encoder.weight", "scale"],
            ["enc.bias", "enc.weight"],
            ["head.weight"],
        ),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converters", "in.ckpt"]
    assert not marker.exists()


def test_dry_run_of_a_bad_op_fails_like_the_real_run(tmp_path):
    """A dry run catches an op that does not fit the checkpoint, with the same one-line error."""
    converters = tmp_path / "converters"
    move_index_out_of_range(converters)
    source = tmp_path / "in.ckpt"
    torch.save(lightning(v1_state_dict(), "1.0.0"), source)
    result = cli("convert", source, "--dry-run", "--converters", converters)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ")
    assert "enc.weight" in result.stderr


def test_run_reports_ops_steps_as_checked_but_unverified(tmp_path):
    """A step made of ops is checked against its predictions, but without a schema it is not verified."""
    write_ops_file(tmp_path, "fuse", REVERSIBLE_BODY)
    registry = Registry.from_directory(tmp_path)
    result = run(registry.plan("1.0.0", "1.1.0"), lightning(v1_state_dict()))
    (report,) = result.steps
    assert report.checked == ("ops",)
    assert (report.verified, report.status) == (False, "unverified")
    assert result.warnings == []
    with pytest.raises(ckpt_path.UnverifiedStepError, match=r"only its own checks ran \(ops\)"):
        run(registry.plan("1.0.0", "1.1.0"), lightning(v1_state_dict()), strict=True)


def test_ops_read_from_a_file_equal_ops_made_in_code(tmp_path):
    """Each op in the file becomes the op object its call spells, in order."""
    path = write_ops_file(tmp_path, "fuse", REVERSIBLE_BODY)
    assert read_converter_file(path).ops == (
        Rename("enc.{p}", "encoder.{p}"),
        MoveIndex("encoder.weight", dim=1, index=3, to=0),
        Concat(["l.{i}.q", "l.{i}.k"], into="l.{i}.qk", dim=0),  # type: ignore[arg-type]
        Permute("head.weight", (1, 0)),
        Reshape("head.bias", (2, 3), source_shape=(6,)),
    )


def test_reversible_ops_file_and_a_file_for_its_inverse_edge_clash(tmp_path):
    """A reversible file's inverse edge counts as a converter: another file for that edge is a duplicate."""
    write_ops_file(tmp_path, "fuse", REVERSIBLE_BODY)
    write_ops_file(tmp_path, "unfuse", 'source = "1.1.0"\ntarget = "1.0.0"\nops = [Rename("a", "b")]\n')
    with pytest.raises(ckpt_path.DuplicateConverterError, match=r"fuse\.py.*unfuse\.py|unfuse\.py.*fuse\.py"):
        Registry.from_directory(tmp_path).plan("1.0.0", "1.1.0")


# Ops generic over model sizes, read from files.

GENERIC_HEADER = (
    "from ckpt_path.ops import AddInto, Cast, Concat, DropDerived, DropMeta, MoveIndex, MoveMeta, Rename, Reshape,"
    " SetMeta, Slice, Split, Squeeze, Stack, Transpose, Unslice, Unsqueeze, Unstack\n"
)


def test_new_ops_read_from_a_file_equal_ops_made_in_code(tmp_path):
    """Stack, named Reshape, DropDerived, Slice and metadata ops in a file become the ops their calls spell."""
    from ckpt_path.ops import DropDerived, MoveMeta, SetMeta, Slice, Stack

    path = write_ops_file(
        tmp_path,
        "generic",
        GENERIC_HEADER + 'source = "1.0.0"\ntarget = "1.1.0"\n'
        "ops = [\n"
        '    Stack("{*m}.experts.{e}.w1", into="{*m}.experts.w1", dim=0),\n'
        '    Reshape("{*b}.grn.gamma", ["C"], source_shape=(1, 1, 1, "C")),\n'
        '    DropDerived("{*b}.attn_mask", optional=True),\n'
        '    Slice("pos_embed", into="cls_pos", dim=1, start=0, stop=1),\n'
        '    SetMeta("hyper_parameters.sizes", (1, 2), old={"a": [1]}),\n'
        '    MoveMeta(["callbacks", "Ckpt{\'monitor\': \'val.loss\'}"], "callbacks.best"),\n'
        "]\n",
    )
    assert read_converter_file(path).ops == (
        Stack("{*m}.experts.{e}.w1", into="{*m}.experts.w1"),
        Reshape("{*b}.grn.gamma", ("C",), source_shape=(1, 1, 1, "C")),
        DropDerived("{*b}.attn_mask", optional=True),
        Slice("pos_embed", into="cls_pos", dim=1, start=0, stop=1),
        SetMeta("hyper_parameters.sizes", (1, 2), old={"a": [1]}),  # type: ignore[arg-type]
        MoveMeta(("callbacks", "Ckpt{'monitor': 'val.loss'}"), ("callbacks", "best")),
    )


@pytest.mark.parametrize(
    ("op", "hint"),
    [
        pytest.param('Rename("a{*p}.w", "b.{*p}")', "whole segments", id="star-in-a-segment"),
        pytest.param('Stack("e.{e}.{j}.w", into="e.w")', "exactly one", id="Stack-two-indices"),
        pytest.param('Reshape("w", ["C"])', "not bound", id="Reshape-unbound-name"),
        pytest.param('Reshape("g", ["C"], source_shape=[1, -1])', "source_shape", id="Reshape-minus-one-in-source"),
        pytest.param('Cast("*", "float32", others="keep")', "source_dtype", id="Cast-keep-without-source"),
    ],
)
def test_bad_generic_op_is_refused_when_read(tmp_path, op, hint):
    """A malformed template or size in a file is a ConverterFileError naming the file and the op's line."""
    body = GENERIC_HEADER + f'source = "1.0.0"\ntarget = "1.1.0"\nops = [\n    {op},  # HERE\n]\n'
    path = write_ops_file(tmp_path, "bad", body)
    with pytest.raises(ConverterFileError) as caught:
        read_converter_file(path)
    assert caught.value.line == line_of(path, "# HERE")
    assert hint in caught.value.reason


def test_reversible_file_with_drop_derived_is_refused(tmp_path):
    """DropDerived is lossless but has no inverse: reversible = True names it."""
    body = (
        GENERIC_HEADER + 'source = "1.0.0"\ntarget = "1.1.0"\nreversible = True\nops = [DropDerived("*.attn_mask")]\n'
    )
    with pytest.raises(ConverterFileError, match="DropDerived has no inverse"):
        read_converter_file(write_ops_file(tmp_path, "bad", body))


def layered_checkpoint(version: str) -> dict[str, Any]:
    """Return a stamped Lightning checkpoint with 128 layers, 8 experts and a reorderable head."""
    state_dict = {f"model.layers.{i}.w": t(2) + i for i in range(128)}
    state_dict |= {f"moe.experts.{e}.w1": t(3, 4) + e for e in range(8)}
    state_dict |= {"output_map.weight": t(6, 2), "output_map.bias": t(6)}
    return lightning(state_dict, version)


EFFECTS_BODY = (
    GENERIC_HEADER + 'source = "1.0.0"\ntarget = "1.1.0"\n'
    "ops = [\n"
    '    Rename("model.layers.{i}.w", "backbone.blocks.{i}.w"),\n'
    '    Stack("{*m}.experts.{e}.w1", into="{*m}.experts.w1"),\n'
    '    MoveIndex("output_map.{p}", dim=0, index=3, to=1),\n'
    '    MoveMeta("hyper_parameters.hidden", "hyper_parameters.hidden_dim"),\n'
    "]\n"
)
EFFECTS = [
    "renamed 128: model.layers.{i}.w → backbone.blocks.{i}.w",
    "stacked 8 into moe.experts.w1 along new dim 0: {*m}.experts.{e}.w1",
    "moved index 3 → 1 of dim 0 in 2 keys: output_map.{p}",
    "moved hyper_parameters.hidden → hyper_parameters.hidden_dim",
]


@pytest.mark.parametrize("command", ["plan", "dry-run", "convert"])
def test_each_op_is_shown_in_the_users_terms(tmp_path, command):
    """Plan CKPT, convert --dry-run and convert say 'renamed 128: a → b', not +128 -128 and a key list."""
    converters = tmp_path / "converters"
    write_ops_file(converters, "reshape", EFFECTS_BODY)
    source = tmp_path / "in.ckpt"
    torch.save(layered_checkpoint("1.0.0"), source)
    args = {
        "plan": ["plan", source, "1.1.0"],
        "dry-run": ["convert", source, "--dry-run"],
        "convert": ["convert", source, "-o", tmp_path / "out.ckpt"],
    }[command]
    result = cli(*args, "--converters", converters)
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    for effect in EFFECTS:
        assert effect in lines, result.stdout
    assert "+ backbone.blocks.0.w" not in result.stdout


def test_meta_ops_change_the_written_checkpoint(tmp_path):
    """Converting through a file with MoveMeta writes the hyper-parameter under its new name, weights converted too."""
    converters = tmp_path / "converters"
    write_ops_file(converters, "reshape", EFFECTS_BODY)
    source, output = tmp_path / "in.ckpt", tmp_path / "out.ckpt"
    checkpoint = layered_checkpoint("1.0.0")
    torch.save(checkpoint, source)
    result = cli("convert", source, "-o", output, "--converters", converters)
    assert result.exit_code == 0, result.output
    written = torch.load(output, weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"])
    hparams["hidden_dim"] = hparams.pop("hidden")
    assert written["hyper_parameters"] == hparams
    assert written["state_dict"]["moe.experts.w1"].shape == (8, 3, 4)


def test_lossy_path_error_on_the_command_line_names_the_op(tmp_path):
    """`plan` across a lossy step says which op of which file made it lossy."""
    write_ops_file(tmp_path, "drop", 'source = "1.0.0"\ntarget = "2.0.0"\nops = [Rename("a", "b"), Drop("head.*")]\n')
    result = cli("plan", "1.0.0", "2.0.0", "--converters", tmp_path)
    assert result.exit_code == 1
    assert "has a lossy step (1.0.0 -> 2.0.0: Drop(pattern='head.*') in " in result.stderr
    assert "drop.py" in result.stderr


def test_mermaid_graph_stays_readable_with_the_new_ops(tmp_path):
    """`graph --format mermaid` gives one plain edge per converter, labelled by name, whatever templates the ops use."""
    write_ops_file(
        tmp_path,
        "a_fuse",
        GENERIC_HEADER + 'source = "1.0.0"\ntarget = "1.1.0"\nreversible = True\n'
        'ops = [Stack("{*m}.experts.{e}.w", into="{*m}.experts.w")]\n',
    )
    write_ops_file(
        tmp_path,
        "b_shift",
        GENERIC_HEADER + 'source = "1.1.0"\ntarget = "1.2.0"\n'
        'ops = [DropDerived("{*b}.attn_mask"), Rename("l.{i}.d.{*p}", "l.{i+1}.d.{*p}")]\n',
    )
    result = cli("graph", "--format", "mermaid", "--converters", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "graph LR"
    assert "    v0 -->|a_fuse| v1" in lines
    assert "    v1 -->|a_fuse:inverse| v0" in lines
    assert "    v1 -->|b_shift| v2" in lines  # dropping derived buffers is not a lossy (dotted) edge
    assert not any("{" in line for line in lines)


README = Path(__file__).resolve().parent.parent / "README.md"


def recipes() -> list[str]:
    """Return the ops blocks of the README's Recipes section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Recipes") :]
    section = section[: section.index("\n## ")]
    return [block for block in section.split("```python\n")[1:] if "ops = [" in block]


@pytest.mark.parametrize("index", range(8))
def test_readme_recipes_are_valid_ops_files(tmp_path, index):
    """Every recipe of the README reads as an ops file (reversible ones with their inverse)."""
    blocks = recipes()
    assert len(blocks) == 8
    block = blocks[index].split("```")[0]
    path = write_ops_file(tmp_path, "recipe", GENERIC_HEADER + 'source = "1.0.0"\ntarget = "1.1.0"\n' + block)
    converter = read_converter_file(path)
    assert converter.ops
    if converter.reversible:
        assert converter.inverted().ops
