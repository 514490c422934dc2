"""The test harness, one copy of each: the CLI in process, its one-line errors, converter files, the example history.

Plain functions, imported by name (``from helpers import cli``); the fixtures that build on them
are in ``conftest.py`` and the checkpoint builders in ``ckpt_fixtures.py``.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from typer.testing import CliRunner, Result

from ckpt_path import Converter, Registry
from ckpt_path.cli import app

ROOT = Path(__file__).resolve().parents[1]
"""The repository; only read from, never written to."""

EXAMPLE_CONVERTERS = ROOT / "converters"
"""The shipped example history (0.1.0 to 1.1.0, a lam branch, schemas) that users copy; never written."""

Edge: TypeAlias = "tuple[str, str] | tuple[str, str, Mapping[str, Any]]"
"""``(source, target)`` or ``(source, target, options)``; options go to ``Converter.from_function``."""


# --- the command line ---------------------------------------------------------------------------


def cli(*args: object) -> Result:
    """Run ``ckpt-path ARGS`` in process and return typer's result (stdout and stderr apart)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Result, *fragments: str, start: str = "") -> str:
    """Assert the CLI failed as its contract says and return the error line.

    The contract: exit 1 through ``SystemExit`` (anything else escaped the CLI), nothing on stdout,
    exactly one line on stderr, starting ``error: `` (then ``start``), and no traceback. Each
    fragment must appear in the line, compared case-insensitively.
    """
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {start}"), lines[0]
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


# --- converters ---------------------------------------------------------------------------------


def copy_examples(directory: Path) -> Path:
    """Copy the shipped example converters and their schemas to ``directory`` (new) and return it."""
    return Path(shutil.copytree(EXAMPLE_CONVERTERS, directory))


def write_converter(  # noqa: PLR0913 - the parts of a converter file, all but the edge optional
    directory: Path,
    name: str,
    source: str,
    target: str,
    body: str = "return ckpt",
    *,
    doc: str | None = None,
    code: str | None = None,
    **literals: object,
) -> Path:
    """Write the converter file ``<directory>/<name>.py`` and return its path.

    The file holds ``doc`` as its docstring (none when ``None``), ``source``, ``target`` and the
    literals, then ``code``; without ``code``, a ``def convert(ckpt):`` whose body is ``body``.
    """
    if code is None:
        code = "def convert(ckpt):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"
    lines = [f'"""{doc}"""', ""] if doc is not None else []
    lines += [f"source = {source!r}", f"target = {target!r}"]
    lines += [f"{key} = {value!r}" for key, value in literals.items()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text("\n".join(lines) + "\n\n\n" + code, encoding="utf-8")
    return path


def edge_name(source: str, target: str) -> str:
    """Name the in-memory converter of an edge after its versions."""
    return f"{source}->{target}"


def build_registry(edges: Iterable[Edge]) -> Registry:
    """Build a registry of identity converters, one per edge, in the order given."""
    registry = Registry()
    for edge in edges:
        source, target = edge[0], edge[1]
        options: Mapping[str, Any] = edge[2] if len(edge) > 2 else {}

        def convert(ckpt: object) -> object:
            return ckpt

        registry.add(
            Converter.from_function(source, target, convert, name=edge_name(source, target), **options),
        )
    return registry


def write_schema(directory: Path, version: str, tensors: Mapping[str, tuple[Sequence[int], str]]) -> Path:
    """Write ``directory/schemas/<version>.json`` holding ``key: (shape, dtype)`` entries; return its path."""
    body = {key: {"shape": list(shape), "dtype": dtype} for key, (shape, dtype) in tensors.items()}
    folder = directory / "schemas"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{version}.json"
    path.write_text(json.dumps({"version": version, "tensors": body}), encoding="utf-8")
    return path
