"""Hypothesis strategies shared by the ops tests: random tensors of every dtype, and keys no op matches."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from ckpt_fixtures import random_tensor

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool)
"""The dtypes every shape-only op must carry through untouched."""

SHAPES = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
SEEDS = st.integers(0, 2**31 - 1)


def dtype_name(dtype: torch.dtype) -> str:
    """Name a torch dtype the way ops and signatures do: ``float16``."""
    return str(dtype).removeprefix("torch.")


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Draw a random tensor, of a random shape and dtype unless given."""
    shape = draw(SHAPES) if shape is None else shape
    dtype = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    return random_tensor(shape, dtype, draw(SEEDS))


@st.composite
def bystanders(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """Draw keys that no op under test matches: they must come through untouched."""
    names = draw(st.lists(st.sampled_from(["head.weight", "head.bias", "norm.scale"]), unique=True, max_size=3))
    return {name: draw(tensors()) for name in names}
