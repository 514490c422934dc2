"""Move input/output feature msl from position 3 to position 1."""

from ckpt_path.ops import MoveIndex

source = "0.2.0"
target = "0.3.0"
reversible = True

ops = [
    MoveIndex("grid_prev_embedder.0.weight", dim=1, index=3, to=1),  # input features: columns
    MoveIndex("output_map.{p}", dim=0, index=3, to=1),  # output features: rows of weight and bias
]
