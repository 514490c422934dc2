"""Merge lam back: head becomes output_map again and gains the output scale of 1.1.0."""

from ckpt_path.ops import Add, Rename

source = "1.0.0+lam"
target = "1.1.0"

ops = [
    Rename("head.{p}", "output_map.{p}"),
    Add("output_scale", shape=[6], fill=1.0),
]
