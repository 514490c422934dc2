"""Tensors and checkpoints for the tests: the example model's state dicts, Lightning wrappers, unsafe pickles.

Everything here builds files under a directory the caller passes (a test's ``tmp_path``);
nothing is written to the working directory. Plain functions rather than fixtures, so that
test modules use them without importing fixtures by name.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
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


def t(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return a tensor of ``shape`` holding the distinct values 0, 1, 2, ..."""
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape).to(dtype)


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Return a tensor of finite random values (no NaN, so bitwise and value equality agree)."""
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(-1000, 1000, shape, generator=generator, dtype=dtype)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """Return the raw bytes of a tensor, so that -0.0 and 0.0 differ."""
    return tensor.detach().flatten().clone(memory_format=torch.contiguous_format).view(torch.uint8)


def clone(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Copy a state dict with its own storage, so ops on the original cannot change the copy."""
    return {key: value.clone() for key, value in state_dict.items()}


def assert_bitwise_equal(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Assert two state dicts have the same keys, and per key the same shape, dtype and bytes."""
    assert sorted(got) == sorted(expected)
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype, key
        assert got[key].shape == tensor.shape, key
        assert torch.equal(bits(got[key]), bits(tensor)), key


def lightning(state_dict: dict[str, torch.Tensor], version: str | None = None) -> dict[str, Any]:
    """Wrap a state dict the way Lightning saves it, with the usual non-tensor content; stamp it ``version``.

    The optimizer has taken no step yet (no per-parameter state), so steps that change
    parameters need not say what its state becomes; tests of that build their own.
    """
    ckpt = {
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
    return ckpt if version is None else write_stamp(ckpt, ("state_dict",), Stamp(version=version))


def write_v010(path: Path, *, version: str | None = None) -> Path:
    """Write a Lightning checkpoint of version 0.1.0 at ``path``; stamp it when ``version`` is given."""
    return write_ckpt(path, lightning(v010_state_dict(), version))


def write_ckpt(path: Path, obj: object) -> Path:
    """Save ``obj`` at ``path`` with plain ``torch.save``, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
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
