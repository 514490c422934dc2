"""Ops that rename, add and remove keys, leaving every other tensor as it is: Rename, Drop, DropDerived, Add."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ckpt_path.errors import OpError
from ckpt_path.ops._base import Op, Signature, _dtype_name, _torch_dtype
from ckpt_path.ops._templates import _check_key, _fill, _no_glob
from ckpt_path.shapes import TensorSpec


@dataclass(frozen=True, slots=True, repr=False)
class Rename(Op):
    """Rename every key matching ``source`` to ``target`` (templates with ``{name}``, ``{*name}``, ``{i+1}``).

    Every key moves at once, so a shift (``{i}`` to ``{i+1}``) or a swap never collides.
    Renaming onto a key that stays, or two keys onto one, is an error, never an overwrite.
    """

    source: str
    target: str

    def __post_init__(self) -> None:
        _no_glob(self.source, "Rename")
        _no_glob(self.target, "Rename")

    def mapping(self, keys: Sequence[str]) -> dict[str, str]:
        """Return old key -> new key for every key of ``keys`` the op renames."""
        mapping = {old: _fill(self.target, b) for old, b in self._find(self.source, keys)}
        staying = set(keys) - mapping.keys()
        seen: dict[str, str] = {}
        for old, new in mapping.items():
            if new in staying:
                raise OpError(f"renaming {old} onto {new}, which already exists")
            if new in seen:
                raise OpError(f"renaming both {seen[new]} and {old} onto {new}")
            seen[new] = old
        return mapping

    def predict(self, sig: Signature) -> Signature:
        mapping = self.mapping(list(sig))
        return {mapping.get(k, k): v for k, v in sig.items()}

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        mapping = self.mapping(list(state_dict))
        moved = {new: state_dict.pop(old) for old, new in mapping.items()}
        state_dict.update(moved)

    def inverse(self) -> Op:
        return Rename(self.target, self.source, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        mapping = self.mapping(list(sig))
        if not mapping:
            return f"renamed nothing: {self.source}{self._optional_note()}"
        if len(mapping) == 1 and "{" not in self.source:
            return f"renamed {self.source} → {self.target}"
        return f"renamed {len(mapping)}: {self.source} → {self.target}"


@dataclass(frozen=True, slots=True, repr=False)
class Drop(Op):
    """Remove every key matching ``pattern`` (a glob or a template). Lossy; no inverse."""

    pattern: str
    lossy: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_key(self.pattern, type(self).__name__)

    def predict(self, sig: Signature) -> Signature:
        gone = {k for k, _ in self._find(self.pattern, list(sig))}
        return {k: v for k, v in sig.items() if k not in gone}

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        for key, _ in self._find(self.pattern, list(state_dict)):
            del state_dict[key]

    def effect(self, sig: Signature) -> str:
        found = self._find(self.pattern, list(sig))
        if not found:
            return f"dropped nothing: {self.pattern}{self._optional_note()}"
        what = found[0][0] if len(found) == 1 else f"{len(found)}: {self.pattern}"
        return f"dropped {what} (lossy)"


@dataclass(frozen=True, slots=True, repr=False)
class DropDerived(Drop):
    """Remove buffers the model recomputes from its other weights or its config (not lossy; no inverse).

    Swin's ``relative_position_index`` and ``attn_mask``, rotary ``inv_freq``: dropping them
    loses nothing, so the step stays lossless; the way back cannot restore their values, so
    there is no inverse (``reversible = True`` is refused).
    """

    lossy: ClassVar[bool] = False

    def effect(self, sig: Signature) -> str:
        found = self._find(self.pattern, list(sig))
        if not found:
            return f"dropped no derived buffer: {self.pattern}{self._optional_note()}"
        what = found[0][0] if len(found) == 1 else f"{len(found)}: {self.pattern}"
        return f"dropped derived {what} (the model recomputes it)"


@dataclass(frozen=True, slots=True, repr=False)
class Add(Op):
    """Add a new parameter ``key`` of ``shape`` filled with ``fill`` (its inverse, Drop, is lossy)."""

    key: str
    shape: tuple[int, ...]
    fill: float = 0.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in self.shape):
            raise OpError(f"Add {self.key}: shape must be sizes >= 0, got {list(self.shape)}")
        if "{" in self.key or any(c in self.key for c in "*?["):
            raise OpError(f"Add takes one plain key, not a template: {self.key!r}")
        if self.optional:
            raise OpError(f"Add {self.key}: optional does not apply (Add matches no key)")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "Add"))

    def predict(self, sig: Signature) -> Signature:
        if self.key in sig:
            raise OpError(f"Add {self.key}: the key already exists")
        return {**sig, self.key: TensorSpec(self.shape, self.dtype)}

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        if self.key in state_dict:
            raise OpError(f"Add {self.key}: the key already exists")
        state_dict[self.key] = torch.full(self.shape, self.fill, dtype=_torch_dtype(self.dtype, "Add"))

    def inverse(self) -> Op:
        return Drop(self.key)

    def effect(self, sig: Signature) -> str:
        del sig
        return f"added {self.key} {TensorSpec(self.shape, self.dtype)} filled with {self.fill:g}"
