"""Benchmark ``ckpt-path convert`` on a large Lightning-style checkpoint, next to its floors.

Writes a Lightning-style checkpoint (``state_dict`` of float32 tensors of a small transformer,
``epoch``, ``global_step``, ``hyper_parameters``, a small ``optimizer_states``), stamped
``1.0.0``, and a converters directory with a path of four renames 1.0.0 -> 1.1.0 -> 1.2.0 ->
1.3.0 -> 2.0.0, each declaring ``touches``. Then it measures, as subprocesses of the same
interpreter, interleaved round by round:

(a) ``ckpt-path convert IN -o OUT --to 2.0.0 --force``;
(b) a bare script that runs the same converter files' ``convert`` functions on
    ``torch.load(IN, mmap=True, weights_only=True)`` and calls ``torch.save(ckpt, OUT)``;
(c) the same script with a plain ``torch.load(IN, weights_only=True)`` (no mmap; what
    Lightning's checkpoint upgrade does);
(d) ``cp IN OUT``, the floor;

and, to tell where the time goes: (a) run through a wrapper that calls ``gc.freeze()`` after
the imports (the fix proposed for the garbage collector's cost), the bare script saving as
durably as ckpt-path does (temporary file, fsync, rename; once more with the write-back done
by a background thread), ``ckpt-path convert --dry-run`` (no save), the imports alone, and
``python -c "import torch"`` (also the memory baseline). Last, in one process, it times the
save step alone several ways (``torch.save``, ckpt-path's own ``save_checkpoint``, ...), and
how much of each is spent in ``fsync``.

Wall time: median over ``--runs`` rounds after one warm-up round that is discarded (so the
input file, the interpreter and torch are in the page cache). ``sync`` is called before every
run, so that no run pays for writing back an earlier run's output, and a command that writes
first deletes the previous writer's output (see :func:`run_rounds`). The output of (a) is
checked once (stamp 2.0.0, every key renamed).

Memory: a thread polls ``/proc/PID/status`` every 5 ms and keeps the peaks of ``RssAnon``
(private anonymous memory: heap, tensors read into memory; not the page cache, not
memory-mapped file pages), ``RssFile`` and ``VmHWM``. The headline is peak RssAnon minus the
peak RssAnon of ``python -c "import torch"``, as a share of the checkpoint's size.

With ``--format safetensors`` it measures a flat state dict in one ``.safetensors`` file
instead (stamped ``1.0.0`` in ``__metadata__``; written with ``safetensors.torch.save_file``),
converted along the same four renames written as ``ops = [Rename(...)]`` files:

(a) ``ckpt-path convert IN.safetensors -o OUT.safetensors --to 2.0.0 --force``;
(b) a bare script doing the same renames with ``safetensors.torch.load_file`` + ``save_file``;
(b2) the same with ``safe_open`` + ``get_tensor`` per key + ``save_file``;
(d) ``cp IN OUT``; (a-dry) ``convert --dry-run``; and ``python -c "import torch"`` (baseline).

Linux only (``/proc``, ``wait4``). Run: ``python benchmarks/bench_convert.py`` (1 GiB, 5
runs), ``--size-gib 4 --runs 9``, ``--format safetensors``, or ``--quick`` (64 MiB, 1 run) as a
smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import Result, add_common_arguments, median, table, write_results

GOAL_TIME_RATIO = 1.05
"""The project's goal: ``ckpt-path convert`` takes at most 5 % longer than the bare script (b)."""
GOAL_ANON_SHARE = 0.10
"""The project's goal: on a path of renames, peak anonymous memory above ``import torch`` stays
under 10 % of the checkpoint's size."""

MIB = 1 << 20
GIB = 1 << 30
POLL_SECONDS = 0.005
WRITEBACK_SECONDS = 0.05
TARGET = "2.0.0"
REPO = Path(__file__).resolve().parent.parent

# (file name, source, target, description, touches, renames (old substring, new substring))
STEPS = [
    (
        "01_self_attn.py",
        "1.0.0",
        "1.1.0",
        "Rename the attention blocks: layers.N.attn.* -> layers.N.self_attn.*.",
        ["model.layers.*.attn.*", "model.layers.*.self_attn.*"],
        [(".attn.", ".self_attn.")],
    ),
    (
        "02_mlp_names.py",
        "1.1.0",
        "1.2.0",
        "Rename the MLPs: mlp.fc1 -> mlp.up_proj, mlp.fc2 -> mlp.down_proj.",
        ["model.layers.*.mlp.*"],
        [(".mlp.fc1.", ".mlp.up_proj."), (".mlp.fc2.", ".mlp.down_proj.")],
    ),
    (
        "03_embeddings.py",
        "1.2.0",
        "1.3.0",
        "Move the embeddings under model.embeddings.",
        ["model.embed_tokens.*", "model.embed_positions.*", "model.embeddings.*"],
        [
            ("model.embed_tokens.", "model.embeddings.tokens."),
            ("model.embed_positions.", "model.embeddings.positions."),
        ],
    ),
    (
        "04_norm_names.py",
        "1.3.0",
        "2.0.0",
        "Rename the layer norms the way Hugging Face models name them.",
        ["model.layers.*_norm.*", "model.layers.*_layernorm.*"],
        [(".attn_norm.", ".input_layernorm."), (".mlp_norm.", ".post_attention_layernorm.")],
    ),
]

CONVERTER = '''"""{description}"""

source = "{source}"
target = "{target}"
touches = {touches!r}

RENAMES = {renames!r}


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in list(sd):
        for old, new in RENAMES:
            if old in key:
                sd[key.replace(old, new, 1)] = sd.pop(key)
                break
    return ckpt
'''

BARE_SCRIPT = '''"""The same conversion without ckpt-path: load, run each converter's convert, stamp, save.

Usage: python bare_convert.py IN OUT MODE CONVERTER.py...
MODE: mmap, no-mmap (torch.load without mmap), mmap-fsync (save the way ckpt-path does:
temporary file beside OUT, fsync, rename, fsync the directory) or mmap-fsync-bg (the same,
with a thread that writes back what is dirty every 50 ms while torch.save runs).
"""

import datetime
import importlib.util
import os
import sys
import tempfile
import threading

import torch

src, dst, mode, *files = sys.argv[1:]
ckpt = torch.load(src, mmap=mode != "no-mmap", weights_only=True)
stamp = ckpt["ckpt_path"]
for file in files:
    spec = importlib.util.spec_from_file_location(os.path.basename(file)[:-3], file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = module.convert(ckpt)
    stamp["history"].append({
        "source": module.source, "target": module.target, "converter": spec.name, "digest": None,
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    stamp["version"] = module.target


def write_back(fd, done):
    while not done.wait(0.05):
        os.fdatasync(fd)  # releases the GIL: the disk works while torch.save goes on


if mode.startswith("mmap-fsync"):
    directory = os.path.dirname(dst) or "."
    fd, tmp = tempfile.mkstemp(prefix=".bare.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "wb") as handle:
        done = threading.Event()
        thread = threading.Thread(target=write_back, args=(handle.fileno(), done))
        if mode == "mmap-fsync-bg":
            thread.start()
        try:
            torch.save(ckpt, handle)
        finally:
            done.set()
            if thread.is_alive():
                thread.join()
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, dst)
    dir_fd = os.open(directory, os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)
else:
    torch.save(ckpt, dst)
'''


GC_FREEZE_SCRIPT = '''"""Run ckpt-path's command line after moving every object alive after the imports out of the GC.

With torch imported, one full collection of the cyclic garbage collector walks a few hundred
thousand objects (about 70 ms here), and importing ckpt-path's command line (typer, networkx)
allocates enough to trigger some, and so does the interpreter's shutdown. ``gc.freeze()``
right after the imports takes those objects out of every later collection. This is the fix
proposed for ``ckpt_path.cli``, measured here without editing it.
"""

import gc
import sys

import ckpt_path.cli
import ckpt_path.commands  # imports torch

gc.freeze()
sys.argv[0] = "ckpt-path"
sys.exit(ckpt_path.cli.main())
'''


ST_STEPS = [
    ("01_self_attn.py", "1.0.0", "1.1.0", [("model.layers.{i}.attn.{p}.{t}", "model.layers.{i}.self_attn.{p}.{t}")]),
    (
        "02_mlp_names.py",
        "1.1.0",
        "1.2.0",
        [
            ("model.layers.{i}.mlp.fc1.{t}", "model.layers.{i}.mlp.up_proj.{t}"),
            ("model.layers.{i}.mlp.fc2.{t}", "model.layers.{i}.mlp.down_proj.{t}"),
        ],
    ),
    (
        "03_embeddings.py",
        "1.2.0",
        "1.3.0",
        [
            ("model.embed_tokens.{t}", "model.embeddings.tokens.{t}"),
            ("model.embed_positions.{t}", "model.embeddings.positions.{t}"),
        ],
    ),
    (
        "04_norm_names.py",
        "1.3.0",
        "2.0.0",
        [
            ("model.layers.{i}.attn_norm.{t}", "model.layers.{i}.input_layernorm.{t}"),
            ("model.layers.{i}.mlp_norm.{t}", "model.layers.{i}.post_attention_layernorm.{t}"),
        ],
    ),
]
"""The same four renames for a flat state dict, as declarative ops (``{x}`` is one dotted segment)."""

ST_CONVERTER = '''"""Rename keys of a flat state dict (safetensors benchmark)."""

from ckpt_path.ops import Rename

source = "{source}"
target = "{target}"

ops = [{ops}]
'''

ST_BARE_SCRIPT = '''"""The same renames without ckpt-path, on a safetensors file: what a user would write.

Usage: python bare_st.py IN OUT MODE
MODE: load_file (safetensors.torch.load_file) or safe_open (get_tensor key by key); both save
with safetensors.torch.save_file. The stamp in __metadata__ is moved to 2.0.0.
"""

import datetime
import json
import sys

from safetensors import safe_open
from safetensors.torch import load_file, save_file

RENAMES = {renames!r}

src, dst, mode = sys.argv[1:]
with safe_open(src, framework="pt") as f:
    metadata = dict(f.metadata() or {{}})
    if mode == "safe_open":
        tensors = {{key: f.get_tensor(key) for key in f.keys()}}
if mode == "load_file":
    tensors = load_file(src)
for step, source, target in RENAMES:
    for key in list(tensors):
        for old, new in step:
            if old in key:
                tensors[key.replace(old, new, 1)] = tensors.pop(key)
                break
    history = json.loads(metadata.get("ckpt_path.history", "[]"))
    history.append({{
        "source": source, "target": target, "converter": None, "digest": None,
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }})
    metadata["ckpt_path.history"] = json.dumps(history)
    metadata["ckpt_path.version"] = target
save_file(tensors, dst, metadata=metadata)
'''


# --------------------------------------------------------------------------- the checkpoint


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Sizes of the transformer whose weights make up the checkpoint."""

    hidden: int
    vocab: int
    positions: int
    layers: int

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every state-dict key with its shape, in the order a model would list them."""
        d, ffn = self.hidden, 4 * self.hidden
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("model.embed_tokens.weight", (self.vocab, d)),
            ("model.embed_positions.weight", (self.positions, d)),
        ]
        for i in range(self.layers):
            layer = f"model.layers.{i}"
            for proj in ("q", "k", "v", "o"):
                shapes += [(f"{layer}.attn.{proj}_proj.weight", (d, d)), (f"{layer}.attn.{proj}_proj.bias", (d,))]
            shapes += [(f"{layer}.attn_norm.weight", (d,)), (f"{layer}.attn_norm.bias", (d,))]
            shapes += [(f"{layer}.mlp.fc1.weight", (ffn, d)), (f"{layer}.mlp.fc1.bias", (ffn,))]
            shapes += [(f"{layer}.mlp.fc2.weight", (d, ffn)), (f"{layer}.mlp.fc2.bias", (d,))]
            shapes += [(f"{layer}.mlp_norm.weight", (d,)), (f"{layer}.mlp_norm.bias", (d,))]
        shapes += [("model.norm.weight", (d,)), ("model.norm.bias", (d,)), ("lm_head.weight", (self.vocab, d))]
        return shapes

    def nbytes(self) -> int:
        """Bytes of float32 tensor data."""
        return sum(4 * _numel(shape) for _, shape in self.tensors())


def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for dim in shape:
        numel *= dim
    return numel


def model_shape(size: int) -> ModelShape:
    """Pick a transformer whose float32 weights take about ``size`` bytes.

    Hidden size 1024 from 512 MiB up (a 1 GiB checkpoint is then 16 layers, vocabulary 32000),
    smaller below; token embedding and LM head take about a quarter of the bytes together.
    """
    hidden = 1024 if size >= 512 * MIB else 512 if size >= 128 * MIB else 256
    vocab = min(32_000, max(1_000, size // 8 // (4 * hidden) // 64 * 64))
    positions = 2048
    fixed = ModelShape(hidden, vocab, positions, 0).nbytes()
    per_layer = ModelShape(hidden, vocab, positions, 1).nbytes() - fixed
    layers = max(1, round((size - fixed) / per_layer))
    return ModelShape(hidden, vocab, positions, layers)


def write_checkpoint(path: Path, size: int) -> None:
    """Write a stamped Lightning-style checkpoint of about ``size`` bytes (in a child process)."""
    import torch

    shape = model_shape(size)
    generator = torch.Generator().manual_seed(0)
    state_dict = {key: torch.randn(dims, generator=generator) * 0.02 for key, dims in shape.tensors()}
    ckpt = {
        "state_dict": state_dict,
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.4.0",
        "hyper_parameters": {
            "hidden": shape.hidden,
            "layers": shape.layers,
            "vocab": shape.vocab,
            "lr": 3e-4,
            "betas": (0.9, 0.95),
            "warmup_steps": 500,
            "dropout": 0.1,
            "optimizer": "adamw",
        },
        "optimizer_states": [
            {
                "state": {},
                "param_groups": [
                    {
                        "lr": 3e-4,
                        "betas": (0.9, 0.95),
                        "eps": 1e-8,
                        "weight_decay": 0.1,
                        "params": list(range(len(state_dict))),
                    },
                ],
            },
        ],
        "lr_schedulers": [{"last_epoch": 1000, "base_lrs": [3e-4]}],
        "loops": {},
        "callbacks": {},
        "ckpt_path": {"version": "1.0.0", "history": []},
    }
    torch.save(ckpt, path)


def write_converters(directory: Path) -> list[Path]:
    """Write the four rename converters; return their files in path order."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, source, target, description, touches, renames in STEPS:
        file = directory / name
        file.write_text(
            CONVERTER.format(description=description, source=source, target=target, touches=touches, renames=renames),
            encoding="utf-8",
        )
        files.append(file)
    return files


def write_safetensors(path: Path, size: int) -> None:
    """Write a stamped flat state dict of about ``size`` bytes as one safetensors file (in a child)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {key: torch.randn(dims, generator=generator) * 0.02 for key, dims in model_shape(size).tensors()}
    metadata = {"format": "pt", "ckpt_path.version": "1.0.0", "ckpt_path.history": "[]"}
    save_file(tensors, str(path), metadata=metadata)


def write_st_converters(directory: Path) -> list[Path]:
    """Write the four rename converters as ``ops`` files for a flat state dict; return them in order."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, source, target, renames in ST_STEPS:
        ops = ", ".join(f"Rename({old!r}, {new!r})" for old, new in renames)
        file = directory / name
        file.write_text(ST_CONVERTER.format(source=source, target=target, ops=ops), encoding="utf-8")
        files.append(file)
    return files


def st_bare_script() -> str:
    """Return the bare safetensors script, with the same renames as substrings (from STEPS)."""
    renames = [(renames, source, target) for _, source, target, _, _, renames in STEPS]
    return ST_BARE_SCRIPT.format(renames=renames)


# --------------------------------------------------------------------------- measuring


@dataclass(slots=True)
class Sample:
    """One run of one command."""

    wall: float
    cpu: float
    """User plus system CPU seconds."""
    hwm_kib: int
    """Peak resident set (``VmHWM``, file-backed pages included) at the poller's last look."""
    anon_kib: int
    """Peak ``RssAnon`` seen by the poller."""
    file_kib: int
    """Peak ``RssFile`` seen by the poller."""


class StatusPoller(threading.Thread):
    """Poll ``/proc/PID/status``: keep the peaks of ``RssAnon`` and ``RssFile``, and ``VmHWM``.

    (``wait4``'s ``ru_maxrss`` would be exact for ``VmHWM`` but is useless here: Linux carries
    the parent's resident size over into the child's through fork and exec.)
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.anon_kib = 0
        self.file_kib = 0
        self.hwm_kib = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        """Poll until stopped or the process is gone."""
        while not self.stopped.is_set():
            try:
                text = self.path.read_text(encoding="ascii")
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("RssAnon:"):
                    self.anon_kib = max(self.anon_kib, int(line.split()[1]))
                elif line.startswith("RssFile:"):
                    self.file_kib = max(self.file_kib, int(line.split()[1]))
                elif line.startswith("VmHWM:"):
                    self.hwm_kib = max(self.hwm_kib, int(line.split()[1]))
            self.stopped.wait(POLL_SECONDS)


def measure(argv: Sequence[str], log: Path) -> Sample:
    """Run ``argv`` once; return its wall time, CPU time and memory peaks."""
    with log.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        poller = StatusPoller(process.pid)
        poller.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    poller.stopped.set()
    poller.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        detail = log.read_text(encoding="utf-8", errors="replace").strip()[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}:\n{detail}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, poller.hwm_kib, poller.anon_kib, poller.file_kib)


@dataclass(slots=True)
class Command:
    """A command to time; ``output`` is deleted before each run."""

    key: str
    label: str
    argv: list[str]
    output: Path | None
    samples: list[Sample] = field(default_factory=list)

    def wall(self) -> float:
        """Median wall time, seconds."""
        return median([s.wall for s in self.samples])

    def cpu(self) -> float:
        """Median user + system CPU time, seconds."""
        return median([s.cpu for s in self.samples])

    def anon_mib(self) -> float:
        """Highest peak RssAnon over the runs, MiB."""
        return max(s.anon_kib for s in self.samples) / 1024

    def file_mib(self) -> float:
        """Highest peak RssFile over the runs, MiB."""
        return max(s.file_kib for s in self.samples) / 1024

    def hwm_mib(self) -> float:
        """Highest VmHWM over the runs, MiB."""
        return max(s.hwm_kib for s in self.samples) / 1024


def ckpt_path_executable() -> str:
    """Return the ``ckpt-path`` console script installed beside this interpreter (else on PATH)."""
    found = shutil.which("ckpt-path", path=str(Path(sys.executable).parent)) or shutil.which("ckpt-path")
    if found is None:
        raise SystemExit("ckpt-path is not installed; run `pip install -e .` first")
    return found


def commands(work: Path, converters: Path, files: Sequence[Path]) -> list[Command]:
    """List the commands of one round, in the order they run; each writes its own output file."""
    python, cli = sys.executable, ckpt_path_executable()
    src = work / "in.ckpt"
    steps = [str(f) for f in files]
    convert = [cli, "convert", str(src), "--to", TARGET, "--converters", str(converters)]
    imports = "import torch, ckpt_path.cli, ckpt_path.commands"

    def out(key: str) -> Path:
        return work / f"out-{key}.ckpt"

    def bare(key: str, mode: str) -> Command:
        argv = [python, str(work / "bare_convert.py"), str(src), str(out(key)), mode, *steps]
        labels = {
            "mmap": "bare script, torch.load(mmap=True)",
            "no-mmap": "bare script, torch.load() without mmap",
            "mmap-fsync": "(b) saved like ckpt-path: temp file, fsync, rename",
            "mmap-fsync-bg": "(b+fsync) with write-back in a background thread",
        }
        return Command(key, labels[mode], argv, out(key))

    return [
        Command("a", "ckpt-path convert", [*convert, "-o", str(out("a")), "--force"], out("a")),
        Command(
            "a+gc",
            "(a) with gc.freeze() after its imports (proposed fix)",
            [python, str(work / "gc_freeze.py"), *convert[1:], "-o", str(out("a+gc")), "--force"],
            out("a+gc"),
        ),
        bare("b", "mmap"),
        bare("c", "no-mmap"),
        Command("d", "cp IN OUT", ["cp", str(src), str(out("d"))], out("d")),
        bare("b+fsync", "mmap-fsync"),
        bare("b+fsync+bg", "mmap-fsync-bg"),
        Command("a-dry", "ckpt-path convert --dry-run (no save)", [*convert, "--dry-run"], None),
        Command("imports", f'python -c "{imports}"', [python, "-c", imports], None),
        Command("torch", 'python -c "import torch" (baseline)', [python, "-c", "import torch"], None),
    ]


def st_commands(work: Path, converters: Path) -> list[Command]:
    """List the commands of one safetensors round, in the order they run."""
    python, cli = sys.executable, ckpt_path_executable()
    src = work / "in.safetensors"
    convert = [cli, "convert", str(src), "--to", TARGET, "--converters", str(converters)]

    def out(key: str) -> Path:
        return work / f"out-{key}.safetensors"

    def bare(key: str, mode: str, label: str) -> Command:
        return Command(key, label, [python, str(work / "bare_st.py"), str(src), str(out(key)), mode], out(key))

    return [
        Command("a", "ckpt-path convert", [*convert, "-o", str(out("a")), "--force"], out("a")),
        bare("b", "load_file", "bare script, load_file + save_file"),
        bare("b2", "safe_open", "bare script, safe_open + get_tensor per key + save_file"),
        Command("d", "cp IN OUT", ["cp", str(src), str(out("d"))], out("d")),
        Command("a-dry", "ckpt-path convert --dry-run (no save)", [*convert, "--dry-run"], None),
        Command("torch", 'python -c "import torch" (baseline)', [python, "-c", "import torch"], None),
    ]


def run_rounds(cmds: Sequence[Command], runs: int, log: Path, check: Callable[[Path], None]) -> None:
    """Run one warm-up round (discarded), then ``runs`` rounds; every command once per round.

    Before every run: ``sync``; then a command that writes deletes the output of the command
    that wrote last. So the disk and the page cache hold the input and at most one output, and
    every writing command starts with the same amount of just-freed memory (which matters on
    a VM that hands freed memory back to its host). ``check`` looks at the output of (a) once.
    """
    pending: Path | None = None
    try:
        for round_ in range(runs + 1):
            for cmd in cmds:
                os.sync()
                if cmd.output is not None:
                    if pending is not None:
                        pending.unlink(missing_ok=True)
                    cmd.output.unlink(missing_ok=True)
                sample = measure(cmd.argv, log)
                if round_ > 0:
                    cmd.samples.append(sample)
                if cmd.output is not None:
                    if round_ == 0 and cmd.key == "a":
                        check(cmd.output)
                    pending = cmd.output
            if round_ == 0:
                print("warm-up round done", file=sys.stderr, flush=True)
            else:
                walls = ", ".join(f"{c.key} {c.samples[-1].wall:.2f}" for c in cmds)
                print(f"round {round_}/{runs} (s): {walls}", file=sys.stderr, flush=True)
    finally:
        if pending is not None:
            pending.unlink(missing_ok=True)


# --------------------------------------------------------------------------- in one process


def converted(work: Path) -> Any:  # noqa: ANN401 - a checkpoint
    """Load ``work/in.ckpt`` memory-mapped and run the converter files on it."""
    import importlib.util

    import torch

    ckpt = torch.load(work / "in.ckpt", mmap=True, weights_only=True)
    for file in sorted((work / "converters").glob("*.py")):
        spec = importlib.util.spec_from_file_location(file.stem, file)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ckpt = module.convert(ckpt)
    return ckpt


def durable_save(ckpt: object, dst: Path, *, background: bool) -> None:
    """Save like ckpt-path (temporary file, fsync, rename, fsync the directory).

    With ``background``, a thread calls ``fdatasync`` every 50 ms while ``torch.save`` runs, so
    that the disk writes while the checkpoint is being serialised and the final ``fsync``
    finds little left to do.
    """
    import torch

    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    with os.fdopen(fd, "wb") as handle:
        done = threading.Event()

        def write_back() -> None:
            while not done.wait(WRITEBACK_SECONDS):
                os.fdatasync(handle.fileno())

        thread = threading.Thread(target=write_back, daemon=True)
        if background:
            thread.start()
        try:
            torch.save(ckpt, handle)
        finally:
            done.set()
            if thread.is_alive():
                thread.join()
        handle.flush()
        os.fsync(handle.fileno())
    Path(tmp).replace(dst)
    dir_fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_phase(work: Path, runs: int) -> None:
    """Time the save step alone, several ways, in this process; print a markdown table.

    Each save goes to a file deleted just before; one warm-up round is discarded. ``os.fsync``
    is wrapped to time the part of each save spent waiting for the disk.
    """
    import torch

    from ckpt_path.checkpoint import save_checkpoint

    ckpt = converted(work)
    dst = work / "out-save.ckpt"
    fsync_seconds = 0.0
    real_fsync = os.fsync

    def timed_fsync(fd: int) -> None:
        nonlocal fsync_seconds
        started = time.perf_counter()
        real_fsync(fd)
        fsync_seconds += time.perf_counter() - started

    os.fsync = timed_fsync
    variants: dict[str, Callable[[], object]] = {
        "torch.save(ckpt, OUT), as (b)": lambda: torch.save(ckpt, dst),
        "ckpt_path.checkpoint.save_checkpoint(ckpt, OUT, force=True), as (a)": lambda: save_checkpoint(
            ckpt, dst, force=True
        ),
        "temp file + torch.save + fsync + rename, as (b+fsync)": lambda: durable_save(ckpt, dst, background=False),
        "the same, write-back in a background thread, as (b+fsync+bg)": lambda: durable_save(
            ckpt, dst, background=True
        ),
    }
    walls: dict[str, list[float]] = {name: [] for name in variants}
    fsyncs: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(runs + 1):
        for name, save in variants.items():
            dst.unlink(missing_ok=True)
            fsync_seconds = 0.0
            started = time.perf_counter()
            save()
            if round_ > 0:
                walls[name].append(time.perf_counter() - started)
                fsyncs[name].append(fsync_seconds)
    os.fsync = real_fsync
    dst.unlink(missing_ok=True)
    first = statistics.median(walls[next(iter(variants))])
    rows = [
        (
            name,
            f"{statistics.median(walls[name]):.3f}",
            f"{min(walls[name]):.3f}-{max(walls[name]):.3f}",
            f"{statistics.median(fsyncs[name]):.3f}",
            f"{statistics.median(walls[name]) / first:.2f}",
        )
        for name in variants
    ]
    header = ("save step (in one process)", "s (median)", "s (min-max)", "of which fsync, s (median)", "vs first")
    print(table(header, rows))


def check_output(out: Path, tensors: int) -> None:
    """Check that the output of (a) is stamped 2.0.0 and has every tensor renamed."""
    import torch

    ckpt = torch.load(out, mmap=True, weights_only=True)
    sd = ckpt["state_dict"]
    stale = [k for k in sd if any(old in k for *_, renames in STEPS for old, _ in renames)]
    if ckpt["ckpt_path"]["version"] != TARGET or len(sd) != tensors or stale:
        raise RuntimeError(f"unexpected output: version {ckpt['ckpt_path']['version']}, {len(sd)} tensors, {stale[:3]}")
    print(f"checked {out.name}: stamped {TARGET}, {tensors} tensors, every key renamed", file=sys.stderr)


def check_st_output(out: Path, tensors: int) -> None:
    """Check that the safetensors output of (a) is stamped 2.0.0 and has every tensor renamed."""
    import json

    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata() or {}
    stale = [k for k in keys if any(old in k for *_, renames in STEPS for old, _ in renames)]
    history = json.loads(meta.get("ckpt_path.history", "[]"))
    if meta.get("ckpt_path.version") != TARGET or len(keys) != tensors or stale or len(history) != len(ST_STEPS):
        raise RuntimeError(f"unexpected output: metadata {meta}, {len(keys)} tensors, {stale[:3]}")
    print(
        f"checked {out.name}: metadata version {TARGET}, {len(history)} history entries, "
        f"format {meta.get('format')}, {tensors} tensors, every key renamed",
        file=sys.stderr,
    )


# --------------------------------------------------------------------------- reporting


RATIOS = [
    ("a", "b", f"ckpt-path / bare script with mmap (goal <= {GOAL_TIME_RATIO})"),
    ("a", "c", "ckpt-path / bare script without mmap (Lightning's way)"),
    ("a", "d", "ckpt-path / cp"),
    ("a", "b+fsync", "ckpt-path / bare script saved as durably as ckpt-path"),
    ("a+gc", "b", "ckpt-path with gc.freeze() / bare script with mmap"),
    ("a+gc", "a", "effect of gc.freeze() after the imports"),
    ("b+fsync", "b", "cost of the durable save (temp file + fsync + rename)"),
    ("b+fsync+bg", "b", "the same, with background write-back"),
    ("imports", "torch", "importing ckpt-path's modules on top of torch"),
    ("a-dry", "torch", "ckpt-path without the save, on top of torch"),
]

ST_RATIOS = [
    ("a", "b", "ckpt-path / bare load_file + save_file"),
    ("a", "b2", "ckpt-path / bare safe_open + get_tensor + save_file"),
    ("a", "d", "ckpt-path / cp"),
    ("b2", "b", "safe_open per key / load_file"),
    ("a-dry", "torch", "ckpt-path without the save, on top of torch"),
]


def report(
    cmds: Sequence[Command], file_bytes: int, ratios: Sequence[tuple[str, str, str]] = RATIOS
) -> tuple[str, str, dict[str, float]]:
    """Return the table of commands, the table of ratios, and the headline figures."""
    by_key = {c.key: c for c in cmds}
    baseline = by_key["torch"].anon_mib()
    size_mib = file_bytes / MIB
    rows = []
    for c in cmds:
        walls = [s.wall for s in c.samples]
        extra = c.anon_mib() - baseline
        rows.append(
            (
                f"({c.key})",
                c.label,
                f"{c.wall():.3f}",
                f"{min(walls):.3f}-{max(walls):.3f}",
                f"{c.cpu():.2f}",
                f"{c.anon_mib():.0f}",
                f"{extra:+.0f}" if c.key not in {"torch", "d"} else "",
                f"{extra / size_mib:.1%}" if c.key not in {"torch", "d"} else "",
                f"{c.file_mib():.0f}",
                f"{c.hwm_mib():.0f}",
            )
        )
    header = (
        "",
        "command",
        "wall s (median)",
        "wall s (min-max)",
        "CPU s (median)",
        "peak RssAnon MiB",
        "minus import torch",
        "share of ckpt",
        "peak RssFile MiB",
        "VmHWM MiB",
    )
    ratio_rows = []
    for top, bottom, meaning in ratios:
        x, y = by_key[top], by_key[bottom]
        lowest_x, lowest_y = min(s.wall for s in x.samples), min(s.wall for s in y.samples)
        ratio_rows.append(
            (
                f"({top}) / ({bottom})",
                meaning,
                f"{x.wall() / y.wall():.3f}",
                f"{lowest_x / lowest_y:.3f}",
                f"{x.wall() - y.wall():+.3f}",
            )
        )
    ratio_header = ("ratio", "meaning", "of medians", "of minimums", "difference of medians, s")
    a = by_key["a"]
    figures = {
        "a_wall": a.wall(),
        "a_over_b": a.wall() / by_key["b"].wall(),
        "a_over_b_min": min(x.wall for x in a.samples) / min(x.wall for x in by_key["b"].samples),
        "a_over_c": a.wall() / by_key["c"].wall() if "c" in by_key else math.nan,
        "a_over_d": a.wall() / by_key["d"].wall(),
        "a_anon_share": (a.anon_mib() - baseline) / size_mib,
    }
    return table(header, rows), table(ratio_header, ratio_rows), figures


def machine() -> str:
    """Describe the machine, the versions and the state of the source tree, in one line."""
    try:
        git = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=True
        ).stdout.split("\n")
        changed = sum(1 for line in dirty if line.strip())
        source = f"commit {git}" + (f" + {changed} uncommitted file(s) in src/" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        source = "source state unknown"
    return (
        f"{os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.1f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch {metadata.version('torch')}, "
        f"ckpt-path {metadata.version('ckpt-path')} ({source})"
    )


# --------------------------------------------------------------------------- main


def child(args: Sequence[str]) -> None:
    """Run this script with ``--child ARGS`` (a new process, so torch stays out of this one)."""
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args], check=True)


def run_child(action: str, path: Path, number: int) -> None:
    """Do the work of ``--child ACTION PATH N``."""
    if action == "generate":
        write_checkpoint(path, number)
    elif action == "st-generate":
        write_safetensors(path, number)
    elif action == "st-check":
        check_st_output(path, number)
    elif action == "check":
        check_output(path, number)
    elif action == "save":
        save_phase(path, number)
    else:
        raise SystemExit(f"unknown --child action {action!r}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``--quick`` changes the defaults of ``--size-gib`` and ``--runs``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--size-gib", type=float, help="checkpoint size in GiB (default 1; --quick: 1/16)")
    parser.add_argument("--runs", type=int, help="measured rounds after the warm-up (default 5; --quick: 1)")
    parser.add_argument(
        "--workdir", type=Path, help="where to make the temporary directory (default: the system's temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files (and print where)")
    parser.add_argument(
        "--format",
        choices=("torch", "safetensors"),
        default="torch",
        help="checkpoint format: a Lightning-style torch checkpoint (default) or a flat .safetensors file",
    )
    # Internal: the parent never imports torch (its resident size would leak into the figures);
    # it runs itself with --child to write the checkpoint, check the output and time the save.
    parser.add_argument("--child", nargs=3, metavar=("ACTION", "PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size_gib = args.size_gib or (1 / 16 if args.quick else 1.0)
    args.runs = args.runs or (1 if args.quick else 5)
    if args.runs < 1 or args.size_gib <= 0:
        parser.error("--runs and --size-gib must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write the data, run every command, print the tables; return the exit code."""
    args = parse_args(argv)
    if args.child is not None:
        action, path, number = args.child
        run_child(action, Path(path), int(number))
        return 0
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ckpt-path-bench-convert-", dir=args.workdir))
    size = int(args.size_gib * GIB)
    if args.format == "safetensors":
        return main_safetensors(args, work, size)
    shape = model_shape(size)
    try:
        converters = work / "converters"
        files = write_converters(converters)
        (work / "bare_convert.py").write_text(BARE_SCRIPT, encoding="utf-8")
        (work / "gc_freeze.py").write_text(GC_FREEZE_SCRIPT, encoding="utf-8")
        started = time.perf_counter()
        child(["generate", str(work / "in.ckpt"), str(size)])
        file_bytes = (work / "in.ckpt").stat().st_size
        print(
            f"{machine()}\ncheckpoint: {file_bytes / MIB:.0f} MiB ({shape.nbytes() / MIB:.0f} MiB of float32 "
            f"tensors: {len(shape.tensors())} tensors, {shape.layers} layers, hidden {shape.hidden}, "
            f"vocabulary {shape.vocab}), written in {time.perf_counter() - started:.1f} s; "
            f"path of {len(files)} renames 1.0.0 -> {TARGET}; {args.runs} run(s) after a warm-up round",
            file=sys.stderr,
            flush=True,
        )
        cmds = commands(work, converters, files)
        tensors = str(len(shape.tensors()))
        run_rounds(cmds, args.runs, work / "stderr.log", lambda out: child(["check", str(out), tensors]))
        commands_table, ratios_table, figures = report(cmds, file_bytes)
        print(f"\n### ckpt-path convert, {file_bytes / MIB:.0f} MiB, {args.runs} run(s) after a warm-up round\n")
        print(f"{machine()}\n")
        print(commands_table)
        print()
        print(ratios_table)
        print()
        print(
            f"Peak RssAnon of (a) above `import torch`: {figures['a_anon_share']:.1%} of the checkpoint "
            f"(goal < {GOAL_ANON_SHARE:.0%}).\n",
            flush=True,
        )
        child(["save", str(work), str(args.runs)])
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    note = "" if size >= GIB else "below 1 GiB the fixed cost of imports dominates"
    label = f"{file_bytes / MIB:.0f} MiB"
    write_results(
        args.json,
        [
            Result("convert", f"wall time (a) ckpt-path convert, {label}", round(figures["a_wall"], 3), "s"),
            Result(
                "convert",
                "wall (a) / bare torch.load(mmap) script (b)",
                round(figures["a_over_b"], 3),
                "x",
                goal=GOAL_TIME_RATIO,
                note=note,
            ),
            Result(
                "convert",
                "wall (a) / bare script (b), ratio of the fastest runs",
                round(figures["a_over_b_min"], 3),
                "x",
                goal=GOAL_TIME_RATIO,
                note="less sensitive to the noise of a VM than the ratio of medians",
            ),
            Result("convert", "wall (a) / bare torch.load() script (c)", round(figures["a_over_c"], 3), "x"),
            Result("convert", "wall (a) / cp (d)", round(figures["a_over_d"], 3), "x"),
            Result(
                "convert",
                "peak RssAnon above import torch / ckpt size",
                round(100 * figures["a_anon_share"], 1),
                "%",
                goal=100 * GOAL_ANON_SHARE,
                note=note,
            ),
        ],
    )
    return 0


def main_safetensors(args: argparse.Namespace, work: Path, size: int) -> int:
    """Run ``--format safetensors``: write the data, run every command, print the tables."""
    shape = model_shape(size)
    try:
        converters = work / "converters"
        files = write_st_converters(converters)
        (work / "bare_st.py").write_text(st_bare_script(), encoding="utf-8")
        started = time.perf_counter()
        child(["st-generate", str(work / "in.safetensors"), str(size)])
        file_bytes = (work / "in.safetensors").stat().st_size
        print(
            f"{machine()}\nsafetensors file: {file_bytes / MIB:.0f} MiB ({len(shape.tensors())} float32 tensors, "
            f"{shape.layers} layers, hidden {shape.hidden}, vocabulary {shape.vocab}), written in "
            f"{time.perf_counter() - started:.1f} s; path of {len(files)} Rename ops files 1.0.0 -> {TARGET}; "
            f"{args.runs} run(s) after a warm-up round",
            file=sys.stderr,
            flush=True,
        )
        cmds = st_commands(work, converters)
        tensors = str(len(shape.tensors()))
        run_rounds(cmds, args.runs, work / "stderr.log", lambda out: child(["st-check", str(out), tensors]))
        commands_table, ratios_table, figures = report(cmds, file_bytes, ST_RATIOS)
        print(
            f"\n### ckpt-path convert, safetensors, {file_bytes / MIB:.0f} MiB, "
            f"{args.runs} run(s) after a warm-up round\n"
        )
        print(f"{machine()}\n")
        print(commands_table)
        print()
        print(ratios_table)
        print()
        print(f"Peak RssAnon of (a) above `import torch`: {figures['a_anon_share']:.1%} of the file.\n", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    label = f"safetensors {file_bytes / MIB:.0f} MiB"
    write_results(
        args.json,
        [
            Result("convert", f"wall time (a) ckpt-path convert, {label}", round(figures["a_wall"], 3), "s"),
            Result(
                "convert", f"wall (a) / bare load_file + save_file (b), {label}", round(figures["a_over_b"], 3), "x"
            ),
            Result("convert", f"wall (a) / cp (d), {label}", round(figures["a_over_d"], 3), "x"),
            Result(
                "convert",
                f"peak RssAnon above import torch / file size, {label}",
                round(100 * figures["a_anon_share"], 1),
                "%",
                goal=100 * GOAL_ANON_SHARE,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
