"""The :class:`Op` protocol every op implements, and the helpers the concrete ops share.

``predict``, ``apply``, ``apply_meta``, ``inverse`` and ``effect`` are documented once, here; the
ops override them without repeating that. The helpers read tensors' specs, normalise dims and
dtype names, and phrase counts for :meth:`Op.effect`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from ckpt_path.errors import OpError
from ckpt_path.ops._templates import _matches, _require
from ckpt_path.shapes import TensorSpec

Signature = dict[str, TensorSpec]

_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}
"""torch's other names for dtypes; ops use the names shapes report (``float16``, not ``half``)."""


def _dtype_name(name: str, op: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name):
        raise OpError(f"{op}: {name!r} is not a dtype name such as float16")
    return _ALIASES.get(name, name)


def _torch_dtype(name: str, op: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise OpError(f"{op}: torch has no dtype {name!r}")
    return dtype


def _signature(state_dict: Mapping[str, Any]) -> Signature:
    return {k: _spec(v) for k, v in state_dict.items() if _is_tensor(v)}


def _dim(dim: int, ndim: int, key: str) -> int:
    if not -ndim <= dim < ndim:
        raise OpError(f"{key}: dim {dim} is out of range for a tensor of {ndim} dimension(s)")
    return dim % ndim


def _ints(values: object, op: str, what: str) -> tuple[int, ...]:
    items = tuple(values) if isinstance(values, list | tuple) else (values,)
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise OpError(f"{op}: {what} must be one or more whole numbers, got {values!r}")
    return tuple(int(v) for v in items if isinstance(v, int))


def _count(n: int, what: str = "key") -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _times(n: int) -> str:
    return f", {n} times" if n > 1 else ""


def _is_tensor(value: object) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "numel")


def _spec(tensor: Any) -> TensorSpec:
    return TensorSpec(tuple(int(d) for d in tensor.shape), str(tensor.dtype).removeprefix("torch."))


@dataclass(frozen=True, slots=True, repr=False)
class Op:
    """Base of every op: a shape effect, an application, and maybe an inverse.

    ``optional=True`` lets an op match nothing (a rule shared by model variants); otherwise a
    template that matches no key is an error.
    """

    optional: bool = field(default=False, kw_only=True, repr=False)
    lossy: ClassVar[bool] = False
    meta: ClassVar[bool] = False
    """The op changes the checkpoint outside the state dict (see :meth:`apply_meta`)."""

    def predict(self, sig: Signature) -> Signature:
        """Return the signature after the op, from the one before; raise OpError on bad arguments."""
        raise NotImplementedError

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        """Apply the op to a state dict in place."""
        raise NotImplementedError

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:
        """Apply a metadata op to the whole checkpoint object (the state dict is at ``state_dict_at``)."""
        raise NotImplementedError

    def inverse(self) -> Op | None:
        """Return the op that undoes this one exactly, or None when there is none."""
        return None

    def is_lossy(self) -> bool:
        """Whether the op throws information away."""
        return self.lossy

    def effect(self, sig: Signature) -> str:
        """Say, in the user's terms, what the op does to a state dict of signature ``sig``."""
        return f"{type(self).__name__} on {len(sig)} key(s)"

    def __repr__(self) -> str:
        """``Concat(keys=('q', 'k'), into='qk')``: the arguments that differ from their defaults."""
        shown = []
        for item in sorted(fields(self), key=lambda f: f.kw_only is True):
            value = getattr(self, item.name)
            if item.default is not MISSING and value == item.default:
                continue
            shown.append(f"{item.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def _find(self, template: str, keys: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
        return _matches(template, keys) if self.optional else _require(template, keys)

    def _optional_note(self) -> str:
        return " (optional, matched nothing)" if self.optional else ""
