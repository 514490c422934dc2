"""Rename the grid MLP of the g2m GNN (the layer index was dropped)."""

source = "0.1.0"
target = "0.2.0"
touches = ["g2m_gnn.grid_mlp.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("g2m_gnn.grid_mlp.0.")]:
        sd[key.replace("grid_mlp.0.", "grid_mlp.")] = sd.pop(key)
    return ckpt
