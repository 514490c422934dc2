"""Benchmark the start-up of the installed ``ckpt-path plan`` command.

Writes a converters directory of 200 realistic converter files (docstring, ``import torch``
at the top, ``source``, ``target``, ``touches``, a ``convert`` function) forming one connected
history: a main line of releases with upgrades, downgrades, a few skip converters, a lossy
downgrade and two branches (``+lam``, ``+exp``) that fork and merge back. Then it measures the
wall time of ``ckpt-path plan OLDEST latest --converters DIR`` as a subprocess, next to
``python -c "import torch"`` and ``python -c "pass"`` run by the same interpreter, interleaved
so that drift of the machine affects all of them alike. Finally it runs the command once under
``python -X importtime`` and prints the most expensive imports.

"Cold" means a new process each time; files are in the page cache and bytecode is compiled
(one warm-up run of each command comes first), as on a developer's machine.

Run: ``python benchmarks/bench_coldstart.py`` (10 runs each) or with ``--quick`` (3 runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import Result, add_common_arguments, load, median, ms, table, write_results

GOAL_PLAN_MS = 400.0
"""The project's goal: ``ckpt-path plan`` answers in under 400 ms of wall time."""

CONVERTER_FILES = 200
RELEASES = 120

TEMPLATE = '''"""{description}"""

import torch

source = "{source}"
target = "{target}"
touches = {touches!r}
{extra}

def convert(ckpt):
    sd = ckpt["state_dict"]
{body}
    return ckpt
'''

BODIES = {
    "rename": (
        "Rename {module} to {other}.",
        ["{module}.*", "{other}.*"],
        """    for key in [k for k in sd if k.startswith("{module}.")]:
        sd["{other}." + key.removeprefix("{module}.")] = sd.pop(key)""",
    ),
    "widen": (
        "Widen {module} from {n} to {m} features (new rows start at zero).",
        ["{module}.weight", "{module}.bias"],
        """    weight = sd["{module}.weight"]
    sd["{module}.weight"] = torch.cat([weight, weight.new_zeros({extra_rows}, weight.shape[1])])
    bias = sd["{module}.bias"]
    sd["{module}.bias"] = torch.cat([bias, bias.new_zeros({extra_rows})])""",
    ),
    "fuse": (
        "Fuse the q, k and v projections of {module} into one qkv projection.",
        ["{module}.q_proj.*", "{module}.k_proj.*", "{module}.v_proj.*", "{module}.qkv_proj.*"],
        """    for param in ("weight", "bias"):
        parts = [sd.pop(f"{module}.{{p}}_proj.{{param}}") for p in "qkv"]
        sd[f"{module}.qkv_proj.{{param}}"] = torch.cat(parts, dim=0)""",
    ),
    "scale": (
        "Add the learnable output scale of {module} (ones: the output is unchanged).",
        ["{module}.scale"],
        """    bias = sd["{module}.bias"]
    sd["{module}.scale"] = torch.ones_like(bias)""",
    ),
    "dtype": (
        "Store the {module} embedding in float32 again.",
        ["{module}.weight"],
        """    sd["{module}.weight"] = sd["{module}.weight"].to(torch.float32)""",
    ),
}
MODULES = (
    "encoder.grid_mlp",
    "g2m_gnn.edge_mlp",
    "processor.attn",
    "decoder.head",
    "output_map",
    "mesh_embedder",
)


@dataclass(frozen=True, slots=True)
class Edge:
    """One converter file to write."""

    source: str
    target: str
    kind: str
    cost: float | None = None
    lossy: bool = False


def release_versions(rng: random.Random, count: int) -> list[str]:
    """Return ``count`` increasing release versions: mostly patches, some minors, a few majors."""
    major, minor, patch = 0, 1, 0
    versions = [f"{major}.{minor}.{patch}"]
    while len(versions) < count:
        roll = rng.random()
        if roll < 0.04:
            major, minor, patch = major + 1, 0, 0
        elif roll < 0.3:
            minor, patch = minor + 1, 0
        else:
            patch += 1
        versions.append(f"{major}.{minor}.{patch}")
    return versions


def branch_edges(main: list[str], at: int, label: str, length: int, merge_at: int) -> list[Edge]:
    """Edges of a branch forking at ``main[at]`` with ``length`` versions, merging into ``main[merge_at]``."""
    points = [f"{main[at]}+{label}"] + [f"{main[at]}+{label}.{i}" for i in range(2, length + 1)]
    edges = [Edge(main[at], points[0], "branch"), Edge(points[0], main[at], "leave")]
    edges += [Edge(a, b, "upgrade") for a, b in itertools.pairwise(points)]
    edges.append(Edge(points[-1], main[merge_at], "merge"))
    return edges


def history(seed: int, files: int = CONVERTER_FILES) -> tuple[list[str], list[Edge]]:
    """Return the releases and ``files`` edges of a connected history."""
    rng = random.Random(seed)  # noqa: S311 - reproducible, not secret
    main = release_versions(rng, RELEASES)
    edges = [Edge(a, b, "upgrade") for a, b in itertools.pairwise(main)]
    edges += branch_edges(main, RELEASES // 3, "lam", 6, RELEASES // 3 + 8)
    edges += branch_edges(main, 3 * RELEASES // 4, "exp", 3, 3 * RELEASES // 4 + 5)
    seen = {(e.source, e.target) for e in edges}
    lossy_done = False
    while len(edges) < files:
        at = rng.randrange(1, len(main) - 6)
        if rng.random() < 0.75:
            edge = Edge(main[at], main[at - 1], "downgrade", lossy=not lossy_done)
            lossy_done = True
        else:
            span = rng.randint(3, 6)
            edge = Edge(main[at], main[at + span], "skip", cost=round(span * 0.6, 1))
        if (edge.source, edge.target) not in seen:
            seen.add((edge.source, edge.target))
            edges.append(edge)
    return main, edges


def converter_text(edge: Edge, rng: random.Random) -> str:
    """Render one converter file for ``edge``."""
    kind = rng.choice(sorted(BODIES))
    module, other = rng.sample(MODULES, 2)
    n = rng.choice((64, 128, 256))
    fields = {"module": module, "other": other, "n": n, "m": n + 8, "extra_rows": 8}
    description, touches, body = BODIES[kind]
    prefix = {"downgrade": "Downgrade: ", "leave": "Leave the branch: ", "merge": "Merge back: "}
    extra = []
    if edge.cost is not None:
        extra.append(f"cost = {edge.cost}")
    if edge.lossy:
        extra.append("lossy = True")
    return TEMPLATE.format(
        description=prefix.get(edge.kind, "") + description.format(**fields),
        source=edge.source,
        target=edge.target,
        touches=[t.format(**fields) for t in touches],
        extra="\n".join(extra) + "\n" if extra else "",
        body=body.format(**fields),
    )


def write_converters(directory: Path, seed: int) -> tuple[str, int]:
    """Write the converter files; return the oldest version and the number of files."""
    main, edges = history(seed)
    rng = random.Random(seed + 1)  # noqa: S311 - reproducible, not secret
    for number, edge in enumerate(edges, 1):
        name = f"{number:03d}_{edge.kind}_{edge.source}_to_{edge.target}".replace(".", "_").replace("+", "_")
        (directory / f"{name}.py").write_text(converter_text(edge, rng), encoding="utf-8")
    return main[0], len(edges)


def interpreter_of(script: Path) -> str:
    """Return the interpreter named in a console script's ``#!`` line (else this one)."""
    first = script.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    if first.startswith("#!") and Path(first[2:].strip()).is_file():
        return first[2:].strip()
    return sys.executable


@dataclass(frozen=True, slots=True)
class Context:
    """Where the commands run: working directory and environment."""

    cwd: Path
    env: dict[str, str]


def environment(tmp: Path, *, keep_env: bool) -> dict[str, str]:
    """Return the environment for the commands.

    Unless ``keep_env``, bytecode is cached as in a normal installation, under ``tmp`` (so
    nothing is written into the source tree), even where ``PYTHONDONTWRITEBYTECODE`` is set;
    the warm-up run fills the cache.
    """
    env = dict(os.environ)
    if not keep_env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


def run_once(command: Sequence[str], context: Context) -> tuple[int, str]:
    """Run ``command`` and return its wall time in nanoseconds and its stdout; exit on failure."""
    start = time.perf_counter_ns()
    done = subprocess.run(command, cwd=context.cwd, env=context.env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter_ns() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed with exit code {done.returncode}:\n{done.stderr}")
    return elapsed, done.stdout


def measure(commands: dict[str, list[str]], runs: int, context: Context) -> dict[str, list[int]]:
    """Run every command once to warm up, then ``runs`` times each, interleaved."""
    for command in commands.values():
        run_once(command, context)
    samples: dict[str, list[int]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            samples[name].append(run_once(command, context)[0])
    return samples


@dataclass(frozen=True, slots=True)
class Import:
    """One line of ``python -X importtime``: times in microseconds."""

    name: str
    level: int
    self_us: int
    cumulative_us: int


def import_times(stderr: str) -> list[Import]:
    """Parse the ``-X importtime`` lines of ``stderr``."""
    found = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        stripped = name.rstrip().removeprefix(" ")
        level = (len(stripped) - len(stripped.lstrip(" "))) // 2
        found.append(Import(stripped.strip(), level, int(own), int(cumulative)))
    return found


def show_imports(command: list[str], context: Context, count: int = 10) -> list[Import]:
    """Run ``command`` (a ``python ...`` command line) under ``-X importtime``; print the top imports.

    Return every import, in the order ``-X importtime`` reported them.
    """
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        cwd=context.cwd,
        env=context.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"importtime run failed:\n{done.stderr[-2000:]}")
    imports = import_times(done.stderr)
    top_level = [i for i in imports if i.level == 0]
    total_us = sum(i.cumulative_us for i in top_level)
    print(f"\n`{' '.join(['python', '-X', 'importtime', *command[1:]])}`")
    print(f"{len(imports)} modules imported, {total_us / 1000:.0f} ms in imports (importtime inflates this)\n")
    heaviest = sorted(imports, key=lambda i: -i.cumulative_us)[:count]
    rows = [
        (f"{'. ' * i.level}{i.name}", i.level, f"{i.cumulative_us / 1000:.1f}", f"{i.self_us / 1000:.1f}")
        for i in heaviest
    ]
    print(f"{count} most expensive imports, cumulative (nested imports included):")
    print(table(("module", "depth", "cumulative ms", "self ms"), rows))
    by_package: dict[str, int] = {}
    for i in top_level:
        root = i.name.split(".", 1)[0]
        by_package[root] = by_package.get(root, 0) + i.cumulative_us
    ranked = sorted(by_package.items(), key=lambda item: -item[1])[:count]
    print("\nTop-level imports by package (these add up to the total):")
    print(
        table(
            ("package", "cumulative ms", "share"),
            [(p, f"{us / 1000:.1f}", f"{100 * us / total_us:.0f} %") for p, us in ranked],
        )
    )
    return imports


def run(runs: int, seed: int, script: Path, *, keep_env: bool = False) -> list[Result]:
    """Write the converters, time the commands, print tables, return the headline results."""
    print(f"before: {load()}")
    python = interpreter_of(script)
    with tempfile.TemporaryDirectory(prefix="ckpt-path-bench-") as tmp:
        directory = Path(tmp) / "converters"
        directory.mkdir()
        oldest, files = write_converters(directory, seed)
        context = Context(Path(tmp), environment(Path(tmp), keep_env=keep_env))
        plan = [str(script), "plan", oldest, "latest", "--converters", str(directory)]
        commands = {
            "ckpt-path plan": plan,
            "ckpt-path plan --json": [*plan, "--json"],
            'python -c "import torch"': [python, "-c", "import torch"],
            'python -c "pass"': [python, "-c", "pass"],
        }
        steps = len(json.loads(run_once(commands["ckpt-path plan --json"], context)[1])["steps"])
        print(f"{files} converter files in {directory}; plan {oldest} -> latest has {steps} steps")
        cache = "environment as is" if keep_env else "bytecode cached (PYTHONPYCACHEPREFIX in the temp dir)"
        print(f"interpreter: {python}; {cache}; {runs} runs each after one warm-up, interleaved\n")
        samples = measure(commands, runs, context)
        rows = [
            (name, f"{ms(median(times)):.0f}", f"{ms(min(times)):.0f}", f"{ms(max(times)):.0f}")
            for name, times in samples.items()
        ]
        print(table(("command", "median ms", "min ms", "max ms"), rows))
        plan_median = ms(median(samples["ckpt-path plan"]))
        verdict = "met" if plan_median < GOAL_PLAN_MS else "MISSED"
        print(f"goal: ckpt-path plan < {GOAL_PLAN_MS:g} ms wall: {verdict} ({plan_median:.0f} ms)")
        imports = show_imports([python, "-m", "ckpt_path.cli", *plan[1:]], context)
    torch_imported = any(i.name == "torch" or i.name.startswith("torch.") for i in imports)
    print(f"\ntorch imported by `plan`: {'YES (planning should not need it)' if torch_imported else 'no'}")
    print(f"after: {load()}")

    def result(name: str, metric: str, goal: float | None = None, note: str = "") -> Result:
        times = samples[name]
        spread = f"min {ms(min(times)):.0f} ms"
        return Result("coldstart", metric, round(ms(median(times))), "ms", goal, f"{spread}{note}")

    torch_note = "; torch imported" if torch_imported else "; torch not imported"
    return [
        result("ckpt-path plan", f"`ckpt-path plan` ({files} files, {steps} steps), wall", GOAL_PLAN_MS, torch_note),
        result("ckpt-path plan --json", "`ckpt-path plan --json`, wall"),
        result('python -c "import torch"', '`python -c "import torch"`, wall'),
        result('python -c "pass"', '`python -c "pass"`, wall'),
    ]


def default_script() -> Path:
    """Find the ``ckpt-path`` console script: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "ckpt-path"
    if beside.is_file():
        return beside
    found = shutil.which("ckpt-path")
    if found is None:
        sys.exit("ckpt-path is not installed (run `make bench`, or pass --script)")
    return Path(found)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--runs", type=int, help="timed runs of each command (default 10, 3 with --quick)")
    parser.add_argument("--seed", type=int, default=2026, help="RNG seed of the generated converters")
    parser.add_argument(
        "--keep-env",
        action="store_true",
        help="run the commands in this environment as is (default: bytecode cached, as when installed)",
    )
    parser.add_argument("--script", type=Path, help="the ckpt-path console script (default: next to python)")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 10)
    write_results(args.json, run(runs, args.seed, args.script or default_script(), keep_env=args.keep_env))


if __name__ == "__main__":
    main()
