"""Benchmark many checkpoints in one command against one command per checkpoint.

Goal (issue 13): upgrading the 100 checkpoints of a sweep (8 MiB each, along the rename-only
path of ``_common.RENAMES``) with one ``ckpt-path convert DIR --output-dir OUT`` is at least
10 times faster than 100 separate ``ckpt-path convert`` runs, each of which starts Python and
imports torch again. Also measured: the same with ``--workers 2``, and a bare script that loops
over the files in one process (mmap load, renames, ``torch.save``; no checks, no stamp
history, no fsync): the floor of doing it by hand.

Method: every command is a subprocess; one warm-up round is discarded; ``--runs`` rounds, the
order alternating; ``sync`` before each run; outputs deleted between runs. Reported: medians
and ratios of medians. Run: ``python benchmarks/bench_batch.py`` (100 files, 3 runs) or
``--quick`` (20 files, 1 run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    MIB,
    TARGET,
    Command,
    Result,
    add_common_arguments,
    ckpt_path_executable,
    in_child,
    load,
    run_rounds,
    table,
    write_bare_script,
    write_converters,
    write_results,
)

GOAL_SPEEDUP = 10.0

LOOP = '''"""The bare script over every file of a directory, in one process. Usage: loop.py BARE IN OUT."""
import runpy
import sys
from pathlib import Path

bare, src, out = sys.argv[1:]
Path(out).mkdir(exist_ok=True)
for path in sorted(Path(src).iterdir()):
    sys.argv = [bare, str(path), str(Path(out) / path.name), "mmap"]
    runpy.run_path(bare, run_name="__main__")
'''


def measure(count: int, size: int, runs: int) -> list[Result]:
    """Write ``count`` checkpoints of ``size`` bytes, run the rounds, print a table, return the results."""
    work = Path(tempfile.mkdtemp(prefix="ckpt-path-bench-batch-"))
    try:
        converters = work / "converters"
        write_converters(converters)
        sweep = work / "sweep"
        sweep.mkdir()
        in_child("generate", sweep / "run000.ckpt", size)
        for number in range(1, count):
            shutil.copy(sweep / "run000.ckpt", sweep / f"run{number:03d}.ckpt")
        write_bare_script(work / "bare.py")
        (work / "loop.py").write_text(LOOP, encoding="utf-8")
        exe = ckpt_path_executable()
        flags = ["--to", TARGET, "--converters", str(converters), "--force"]
        quoted = " ".join(f'"{flag}"' for flag in flags)
        one_by_one = (
            f'mkdir -p "$2"; for f in "$1"/*.ckpt; do '
            f'"{exe}" convert "$f" -o "$2/$(basename "$f")" {quoted} >/dev/null || exit 1; done'
        )
        cmds = [
            Command(
                "one command, --output-dir",
                [exe, "convert", str(sweep), "--output-dir", str(work / "out-batch"), *flags],
                work / "out-batch",
            ),
            Command(
                "one command, --output-dir --workers 2",
                [exe, "convert", str(sweep), "--output-dir", str(work / "out-workers"), "--workers", "2", *flags],
                work / "out-workers",
            ),
            Command(
                f"{count} separate ckpt-path convert",
                ["sh", "-c", one_by_one, "sh", str(sweep), str(work / "out-each")],
                work / "out-each",
            ),
            Command(
                "bare script, one process",
                [sys.executable, str(work / "loop.py"), str(work / "bare.py"), str(sweep), str(work / "out-bare")],
                work / "out-bare",
            ),
        ]
        print(f"\n### {count} checkpoints of {size / MIB:.0f} MiB, {runs} runs after a warm-up\n")
        print(f"before: {load()}", flush=True)
        run_rounds(cmds, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    batch = cmds[0]
    rows = [(c.key, f"{c.wall():.2f}", f"{c.wall() / batch.wall():.2f}") for c in cmds]
    print(table(("command", "wall s, median", "this / one command"), rows))
    print(f"after: {load()}", flush=True)
    each, workers, bare = cmds[2], cmds[1], cmds[3]
    return [
        Result(
            "batch",
            f"{count} x {size / MIB:.0f} MiB: {count} separate runs / one command",
            round(each.wall() / batch.wall(), 1),
            "x",
            GOAL_SPEEDUP,
            "higher is better",
        ),
        Result(
            "batch",
            f"{count} x {size / MIB:.0f} MiB: one command / bare loop",
            round(batch.wall() / bare.wall(), 2),
            "x",
        ),
        Result(
            "batch",
            f"{count} x {size / MIB:.0f} MiB: --workers 2 / one worker",
            round(workers.wall() / batch.wall(), 2),
            "x",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--count", type=int, help="checkpoints in the sweep (default 100; --quick 20)")
    parser.add_argument("--runs", type=int, help="measured rounds after the warm-up (default 3; --quick 1)")
    args = parser.parse_args(argv)
    count = args.count or (20 if args.quick else 100)
    runs = args.runs or (1 if args.quick else 3)
    write_results(args.json, measure(count, 8 * MIB, runs))


if __name__ == "__main__":
    main()
