"""Benchmark the start-up of the installed ``ckpt-path plan`` command.

The project's goal: ``ckpt-path plan`` answers in under 400 ms of wall time, start-up
included, far below ``import torch`` alone (planning reads converter files without importing
them, so it never imports torch; checked here too).

Writes a converters directory of 200 realistic converter files (docstring, ``import torch``
at the top, ``source``, ``target``, ``touches``, a ``convert`` function) forming one connected
history: a main line of releases with upgrades, downgrades, a few skip converters, a lossy
downgrade and two branches (``+lam``, ``+exp``) that fork and merge back. Then it measures the
wall time of ``ckpt-path plan OLDEST latest --converters DIR`` as a subprocess, next to
``python -c "import torch"`` and ``python -c "pass"`` run by the same interpreter, interleaved
(order alternating between rounds) so that drift of the machine affects all of them alike.
Finally it runs the command once under ``python -X importtime`` to check that torch stays out.

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
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _common import (
    Command,
    Result,
    add_common_arguments,
    ckpt_path_executable,
    load,
    run_once,
    run_rounds,
    table,
    write_results,
)

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


def interpreter_of(script: str) -> str:
    """Return the interpreter named in a console script's ``#!`` line (else this one)."""
    first = Path(script).read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    if first.startswith("#!") and Path(first[2:].strip()).is_file():
        return first[2:].strip()
    return sys.executable


def imports_torch(python: str, plan: list[str], env: dict[str, str]) -> bool:
    """Run ``plan`` once under ``python -X importtime``; return whether torch was imported."""
    argv = [python, "-X", "importtime", "-m", "ckpt_path.cli", *plan[1:]]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"importtime run failed:\n{done.stderr[-2000:]}")
    return re.search(r"^import time:.*\|\s*torch(\.|$)", done.stderr, re.MULTILINE) is not None


def run(runs: int, seed: int) -> list[Result]:
    """Write the converters, time the commands, print a table, return the headline results."""
    print(f"before: {load()}")
    script = ckpt_path_executable()
    python = interpreter_of(script)
    with tempfile.TemporaryDirectory(prefix="ckpt-path-bench-") as tmp:
        directory = Path(tmp) / "converters"
        directory.mkdir()
        oldest, files = write_converters(directory, seed)
        # Bytecode cached as in a normal installation (under tmp: nothing written into the
        # source tree), even where PYTHONDONTWRITEBYTECODE is set; the warm-up round fills it.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        plan = [script, "plan", oldest, "latest", "--converters", str(directory)]
        steps = len(json.loads(run_once(Command("plan --json", [*plan, "--json"], env=env))[2])["steps"])
        cmds = [
            Command("ckpt-path plan", plan, env=env),
            Command('python -c "import torch"', [python, "-c", "import torch"], env=env),
            Command('python -c "pass"', [python, "-c", "pass"], env=env),
        ]
        print(f"{files} converter files; plan {oldest} -> latest has {steps} steps; {runs} runs after a warm-up")
        run_rounds(cmds, runs)
        torch_imported = imports_torch(python, plan, env)
    rows = [(c.key, f"{1000 * c.wall():.0f}", f"{1000 * min(c.walls):.0f}", f"{1000 * max(c.walls):.0f}") for c in cmds]
    print(table(("command", "median ms", "min ms", "max ms"), rows))
    ours = 1000 * cmds[0].wall()
    print(
        f"goal: ckpt-path plan < {GOAL_PLAN_MS:g} ms wall: {'met' if ours < GOAL_PLAN_MS else 'MISSED'} ({ours:.0f} ms)"
    )
    print(f"torch imported by `plan`: {'YES (planning must not need it)' if torch_imported else 'no'}")
    print(f"after: {load()}")
    note = f"{files} files, {steps} steps; torch {'imported' if torch_imported else 'not imported'}"
    return [
        Result("coldstart", "`ckpt-path plan`, wall", round(ours), "ms", GOAL_PLAN_MS, note),
        Result("coldstart", '`python -c "import torch"`, wall', round(1000 * cmds[1].wall()), "ms"),
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--runs", type=int, help="timed runs of each command (default 10, 3 with --quick)")
    parser.add_argument("--seed", type=int, default=2026, help="RNG seed of the generated converters")
    args = parser.parse_args(argv)
    write_results(args.json, run(args.runs or (3 if args.quick else 10), args.seed))


if __name__ == "__main__":
    main()
