"""Distributed checkpoints: a DCP checkpoint converted by 1 and 2 processes, and into one file against torch's own tool.

A DCP checkpoint of ``--size-gib`` (default 2 GiB: 32 float32 tensors under ``model``, saved by
``torch.distributed.checkpoint.save``, stamped 1.0.0) is converted:

- along a rename path (``layers.{i}.weight`` -> ``blocks.{i}.weight``: every chunk copied
  kernel-side) and along a path that casts every tensor to bfloat16 (every tensor read,
  computed and written), each with 1 process (``ckpt-path convert``), 2 processes started by
  ckpt-path (``--workers 2``) and 2 processes started by ``torchrun --nproc-per-node 2``;
- into one torch file (no step) with ``ckpt-path convert IN -o OUT.pt``, against
  ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``.

Every command is a process tree of its own, timed from start to exit (wall), with the peak
``RssAnon`` (private anonymous memory: neither page cache nor mapped files) of every process in
the tree polled every 10 ms. Goals: 2 processes / 1 process <= 0.65 of the wall time on the
casting path, and every process's peak anonymous memory <= its share of the checkpoint + 10 %.

Run: ``python benchmarks/bench_dcp.py [--quick] [--size-gib 2] [--runs 3] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import GIB, MIB, Result, add_common_arguments, ckpt_path_executable, load, median, table, write_results

TENSORS = 32

GENERATE = textwrap.dedent(
    """
    import sys, warnings
    import torch
    from torch.distributed.checkpoint.state_dict_saver import save

    warnings.filterwarnings("ignore")
    path, size = sys.argv[1], int(sys.argv[2])
    rows = size // {tensors} // 4 // 1024
    generator = torch.Generator().manual_seed(0)
    model = {{f"layers.{{i}}.weight": torch.randn(rows, 1024, generator=generator) for i in range({tensors})}}
    save({{"model": model, "ckpt_path": {{"version": "1.0.0", "history": []}}}}, checkpoint_id=path)
    """
).format(tensors=TENSORS)

DCP_TO_TORCH_SAVE = (
    "import sys, warnings; warnings.filterwarnings('ignore'); "
    "from torch.distributed.checkpoint.format_utils import dcp_to_torch_save; "
    "dcp_to_torch_save(sys.argv[1], sys.argv[2])"
)

RENAME = '''"""Rename the layers to blocks."""

from ckpt_path.ops import Rename

source = "1.0.0"
target = "2.0.0"
ops = [Rename("layers.{i}.weight", "blocks.{i}.weight")]
'''

CAST = '''"""Cast every tensor to bfloat16."""

from ckpt_path.ops import Cast

source = "1.0.0"
target = "1.5.0"
ops = [Cast("*", "bfloat16")]
'''


@dataclass
class Command:
    """One command to time: its arguments, its output, its processes' share of the checkpoint."""

    key: str
    argv: list[str]
    output: Path
    processes: int
    walls: list[float] = field(default_factory=list)
    anon: list[dict[int, int]] = field(default_factory=list)
    """Per run: every process of the tree and its peak RssAnon, KiB."""

    def worker_peak_mib(self) -> float:
        """Return the largest peak RssAnon of one process over the runs, MiB."""
        return max(max(run.values(), default=0) for run in self.anon) / 1024


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text(encoding="ascii")
        except OSError:
            continue
        parent = int(text.rsplit(")", 1)[1].split()[1])
        found.setdefault(parent, []).append(int(entry.name))
    return found


def _tree(root: int) -> list[int]:
    children, found, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _poll(root: int, peaks: dict[int, int], stop: threading.Event) -> None:
    """Keep each process's highest RssAnon (KiB) of the tree under ``root`` in ``peaks`` until ``stop``."""
    while not stop.is_set():
        for pid in _tree(root):
            try:
                text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
            except OSError:
                continue
            found = re.search(r"^RssAnon:\s+(\d+)", text, re.MULTILINE)
            if found:
                peaks[pid] = max(peaks.get(pid, 0), int(found.group(1)))
        stop.wait(0.01)


def run_once(cmd: Command) -> tuple[float, dict[int, int]]:
    """Run ``cmd`` once; return its wall seconds and the peak RssAnon of each of its processes."""
    peaks: dict[int, int] = {}
    stop = threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(cmd.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = threading.Thread(target=_poll, args=(process.pid, peaks, stop), daemon=True)
    poller.start()
    _stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    stop.set()
    poller.join()
    if process.returncode != 0:
        sys.exit(f"{cmd.key} failed ({process.returncode}):\n{stderr[-3000:]}")
    peaks.pop(process.pid, None) if cmd.key.startswith("torchrun") else None
    return wall, peaks


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def run_rounds(cmds: list[Command], runs: int) -> None:
    """Run a warm-up round, then ``runs`` rounds, alternating the order; ``sync`` and no stale output first."""
    for round_ in range(runs + 1):
        for cmd in cmds if round_ % 2 == 0 else list(reversed(cmds)):
            _remove(cmd.output)
            os.sync()
            wall, peaks = run_once(cmd)
            _remove(cmd.output)
            if round_:
                cmd.walls.append(wall)
                cmd.anon.append(peaks)
        done = ", ".join(f"{c.key} {c.walls[-1]:.2f}" for c in cmds) if round_ else "warm-up"
        print(f"round {round_}/{runs}: {done}", file=sys.stderr, flush=True)


def commands(work: Path, checkpoint: Path, converters: Path) -> list[Command]:
    """Return the commands: 2 paths x (1 process, --workers 2, torchrun 2), and DCP to one file two ways."""
    ckpt_path = ckpt_path_executable()
    torchrun = str(Path(ckpt_path).with_name("torchrun"))
    found = []
    for path, options in (("rename", ["--to", "2.0.0"]), ("cast", ["--to", "1.5.0", "--allow-lossy"])):
        out = work / f"out-{path}"
        tail = ["convert", str(checkpoint), "-o", str(out), *options, "--converters", str(converters)]
        found += [
            Command(f"{path} 1 process", [ckpt_path, *tail], out, 1),
            Command(f"{path} --workers 2", [ckpt_path, *tail, "--workers", "2"], out, 2),
            Command(
                f"torchrun {path} 2 processes",
                [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "ckpt_path", *tail],
                out,
                2,
            ),
        ]
    out = work / "out.pt"
    found += [
        Command(
            "to .pt: ckpt-path convert",
            [ckpt_path, "convert", str(checkpoint), "-o", str(out), "--to", "1.0.0", "--converters", str(converters)],
            out,
            1,
        ),
        Command(
            "to .pt: dcp_to_torch_save", [sys.executable, "-c", DCP_TO_TORCH_SAVE, str(checkpoint), str(out)], out, 1
        ),
    ]
    return found


def main() -> None:
    """Generate the checkpoint, time every command, print the tables, write the headline results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--size-gib", type=float, default=2.0, help="size of the DCP checkpoint (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    args = parser.parse_args()
    size = int((0.25 if args.quick else args.size_gib) * GIB)
    runs = 1 if args.quick else args.runs
    print(f"before: {load()}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="ckpt-path-bench-dcp-"))
    try:
        checkpoint, converters = work / "checkpoint", work / "converters"
        converters.mkdir()
        (converters / "01_rename.py").write_text(RENAME, encoding="utf-8")
        (converters / "02_cast.py").write_text(CAST, encoding="utf-8")
        subprocess.run([sys.executable, "-c", GENERATE, str(checkpoint), str(size)], check=True)
        cmds = commands(work, checkpoint, converters)
        run_rounds(cmds, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"after: {load()}", file=sys.stderr)
    report(cmds, size, runs)
    write_results(args.json, results(cmds, size))


def _by_key(cmds: list[Command]) -> dict[str, Command]:
    return {cmd.key: cmd for cmd in cmds}


def _pairs(by: dict[str, Command]) -> list[tuple[Command, Command]]:
    """Return each conversion with 2 processes beside the same conversion with 1."""
    return [
        (by[f"{path} 1 process"], by[two])
        for path in ("cast", "rename")
        for two in (f"{path} --workers 2", f"torchrun {path} 2 processes")
    ]


def report(cmds: list[Command], size: int, runs: int) -> None:
    """Print the table of every command, and the ratios."""
    rows = []
    for cmd in cmds:
        share = size / cmd.processes / MIB
        peak = cmd.worker_peak_mib()
        rows.append(
            [
                cmd.key,
                f"{median(cmd.walls):.2f}",
                f"{min(cmd.walls):.2f}",
                f"{peak:.0f}",
                f"{share:.0f}",
                f"{100 * peak / share:.0f} %",
            ]
        )
    header = ["command", "wall median s", "wall min s", "peak anon / process MiB", "share MiB", "peak / share"]
    print(f"{size / GIB:.2f} GiB DCP checkpoint, {TENSORS} tensors; {runs} run(s) each after a warm-up")
    print(table(header, rows))
    by = _by_key(cmds)
    ratio_rows = [
        [
            f"{two.key} / 1 process",
            f"{median(two.walls) / median(one.walls):.2f}",
            f"{min(two.walls) / min(one.walls):.2f}",
        ]
        for one, two in _pairs(by)
    ]
    ours, torch_tool = by["to .pt: ckpt-path convert"], by["to .pt: dcp_to_torch_save"]
    ratio_rows.append(
        ["to .pt: ckpt-path / dcp_to_torch_save", f"{median(ours.walls) / median(torch_tool.walls):.2f}", ""]
    )
    print(table(["ratio of wall times", "medians", "minimums"], ratio_rows))


def results(cmds: list[Command], size: int) -> list[Result]:
    """Return the headline figures for run.py."""
    by = _by_key(cmds)
    found = [
        Result(
            "dcp",
            f"{two.key} / 1 process, wall",
            median(two.walls) / median(one.walls),
            "ratio",
            goal=0.65 if one.key.startswith("cast") else None,
        )
        for one, two in _pairs(by)
    ]
    for cmd in cmds:
        if cmd.key.startswith(("cast", "rename", "torchrun")):
            share = size / cmd.processes / MIB
            found.append(
                Result("dcp", f"{cmd.key}: peak anon per process / share", cmd.worker_peak_mib() / share, "ratio", 1.1)
            )
    ours, torch_tool = by["to .pt: ckpt-path convert"], by["to .pt: dcp_to_torch_save"]
    found.append(Result("dcp", "to .pt: ckpt-path peak anon", ours.worker_peak_mib(), "MiB"))
    found.append(Result("dcp", "to .pt: dcp_to_torch_save peak anon", torch_tool.worker_peak_mib(), "MiB"))
    return found


if __name__ == "__main__":
    main()
