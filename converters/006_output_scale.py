"""Add a learnable output scale, initialised to ones so outputs do not change."""

from ckpt_path.ops import Add

source = "1.0.0"
target = "1.1.0"
reversible = True  # the way back drops the scale, so 1.1.0 -> 1.0.0 is lossy

ops = [Add("output_scale", shape=[6], fill=1.0)]
