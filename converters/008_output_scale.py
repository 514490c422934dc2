"""Add a learnable output scale, initialised to ones so outputs do not change."""

import torch

source = "1.0.0"
target = "1.1.0"
touches = ["output_scale"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    sd["output_scale"] = torch.ones_like(sd["output_map.bias"])
    return ckpt
