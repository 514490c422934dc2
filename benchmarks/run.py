"""Run every benchmark and print one markdown table of the headline results.

Each benchmark is a script in this directory that takes ``--quick`` and ``--json PATH``: it
prints its own detailed tables and writes its headline figures to PATH. To add one, write
the script and append it to :data:`BENCHMARKS`.

Run: ``make bench``, or ``python benchmarks/run.py [--quick] [--only NAME] [--strict]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from _common import HERE, Result, load, read_results, table


@dataclass(frozen=True, slots=True)
class Benchmark:
    """A benchmark script of this directory and the arguments it always gets."""

    name: str
    script: str
    args: tuple[str, ...] = ()


BENCHMARKS = [
    Benchmark("plan", "bench_plan.py"),
    Benchmark("coldstart", "bench_coldstart.py"),
    Benchmark("convert", "bench_convert.py"),
    Benchmark("memcap", "bench_memcap.py"),
    Benchmark("batch", "bench_batch.py"),
    Benchmark("dcp", "bench_dcp.py"),
]


def run_benchmark(benchmark: Benchmark, *, quick: bool) -> list[Result]:
    """Run one benchmark script in its own process and return its headline results."""
    with tempfile.TemporaryDirectory(prefix="ckpt-path-bench-") as tmp:
        out = Path(tmp) / "results.json"
        command = [sys.executable, str(HERE / benchmark.script), "--json", str(out), *benchmark.args]
        if quick:
            command.append("--quick")
        print(f"\n## {benchmark.name}: {benchmark.script}{' --quick' if quick else ''}\n", flush=True)
        done = subprocess.run(command, check=False)
        if done.returncode != 0 or not out.exists():
            print(f"{benchmark.name} failed with exit code {done.returncode}", file=sys.stderr)
            return [Result(benchmark.name, "FAILED", float("nan"), "", note=f"exit code {done.returncode}")]
        return read_results(out)


def machine() -> str:
    """One line about the machine and the versions measured."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return (
        f"{dt.datetime.now(tz=dt.timezone.utc):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch}, ckpt-path {metadata.version('ckpt-path')}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return 1 if one failed (or, with --strict, missed its goal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, fast runs (smoke test)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    if not selected:
        parser.error(f"no benchmark named {args.only}; known: {', '.join(b.name for b in BENCHMARKS)}")

    results = [r for b in selected for r in run_benchmark(b, quick=args.quick)]
    rows = [
        (
            r.benchmark,
            r.metric,
            f"{r.value:g} {r.unit}",
            f"< {r.goal:g} {r.unit}" if r.goal is not None else "",
            r.verdict,
            r.note,
        )
        for r in results
    ]
    print(f"\n## Summary{' (quick)' if args.quick else ''}\n\n{machine()}; at the end: {load()}\n")
    print(table(("benchmark", "metric", "value", "goal", "", "note"), rows))
    failed = any(r.metric == "FAILED" for r in results)
    missed = any(r.verdict == "MISSED" for r in results)
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
