"""Fuse the processor's q, k and v projections into one qkv projection."""

from ckpt_path.ops import Concat

source = "0.3.0"
target = "1.0.0"
reversible = True

ops = [
    Concat(
        ["processor.q_proj.{p}", "processor.k_proj.{p}", "processor.v_proj.{p}"],
        into="processor.qkv_proj.{p}",
        dim=0,
    ),
]
