"""Write a new converter file: the documented templates of ``ckpt-path new``, or a drafted ops file.

:func:`scaffold_converter` picks the next free ``NNN_name.py``, refuses an edge another file
already converts, and writes either a template (a ``convert`` function, or ``ops`` with
``--ops``) or, with ``--infer``, the ops :func:`ckpt_path.drafting.draft_ops` drafts from the
two versions' schemas, spelled as Python with what is left to do as TODO comments.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from packaging.version import Version

from ckpt_path.converter_files import converter_files, display_path, read_converter_file
from ckpt_path.converters import Converter
from ckpt_path.drafting import Draft, draft_ops, why_not_reversible
from ckpt_path.errors import ConverterFileError, VersionError
from ckpt_path.ops import Op
from ckpt_path.shapes import Schema, load_schema
from ckpt_path.versions import parse_version

__all__ = ["scaffold_converter"]

_LINE = 120
"""The longest line a drafted file writes (the project's line length)."""

_CONVERT_TEMPLATE = '''"""{description}"""

source = "{source}"
target = "{target}"
# Glob patterns of the state-dict keys this step may add, remove, reshape or re-type.
# Every other key must come through with the same shape and dtype (checked after the step).
touches = []
# lossy = True     # the step throws information away (used only where no lossless path exists)
# cost = 1.0       # edge weight for the planner


def convert(ckpt):
    """Take a {source} checkpoint and return it as {target} would save it (mutating is fine)."""
    sd = ckpt["state_dict"]  # ckpt["model"], or ckpt itself for a flat state dict
    # Example: sd["new.name"] = sd.pop("old.name")
    del sd  # remove once the step does something
    return ckpt


# def when(ckpt):
#     """Guard: return False to leave checkpoints this step does not apply to unchanged."""
#     return True
'''

# The import is part of the file written, not of this module: a new ops file imports every op its
# comments show, so its author can edit `ops` without touching the import, and the noqa for F401
# keeps ruff, run over the converters directory, from flagging the ones the file does not use.
_OPS_TEMPLATE = '''"""{description}"""

from ckpt_path.ops import (  # noqa: F401 - every op shown below, so editing ops never needs an import
    Add,
    Cast,
    Concat,
    Drop,
    DropDerived,
    MoveIndex,
    Permute,
    Rename,
    Reshape,
    SetMeta,
    Split,
    Stack,
)

source = "{source}"
target = "{target}"
reversible = True  # registers {target} -> {source} too; needs every op to have an inverse (not Drop, DropDerived)

# Read without running this file. Keys are templates: {{name}} matches one dotted segment,
# {{*name}} any number of segments, {{i+1}} computes with a number; optional=True may match nothing.
#   Rename("layers.{{i}}.attn.{{p}}", "layers.{{i}}.self_attn.{{p}}")
#   Rename("{{*m}}.LayerNorm.gamma", "{{*m}}.LayerNorm.weight")        # at every depth, under any prefix
#   Rename("layers.{{i}}.downsample.{{*p}}", "layers.{{i+1}}.downsample.{{*p}}")
#   MoveIndex("embedder.0.weight", dim=1, index=49, to=34)
#   Concat(["attn.q.{{p}}", "attn.k.{{p}}", "attn.v.{{p}}"], into="attn.qkv.{{p}}", dim=0)
#   Split("attn.qkv.{{p}}", into=["attn.q.{{p}}", "attn.k.{{p}}", "attn.v.{{p}}"], dim=0)
#   Stack("{{*m}}.experts.{{e}}.w2.weight", into="{{*m}}.experts.down_proj")   # experts 0..N-1, any N
#   Permute("conv.weight", dims=[1, 0, 2, 3]); Reshape("{{*b}}.gamma", ["C"], source_shape=[1, 1, 1, "C"])
#   Add("head.scale", shape=[6], fill=1.0); Drop("aux.*"); Cast("*.weight", "float16", source_dtype="float32")
#   DropDerived("{{*b}}.relative_position_index"); SetMeta("hyper_parameters.version", "2.0")
# `ckpt-path new NAME --from A --to B --infer` drafts these from schemas/A.json and schemas/B.json.
ops = [
    Rename("OLD.{{p}}", "NEW.{{p}}"),
]
'''


def scaffold_converter(  # noqa: PLR0913 - where, what, the versions, and how to write it
    directory: str | Path,
    name: str,
    source: str,
    target: str,
    *,
    ops: bool = False,
    infer: bool = False,
) -> Path:
    """Write a documented converter file ``NNN_name.py`` for ``source -> target``; return its path.

    With ``infer`` the ops are drafted from ``schemas/<source>.json`` and ``schemas/<target>.json``
    (see :func:`~ckpt_path.drafting.draft_ops`); what the draft could not explain is written as TODO comments.
    """
    root = Path(directory)
    src, tgt = parse_version(source), parse_version(target)
    if src == tgt:
        raise VersionError(target, "source and target are the same version")
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise ConverterFileError(name, "a converter name needs letters or digits")
    root.mkdir(parents=True, exist_ok=True)
    for converter in _existing(root):
        for edge in converter.edges():
            if edge.edge == (src, tgt):
                raise ConverterFileError(converter.origin, f"already converts {src} -> {tgt}")
    numbers = [int(m.group(1)) for p in root.glob("*.py") if (m := re.match(r"(\d+)_", p.name))]
    path = root / f"{(max(numbers) + 1) if numbers else 1:03d}_{slug}.py"
    description = _description(name)
    if infer:
        schemas = [_schema_for(root, version) for version in (src, tgt)]
        text = _render_draft(draft_ops(*schemas), description, (src, tgt), schemas)
    else:
        template = _OPS_TEMPLATE if ops else _CONVERT_TEMPLATE
        text = template.format(description=description, source=src, target=tgt)
    with path.open("x", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _description(name: str) -> str:
    """Return the docstring of a new file: the words of ``name`` as a sentence (``bad name!`` gives ``Bad name.``).

    Punctuation, quotes and backslashes are left out, so whatever the name the docstring is
    one plain sentence that cannot end the string early.
    """
    return " ".join(re.sub(r"[\W_]+", " ", name).split()).capitalize() + "."


def _existing(root: Path) -> list[Converter]:
    """Read the converters already in ``root``; a broken file does not stop scaffolding (``check`` reports it)."""
    found = []
    for path in converter_files(root):
        try:
            found.append(read_converter_file(path, display=display_path(path)))
        except ConverterFileError:
            continue
    return found


def _schema_for(root: Path, version: Version) -> Schema:
    """Load ``schemas/<version>.json`` of the converters directory, which ``--infer`` cannot do without."""
    path = root / "schemas" / f"{version}.json"
    if not path.is_file():
        raise ConverterFileError(
            display_path(path),
            f"--infer needs the schema of {version}; write it with `ckpt-path schema CKPT --version {version}`",
        )
    return load_schema(path)


def _not_reversible(draft: Draft, source: Schema, target: Schema) -> str:
    """Say why the drafted file must not say ``reversible = True``; empty when it may.

    It may when the draft is complete and its inverse, predicted on the target layout, gives
    the source layout back (:func:`~ckpt_path.drafting.why_not_reversible`): otherwise the
    inverse edge it registers would fail ``ckpt-path check``'s round trip, or every run back.
    """
    ops = [op for op, _ in draft.ops]
    if draft.todo or draft.problems:
        return "the draft is not finished (see the TODOs below); set True once `ckpt-path check` passes"
    if not ops:
        return "nothing was drafted: the two schemas are the same"
    return why_not_reversible(ops, source, target)


def _render_draft(draft: Draft, description: str, versions: tuple[Version, Version], schemas: Sequence[Schema]) -> str:
    """Spell ``draft`` as an ops file: reversible when its inverse gives the source layout back, else saying why not."""
    source, target = versions
    ops = [op for op, _ in draft.ops]
    names = sorted({type(op).__name__ for op in ops})
    why = _not_reversible(draft, *schemas)
    reversible = (
        ["reversible = True"]
        if not why
        else textwrap.wrap(
            f"reversible = False  # {why}",
            width=_LINE,
            subsequent_indent="#   ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    )
    lines = [
        f'"""{description}"""',
        "",
        f"from ckpt_path.ops import {', '.join(names or ['Rename'])}",
        "",
        f'source = "{source}"',
        f'target = "{target}"',
        *reversible,
        "",
        f"# Drafted by `ckpt-path new --infer` from schemas/{source}.json and schemas/{target}.json.",
        "# Read every op (an order of fused parts, a transpose guessed from shapes), then run `ckpt-path check`.",
        "ops = [",
    ]
    for op, comment in draft.ops:
        note = f"  # {comment}" if comment else ""
        call = _spelled(op)
        if len(call) + len(note) + 5 <= _LINE:
            lines.append(f"    {call},{note}")
        else:  # one argument a line, as a formatter would
            lines.append(f"    {type(op).__name__}({note}")
            lines += [f"        {argument}," for argument in _arguments(op)]
            lines.append("    ),")
    if not ops:
        lines.append('    Rename("OLD.{p}", "NEW.{p}"),  # TODO: nothing could be drafted')
    lines.append("]")
    if draft.todo:
        lines += ["", "# TODO: not explained by the draft; write ops for these keys:"]
        lines += [f"#   {line}" for line in draft.todo]
    if draft.problems:
        lines += ["", "# TODO: the drafted ops do not give the target layout yet:"]
        lines += [f"#   {line}" for line in draft.problems[:20]]
    return "\n".join(lines) + "\n"


def _python(value: object) -> str:
    """Python source for a literal op argument, with double-quoted strings."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    return repr(value)


def _arguments(op: Op) -> list[str]:
    """Spell the arguments that make ``op`` in a converter file: required ones by position, the rest by name."""
    args = []
    for item in dataclasses.fields(op):
        value = getattr(op, item.name)
        if item.default is dataclasses.MISSING:
            args.append(_python(value))
        elif value != item.default:
            args.append(f"{item.name}={_python(value)}")
    return args


def _spelled(op: Op) -> str:
    """Spell the call that makes ``op`` in a converter file, on one line."""
    return f"{type(op).__name__}({', '.join(_arguments(op))})"
