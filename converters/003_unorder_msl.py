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
