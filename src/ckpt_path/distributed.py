"""Converting a checkpoint into a DCP directory with many processes: ``torchrun``, or ``--workers N``.

Tensors are lazy (:mod:`ckpt_path._lazy`): a DCP input's are by nature, any other input's are
wrapped, so running the steps (:func:`ckpt_path.pipeline.upgrade`, the one pipeline) records
what they compute instead of computing it, and costs little more than reading the metadata. The
output's entries are then shared out by bytes (:meth:`ckpt_path.dcp.Job.share`, the same on
every process, no message needed), and each process writes its share into its own data file
``__R_0.distcp`` of one temporary directory beside OUTPUT: stored chunks copied kernel-side,
computed tensors evaluated one by one. When every process has succeeded, one writes
``.metadata`` and renames the directory into place. A failure anywhere (an error, or a process
that dies) fails the whole conversion and leaves nothing at OUTPUT; INPUT is only ever read.

- ``torchrun --nproc-per-node N -m ckpt_path convert IN -o OUT``: every process runs the
  steps, then they meet three times (steps done, directory made, shares written) through a
  gloo group of torchrun's rendezvous (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...; across
  hosts too, writing to a directory every host sees; a gloo group is made beside an NCCL one
  the processes already have). Process 0 reports and commits.
- ``ckpt-path convert IN -o OUT --workers N``: this process runs the steps, then forks N
  writers that inherit the result (nothing is imported or computed twice), waits for their
  reports and commits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from ckpt_path import _lazy, dcp
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.commands import ConvertResult
from ckpt_path.errors import (
    CkptPathError,
    DistributedError,
    InputOverwriteError,
    OutputExistsError,
    SaveError,
    UsageError,
)
from ckpt_path.pipeline import Upgrade, open_checkpoint, upgrade
from ckpt_path.registry import Registry
from ckpt_path.runner import OnStep
from ckpt_path.storage import check_unchanged, verify_records, write_checkpoint

__all__ = ["Options", "convert", "in_torchrun", "takes"]

T = TypeVar("T")

_TIMEOUT = dt.timedelta(minutes=30)
"""How long a process waits for the others at one meeting point."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What ``ckpt-path convert`` passes on: the options of :func:`ckpt_path.convert_file`."""

    target: str = "latest"
    source: str | None = None
    allow_lossy: bool = False
    dry_run: bool = False
    force: bool = False
    strict: bool = False
    state_dict_key: str | None = None
    safe_globals: tuple[str, ...] = ()
    state_dict_only: bool = False
    drop_optimizer_state: bool = False


def in_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or a launcher like it) started."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1 and "RANK" in os.environ


def takes(input_path: Path, output: Path | None, workers: int) -> bool:  # noqa: ARG001 - the CLI's question
    """Whether a conversion goes through this module: a DCP input or output, or torchrun.

    ``--workers`` alone does not decide: with one INPUT and a file OUTPUT it means nothing here.
    """
    dcp_output = output is not None and dcp.writes_dcp(output, None)
    return in_torchrun() or dcp.is_dcp(input_path) or dcp_output


# --- meeting the other processes ------------------------------------------------------------------


class _Group(Protocol):
    rank: int
    world: int

    def gather(self, value: object) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        ...

    def close(self) -> None:
        """Leave the group."""
        ...


class _Alone:
    rank = 0
    world = 1

    def gather(self, value: object) -> list[Any]:
        return [value]

    def close(self) -> None:
        pass


class _Torch:
    """A gloo group of the processes (torch.distributed), for exchanging small Python objects."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self._own = not dist.is_initialized()
        if self._own:  # from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)
            dist.init_process_group(backend="gloo", timeout=_TIMEOUT)
            self._group: Any = None
        else:  # the caller's group (NCCL, say): ours is a gloo group of the same processes
            self._group = dist.new_group(backend="gloo", timeout=_TIMEOUT)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def gather(self, value: object) -> list[Any]:
        found: list[Any] = [None] * self.world
        self._dist.all_gather_object(found, value, group=self._group)
        return found

    def close(self) -> None:
        if self._own and self._dist.is_initialized():
            with contextlib.suppress(Exception):  # leave together: a process that tears down alone can abort
                self._dist.barrier()
            self._dist.destroy_process_group()
            gc.collect()  # gloo's threads end now, not while the interpreter shuts down (which can abort)


@dataclass(frozen=True, slots=True)
class _Failure:
    """What one process reports when its part failed: the error's class and message."""

    kind: str
    message: str
    user: bool


def _together(group: _Group, work: Callable[[], T]) -> list[T]:
    """Run ``work`` here, then meet: every process's result, or, if any failed, its error everywhere.

    The process that failed raises its own error; the others a :class:`DistributedError` naming
    it. A process that died (a collective fails) is a :class:`DistributedError` too.
    """
    own: BaseException | None = None
    value: Any
    try:
        value = work()
    except Exception as exc:  # noqa: BLE001 - reported to every process, then raised here
        own = exc
        value = _Failure(type(exc).__name__, str(exc), isinstance(exc, CkptPathError))
    try:
        values = group.gather(value)
    except Exception as exc:  # noqa: BLE001 - gloo says a peer is gone in many ways
        raise DistributedError(None, group.world, _peer_gone(exc)) from None
    failed = [(rank, v) for rank, v in enumerate(values) if isinstance(v, _Failure)]
    if failed:
        if own is not None:
            raise own
        rank, first = failed[0]
        raise DistributedError(rank, group.world, first.message if first.user else f"{first.kind}: {first.message}")
    return values


def _peer_gone(exc: BaseException) -> str:
    said = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return f"another process stopped (it was killed, or failed before it could say why): {said}"


# --- one process's part ---------------------------------------------------------------------------


class _Memory:
    """The tensors of a checkpoint held in memory (memory-mapped), as the source of lazy tensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def read(self, key: str) -> torch.Tensor:
        return self.tensors[key]


def _wrapped(obj: Any, memory: _Memory) -> Any:
    """Replace every plain tensor of ``obj`` by a lazy one reading it, so steps defer their work."""
    if isinstance(obj, torch.Tensor) and not isinstance(obj, _lazy.LazyTensor) and not obj.is_meta:
        key = str(len(memory.tensors))
        memory.tensors[key] = obj
        return _lazy.stored(memory, key, obj.shape, obj.dtype)
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            obj[key] = _wrapped(value, memory)
        return obj
    if isinstance(obj, list):
        obj[:] = [_wrapped(value, memory) for value in obj]
    return obj


def _prepare(
    input_path: Path,
    registry: Registry,
    options: Options,
    *,
    lazy: bool,
    on_step: OnStep | None,
) -> Upgrade:
    """Load INPUT, find its version, plan and run every step (lazily: nothing is computed yet)."""
    checkpoint, _found, _plan = open_checkpoint(
        input_path,
        registry,
        options.target,
        source=options.source,
        allow_lossy=options.allow_lossy,
        state_dict_key=options.state_dict_key,
        safe_globals=options.safe_globals,
    )
    if lazy and checkpoint.format != dcp.FORMAT:
        checkpoint.obj = _wrapped(checkpoint.obj, _Memory())
    return upgrade(
        checkpoint,
        registry,
        options.target,
        source=options.source,
        allow_lossy=options.allow_lossy,
        strict=options.strict,
        dry_run=options.dry_run,
        drop_optimizer_state=options.drop_optimizer_state,
        on_step=on_step,
    )


def _result(
    input_path: Path, output: Path | None, done: Upgrade, options: Options, sizes: tuple[int, int]
) -> ConvertResult:
    """Report a conversion as ``convert_file`` does; ``sizes`` are the bytes copied and written."""
    copied, written = sizes
    return ConvertResult(
        input=input_path,
        output=output,
        plan=done.plan,
        source=done.source,
        steps=done.steps,
        warnings=done.warnings,
        dry_run=options.dry_run,
        copied_bytes=copied,
        written_bytes=written,
    )


def _check_paths(input_path: Path, output: Path | None, options: Options) -> Path:
    if output is None:
        raise UsageError("convert needs an output path (-o OUTPUT), or --dry-run")
    real_in, real_out = Path(os.path.realpath(input_path)), Path(os.path.realpath(output))
    if real_in == real_out or real_out in real_in.parents:
        raise InputOverwriteError(str(output), str(input_path), "replace")
    if dcp.is_dcp(input_path) and real_in in real_out.parents:
        raise InputOverwriteError(str(output), str(input_path), "write into")
    if output.exists() and not options.force:
        raise OutputExistsError(str(output))
    return output


def _run(  # noqa: C901, PLR0913 - one process's part, and the three times it meets the others
    group: _Group,
    input_path: Path,
    output: Path,
    registry: Registry,
    options: Options,
    *,
    on_step: OnStep | None = None,
) -> ConvertResult:
    """Convert INPUT into OUTPUT as process ``group.rank`` of ``group.world``."""
    held: dict[str, Any] = {}

    def prepare() -> None:
        _check_paths(input_path, output, options)
        lazy = group.world > 1 or dcp.writes_dcp(output, None)  # a step's work is done as its tensor is written
        done = held["done"] = _prepare(input_path, registry, options, lazy=lazy, on_step=on_step)
        checkpoint = done.checkpoint
        if dcp.writes_dcp(output, checkpoint):
            dcp.check_output(output, force=options.force, protect=checkpoint.files)
            held["job"] = dcp.plan_job(
                checkpoint.obj, checkpoint.state_dict_at, state_dict_only=options.state_dict_only, path=output
            )
        else:
            dcp.refuse_many(group.world, output)

    _together(group, prepare)
    done: Upgrade = held["done"]
    job: dcp.Job | None = held.get("job")
    if job is None:  # another format, from one process: the ordinary writer
        return _write_file(input_path, output, done, options)

    def make_directory() -> str | None:
        if group.rank != 0:
            return None
        return str(dcp.temporary_directory(output))

    place = Path(str(_together(group, make_directory)[0]))
    with dcp.removed_on_failure(place):

        def write() -> dcp.WriteReport:
            check_unchanged(done.checkpoint)  # its tensors are mapped: an input cut short would end in SIGBUS
            try:
                return dcp.write_share(job.share(group.rank, group.world), place, f"__{group.rank}_0.distcp")
            except OSError as exc:
                raise SaveError(str(output), exc.strerror or str(exc)) from None

        reports = _together(group, write)

        def commit() -> None:
            if group.rank == 0:
                verify_records(done.checkpoint)  # nothing is copied from a torch input: all it read must match its CRC
                try:
                    dcp.finish(job, reports, place, output, force=options.force)
                except OSError as exc:
                    raise SaveError(str(output), exc.strerror or str(exc)) from None

        _together(group, commit)
    if group.rank == 0:
        dcp.remove_stale_directories(output)
    copied = sum(r.copied_bytes for r in reports)
    written = sum(r.written_bytes for r in reports)
    return _result(input_path, output, done, options, sizes=(copied, written))


def _write_file(input_path: Path, output: Path, done: Upgrade, options: Options) -> ConvertResult:
    checkpoint: Checkpoint = done.checkpoint
    written = write_checkpoint(
        checkpoint.obj,
        output,
        force=options.force,
        state_dict_at=checkpoint.state_dict_at,
        state_dict_only=options.state_dict_only,
        metadata=checkpoint.metadata,
        shard_size=checkpoint.shard_size,
        protect=checkpoint.files,
        source=checkpoint,
    )
    return _result(input_path, written.path, done, options, sizes=(written.copied_bytes, written.written_bytes))


# --- entry points ---------------------------------------------------------------------------------


def convert(  # noqa: PLR0913 - the options of `ckpt-path convert`
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    *,
    registry: Registry,
    options: Options,
    workers: int = 1,
    on_step: OnStep | None = None,
) -> ConvertResult | None:
    """Convert a checkpoint whose input or output is a DCP directory, with one process or many.

    Under torchrun every process calls this; process 0 gets the result, the others None.
    ``workers`` > 1 starts that many processes here (a DCP output only). A dry run reads the
    DCP metadata only, in this process.
    """
    source, target = Path(input_path), Path(output) if output is not None else None
    if options.dry_run:
        with dcp.metadata_only():
            done = _prepare(source, registry, options, lazy=False, on_step=on_step)
        first = not in_torchrun() or os.environ.get("RANK") == "0"  # under torchrun, process 0 reports
        return (
            _result(source, None, done, options, sizes=(done.unchanged_bytes, done.computed_bytes)) if first else None
        )
    if target is None:
        raise UsageError("convert needs an output path (-o OUTPUT), or --dry-run")
    if in_torchrun():
        group = _Torch()
        try:
            result = _run(group, source, target, registry, options, on_step=on_step if group.rank == 0 else None)
        finally:
            group.close()
        return result if group.rank == 0 else None
    if workers > 1:
        return _fork(workers, source, target, registry, options, on_step=on_step)
    return _run(_Alone(), source, target, registry, options, on_step=on_step)


def _fork(  # noqa: PLR0913 - the conversion, and how many processes write it
    workers: int,
    input_path: Path,
    output: Path,
    registry: Registry,
    options: Options,
    *,
    on_step: OnStep | None,
) -> ConvertResult:
    """Convert here, lazily, then fork ``workers`` processes that each write their share; commit here.

    The processes inherit the converted (lazy) checkpoint and its plan of entries, so they all
    write from the same object, importing and computing nothing twice; each computes only the
    tensors it writes. A process that fails or dies fails the conversion: the others are
    stopped, the temporary directory is removed, nothing is written at OUTPUT.
    """
    _check_paths(input_path, output, options)
    done = _prepare(input_path, registry, options, lazy=True, on_step=on_step)
    checkpoint = done.checkpoint
    if not dcp.writes_dcp(output, checkpoint):
        dcp.refuse_many(workers, output)
    dcp.check_output(output, force=options.force, protect=checkpoint.files)
    job = dcp.plan_job(checkpoint.obj, checkpoint.state_dict_at, state_dict_only=options.state_dict_only, path=output)
    temporary = dcp.temporary_directory(output)
    with dcp.removed_on_failure(temporary):
        reports = _written_by_forks(job, workers, temporary, output)
        try:
            dcp.finish(job, reports, temporary, output, force=options.force)
        except OSError as exc:
            raise SaveError(str(output), exc.strerror or str(exc)) from None
    dcp.remove_stale_directories(output)
    copied = sum(r.copied_bytes for r in reports)
    written = sum(r.written_bytes for r in reports)
    return _result(input_path, output, done, options, sizes=(copied, written))


def _written_by_forks(job: dcp.Job, workers: int, temporary: Path, output: Path) -> list[dcp.WriteReport]:
    """Fork the writers, wait for every report; on the first failure stop the others and raise."""
    context = multiprocessing.get_context("fork")
    processes: list[Any] = []
    pipes: list[Any] = []
    try:
        for rank in range(workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_fork_worker, args=(rank, workers, (job, temporary, output), sender))
            process.start()
            sender.close()
            processes.append(process)
            pipes.append(receiver)
        reports: dict[int, dcp.WriteReport] = {}
        while len(reports) < workers:
            waiting = {pipes[r]: r for r in range(workers) if r not in reports}
            sentinels = {processes[r].sentinel: r for r in range(workers) if r not in reports}
            for ready in multiprocessing.connection.wait([*waiting, *sentinels]):
                rank = waiting.get(ready, sentinels.get(ready, -1))
                reports[rank] = _report(rank, workers, pipes[rank], processes[rank])
        return [reports[rank] for rank in range(workers)]
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        for pipe in pipes:
            pipe.close()


def _report(rank: int, workers: int, pipe: Connection, process: Any) -> dcp.WriteReport:
    """Return what process ``rank`` wrote, or raise what went wrong with it."""
    try:
        said = pipe.recv() if pipe.poll() else None
    except (EOFError, OSError):
        said = None
    if said is None:
        process.join()
        code = process.exitcode
        how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
        raise DistributedError(rank, workers, f"it died ({how}) before it had written its share")
    kind, value = said
    if kind == "error":
        raise DistributedError(rank, workers, value)
    report: dcp.WriteReport = value
    return report


def _fork_worker(rank: int, workers: int, work: tuple[dcp.Job, Path, Path], pipe: Connection) -> None:
    """One forked process: write its share of the job into ``TEMPORARY/__RANK_0.distcp``; send the report."""
    job, temporary, output = work
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler removes the directory: not ours
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(workers))  # as torchrun sets them
    torch.set_num_threads(1)  # one process per core, as torchrun does; no thread pool inherited from the parent
    try:
        report = dcp.write_share(job.share(rank, workers), temporary, f"__{rank}_0.distcp")
    except CkptPathError as exc:
        pipe.send(("error", str(exc)))
    except OSError as exc:
        pipe.send(("error", str(SaveError(str(output), exc.strerror or str(exc)))))
    except Exception as exc:  # noqa: BLE001 - a converter's deferred operation failed: say which, here
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        pipe.send(("ok", report))
    finally:
        pipe.close()
