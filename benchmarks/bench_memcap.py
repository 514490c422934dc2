"""Convert a checkpoint larger than the memory a process may use.

The project's goal: a checkpoint larger than the memory the process may use converts along a
rename-only path (tensors stay views of the memory-mapped input and go from the page cache to
the output file), where a plain ``torch.load`` is killed.

Generates the Lightning-style checkpoint and the four-step ``Rename`` path of
``bench_convert.py`` (``_common.py``), ``--size-gib`` GiB (default 4), then runs, each in a
fresh memory cgroup (v1, ``memory.limit_in_bytes``) capped at ``--cap-gib`` GiB (default 0.5):

* ``ckpt-path convert`` (its output is checked: stamp, history, every key renamed);
* the same renames in a bare script with a plain ``torch.load`` (what Lightning's upgrade does).

``prlimit``/``ulimit -v`` cannot stand in: they cap address space, and a memory-mapped 4 GiB
file is 4 GiB of address space. A cgroup's limit counts the page cache too, but the kernel
reclaims clean file pages under pressure, so only anonymous memory can make a process fail.
Reported: exit codes (-9 is the kernel's out-of-memory kill), wall time and the cgroup's peak.
Needs root and the cgroup v1 memory controller; elsewhere it says so and measures nothing.

Run: ``python benchmarks/bench_memcap.py [--size-gib 4] [--cap-gib 0.5]``, or ``--quick``
(0.5 GiB under 0.25 GiB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    GIB,
    MIB,
    TARGET,
    Result,
    add_common_arguments,
    ckpt_path_executable,
    in_child,
    table,
    transformer,
    write_bare_script,
    write_converters,
    write_results,
)

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def run_capped(name: str, command: list[str], cap: int) -> tuple[int, float, float, str]:
    """Run ``command`` in a new memory cgroup limited to ``cap`` bytes.

    Return its exit code, wall seconds, the cgroup's peak usage in MiB and its last stderr line.
    """
    group = CGROUP_ROOT / f"ckpt_path_bench_{os.getpid()}_{name}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(cap))
        with_swap = group / "memory.memsw.limit_in_bytes"
        if with_swap.exists():
            with_swap.write_text(str(cap))
        shell = f'echo $$ > {group / "cgroup.procs"} && exec "$@"'
        started = time.perf_counter()
        done = subprocess.run(["sh", "-c", shell, "sh", *command], capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        peak = int((group / "memory.max_usage_in_bytes").read_text()) / MIB
        last = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else ""
        return done.returncode, seconds, peak, last
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def run(size: int, cap: int) -> tuple[list[Result], bool]:
    """Generate the data, run both conversions under the cap, print a table; return results and success."""
    work = Path(tempfile.mkdtemp(prefix="ckpt-path-memcap-"))
    try:
        write_converters(work / "converters")
        write_bare_script(work / "bare.py")
        source, ours, bare = work / "in.ckpt", work / "out-ckpt-path.ckpt", work / "out-bare.ckpt"
        started = time.perf_counter()
        in_child("generate", source, size)
        label, cap_label = f"{source.stat().st_size / GIB:.2f} GiB", f"{cap / GIB:.2f} GiB"
        print(f"checkpoint: {label}, written in {time.perf_counter() - started:.1f} s; cap {cap_label}")
        convert = [ckpt_path_executable(), "convert", str(source), "--to", TARGET, "-o", str(ours)]
        runs = {
            "ckpt-path convert": run_capped("ckpt-path", [*convert, "--converters", str(work / "converters")], cap),
            "bare plain torch.load + torch.save": run_capped(
                "bare", [sys.executable, str(work / "bare.py"), str(source), str(bare), "plain"], cap
            ),
        }
        rows = [
            (name, code, f"{seconds:.1f}", f"{peak:.0f}", last) for name, (code, seconds, peak, last) in runs.items()
        ]
        print(table(("run", "exit", "wall s", "cgroup peak MiB (page cache included)", "stderr"), rows))
        checked = in_child("check", ours, len(transformer(size))) if ours.exists() else "no output"
        print(f"ckpt-path: {checked}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_code, bare_code = runs["ckpt-path convert"][0], runs["bare plain torch.load + torch.save"][0]
    what = f"{label} checkpoint under a {cap_label} cgroup"
    return [
        Result("memcap", f"ckpt-path convert, {what}: exit code", ours_code, "", note=checked),
        Result("memcap", f"plain torch.load + torch.save, {what}: exit code", bare_code, "", note="-9: killed (OOM)"),
    ], ours_code == 0 and checked.startswith("output checked")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run; return 1 if ckpt-path failed under the cap."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--size-gib", type=float, help="checkpoint size (default 4; --quick 0.5)")
    parser.add_argument("--cap-gib", type=float, help="memory cap of each run (default 0.5; --quick 0.25)")
    args = parser.parse_args(argv)
    size, cap = args.size_gib or (0.5 if args.quick else 4.0), args.cap_gib or (0.25 if args.quick else 0.5)
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists() or os.geteuid() != 0:
        print("not measured: needs root and the cgroup v1 memory controller")
        write_results(args.json, [Result("memcap", "not measured", float("nan"), "", note="needs root, cgroup v1")])
        return 0
    results, ok = run(int(size * GIB), int(cap * GIB))
    write_results(args.json, results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
