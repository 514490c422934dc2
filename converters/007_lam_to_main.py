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
