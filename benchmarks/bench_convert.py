"""Benchmark ``ckpt-path convert`` along a rename-only path, next to baselines run side by side.

The project's goals measured here:

1. Memory: the peak anonymous memory (``RssAnon``: heap and tensors read into memory, not the
   page cache nor memory-mapped file pages) of a conversion along a rename-only path, above
   that of ``python -c "import torch"``, stays under 10 % of the checkpoint's size, at 1 GiB
   and 4 GiB, for a torch zip checkpoint and for a safetensors file.
2. Time: the conversion's wall time as ratios to baselines measured in the same run (ratios,
   not absolute seconds: this machine's speed drifts by tens of percent within an hour).
   Unchanged tensors are copied from the input kernel-side, so the goals are: at most 1.3x
   ``cp`` at 4 GiB, at least 1.5x faster than the bare script saved as durably, no slower
   than the bare script without fsync, and a path that computes one 4 MiB tensor within 5 %
   of the rename-only path:

   * ``cp IN OUT && sync``: the floor, the bytes copied and written back;
   * a bare script: memory-mapped load, the same renames and stamp, ``torch.save`` (for
     safetensors ``load_file`` + ``save_file``), once without fsync and once saved as durably
     as ckpt-path saves (temporary file, fsync, rename, fsync of the directory);
   * plain ``torch.load`` (no mmap) + ``torch.save``, what Lightning's checkpoint upgrade does
     (torch checkpoints only).

Data (``_common.py``): a checkpoint stamped 1.0.0 holding a small transformer's float32
weights, Lightning-style for torch, flat for safetensors, and a path of four converter files
of ``Rename`` ops to 2.0.0. ckpt-path's output is checked once (stamp, history, every key).

Method: every command is a subprocess. One warm-up round comes first and is discarded (input,
interpreter and torch then sit in the page cache), then ``--runs`` rounds, each command once
per round, the order alternating between rounds. ``sync`` before every run; a command that
writes first deletes the previous writer's output. Reported: medians, ratios of medians and of
minimums, and the highest peak ``RssAnon`` (``/proc/PID/status`` polled every 5 ms). Linux only.

Run: ``python benchmarks/bench_convert.py`` (1 and 4 GiB, both formats, 5 runs),
``--size-gib 1 --format torch --runs 9``, or ``--quick`` (64 MiB, 2 runs).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    GIB,
    MIB,
    RENAMES,
    TARGET,
    Command,
    Result,
    add_common_arguments,
    ckpt_path_executable,
    in_child,
    load,
    run_rounds,
    table,
    transformer,
    write_bare_script,
    write_converters,
    write_results,
)

GOAL_ANON_SHARE = 10.0
"""Peak RssAnon above ``import torch``, in % of the checkpoint; the goal is stated from 1 GiB up
(below, the fixed cost of ckpt-path's imports, about 20 MiB, dominates)."""


def commands(work: Path, src: Path) -> list[Command]:
    """Return the commands of one round: ckpt-path first, the memory baseline ``import torch`` last."""
    python, ext = sys.executable, src.suffix
    write_bare_script(work / "bare.py")
    save = "load_file + save_file" if ext == ".safetensors" else "mmap load + torch.save"

    def out(name: str) -> Path:
        return work / f"out-{name}{ext}"

    def bare(key: str, mode: str) -> Command:
        return Command(key, [python, str(work / "bare.py"), str(src), str(out(mode)), mode], out(mode))

    convert = [ckpt_path_executable(), "convert", str(src), "--to", TARGET, "--force"]
    renames = ["--converters", str(work / "converters")]
    computing = ["--converters", str(work / "converters-compute")]
    cmds = [
        Command("ckpt-path convert", [*convert, *renames, "-o", str(out("ckpt-path"))], out("ckpt-path")),
        Command(
            "ckpt-path convert, one 4 MiB tensor computed",
            [*convert, *computing, "-o", str(out("ckpt-path-compute"))],
            out("ckpt-path-compute"),
        ),
        bare(f"bare {save}", "mmap"),
        bare(f"bare {save} + fsync", "fsync"),
    ]
    if ext != ".safetensors":
        cmds.append(bare("plain torch.load + torch.save", "plain"))
    cp = ["sh", "-c", 'cp "$1" "$2" && sync', "sh", str(src), str(out("cp"))]
    return [*cmds, Command("cp IN OUT && sync", cp, out("cp")), Command("import torch", [python, "-c", "import torch"])]


def measure(fmt: str, size: int, runs: int) -> list[Result]:
    """Generate the data for one format and size, run the rounds, print tables, return the results."""
    work = Path(tempfile.mkdtemp(prefix="ckpt-path-bench-convert-"))
    try:
        write_converters(work / "converters")
        write_converters(work / "converters-compute", compute=True)
        src = work / ("in.safetensors" if fmt == "safetensors" else "in.ckpt")
        cmds = commands(work, src)
        tensors = len(transformer(size))
        in_child("generate", src, size)
        file_mib = src.stat().st_size / MIB
        label = f"{fmt} {file_mib / 1024:.1f} GiB" if file_mib >= 1024 else f"{fmt} {file_mib:.0f} MiB"
        print(f"\n### {label}: {tensors} tensors, {len(RENAMES)} rename steps, {runs} runs after a warm-up\n")
        print(f"before: {load()}", flush=True)
        run_rounds(cmds, runs, check=lambda out: in_child("check", out, tensors))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours, baseline = cmds[0], cmds[-1]
    rows = []
    for cmd in cmds:
        ratio = f"{ours.wall() / cmd.wall():.2f}" if cmd is not baseline else ""
        lowest = f"{min(ours.walls) / min(cmd.walls):.2f}" if cmd is not baseline else ""
        spread = f"{min(cmd.walls):.2f}-{max(cmd.walls):.2f}"
        rows.append((cmd.key, f"{cmd.wall():.2f}", spread, ratio, lowest, f"{cmd.anon_mib():.0f}"))
    header = ("command", "wall s, median", "min-max", "ckpt-path / this, medians", "of minimums", "peak RssAnon MiB")
    print(table(header, rows))
    extra = ours.anon_mib() - baseline.anon_mib()
    share = 100 * extra / file_mib
    print(f"\nckpt-path's peak RssAnon above `import torch`: {extra:+.0f} MiB, {share:.1f} % of the file")
    print(f"after: {load()}", flush=True)

    applies = size >= GIB
    results = [
        Result(
            "convert",
            f"{label}: peak RssAnon above import torch / file",
            round(share, 1),
            "%",
            GOAL_ANON_SHARE if applies else None,
            "" if applies else "goal applies from 1 GiB (fixed cost of imports)",
        )
    ]
    computing = cmds[1]
    results.append(
        Result(
            "convert",
            f"{label}: one 4 MiB tensor computed / rename only",
            round(computing.wall() / ours.wall(), 2),
            "x",
            note=f"minimums {min(computing.walls) / min(ours.walls):.2f}",
        )
    )
    for cmd in cmds[2:-1]:
        ratio = round(ours.wall() / cmd.wall(), 2)
        note = f"minimums {min(ours.walls) / min(cmd.walls):.2f}"
        results.append(Result("convert", f"{label}: ckpt-path / {cmd.key}", ratio, "x", note=note))
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run every (size, format), write the headline results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--size-gib", type=float, nargs="+", help="checkpoint sizes (default 1 4; --quick 0.0625)")
    parser.add_argument("--format", nargs="+", choices=("torch", "safetensors"), default=["torch", "safetensors"])
    parser.add_argument("--runs", type=int, help="measured rounds after the warm-up (default 5; --quick 2)")
    args = parser.parse_args(argv)
    sizes = args.size_gib or ([1 / 16] if args.quick else [1.0, 4.0])
    runs = args.runs or (2 if args.quick else 5)
    if runs < 1 or min(sizes) <= 0:
        parser.error("--runs and --size-gib must be positive")
    results = [r for size in sizes for fmt in args.format for r in measure(fmt, int(size * GIB), runs)]
    print(f"\nmedians over {runs} runs; the ratios are ckpt-path's wall time over each baseline's")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
