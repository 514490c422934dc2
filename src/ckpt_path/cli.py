"""The ``ckpt-path`` command line: a thin shell over the Python API.

This is the only module that imports typer. Expensive imports (torch, rich) happen inside
the commands that need them, so ``ckpt-path plan`` starts quickly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from ckpt_path.errors import CkptPathError

if TYPE_CHECKING:
    from packaging.version import Version

    from ckpt_path.planner import Plan
    from ckpt_path.registry import Registry

__all__ = ["app", "main"]

app = typer.Typer(
    name="ckpt-path",
    help=(
        "Convert PyTorch checkpoints between versions of your code.\n\n"
        "Versions are nodes of a graph and converters (one .py file each, in a converters "
        "directory) are its edges: upgrades, downgrades and branch versions alike. "
        "ckpt-path finds the shortest path from the version stamped in a checkpoint to the "
        "one you ask for, runs the converters in order and checks tensor shapes after every step."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

ConvertersOption = Annotated[
    Path | None,
    typer.Option(
        "--converters",
        help=(
            "Directory of converter files. Default: $CKPT_PATH_CONVERTERS, then "
            "[tool.ckpt-path] converters in ./pyproject.toml, then ./converters."
        ),
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of text.")]
AllowLossyOption = Annotated[
    bool,
    typer.Option("--allow-lossy", help="Accept a path with a lossy step when no lossless path exists."),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a :class:`CkptPathError` into one line on stderr and exit code 1."""
    try:
        yield
    except CkptPathError as exc:
        _fail(str(exc))


def _registry(converters: Path | None) -> Registry:
    from ckpt_path.registry import Registry

    return Registry.from_directory(converters)


@app.command()
def plan(
    source: Annotated[str, typer.Argument(help="Version to start from (or `latest`, `LABEL@latest`).")],
    target: Annotated[str, typer.Argument(help="Version to reach: a version, `latest` or `LABEL@latest`.")],
    converters: ConvertersOption = None,
    allow_lossy: AllowLossyOption = False,  # noqa: FBT002 - typer options are booleans
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Print the path from SOURCE to TARGET: the converters that would run, in order.

    Example: ckpt-path plan 0.1.0 latest
    """
    with _user_errors():
        registry = _registry(converters)
        result = registry.plan(source, target, allow_lossy=allow_lossy)
    if as_json:
        typer.echo(result.to_json())
        return
    _print_plan(result)


def _print_plan(result: Plan) -> None:
    if not result.steps:
        typer.echo(str(result))
        return
    from rich.console import Console
    from rich.table import Table

    title = f"{result.source} -> {result.target}: {len(result.steps)} step(s), cost {result.cost:g}"
    if result.lossy:
        title += ", LOSSY"
    table = Table(title=title, title_justify="left")
    for column in ("#", "source", "target", "converter", "description"):
        table.add_column(column)
    for i, step in enumerate(result.steps, 1):
        name = step.name + (" [lossy]" if step.lossy else "")
        table.add_row(str(i), str(step.source), str(step.target), name, step.description)
    Console(highlight=False, soft_wrap=False).print(table, markup=False)


class GraphFormat(str, Enum):
    """Output formats of ``ckpt-path graph``."""

    text = "text"
    mermaid = "mermaid"
    dot = "dot"


@app.command()
def graph(
    converters: ConvertersOption = None,
    fmt: Annotated[GraphFormat, typer.Option("--format", help="text, mermaid or dot.")] = GraphFormat.text,
) -> None:
    """Print the version graph: every converter as an edge SOURCE -> TARGET.

    Example: ckpt-path graph --format mermaid > graph.mmd
    """
    from ckpt_path.graph import render_graph

    with _user_errors():
        registry = _registry(converters)
        typer.echo(render_graph(registry.graph, fmt.value))


@app.command()
def versions(
    converters: ConvertersOption = None,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """List every version of the graph, newest first, with branch labels."""
    from ckpt_path.versions import branch_of

    with _user_errors():
        registry = _registry(converters)
        known = sorted(registry.versions, reverse=True)
        latest = max((v for v in known if v.local is None), default=None)
        branch_heads: dict[str | None, Version] = {}
        for v in known:
            branch_heads.setdefault(branch_of(v), v)
    rows: list[tuple[Version, str | None, list[str]]] = []
    for v in known:
        branch = branch_of(v)
        notes = [f"branch {branch}"] if branch else []
        if v == latest:
            notes.append("latest")
        elif branch and branch_heads[branch] == v:
            notes.append(f"{branch}@latest")
        rows.append((v, branch, notes))
    if as_json:
        objects = [{"version": str(v), "branch": b, "notes": n} for v, b, n in rows]
        typer.echo(json.dumps(objects, indent=2))
        return
    width = max((len(str(v)) for v, _, _ in rows), default=0)
    for v, _, notes in rows:
        typer.echo(f"{v!s:<{width}}  ({', '.join(notes)})" if notes else str(v))


def main() -> None:
    """Entry point of the console script."""
    app(prog_name="ckpt-path")


if __name__ == "__main__":  # pragma: no cover
    main()
