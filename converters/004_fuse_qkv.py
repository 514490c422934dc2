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
