"""Helpers shared by the checkpoint, runner and convert tests: tiny checkpoints and converter files.

Everything here builds files under a directory the caller passes (a test's ``tmp_path``);
nothing is written to the working directory. Plain functions rather than fixtures, so that
test modules use them without importing fixtures by name.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import torch

from ckpt_path.stamp import Stamp, write_stamp

CKPT_PATH_BIN = Path(sys.executable).with_name("ckpt-path")
"""The installed console script, run as a user would."""

V010_SHAPES: dict[str, tuple[int, ...]] = {
    "grid_prev_embedder.0.weight": (16, 6),
    "grid_prev_embedder.0.bias": (16,),
    "g2m_gnn.grid_mlp.0.weight": (16, 16),
    "g2m_gnn.grid_mlp.0.bias": (16,),
    **{f"processor.{p}_proj.weight": (16, 16) for p in ("q", "k", "v", "out")},
    **{f"processor.{p}_proj.bias": (16,) for p in ("q", "k", "v", "out")},
    "output_map.weight": (6, 16),
    "output_map.bias": (6,),
}
"""The state dict of version 0.1.0 of the example model."""

V110_KEYS = frozenset(
    {
        "grid_prev_embedder.0.weight",
        "grid_prev_embedder.0.bias",
        "g2m_gnn.grid_mlp.weight",
        "g2m_gnn.grid_mlp.bias",
        "processor.qkv_proj.weight",
        "processor.qkv_proj.bias",
        "processor.out_proj.weight",
        "processor.out_proj.bias",
        "output_map.weight",
        "output_map.bias",
        "output_scale",
    },
)
"""The state-dict keys of version 1.1.0 (what 0.1.0 becomes along the example converters)."""


def v010_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a random state dict of version 0.1.0."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in V010_SHAPES.items()}


def lightning(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Wrap a state dict the way Lightning saves it, with the usual non-tensor content.

    The optimizer has taken no step yet (no per-parameter state), so steps that change
    parameters need not say what its state becomes; tests of that build their own.
    """
    return {
        "epoch": 7,
        "global_step": 1234,
        "pytorch-lightning_version": "2.4.0",
        "hyper_parameters": {"hidden": 16, "lr": 1e-3, "features": ["u", "v", "t", "msl", "q", "z"]},
        "optimizer_states": [
            {
                "state": {},
                "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
            },
        ],
        "lr_schedulers": [],
        "state_dict": state_dict,
    }


def write_v010(path: Path, *, version: str | None = None) -> Path:
    """Write a Lightning checkpoint of version 0.1.0 at ``path``; stamp it when ``version`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = lightning(v010_state_dict())
    if version is not None:
        ckpt = write_stamp(ckpt, ("state_dict",), Stamp(version=version))
    torch.save(ckpt, path)
    return path


def write_ckpt(path: Path, obj: object) -> Path:
    """Save ``obj`` at ``path`` with plain ``torch.save``, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_converter(
    directory: Path,
    name: str,
    source: str,
    target: str,
    body: str = "return ckpt",
    **literals: object,
) -> Path:
    """Write ``<directory>/<name>.py``: the literals, then ``def convert(ckpt):`` with ``body``."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f'"""Converter {name}."""', "", f"source = {source!r}", f"target = {target!r}"]
    lines += [f"{key} = {value!r}" for key, value in literals.items()]
    code = "\n".join(lines) + "\n\n\ndef convert(ckpt):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    path = directory / f"{name}.py"
    path.write_text(code + "\n", encoding="utf-8")
    return path


def digest(path: Path) -> str:
    """Return the SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(directory: Path) -> list[str]:
    """Return the temporary files (``.NAME.*.tmp``) that an atomic write left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


PAYLOAD_MODULE = '''\
"""A module whose import and whose objects leave marks: proof that unpickling ran code."""

from pathlib import Path

MARKS = Path({marks!r})
(MARKS / "imported").write_text("the module was imported")


def touch(name):
    (MARKS / name).write_text("a global was called")
    return name


class Payload:
    def __init__(self, value):
        self.value = value

    def __setstate__(self, state):
        (MARKS / "setstate").write_text("an instance was rebuilt")
        self.__dict__.update(state)


class Reducer:
    def __reduce__(self):
        return (touch, ("reduced",))
'''


def write_unsafe_checkpoint(directory: Path, *, kind: str = "instance") -> tuple[Path, str, Path]:
    """Write a checkpoint that holds an object of a module made for it; return (file, global, marks).

    The module lives in ``directory`` under a unique name and writes into the returned marks
    directory when it is imported, when a ``Payload`` is rebuilt, or when ``touch`` is called
    (``kind="reduce"``: the object pickles as a call of ``touch``). After the checkpoint is saved
    the module is dropped from ``sys.modules`` and the marks are cleared, so any mark that
    appears later means loading the checkpoint imported or ran something. The caller must
    put ``directory`` on ``sys.path`` for the module to be importable at all.
    """
    name = f"ckpt_payload_{uuid.uuid4().hex[:12]}"
    marks = directory / f"{name}_marks"
    marks.mkdir(parents=True)
    (directory / f"{name}.py").write_text(PAYLOAD_MODULE.format(marks=str(marks)), encoding="utf-8")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(name)
        extra = module.Payload(3) if kind == "instance" else module.Reducer()
        path = write_ckpt(directory / f"{name}.ckpt", {"state_dict": {"w": torch.zeros(2, 3)}, "extra": extra})
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(directory))
    for mark in marks.iterdir():
        mark.unlink()
    global_name = f"{name}.Payload" if kind == "instance" else f"{name}.touch"
    return path, global_name, marks


EXAMPLE_CONVERTERS: dict[str, str] = {
    "001_rename_grid_mlp": '''\
"""Rename the grid MLP of the g2m GNN (the layer index was dropped)."""

source = "0.1.0"
target = "0.2.0"
touches = ["g2m_gnn.grid_mlp.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("g2m_gnn.grid_mlp.0.")]:
        sd[key.replace("grid_mlp.0.", "grid_mlp.")] = sd.pop(key)
    return ckpt
''',
    "002_reorder_msl": '''\
"""Move input/output feature msl from position 3 to position 1."""

import torch

source = "0.2.0"
target = "0.3.0"
touches = ["grid_prev_embedder.0.weight", "output_map.weight", "output_map.bias"]


def _move(tensor, dim, index, to):
    order = list(range(tensor.shape[dim]))
    order.insert(to, order.pop(index))
    return tensor.index_select(dim, torch.tensor(order))


def convert(ckpt):
    sd = ckpt["state_dict"]
    sd["grid_prev_embedder.0.weight"] = _move(sd["grid_prev_embedder.0.weight"], 1, 3, 1)
    sd["output_map.weight"] = _move(sd["output_map.weight"], 0, 3, 1)
    sd["output_map.bias"] = _move(sd["output_map.bias"], 0, 3, 1)
    features = ckpt.get("hyper_parameters", {}).get("features")
    if features is not None:
        features.insert(1, features.pop(3))
    return ckpt
''',
    "003_unorder_msl": '''\
"""Downgrade: move feature msl back from position 1 to position 3."""

import torch

source = "0.3.0"
target = "0.2.0"
touches = ["grid_prev_embedder.0.weight", "output_map.weight", "output_map.bias"]


def _move(tensor, dim, index, to):
    order = list(range(tensor.shape[dim]))
    order.insert(to, order.pop(index))
    return tensor.index_select(dim, torch.tensor(order))


def convert(ckpt):
    sd = ckpt["state_dict"]
    sd["grid_prev_embedder.0.weight"] = _move(sd["grid_prev_embedder.0.weight"], 1, 1, 3)
    sd["output_map.weight"] = _move(sd["output_map.weight"], 0, 1, 3)
    sd["output_map.bias"] = _move(sd["output_map.bias"], 0, 1, 3)
    features = ckpt.get("hyper_parameters", {}).get("features")
    if features is not None:
        features.insert(3, features.pop(1))
    return ckpt
''',
    "004_fuse_qkv": '''\
"""Fuse the processor's q, k and v projections into one qkv projection."""

import torch

source = "0.3.0"
target = "1.0.0"
touches = ["processor.q_proj.*", "processor.k_proj.*", "processor.v_proj.*", "processor.qkv_proj.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for param in ("weight", "bias"):
        parts = [sd.pop(f"processor.{p}_proj.{param}") for p in "qkv"]
        sd[f"processor.qkv_proj.{param}"] = torch.cat(parts, dim=0)
    return ckpt
''',
    "005_split_qkv": '''\
"""Downgrade: split the fused qkv projection back into q, k and v."""

source = "1.0.0"
target = "0.3.0"
touches = ["processor.q_proj.*", "processor.k_proj.*", "processor.v_proj.*", "processor.qkv_proj.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for param in ("weight", "bias"):
        fused = sd.pop(f"processor.qkv_proj.{param}")
        for name, part in zip("qkv", fused.chunk(3, dim=0), strict=True):
            sd[f"processor.{name}_proj.{param}"] = part.clone()
    return ckpt
''',
    "006_lam_head": '''\
"""Branch lam: the output map is called head on the lam branch."""

source = "1.0.0"
target = "1.0.0+lam"
touches = ["output_map.*", "head.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("output_map.")]:
        sd["head." + key.removeprefix("output_map.")] = sd.pop(key)
    return ckpt
''',
    "007_lam_to_main": '''\
"""Merge lam back: head becomes output_map again and gains the output scale of 1.1.0."""

import torch

source = "1.0.0+lam"
target = "1.1.0"
touches = ["output_map.*", "head.*", "output_scale"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("head.")]:
        sd["output_map." + key.removeprefix("head.")] = sd.pop(key)
    bias = sd["output_map.bias"]
    sd["output_scale"] = torch.ones_like(bias)
    return ckpt
''',
    "008_output_scale": '''\
"""Add a learnable output scale, initialised to ones so outputs do not change."""

import torch

source = "1.0.0"
target = "1.1.0"
touches = ["output_scale"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    sd["output_scale"] = torch.ones_like(sd["output_map.bias"])
    return ckpt
''',
    "009_drop_output_scale": '''\
"""Downgrade: drop the output scale (a trained scale is lost)."""

source = "1.1.0"
target = "1.0.0"
touches = ["output_scale"]
lossy = True


def convert(ckpt):
    sd = ckpt["state_dict"]
    sd.pop("output_scale")
    return ckpt
''',
    "010_lam_to_1_0": '''\
"""Leave branch lam for 1.0.0: head is called output_map again."""

source = "1.0.0+lam"
target = "1.0.0"
touches = ["output_map.*", "head.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("head.")]:
        sd["output_map." + key.removeprefix("head.")] = sd.pop(key)
    return ckpt
''',
}
"""The example converters as first released (convert functions): 0.1.0 -> 0.2.0 -> 0.3.0 -> 1.0.0 -> 1.1.0,
a lam branch, downgrades and a lossy 1.1.0 -> 1.0.0. Tests write them into ``tmp_path``."""


def write_example_converters(directory: Path) -> Path:
    """Write the example converters into ``directory`` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in EXAMPLE_CONVERTERS.items():
        (directory / f"{name}.py").write_text(text, encoding="utf-8")
    return directory
