"""Many checkpoints in one command: a sweep's 300 checkpoints upgraded at once.

``ckpt-path convert IN... --output-dir DIR`` converts each input into ``DIR/<its file name>``
(a directory given as an input stands for the checkpoints in it), torch imported and the
converters read once, ``--workers N`` processes at a time. One failing checkpoint does not
stop the others; each gets its own result or error, and the command fails when any did.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_path.errors import CkptPathError, UsageError
from ckpt_path.formats import INDEX_SUFFIX
from ckpt_path.registry import Registry

__all__ = ["BatchItem", "checkpoint_files", "convert_batch", "plan_outputs"]

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
"""What a file in a directory given as an input must end with to count as a checkpoint."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchItem:
    """One input of a batch: where it went, and its result or its error."""

    input: Path
    output: Path
    error: str | None = None
    """The one-line message, when the conversion failed."""
    error_class: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    """``convert --json``'s object for this input, when it succeeded."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the conversion succeeded."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """Return the item as ``convert --json`` prints it for a batch."""
        return {
            **self.result,
            "input": str(self.input),
            "output": str(self.output),
            "ok": self.ok,
            "error": self.error,
            "error_class": self.error_class,
            "seconds": round(self.seconds, 3),
        }


def checkpoint_files(directory: Path) -> list[Path]:
    """Return the checkpoints directly in ``directory``: files with a checkpoint suffix, and layout indexes.

    The shards of a sharded layout are not inputs of their own: its index stands for them.
    """
    found = []
    shards: set[str] = set()
    for path in sorted(directory.iterdir()):
        if path.name.lower().endswith(INDEX_SUFFIX):
            found.append(path)
            shards |= _shard_names(path)
    for path in sorted(directory.iterdir()):
        name = path.name.lower()
        if path.is_file() and name.endswith(CHECKPOINT_SUFFIXES) and path.name not in shards:
            found.append(path)
    return sorted(found)


def _shard_names(index: Path) -> set[str]:
    import json

    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return {str(name) for name in weight_map.values()}
    except (OSError, ValueError, AttributeError, RecursionError):
        return set()


def plan_outputs(inputs: Iterable[Path], output_dir: Path) -> list[tuple[Path, Path]]:
    """Pair each input (a directory stands for its checkpoints) with ``output_dir/<its name>``.

    Two inputs with one name would overwrite each other: a :class:`UsageError` names them.
    """
    pairs: list[tuple[Path, Path]] = []
    for given in inputs:
        whole = not given.is_dir() or (given / ".metadata").is_file()  # a distributed checkpoint is one
        files = [given] if whole else checkpoint_files(given)
        if not whole and not files:
            raise UsageError(f"{given} holds no checkpoint (*.ckpt, *.pt, *.pth, *.bin, *.safetensors)")
        pairs += [(path, output_dir / path.name) for path in files]
    seen: dict[Path, Path] = {}
    for source, output in pairs:
        if output in seen:
            raise UsageError(f"{seen[output]} and {source} would both be written to {output}; convert them apart")
        seen[output] = source
    return pairs


_shared: dict[str, Any] = {}
"""What forked workers inherit: the registry and the options (a registry made in code cannot be pickled)."""


def _convert_one(source: Path, output: Path) -> BatchItem:
    """Convert one checkpoint with the batch's registry and options; turn its error into the item's."""
    from ckpt_path.commands import convert_file

    started = time.perf_counter()
    options = _shared["options"]
    try:
        result = convert_file(
            source, None if options.get("dry_run") else output, registry=_shared["registry"], **options
        )
    except CkptPathError as exc:
        return BatchItem(
            input=source,
            output=output,
            error=str(exc),
            error_class=type(exc).__name__,
            seconds=time.perf_counter() - started,
        )
    return BatchItem(input=source, output=output, result=result.to_dict(), seconds=time.perf_counter() - started)


def convert_batch(
    pairs: Sequence[tuple[Path, Path]],
    registry: Registry,
    *,
    workers: int = 1,
    on_done: Callable[[BatchItem, int, int], None] | None = None,
    **options: Any,
) -> list[BatchItem]:
    """Convert every ``(input, output)`` pair; return one item per pair, in the order given.

    ``options`` are :func:`ckpt_path.convert_file`'s (``target``, ``source``, ``allow_lossy``,
    ``force``, ``dry_run``, ...). With ``workers`` > 1 the conversions run in that many forked
    processes (torch and the converters already loaded); a failure is one item's error, never
    the batch's. ``on_done(item, done, total)`` is called as each finishes.
    """
    if workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {workers}")
    if not options.get("dry_run"):  # a dry run writes nothing, not even a directory
        for _, output in pairs:
            output.parent.mkdir(parents=True, exist_ok=True)
    _shared.update(registry=registry, options=options)
    items: dict[int, BatchItem] = {}
    try:
        if workers == 1 or len(pairs) < 2 or "fork" not in multiprocessing.get_all_start_methods():  # noqa: PLR2004
            for index, (source, output) in enumerate(pairs):
                items[index] = _convert_one(source, output)
                if on_done is not None:
                    on_done(items[index], len(items), len(pairs))
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=min(workers, len(pairs)), mp_context=context) as pool:
                pending: dict[Future[BatchItem], int] = {
                    pool.submit(_convert_one, source, output): index for index, (source, output) in enumerate(pairs)
                }
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = pending.pop(future)
                        items[index] = _finished(future, *pairs[index])
                        if on_done is not None:
                            on_done(items[index], len(items), len(pairs))
    finally:
        _shared.clear()
    return [items[index] for index in range(len(pairs))]


def _finished(future: Future[BatchItem], source: Path, output: Path) -> BatchItem:
    """Return a worker's item; a worker that died (killed, out of memory) fails its input, not the batch."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - BrokenProcessPool and the like: this input failed
        return BatchItem(input=source, output=output, error=f"the worker converting it died ({exc})", error_class="")
