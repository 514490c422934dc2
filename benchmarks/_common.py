"""Helpers shared by the benchmark scripts: results and tables, timed subprocesses, test data.

Every benchmark script measures something, prints its own table for people, and (with
``--json PATH``) writes its headline figures as a list of :class:`Result` objects, which
``run.py`` gathers into one markdown table.

Run as a script, this module writes or checks the data of the conversion benchmarks in a
process of its own (so the benchmark's own process never imports torch):
``python _common.py generate PATH BYTES`` and ``python _common.py check PATH TENSORS``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

NS_PER_MS = 1_000_000
MIB = 1 << 20
GIB = 1 << 30
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- results and tables


@dataclass(frozen=True, slots=True)
class Result:
    """One headline figure of a benchmark, as it appears in ``run.py``'s table."""

    benchmark: str
    metric: str
    value: float
    unit: str
    goal: float | None = None
    """Upper bound the project aims for, in ``unit``; None when there is no goal."""
    note: str = ""

    @property
    def verdict(self) -> str:
        """``"ok"`` or ``"MISSED"`` against the goal, empty without a goal."""
        if self.goal is None:
            return ""
        return "ok" if self.value < self.goal else "MISSED"


class GcMeter:
    """Record the garbage collector's passes (generation, nanoseconds) while in a ``with`` block."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, int]] = []
        self._start = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
        else:
            self.pauses.append((info["generation"], time.perf_counter_ns() - self._start))

    def __enter__(self) -> None:
        gc.callbacks.append(self._callback)

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)

    @property
    def total_ns(self) -> int:
        """Time spent in every collection."""
        return sum(ns for _, ns in self.pauses)

    def summary(self) -> str:
        """One line: passes, total time, and the full collections (generation 2)."""
        full = [ns for generation, ns in self.pauses if generation == 2]
        longest = f", longest {ms(max(full)):.1f} ms" if full else ""
        return f"{len(self.pauses)} GC passes, {ms(self.total_ns):.1f} ms in all; {len(full)} full collections{longest}"


def load() -> str:
    """Describe the machine's load average, so that a noisy run can be recognised."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:  # not available on this platform
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} CPUs"


def ms(ns: float) -> float:
    """Convert nanoseconds to milliseconds."""
    return ns / NS_PER_MS


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``samples`` (``fraction`` in (0, 1])."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def median(samples: Sequence[float]) -> float:
    """Return the median of ``samples``."""
    return statistics.median(samples)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a markdown table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every benchmark script takes: ``--quick`` and ``--json PATH``."""
    parser.add_argument("--quick", action="store_true", help="smaller, faster run for smoke tests")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the headline results to PATH (run.py)")


def write_results(path: Path | None, results: Sequence[Result]) -> None:
    """Write ``results`` to ``path`` as a JSON list, when a path is given."""
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")


def read_results(path: Path) -> list[Result]:
    """Read results written by :func:`write_results`."""
    return [Result(**item) for item in json.loads(path.read_text(encoding="utf-8"))]


def ckpt_path_executable() -> str:
    """Return the ``ckpt-path`` console script installed beside this interpreter (else on PATH)."""
    found = shutil.which("ckpt-path", path=str(Path(sys.executable).parent)) or shutil.which("ckpt-path")
    if found is None:
        sys.exit("ckpt-path is not installed (run `make bench`)")
    return found


# --------------------------------------------------------------------------- timed subprocesses


@dataclass(slots=True)
class Command:
    """A command to time, its samples, and the file it writes (deleted before each run)."""

    key: str
    argv: list[str]
    output: Path | None = None
    env: dict[str, str] | None = None
    walls: list[float] = field(default_factory=list)
    anon_kib: list[int] = field(default_factory=list)
    """Peak ``RssAnon`` of each run: private anonymous memory (heap, tensors read into memory),
    neither the page cache nor the pages of a memory-mapped file."""

    def wall(self) -> float:
        """Median wall time, seconds."""
        return median(self.walls)

    def anon_mib(self) -> float:
        """Highest peak RssAnon over the runs, MiB."""
        return max(self.anon_kib) / 1024


def _poll_anon(pid: int, peak: list[int], stop: threading.Event) -> None:
    """Keep the highest ``RssAnon`` of ``/proc/PID/status`` in ``peak[0]``, every 5 ms, until ``stop``.

    (``wait4``'s ``ru_maxrss`` is no use: Linux carries the parent's resident size into the
    child's through fork and exec.)
    """
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            text = status.read_text(encoding="ascii")
        except OSError:
            return
        found = re.search(r"^RssAnon:\s+(\d+)", text, re.MULTILINE)
        if found:
            peak[0] = max(peak[0], int(found.group(1)))
        stop.wait(0.005)


def run_once(cmd: Command) -> tuple[float, int, str]:
    """Run ``cmd`` once; return its wall seconds, peak RssAnon in KiB and stdout. Exit if it fails."""
    peak, stop = [0], threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(cmd.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cmd.env, text=True)
    poller = threading.Thread(target=_poll_anon, args=(process.pid, peak, stop), daemon=True)
    poller.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    stop.set()
    poller.join()
    if process.returncode != 0:
        sys.exit(f"{cmd.key} failed with exit code {process.returncode}:\n{stderr[-2000:]}")
    return wall, peak[0], stdout


def run_rounds(cmds: Sequence[Command], runs: int, *, check: Callable[[Path], str] | None = None) -> None:
    """Run a warm-up round (discarded), then ``runs`` rounds, each command once per round.

    The order alternates (forward, then backward), so drift of the machine and the state one
    command leaves to the next fall on every command alike. Before each run: ``sync``, so no
    run pays for writing back an earlier one's output; and a command that writes deletes the
    previous writer's output first, so the disk holds the input and at most one output.
    ``check`` looks once at the output of the first command, in the warm-up round.
    """
    pending: Path | None = None
    try:
        for round_ in range(runs + 1):
            for cmd in cmds if round_ % 2 == 0 else reversed(cmds):
                os.sync()
                if cmd.output is not None:
                    for stale in (pending, cmd.output):
                        if stale is not None:
                            _remove(stale)
                wall, anon_kib, _ = run_once(cmd)
                if round_ > 0:
                    cmd.walls.append(wall)
                    cmd.anon_kib.append(anon_kib)
                if cmd.output is not None:
                    if round_ == 0 and check is not None and cmd is cmds[0]:
                        print(check(cmd.output), file=sys.stderr, flush=True)
                    pending = cmd.output
            done = ", ".join(f"{c.key} {c.walls[-1]:.2f}" for c in cmds) if round_ else "warm-up"
            print(f"round {round_}/{runs}: {done}", file=sys.stderr, flush=True)
    finally:
        if pending is not None:
            _remove(pending)


def _remove(path: Path) -> None:
    """Delete a command's output: a file, or a directory of outputs."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- conversion test data

TARGET = "2.0.0"
RENAMES = [
    ("1.0.0", "1.1.0", [("model.layers.{i}.attn.{p}.{t}", "model.layers.{i}.self_attn.{p}.{t}")]),
    (
        "1.1.0",
        "1.2.0",
        [
            ("model.layers.{i}.mlp.fc1.{t}", "model.layers.{i}.mlp.up_proj.{t}"),
            ("model.layers.{i}.mlp.fc2.{t}", "model.layers.{i}.mlp.down_proj.{t}"),
        ],
    ),
    (
        "1.2.0",
        "1.3.0",
        [
            ("model.embed_tokens.{t}", "model.embeddings.tokens.{t}"),
            ("model.embed_positions.{t}", "model.embeddings.positions.{t}"),
        ],
    ),
    (
        "1.3.0",
        TARGET,
        [
            ("model.layers.{i}.attn_norm.{t}", "model.layers.{i}.input_layernorm.{t}"),
            ("model.layers.{i}.mlp_norm.{t}", "model.layers.{i}.post_attention_layernorm.{t}"),
        ],
    ),
]
"""A rename-only path 1.0.0 -> 2.0.0: (source, target, [(old key template, new key template)]).
``{x}`` stands for one dotted segment, as in ``ckpt_path.ops.Rename``."""


def template_regex(template: str) -> str:
    """Return a regular expression matching the keys of a ``Rename`` template, one group per ``{x}``."""
    return "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^.]+)", re.escape(template)) + "$"


COMPUTED = "model.layers.0.attn.q_proj.weight"
"""The one tensor the computing path changes (hidden size 1024: 4 MiB), with a MoveIndex."""


def write_converters(directory: Path, *, compute: bool = False) -> None:
    """Write the :data:`RENAMES` path as declarative ``ops`` converter files (one per step).

    With ``compute`` the first step also moves one row of :data:`COMPUTED` (a ``MoveIndex``):
    the same path with one small tensor computed instead of copied.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for number, (source, target, renames) in enumerate(RENAMES, 1):
        ops = ", ".join(f"Rename({old!r}, {new!r})" for old, new in renames)
        if compute and number == 1:
            ops = f"MoveIndex({COMPUTED!r}, dim=0, index=0, to=1), {ops}"
        text = (
            f'"""Rename step {source} -> {target}."""\n\nfrom ckpt_path.ops import MoveIndex, Rename\n\n'
            f'source = "{source}"\ntarget = "{target}"\nops = [{ops}]\n'
        )
        (directory / f"{number:02d}_rename.py").write_text(text, encoding="utf-8")


BARE = '''"""The same renames without ckpt-path. Usage: python bare.py IN OUT MODE (mmap, fsync, plain)."""
import datetime
import json
import os
import re
import sys

import torch

RENAMES = None  # replaced by the benchmark: [(source, target, [(key regex, new key template)])]

src, dst, mode = sys.argv[1:]
if src.endswith(".safetensors"):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(src, framework="pt") as f:
        meta = dict(f.metadata())
    ckpt = sd = load_file(src)
    history = json.loads(meta["ckpt_path.history"])
else:
    ckpt = torch.load(src, mmap=mode != "plain", weights_only=True)
    sd, history = ckpt["state_dict"], ckpt["ckpt_path"]["history"]
for source, target, renames in RENAMES:
    for old, new in renames:
        for key in list(sd):
            if found := re.match(old, key):
                sd[new.format(**found.groupdict())] = sd.pop(key)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    history.append({"source": source, "target": target, "converter": None, "digest": None, "at": now})
out = dst + ".tmp" if mode == "fsync" else dst
if src.endswith(".safetensors"):
    meta.update({"ckpt_path.version": target, "ckpt_path.history": json.dumps(history)})
    save_file(sd, out, metadata=meta)
else:
    ckpt["ckpt_path"]["version"] = target
    torch.save(ckpt, out)
if mode == "fsync":
    for path in (out, os.path.dirname(dst) or "."):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        if path == out:
            os.replace(out, dst)
'''


def write_bare_script(path: Path) -> None:
    """Write :data:`BARE`, the :data:`RENAMES` path done by hand, to ``path``."""
    renames = [(s, t, [(template_regex(old), new) for old, new in pairs]) for s, t, pairs in RENAMES]
    path.write_text(BARE.replace("RENAMES = None", f"RENAMES = {renames!r}"), encoding="utf-8")


def transformer(size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Keys and shapes of a small transformer's float32 weights, about ``size`` bytes in all.

    Hidden size 1024 from 512 MiB up (1 GiB: 16 layers, 261 tensors; 4 GiB: 80 layers), smaller
    below; the token embedding and the LM head take about a quarter of the bytes together.
    """
    d = 1024 if size >= 512 * MIB else 512 if size >= 128 * MIB else 256
    vocab = min(32_000, max(1_000, size // 8 // (4 * d) // 64 * 64))
    head = [("model.embed_tokens.weight", (vocab, d)), ("model.embed_positions.weight", (2048, d))]
    tail = [("model.norm.weight", (d,)), ("model.norm.bias", (d,)), ("lm_head.weight", (vocab, d))]

    def layer(i: int) -> list[tuple[str, tuple[int, ...]]]:
        p = f"model.layers.{i}"
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for proj in "qkvo":
            shapes += [(f"{p}.attn.{proj}_proj.weight", (d, d)), (f"{p}.attn.{proj}_proj.bias", (d,))]
        for norm in ("attn_norm", "mlp_norm"):
            shapes += [(f"{p}.{norm}.weight", (d,)), (f"{p}.{norm}.bias", (d,))]
        shapes += [(f"{p}.mlp.fc1.weight", (4 * d, d)), (f"{p}.mlp.fc1.bias", (4 * d,))]
        return [*shapes, (f"{p}.mlp.fc2.weight", (d, 4 * d)), (f"{p}.mlp.fc2.bias", (d,))]

    def nbytes(shapes: list[tuple[str, tuple[int, ...]]]) -> int:
        return sum(4 * math.prod(shape) for _, shape in shapes)

    layers = max(1, round((size - nbytes(head + tail)) / nbytes(layer(0))))
    return head + [s for i in range(layers) for s in layer(i)] + tail


def generate(path: Path, size: int) -> None:
    """Write a checkpoint stamped 1.0.0 of about ``size`` bytes at ``path``.

    A ``.safetensors`` path gets a flat state dict (stamp in ``__metadata__``), any other a
    Lightning-style ``torch.save`` zip.
    """
    import torch

    rng = torch.Generator().manual_seed(0)
    sd = {key: torch.randn(shape, generator=rng) * 0.02 for key, shape in transformer(size)}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"format": "pt", "ckpt_path.version": "1.0.0", "ckpt_path.history": "[]"})
        return
    group = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "params": list(range(len(sd)))}
    ckpt = {
        "state_dict": sd,
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.4.0",
        "hyper_parameters": {"lr": 3e-4, "warmup_steps": 500, "dropout": 0.1, "optimizer": "adamw"},
        "optimizer_states": [{"state": {}, "param_groups": [group]}],
        "lr_schedulers": [{"last_epoch": 1000, "base_lrs": [3e-4]}],
        "loops": {},
        "callbacks": {},
        "ckpt_path": {"version": "1.0.0", "history": []},
    }
    torch.save(ckpt, path)


def check(path: Path, tensors: int) -> str:
    """Check that ``path`` is stamped :data:`TARGET` and holds ``tensors`` tensors, every key renamed."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys, meta = list(f.keys()), f.metadata() or {}
        version, steps = meta.get("ckpt_path.version"), len(json.loads(meta.get("ckpt_path.history", "[]")))
    else:
        import torch

        ckpt = torch.load(path, mmap=True, weights_only=True)
        keys, version, steps = list(ckpt["state_dict"]), ckpt["ckpt_path"]["version"], len(ckpt["ckpt_path"]["history"])
    olds = [re.compile(template_regex(old)) for _, _, renames in RENAMES for old, _ in renames]
    stale = [k for k in keys if any(r.match(k) for r in olds)]
    if version != TARGET or steps != len(RENAMES) or len(keys) != tensors or stale:
        sys.exit(f"unexpected output: version {version}, {steps} history entries, {len(keys)} tensors, {stale[:3]}")
    return f"output checked: stamped {version}, {steps} history entries, {len(keys)} tensors, every key renamed"


def in_child(action: str, path: Path, number: int) -> str:
    """Run ``generate`` or ``check`` in a fresh process; return what it printed."""
    argv = [sys.executable, str(HERE / "_common.py"), action, str(path), str(number)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{action} {path.name} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


if __name__ == "__main__":
    action, where, count = sys.argv[1:]
    if action == "generate":
        generate(Path(where), int(count))
    else:
        print(check(Path(where), int(count)))
