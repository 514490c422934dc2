"""Convert a checkpoint larger than the memory a process may use.

Generates a Lightning-style checkpoint of ``--size-gib`` GiB (default 4), then runs, each in a
fresh memory cgroup (v1, ``memory.limit_in_bytes``) capped at ``--cap-gib`` GiB (default 1):

* ``ckpt-path convert`` along a path of two renames;
* the same renames in a bare script with a plain ``torch.load`` (what Lightning's upgrade does).

A cgroup's limit counts the page cache too, but the kernel reclaims clean file pages under
pressure, so only anonymous memory can make a process fail. The script reports each exit code
(-9 is the kernel's out-of-memory kill), wall time and the cgroup's peak usage. It needs root
and the cgroup v1 memory controller at /sys/fs/cgroup/memory; elsewhere it says so and exits 2.

Usage: python benchmarks/bench_memcap.py [--size-gib 4] [--cap-gib 1] [--keep]
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

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
TENSOR_MIB = 64

CONVERTERS = {
    "001_attn.py": '''"""Rename attention."""
from ckpt_path.ops import Rename
source = "1.0.0"
target = "1.1.0"
ops = [Rename("layers.{i}.attn.{p}", "layers.{i}.self_attn.{p}")]
''',
    "002_mlp.py": '''"""Rename the MLP."""
from ckpt_path.ops import Rename
source = "1.1.0"
target = "2.0.0"
ops = [Rename("layers.{i}.mlp.{p}", "layers.{i}.ffn.{p}")]
''',
}

BARE = """
import sys, torch
ckpt = torch.load(sys.argv[1], weights_only=True)
sd = ckpt["state_dict"]
for key in list(sd):
    new = key.replace(".attn.", ".self_attn.").replace(".mlp.", ".ffn.")
    sd[new] = sd.pop(key)
torch.save(ckpt, sys.argv[2])
"""


def generate(path: Path, size_gib: float) -> None:
    """Write a stamped Lightning-style checkpoint of about ``size_gib`` GiB, 64 MiB per tensor."""
    import torch

    count = max(2, int(size_gib * 1024 / TENSOR_MIB))
    rows = TENSOR_MIB * 1024 * 1024 // 4 // 1024
    state_dict = {}
    for i in range(count):
        kind = "attn" if i % 2 == 0 else "mlp"
        state_dict[f"layers.{i // 2}.{kind}.weight"] = torch.full((rows, 1024), float(i))
    ckpt = {
        "state_dict": state_dict,
        "epoch": 3,
        "hyper_parameters": {"layers": count // 2},
        "ckpt_path": {"version": "1.0.0", "history": []},
    }
    torch.save(ckpt, path)
    del state_dict, ckpt


def run_capped(name: str, command: list[str], cap: int) -> dict[str, object]:
    """Run ``command`` in a new memory cgroup limited to ``cap`` bytes; return what happened."""
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
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        return {
            "name": name,
            "exit": done.returncode,
            "seconds": seconds,
            "peak_mib": peak / 2**20,
            "stderr": done.stderr.strip().splitlines()[-1:] if done.returncode else [],
        }
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def main() -> int:
    """Run both conversions under the cap and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--cap-gib", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists() or os.geteuid() != 0:
        print("needs root and the cgroup v1 memory controller at /sys/fs/cgroup/memory")
        return 2
    work = Path(tempfile.mkdtemp(prefix="ckpt-path-memcap-"))
    try:
        converters = work / "converters"
        converters.mkdir()
        for name, text in CONVERTERS.items():
            (converters / name).write_text(text)
        source = work / "in.ckpt"
        started = time.perf_counter()
        generate(source, args.size_gib)
        size = source.stat().st_size
        print(f"checkpoint: {size / 2**30:.2f} GiB in {time.perf_counter() - started:.1f} s; cap {args.cap_gib} GiB")
        cap = int(args.cap_gib * 2**30)
        exe = shutil.which("ckpt-path", path=str(Path(sys.executable).parent)) or "ckpt-path"
        results = [
            run_capped(
                "ckpt-path",
                [exe, "convert", str(source), "-o", str(work / "a.ckpt"), "--converters", str(converters)],
                cap,
            ),
            run_capped("bare-torch-load", [sys.executable, "-c", BARE, str(source), str(work / "c.ckpt")], cap),
        ]
        print()
        print("| run | exit | wall s | cgroup peak MiB (page cache included) |")
        print("| --- | --- | --- | --- |")
        for r in results:
            print(f"| {r['name']} | {r['exit']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} |")
        for r in results:
            if r["stderr"]:
                print(f"{r['name']} stderr: {r['stderr']}")
        converted = work / "a.ckpt"
        if converted.exists():
            import torch

            ckpt = torch.load(converted, weights_only=True, mmap=True)
            keys = list(ckpt["state_dict"])
            renamed = all(".self_attn." in k or ".ffn." in k for k in keys)
            version = ckpt["ckpt_path"]["version"]
            print(f"ckpt-path output: version {version}, {len(keys)} tensors, all renamed: {renamed}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
