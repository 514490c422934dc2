"""Branch lam: the output map is called head on the lam branch."""

from ckpt_path.ops import Rename

source = "1.0.0"
target = "1.0.0+lam"
reversible = True

ops = [Rename("output_map.{p}", "head.{p}")]
