"""Declarative operations on a checkpoint, with exact shape effects and inverses.

A converter file may say ``ops = [...]`` instead of defining ``convert``. Ops are read from
the file's syntax tree (the file is never imported), so before anything runs ckpt-path knows
which keys each step touches, what shapes it produces, whether it is lossy and what its
inverse is: ``reversible = True`` registers the inverse edge for free.

Keys are *templates*, written once for every model size:

- ``{name}`` matches one dotted segment (or part of one) and binds it:
  ``Rename("layers.{i}.attn.{p}", "layers.{i}.self_attn.{p}")`` covers every layer;
- ``{*name}`` matches any number of whole segments, none included:
  ``Rename("{*m}.LayerNorm.gamma", "{*m}.LayerNorm.weight")`` covers every depth and prefix;
- ``{i+1}`` / ``{i-1}`` compute with a numeric segment: ``Rename("layers.{i}.downsample.{*p}",
  "layers.{i+1}.downsample.{*p}")`` (a Rename moves every key at once, so shifts never collide).

``Drop``, ``DropDerived`` and ``Cast`` also take glob patterns (``*``). Every op that matches
keys takes ``optional=True``: matching nothing is then not an error (a rule shared by model
variants). Sizes may be named instead of written out (``Reshape(k, ["C"], source_shape=[1, 1,
1, "C"])``) or read from another key's shape (``"{*b}.norm.weight[0]"``), so no literal is
repeated per stage. ``SetMeta``, ``MoveMeta`` and ``DropMeta`` change the checkpoint outside
the state dict (hyper-parameters, loop and callback state).

This package holds the public names; its private modules, each importing only those before it:
``_templates`` (key templates) → ``_sizes`` (sizes by number, name or ``key[dim]``) → ``_base``
(the :class:`Op` protocol and shared helpers) → the ops: ``_keys`` (rename, add, drop keys),
``_tensors`` (one tensor at a time: layout, shape, dtype), ``_fuse`` (Concat, Split, Stack,
Unstack), ``_slices`` (Slice, Unslice, AddInto), ``_meta`` (outside the state dict) → ``_lists``
(``OPS`` by name, and a list's shapes, inverse and description). Torch is imported only inside
:meth:`Op.apply`.
"""

from ckpt_path.errors import OpError
from ckpt_path.ops._base import Op
from ckpt_path.ops._base import Signature as Signature
from ckpt_path.ops._fuse import Concat, Split, Stack, Unstack
from ckpt_path.ops._keys import Add, Drop, DropDerived, Rename
from ckpt_path.ops._lists import OPS, describe_ops, invert, predict
from ckpt_path.ops._meta import UNSET as UNSET
from ckpt_path.ops._meta import DropMeta, MoveMeta, SetMeta
from ckpt_path.ops._sizes import Size as Size
from ckpt_path.ops._slices import AddInto, Slice, Unslice
from ckpt_path.ops._templates import keys_matching
from ckpt_path.ops._tensors import Cast, MoveIndex, Permute, Reshape, Squeeze, Transpose, Unsqueeze

__all__ = [
    "OPS",
    "Add",
    "AddInto",
    "Cast",
    "Concat",
    "Drop",
    "DropDerived",
    "DropMeta",
    "MoveIndex",
    "MoveMeta",
    "Op",
    "OpError",
    "Permute",
    "Rename",
    "Reshape",
    "SetMeta",
    "Slice",
    "Split",
    "Squeeze",
    "Stack",
    "Transpose",
    "Unslice",
    "Unsqueeze",
    "Unstack",
    "describe_ops",
    "invert",
    "keys_matching",
    "predict",
]
