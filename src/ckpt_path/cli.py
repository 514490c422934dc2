"""The ``ckpt-path`` command line: a thin shell over the Python API.

This is the only module that imports typer. Expensive imports (torch, rich) happen inside
the commands that need them, so ``ckpt-path plan`` starts quickly.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ckpt_path.errors import CkptPathError, UsageError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ckpt_path.batch import BatchItem
    from ckpt_path.commands import ConvertResult, Inspection
    from ckpt_path.planner import Plan, Step
    from ckpt_path.registry import Registry
    from ckpt_path.runner import StepReport

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
        metavar="DIR",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of text.")]
StateDictOption = Annotated[
    str | None,
    typer.Option(
        "--state-dict",
        help="Dotted key of the state dict inside the checkpoint (default: detected: flat, state_dict, model, ...).",
        show_default=False,
        metavar="KEY",
    ),
]
SafeGlobalOption = Annotated[
    list[str] | None,
    typer.Option(
        "--safe-global",
        help="Allow this global (module.Name) while unpickling, for a file you trust. Repeatable.",
        show_default=False,
        metavar="MODULE.NAME",
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")]
AllowLossyOption = Annotated[
    bool,
    typer.Option("--allow-lossy", help="Accept a path with a lossy step when no lossless path exists."),
]


def _settle_imports() -> None:
    """Move everything imported so far out of the garbage collector's way.

    torch and its friends leave hundreds of thousands of objects; every full collection walks
    them all (about 70 ms each). Freezing them after the imports saved 0.36 to 0.51 s per
    ``convert`` in benchmarks/bench_convert.py.
    """
    import gc

    gc.freeze()


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(message: str) -> str:
    """Escape control characters (a key from a damaged file may hold a newline or a tab)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message)


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a :class:`CkptPathError` into one line on stderr and exit code 1 (2 for bad usage)."""
    try:
        yield
    except UsageError as exc:
        _fail(str(exc), 2)
    except CkptPathError as exc:
        _fail(str(exc))


def _examples(*lines: str) -> str:
    r"""Build the ``Examples:`` block of a command's help, one example per line.

    click rewraps every paragraph of help text into one, except a paragraph whose first line is
    the backspace character alone (``\b``). A raw docstring keeps ``\b`` as two characters, which
    click prints as they are, so the examples are the command's epilog, built here.
    """
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _registry(converters: Path | None) -> Registry:
    from ckpt_path.registry import Registry

    return Registry.from_directory(converters)


@app.command(epilog=_examples("ckpt-path plan 0.1.0 latest", "ckpt-path plan model.ckpt lam@latest --json"))
def plan(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="Version to start from (or `latest`, `LABEL@latest`), or a checkpoint file.",
        ),
    ],
    target: Annotated[
        str,
        typer.Argument(metavar="TARGET", help="Version to reach: a version, `latest` or `LABEL@latest`."),
    ],
    converters: ConvertersOption = None,
    allow_lossy: AllowLossyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Print the path from SOURCE to TARGET: the converters that would run, in order.

    SOURCE may be a checkpoint file: its stamp gives the version, and the text output adds
    what each step will add, remove and reshape, predicted on shapes alone (no tensor data read).
    """
    checkpoint: Path | None = None
    predicted: list[StepReport] = []
    with _user_errors():
        registry = _registry(converters)
        if (Path(source).is_file() or (Path(source) / ".metadata").is_file()) and not _is_version_text(source):
            from ckpt_path.commands import plan_file

            _settle_imports()
            checkpoint = Path(source)
            result, _, predicted = plan_file(checkpoint, target, registry, allow_lossy=allow_lossy)
        elif _names_a_file(source) and not _is_version_text(source):
            from ckpt_path.errors import UnreadableCheckpointError

            reason = "not a checkpoint file or DCP directory" if Path(source).exists() else "no such file"
            raise UnreadableCheckpointError(source, f"{reason} (SOURCE is a version or a checkpoint)")
        else:
            result = registry.plan(source, target, allow_lossy=allow_lossy)
            oldest = registry.settings.oldest  # as convert refuses it: a plan it would not run is no plan
            asked = result.requested_source or result.source  # as convert compares it: the version asked for
            if oldest is not None and asked < oldest:
                from ckpt_path.errors import UnsupportedVersionError

                raise UnsupportedVersionError(str(asked), str(oldest), registry.settings.last_release)
    if as_json:
        typer.echo(result.to_json())
        return
    _print_plan(result)
    if checkpoint is not None and result.steps:
        typer.echo(f"predicted on the shapes of {checkpoint} (no converter code run):")
        _print_reports(predicted, shown=None)


_CHECKPOINT_SUFFIXES = frozenset(
    {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle", ".tar", ".zip", ".safetensors", ".json", ".dcp"}
)
"""The extensions checkpoints are saved with: a SOURCE ending in one is a file name, not a mistyped version."""


def _names_a_file(text: str) -> bool:
    """Whether a SOURCE that is not a version reads as a file name: a directory part or a checkpoint's suffix."""
    path = Path(text)
    return "/" in text or "\\" in text or path.exists() or path.suffix.lower() in _CHECKPOINT_SUFFIXES


def _is_version_text(text: str) -> bool:
    from ckpt_path.errors import VersionError
    from ckpt_path.versions import LATEST, parse_version

    if text == LATEST or text.endswith("@" + LATEST):
        return True
    try:
        parse_version(text)
    except VersionError:
        return False
    return True


def _print_plan(result: Plan) -> None:
    if not result.steps:
        typer.echo(str(result))
        return
    if result.source_note is not None:
        typer.echo(result.source_note)
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
    wide = None if sys.stdout.isatty() else 1_000  # piped: as wide as the paths need (the table takes no more)
    Console(highlight=False, soft_wrap=False, width=wide).print(table, markup=False)


class GraphFormat(str, Enum):
    """Output formats of ``ckpt-path graph``."""

    text = "text"
    mermaid = "mermaid"
    dot = "dot"


@app.command(epilog=_examples("ckpt-path graph --format mermaid > graph.mmd"))
def graph(
    converters: ConvertersOption = None,
    fmt: Annotated[GraphFormat, typer.Option("--format", help="text, mermaid or dot.")] = GraphFormat.text,
) -> None:
    """Print the version graph: every converter as an edge SOURCE -> TARGET."""
    from ckpt_path.graph import render_graph

    with _user_errors():
        registry = _registry(converters)
        typer.echo(render_graph(registry.graph, fmt.value))


@app.command()
def versions(
    converters: ConvertersOption = None,
    as_json: JsonOption = False,
) -> None:
    """List every version of the graph, newest first, with branch labels."""
    from ckpt_path.versions import version_rows

    with _user_errors():
        registry = _registry(converters)
        rows = version_rows(registry.versions)
    if not rows:  # an empty or mistyped directory: say so rather than print nothing
        from ckpt_path.converter_files import display_path

        where = display_path(registry.directory) if registry.directory is not None else "the converters directory"
        typer.echo(f"warning: no converters in {where}, so no versions", err=True)
    if as_json:
        typer.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    width = max((len(str(row.version)) for row in rows), default=0)
    for row in rows:
        typer.echo(f"{row.version!s:<{width}}  ({', '.join(row.notes)})" if row.notes else str(row.version))


@app.command(
    epilog=_examples(
        "ckpt-path convert old.ckpt -o new.ckpt",
        "ckpt-path convert old.ckpt -o new.ckpt --to lam@latest",
        "ckpt-path convert old.ckpt --dry-run --to 1.0.0",
        "ckpt-path convert weights.pt -o new.pt --from 0.3.0   # a checkpoint without a stamp",
        "ckpt-path convert old.ckpt -o new.safetensors --state-dict-only",
        "ckpt-path convert step-1000/ -o step-1000-v2 --workers 2   # a DCP directory, 2 processes",
        "ckpt-path convert sweep/ --output-dir upgraded/ --workers 2",
    ),
)
def convert(
    input_paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT...",
            help="Checkpoint(s) to convert (never modified); a directory stands for the checkpoints in it.",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Where to write the result of one INPUT (required unless --dry-run or --output-dir).",
            show_default=False,
            metavar="OUTPUT",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            help="Convert every INPUT into DIR/<its file name> (needed for several inputs or a directory).",
            show_default=False,
            metavar="DIR",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help=(
                "Processes to use: several inputs (--output-dir) are converted N files at once; a DCP output "
                "(a DCP INPUT, or an OUTPUT ending in .dcp) is written by N processes; anything else by one."
            ),
            metavar="N",
        ),
    ] = 1,
    to: Annotated[
        str,
        typer.Option("--to", help="Target: a version, `latest` or `LABEL@latest`.", metavar="TARGET"),
    ] = "latest",
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Version of INPUT, when it has no stamp or a wrong one; `auto` infers it from the schemas.",
            show_default=False,
            metavar="VERSION",
        ),
    ] = None,
    converters: ConvertersOption = None,
    allow_lossy: AllowLossyOption = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Run the chain on shapes only (no tensor data read); write nothing."),
    ] = False,
    force: ForceOption = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse any step that is not verified: its landing version must have a schema the result matches.",
        ),
    ] = False,
    state_dict: StateDictOption = None,
    state_dict_only: Annotated[
        bool,
        typer.Option(
            "--state-dict-only",
            help="Write only the state dict (needed for a .safetensors OUTPUT of a checkpoint with more).",
        ),
    ] = False,
    safe_global: SafeGlobalOption = None,
    drop_optimizer_state: Annotated[
        bool,
        typer.Option(
            "--drop-optimizer-state",
            help=(
                "Drop optimizer state that cannot follow a changed parameter (lossy: training resumes with "
                "fresh optimizer state) instead of refusing the conversion."
            ),
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Convert checkpoints to another version, checking shapes after every step.

    The result is written to a temporary file beside OUTPUT and renamed into place only when
    every step succeeded, so a failure never leaves a half-written OUTPUT. OUTPUT's extension
    picks the format: .safetensors, .safetensors.index.json (sharded), .dcp (a
    torch.distributed.checkpoint directory), else torch.save; a DCP INPUT writes a DCP directory
    unless OUTPUT names another format. Tensors no step changed are copied from INPUT as they
    are, not rewritten.

    With --output-dir every INPUT (a directory: the checkpoints in it) is converted into
    DIR/<its file name>, --workers at a time; one that fails does not stop the others, a
    summary follows, and the exit code is 1 when any failed.
    """
    from ckpt_path.commands import convert_file

    _settle_imports()

    options: dict[str, Any] = {
        "target": to,
        "source": source,
        "allow_lossy": allow_lossy,
        "dry_run": dry_run,
        "force": force,
        "strict": strict,
        "state_dict_key": state_dict,
        "safe_globals": tuple(safe_global or ()),
        "state_dict_only": state_dict_only,
        "drop_optimizer_state": drop_optimizer_state,
    }
    if output_dir is None and len(input_paths) == 1 and _distributed(input_paths[0], output, workers):
        _convert_distributed(input_paths[0], output, converters, workers, options, as_json=as_json)
        return
    if output_dir is not None or len(input_paths) > 1 or input_paths[0].is_dir():
        _convert_batch(input_paths, output, output_dir, converters, workers, options, as_json=as_json)
        return
    progress = _StepProgress(enabled=not as_json)
    with _user_errors():
        registry = _registry(converters)
        try:
            result = convert_file(
                input_paths[0],
                output,
                registry=registry,
                on_step=progress.on_step,
                on_write=progress.on_write,
                **options,
            )
        finally:
            progress.close()
    warnings = list(result.warnings)
    if workers > 1:
        warnings.append(_one_process(None if dry_run else output))
    for warning in warnings:
        typer.echo(f"warning: {_one_line(warning)}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_conversion(result)


def _one_process(output: Path | None) -> str:
    """Say that --workers did nothing here: one INPUT converted into a file (or a dry run)."""
    done = "nothing is written (--dry-run)" if output is None else f"{output} is written by one process"
    return (
        "--workers applies to DCP outputs (an OUTPUT ending in .dcp, or a DCP INPUT) and to several inputs "
        f"(--output-dir), so {done}"
    )


def _distributed(input_path: Path, output: Path | None, workers: int) -> bool:
    """Whether a conversion is for ckpt_path.distributed: a DCP checkpoint in or out, torchrun, --workers."""
    from ckpt_path.distributed import takes

    return takes(input_path, output, workers)


def _convert_distributed(
    input_path: Path,
    output: Path | None,
    converters: Path | None,
    workers: int,
    options: dict[str, Any],
    *,
    as_json: bool,
) -> None:
    """Convert a distributed checkpoint (or into one), with one process, --workers N, or under torchrun."""
    from ckpt_path.distributed import Options, convert

    progress = _StepProgress(enabled=not as_json)
    with _user_errors():
        registry = _registry(converters)
        try:
            result = convert(
                input_path, output, registry=registry, options=Options(**options), workers=workers,
                on_step=progress.on_step,
            )  # fmt: skip
        finally:
            progress.close()
    if result is None:  # another process of a torchrun conversion than the first: process 0 reports
        return
    for warning in result.warnings:
        typer.echo(f"warning: {_one_line(warning)}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_conversion(result)


def _convert_batch(
    inputs: list[Path],
    output: Path | None,
    output_dir: Path | None,
    converters: Path | None,
    workers: int,
    options: dict[str, Any],
    *,
    as_json: bool,
) -> None:
    """Convert several checkpoints into a directory; a summary table (or JSON) at the end."""
    from ckpt_path.batch import convert_batch, plan_outputs

    with _user_errors():
        if output is not None and output_dir is not None:
            raise UsageError(
                "-o and --output-dir do not go together: -o names the OUTPUT of one INPUT, "
                "--output-dir DIR receives each INPUT as DIR/<its file name>"
            )
        if output is not None:
            raise UsageError("-o names one OUTPUT; several inputs go to --output-dir DIR")
        if output_dir is None:
            raise UsageError("several inputs (or a directory) need --output-dir DIR")
        registry = _registry(converters)
        pairs = plan_outputs(inputs, output_dir)
    progress = _BatchProgress(len(pairs), enabled=not as_json)
    try:
        items = convert_batch(pairs, registry, workers=workers, on_done=progress.on_done, **options)
    finally:
        progress.close()
    failed = [item for item in items if not item.ok]
    if as_json:
        typer.echo(json.dumps([item.to_dict() for item in items], indent=2))
    else:
        _print_batch(items)
    for item in failed:
        typer.echo(f"error: {item.input}: {_one_line(item.error or '')}", err=True)
    if failed:
        raise typer.Exit(1)


def _print_batch(items: list[BatchItem]) -> None:
    from rich.console import Console
    from rich.table import Table

    done = sum(item.ok for item in items)
    dry = any(item.ok and item.result.get("dry_run") for item in items)
    title = f"{done} of {len(items)} " + ("would convert (dry run, nothing written)" if dry else "converted")
    table = Table(title=title, title_justify="left")
    for column in ("input", "output", "result", "copied", "written", "seconds"):
        table.add_column(column, overflow="fold")  # a long path wraps, never cut to "run0.ck…" when piped
    for item in items:
        if item.ok:
            plan = f"{item.result.get('source')} -> {item.result.get('target')}"
            copied, written = (_human_bytes(int(item.result.get(k, 0))) for k in ("copied_bytes", "written_bytes"))
        else:
            plan, copied, written = f"FAILED ({item.error_class})", "", ""
        table.add_row(str(item.input), str(item.output), plan, copied, written, f"{item.seconds:.2f}")
    wide = None if sys.stdout.isatty() else 1_000  # piped: as wide as the paths need (the table takes no more)
    Console(highlight=False, soft_wrap=False, width=wide).print(table, markup=False)


class _BatchProgress:
    """One progress bar over the whole batch on a terminal; silent otherwise or with --json."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("converting"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("converting", total=total)

    def on_done(self, _item: BatchItem, done: int, _total: int) -> None:
        """Advance the bar."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done)

    def close(self) -> None:
        """Take the bar off the terminal."""
        if self._progress is not None:
            self._progress.stop()


def _print_conversion(result: ConvertResult) -> None:
    plan = result.plan
    where = "dry run, nothing written" if result.dry_run else f"written to {result.output}"
    typer.echo(f"{result.input}: {plan.source} -> {plan.target} in {len(result.steps)} step(s); {where}")
    _print_reports(result.steps, shown=None if result.dry_run else 8)
    copied, written = _human_bytes(result.copied_bytes), _human_bytes(result.written_bytes)
    if result.dry_run:
        typer.echo(f"  tensors: {copied} unchanged (copied as they are where the formats allow), {written} computed")
    else:
        typer.echo(f"  tensors: {copied} copied from the input as they were, {written} written")
    unverified = [r for r in result.steps if r.predicted and not r.verified]
    if unverified:
        typer.echo(
            f"  {len(unverified)} of {len(result.steps)} step(s) not verified: their landing version has no "
            "schema (schemas/VERSION.json); --strict refuses them",
        )


def _print_reports(reports: list[StepReport], *, shown: int | None) -> None:
    for i, report in enumerate(reports, 1):
        diff = report.diff
        line = f"  {i}. {report.step.source} -> {report.step.target}  {report.step.name}  "
        if not report.predicted:
            typer.echo(line + f"[not predicted: {report.note}]")
            continue
        checks = "+".join(report.checked)
        status = {
            "verified": f"verified: {checks}",
            "unverified": f"unverified: {checks} only",
            "unchecked": "UNCHECKED",
        }[report.status]
        skipped = "  (skipped: when() said no)" if not report.applied else ""
        described = report.described
        if described is not None:
            # Ops say what they did in the user's terms: "renamed 128: a.{i}.w → b.{i}.w", not 256 keys.
            typer.echo(line + f"[{status}]  {len(report.step.ops or ())} op(s)")
            for text in described:
                typer.echo(f"       {text}")
            continue
        typer.echo(line + f"[{status}]  +{len(diff.added)} -{len(diff.removed)} ~{len(diff.changed)}{skipped}")
        lines = diff.describe()
        for text in lines[:shown]:
            typer.echo(f"       {text}")
        if shown is not None and len(lines) > shown:
            typer.echo(f"       ... and {len(lines) - shown} more (see --dry-run or --json)")


class _StepProgress:
    """A progress line per step on a terminal; silent when stderr is not a TTY or with --json."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._writing = False

    def close(self) -> None:
        """Take the progress display off the terminal."""
        if self._progress is not None:
            self._progress.stop()

    def _start(self, label: str, total: int, *, in_bytes: bool) -> tuple[Progress, TaskID]:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        if self._progress is not None:
            self._progress.stop()
        columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn()]
        columns += [DownloadColumn()] if in_bytes else []
        progress = RichProgress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        progress.start()
        self._task = progress.add_task(label, total=total)
        self._progress = progress
        return progress, self._task

    def on_step(self, index: int, total: int, step: Step) -> None:
        """Show which step runs."""
        if not self.enabled:
            return
        label = f"step {index + 1}/{total}: {step.source} -> {step.target} ({step.name})"
        if self._progress is None or self._task is None:
            self._start(label, total, in_bytes=False)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=label, completed=index)

    def on_write(self, done: int, total: int) -> None:
        """Show the bytes written so far."""
        if not self.enabled:
            return
        if not self._writing:
            self._writing = True
            self._start("writing", total, in_bytes=True)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done)


@app.command("inspect")
def inspect_command(
    checkpoint: Annotated[Path, typer.Argument(metavar="CKPT", help="Checkpoint to describe.")],
    converters: ConvertersOption = None,
    state_dict: StateDictOption = None,
    safe_global: SafeGlobalOption = None,
    as_json: JsonOption = False,
) -> None:
    """Describe a checkpoint: format, stamped version and history, tensors, bytes, dtypes.

    Reads no tensor data, so it is instant even on a multi-GB file. With a converters directory
    it also infers the version of an unstamped checkpoint from the schemas, and reports
    converters edited after they ran. Classes the pickle needs are listed, never imported.
    """
    from ckpt_path.commands import inspect_file
    from ckpt_path.dcp import metadata_only

    _settle_imports()
    from ckpt_path.registry import Registry, find_converters_dir

    with _user_errors():
        root = find_converters_dir(converters)
        registry = Registry.from_directory(root) if root.is_dir() else None
        with metadata_only():  # a distributed checkpoint is described from its .metadata alone
            info = inspect_file(
                checkpoint,
                registry=registry,
                state_dict_key=state_dict,
                safe_globals=tuple(safe_global or ()),
            )
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    typer.echo(_describe_inspection(info))
    for warning in info.warnings:
        typer.echo(f"warning: {_one_line(warning)}", err=True)


def _describe_inspection(info: Inspection) -> str:
    where = info.state_dict or "top level (flat state dict)"
    dtypes = ", ".join(f"{k} x{v}" for k, v in info.dtypes.items()) or "none"
    if info.version is not None:
        version = info.version
        if info.reads_as:
            version += f" (reads as {info.reads_as}, the highest version of the graph at or below it)"
    elif info.inferred_version:
        version = f"not stamped; {info.inferred_version} according to {info.version_from}"
        if info.reads_as:
            version += f" (reads as {info.reads_as}, the highest version of the graph at or below it)"
    elif info.damaged_stamp:
        version = f"damaged stamp ({info.damaged_stamp}); replace it with `ckpt-path stamp` or pass --from"
    else:
        version = "not stamped (use `ckpt-path stamp` or --from)"
    lines = [
        f"file:        {info.path} ({_human_bytes(info.file_bytes)})",
        f"format:      {info.format}",
        f"version:     {version}",
        f"state dict:  {where}",
        f"tensors:     {info.tensors} ({_human_bytes(info.bytes)}); {dtypes}",
    ]
    if info.keys:
        lines.append(f"top level:   {', '.join(info.keys)}")
    if info.globals:
        lines.append(f"needs:       {', '.join(info.globals)} (not allowed by weights_only loading)")
    if info.history:
        lines.append("history:")
        for h in info.history:
            step = f"{h.get('source')} -> {h.get('target')}"
            lines.append(f"  {h.get('at', '?')}  {step}  {h.get('converter')}  {h.get('digest') or ''}")
    return "\n".join(line.rstrip() for line in lines)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":  # noqa: PLR2004 - bytes in a KiB
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@app.command()
def stamp(
    checkpoint: Annotated[Path, typer.Argument(metavar="CKPT", help="Checkpoint to stamp.")],
    version: Annotated[str, typer.Argument(metavar="VERSION", help="The version of the code that wrote CKPT.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write the stamped copy here instead of replacing CKPT.",
            show_default=False,
            metavar="OUTPUT",
        ),
    ] = None,
    force: ForceOption = False,
    state_dict: StateDictOption = None,
    safe_global: SafeGlobalOption = None,
) -> None:
    """Record VERSION in a checkpoint saved before it had a stamp (or with a wrong one).

    Without -o the checkpoint is replaced atomically (written beside it, then renamed).
    """
    from ckpt_path.commands import stamp_file

    _settle_imports()

    with _user_errors():
        written = stamp_file(
            checkpoint,
            version,
            output,
            force=force,
            state_dict_key=state_dict,
            safe_globals=tuple(safe_global or ()),
        )
    typer.echo(f"stamped {written} as {version}")
    note = _graph_note(version)
    if note is not None:
        typer.echo(f"warning: {note}", err=True)


def _graph_note(version: str) -> str | None:
    """Say how the project's converters will read a stamped version that is not one of their graph, if so."""
    from ckpt_path.converter_files import display_path
    from ckpt_path.errors import CkptPathError
    from ckpt_path.registry import Registry, find_converters_dir

    try:
        directory = find_converters_dir()
        if not directory.is_dir():
            return None  # no project here: nothing to compare with
        planner = Registry.from_directory(directory).planner
    except CkptPathError as exc:  # a broken pyproject.toml or converter file: the stamp is written all the same
        return f"could not read the project's converters to compare {version} with them: {exc}"
    shown = display_path(directory)
    try:
        resolved, asked = planner.resolve_source(version)
    except CkptPathError as exc:
        return f"the converters in {shown} do not know {version}, so convert will refuse it: {exc}"
    if asked is None:
        return None
    return f"{version} is not a version of the converters in {shown}; convert reads it as {resolved}"


@app.command()
def schema(
    checkpoint: Annotated[Path, typer.Argument(metavar="CKPT", help="A real checkpoint of VERSION.")],
    version: Annotated[str, typer.Option("--version", help="The version CKPT belongs to.", metavar="VERSION")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Default: <converters>/schemas/VERSION.json.",
            show_default=False,
            metavar="OUTPUT",
        ),
    ] = None,
    converters: ConvertersOption = None,
    force: ForceOption = False,
    state_dict: StateDictOption = None,
    any_dtype: Annotated[
        bool,
        typer.Option(
            "--any-dtype",
            help="Leave every dtype free (the layout ships in float32, bfloat16, float16, ...); shapes are kept.",
        ),
    ] = False,
) -> None:
    """Write the schema of VERSION (every key's shape and dtype) from a real checkpoint.

    After each step that lands on VERSION, convert checks the whole state dict against it:
    such a step is verified. Edit the file to name dimensions (["hidden", 6]), use glob keys
    ("layers.*.weight") or drop an entry's "dtype" to leave it free.
    """
    from ckpt_path.commands import capture_schema

    _settle_imports()
    from ckpt_path.registry import find_converters_dir

    with _user_errors():
        out = output or find_converters_dir(converters) / "schemas" / f"{version}.json"
        written = capture_schema(checkpoint, version, out, force=force, state_dict_key=state_dict, any_dtype=any_dtype)
    typer.echo(f"wrote {written}")


@app.command(
    epilog=_examples(
        "ckpt-path new rename_head --from 1.1.0 --to 1.2.0",
        "ckpt-path new fuse_qkv --from 1.2.0 --to 1.3.0 --ops",
        "ckpt-path new moe_fusion --from 1.3.0 --to 2.0.0 --infer",
    ),
)
def new(
    name: Annotated[
        str,
        typer.Argument(metavar="NAME", help="What the step does, e.g. fuse_qkv (becomes the file name)."),
    ],
    source: Annotated[str, typer.Option("--from", help="Version the converter starts from.", metavar="A")],
    target: Annotated[str, typer.Option("--to", help="Version the converter lands on.", metavar="B")],
    converters: ConvertersOption = None,
    ops: Annotated[
        bool,
        typer.Option("--ops", help="Scaffold declarative ops (reversible) instead of a convert function."),
    ] = False,
    infer: Annotated[
        bool,
        typer.Option(
            "--infer",
            help=(
                "Draft the ops from schemas/A.json and schemas/B.json: renames, stacks, "
                "concatenations and splits found by shapes and names; the rest as TODO comments."
            ),
        ),
    ] = False,
) -> None:
    """Scaffold a documented converter file NNN_NAME.py in the converters directory."""
    from ckpt_path.registry import find_converters_dir
    from ckpt_path.scaffold import scaffold_converter

    with _user_errors():
        if ops and infer:
            raise UsageError("--ops and --infer do not go together: --infer drafts the ops, --ops leaves them to you")
        path = scaffold_converter(find_converters_dir(converters), name, source, target, ops=ops, infer=infer)
    if infer:
        todo = sum(line.startswith("#   ") for line in path.read_text(encoding="utf-8").splitlines())
        left = f"; {todo} line(s) marked TODO" if todo else ""
        drafted = f"drafted from the schemas of {source} and {target}{left}"
        typer.echo(f"wrote {path}, {drafted}; read it, then run `ckpt-path check`")
        return
    typer.echo(f"wrote {path}; edit it, then run `ckpt-path check`")


@app.command()
def check(converters: ConvertersOption = None) -> None:
    """Lint the converters directory; exit 1 on any problem (for CI and pre-commit).

    Finds files that do not parse or import, bad metadata, duplicate edges, versions that
    cannot reach latest, ops that do not fit their source's schema, convert functions that
    return no checkpoint, reversible files whose round trip is not bitwise identical, and two
    paths between the same versions that give different tensors. Functions, round trips and
    paths run on synthetic checkpoints built from schemas/<version>.json; other failures of a
    function there are notes.
    """
    from ckpt_path.check import check_directory

    with _user_errors():
        findings = check_directory(converters)
    problems = [f for f in findings if f.problem]
    for finding in findings:
        typer.echo(("error: " if finding.problem else "note: ") + _one_line(str(finding)), err=finding.problem)
    if problems:
        typer.echo(f"{len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo("converters OK")


def main() -> None:
    """Entry point of the console script."""
    app(prog_name="ckpt-path")


if __name__ == "__main__":  # pragma: no cover
    main()
