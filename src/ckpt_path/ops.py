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

This module imports torch only inside :meth:`Op.apply`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, ClassVar

from ckpt_path.errors import OpError
from ckpt_path.shapes import TensorSpec

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

Signature = dict[str, TensorSpec]
Size = int | str
"""A size in a shape or ``sizes``: a number, a name (``"C"``) or another key's size (``"key[0]"``)."""

# Casts that keep every value exactly; any other cast between different dtypes is lossy.
_WIDENS = {
    ("float16", "float32"),
    ("float16", "float64"),
    ("bfloat16", "float32"),
    ("bfloat16", "float64"),
    ("float32", "float64"),
    ("int8", "int16"),
    ("int8", "int32"),
    ("int8", "int64"),
    ("int16", "int32"),
    ("int16", "int64"),
    ("int32", "int64"),
    ("uint8", "int16"),
    ("uint8", "int32"),
    ("uint8", "int64"),
    ("bool", "uint8"),
    ("bool", "int8"),
    ("bool", "int32"),
    ("bool", "int64"),
}

# -- key templates ------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?:([+-])([0-9]+))?\}")
_SEGMENT = r"[^.]+"
_INDEX = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class _Slot:
    """One placeholder of a template."""

    name: str
    star: bool = False
    offset: int | None = None
    """``{i+1}``: 1, ``{i-1}``: -1; None for a plain or star placeholder."""
    lead_dot: bool = False
    """A star placeholder at the end owns the dot before it (``a.{*p}`` matches ``a``)."""
    trail_dot: bool = False
    """A star placeholder owns the dot after it (``{*p}.x`` matches ``x``)."""

    def __str__(self) -> str:
        if self.offset is not None:
            return f"{{{self.name}{self.offset:+d}}}"
        return f"{{*{self.name}}}" if self.star else f"{{{self.name}}}"


@dataclass(frozen=True, slots=True)
class _Template:
    """A compiled key template: match keys to bindings, fill bindings into keys."""

    text: str
    parts: tuple[str | _Slot, ...]
    regex: re.Pattern[str]
    slots: tuple[_Slot, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every placeholder name, in order of first appearance."""
        return tuple(dict.fromkeys(s.name for s in self.slots))

    def match(self, key: str) -> dict[str, str] | None:
        """Return the binding of ``key``, or None when it does not match."""
        found = self.regex.fullmatch(key)
        if found is None:
            return None
        binding: dict[str, str] = {}
        for index, slot in enumerate(self.slots):
            raw = found.group(f"g{index}") or ""
            if slot.offset is not None:
                number = int(raw) - slot.offset
                if number < 0:
                    return None
                raw = str(number)
            if binding.setdefault(slot.name, raw) != raw:
                return None
        return binding

    def fill(self, binding: Mapping[str, str]) -> str:
        """Return the key this template names under ``binding``."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            if part.name not in binding:
                raise OpError(f"template {self.text!r} uses {{{part.name}}}, which the source does not bind")
            value = binding[part.name]
            if part.offset is not None:
                if not _INDEX.fullmatch(value):
                    raise OpError(
                        f"template {self.text!r}: {{{part.name}}} is {value!r}, not a number, so {part} fails"
                    )
                number = int(value) + part.offset
                if number < 0:
                    raise OpError(f"template {self.text!r}: {{{part.name}}} is {value}, so {part} would be {number}")
                out.append(str(number))
            elif part.star:
                if value:
                    out.append(("." if part.lead_dot else "") + value + ("." if part.trail_dot else ""))
            elif not value:
                raise OpError(f"template {self.text!r}: {{{part.name}}} is empty here (bound by a {{*{part.name}}})")
            else:
                out.append(value)
        return "".join(out)


def _parse(text: str) -> list[str | _Slot]:
    parts: list[str | _Slot] = []
    position = 0
    for found in _PLACEHOLDER.finditer(text):
        if found.start() > position:
            parts.append(text[position : found.start()])
        star, name, sign, number = found.groups()
        if star and sign:
            raise OpError(f"template {text!r}: {{*{name}}} spans segments and cannot compute ({found.group()})")
        offset = None if sign is None else (int(number) if sign == "+" else -int(number))
        parts.append(_Slot(name, star=bool(star), offset=offset))
        position = found.end()
    if position < len(text):
        parts.append(text[position:])
    for part in parts:
        if isinstance(part, str) and ("{" in part or "}" in part):
            raise OpError(
                f"template {text!r}: a brace must open a placeholder such as {{name}}, {{*prefix}} or {{i+1}}",
            )
    return parts


def _own_dots(text: str, parts: list[str | _Slot]) -> list[str | _Slot]:
    """Let each star placeholder own one dot next to it, so it may match no segment at all."""
    for index, part in enumerate(parts):
        if not isinstance(part, _Slot) or not part.star:
            continue
        before = parts[index - 1] if index > 0 else None
        after = parts[index + 1] if index + 1 < len(parts) else None
        whole = "{*name} must span whole segments, between dots"
        if isinstance(before, _Slot) or isinstance(after, _Slot):
            raise OpError(f"template {text!r}: {part} touches another placeholder; {whole}")
        if (before is not None and not before.endswith(".")) or (after is not None and not after.startswith(".")):
            raise OpError(f"template {text!r}: {whole}")
        if after is not None:
            parts[index] = _Slot(part.name, star=True, trail_dot=True)
            parts[index + 1] = after[1:]
        elif before is not None:
            parts[index] = _Slot(part.name, star=True, lead_dot=True)
            parts[index - 1] = before[:-1]
    return [p for p in parts if p != ""]


@cache
def _compile(text: str) -> _Template:
    """Compile a key template (see the module docstring); raise OpError when it is malformed."""
    parts = _own_dots(text, _parse(text))
    regex = ""
    slots: list[_Slot] = []
    for part in parts:
        if isinstance(part, str):
            regex += re.escape(part)
            continue
        group = f"g{len(slots)}"
        slots.append(part)
        if part.star:
            body = f"(?P<{group}>{_SEGMENT}(?:\\.{_SEGMENT})*)"
            regex += f"(?:{body}\\.)?" if part.trail_dot else f"(?:\\.{body})?" if part.lead_dot else body
        elif part.offset is not None:
            regex += f"(?P<{group}>{_INDEX.pattern})"
        else:
            regex += f"(?P<{group}>{_SEGMENT})"
    return _Template(text, tuple(parts), re.compile(regex), tuple(slots))


def _check_template(text: str, op: str) -> _Template:
    if not isinstance(text, str):
        raise OpError(f"{op}: a key template must be a string, got {text!r}")
    try:
        return _compile(text)
    except OpError as exc:
        raise OpError(f"{op}: {exc}") from None


def _fill(template: str, binding: Mapping[str, str]) -> str:
    return _compile(template).fill(binding)


def _is_glob(template: str) -> bool:
    return "{" not in template and any(c in template for c in "*?[")


def _no_glob(template: str, op: str) -> None:
    if _is_glob(template):
        raise OpError(f"{op} takes key templates ({{name}} for a segment), not glob patterns: {template!r}")
    _check_template(template, op)


def _check_key(template: str, op: str) -> None:
    """Check a key that may be a template or a glob pattern."""
    if not _is_glob(template):
        _check_template(template, op)


def _matches(template: str, keys: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """Every key matching ``template`` (sorted), with its placeholder binding."""
    if _is_glob(template):
        return [(k, {}) for k in sorted(keys) if fnmatch.fnmatchcase(k, template)]
    compiled = _compile(template)
    found = []
    for key in sorted(keys):
        binding = compiled.match(key)
        if binding is not None:
            found.append((key, binding))
    return found


def _require(template: str, keys: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    found = _matches(template, keys)
    if not found:
        raise OpError(f"no key matches {template!r}")
    return found


def _index_name(source: str, target: str, op: str) -> str:
    """Return the one placeholder ``source`` binds that ``target`` does not: the index Stack runs over."""
    src, tgt = _check_template(source, op), _check_template(target, op)
    extra = [n for n in src.names if n not in tgt.names]
    if len(extra) != 1:
        raise OpError(
            f"{op}: {source!r} must have exactly one placeholder that {target!r} lacks (the index), "
            f"found {len(extra)}: {', '.join('{' + n + '}' for n in extra) or 'none'}",
        )
    if any(s.star for s in src.slots if s.name == extra[0]):
        raise OpError(f"{op}: the index {{*{extra[0]}}} must be one segment, {{{extra[0]}}}")
    missing = [n for n in tgt.names if n not in src.names]
    if missing:
        raise OpError(f"{op}: {target!r} uses {{{missing[0]}}}, which {source!r} does not bind")
    return extra[0]


# -- sizes --------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"(?P<key>.+)\[(?P<dim>-?[0-9]+)\]")


def _check_size(entry: object, op: str, *, infer: bool, names: bool, references: bool = True) -> Size:
    """Check one size entry when the op is made: what it may be depends on where it stands."""
    if isinstance(entry, bool):
        raise OpError(f"{op}: {entry!r} is not a size")
    if isinstance(entry, int):
        if entry >= 0 or (infer and entry == -1):
            return entry
        raise OpError(f"{op}: sizes must be >= 0{', or -1 to infer' if infer else ''}, got {entry}")
    if isinstance(entry, str):
        if names and _NAME.fullmatch(entry):
            return entry
        reference = _REFERENCE.fullmatch(entry)
        if references and reference:
            _check_template(reference["key"], op)
            return entry
    allowed = "a number" + (", a name such as 'C'" if names else "") + (", or 'key[dim]'" if references else "")
    raise OpError(f"{op}: {entry!r} is not a size ({allowed})")


def _show(sizes: Sequence[Size]) -> str:
    return "[" + ", ".join(str(s) for s in sizes) + "]"


def _resolve(
    entry: Size, key: str, binding: Mapping[str, str], sig: Mapping[str, TensorSpec], bound: Mapping[str, int]
) -> int:
    """Return the size an entry names for ``key``: a number, a bound name, or a dim of another key."""
    if isinstance(entry, int):
        return entry
    reference = _REFERENCE.fullmatch(entry)
    if reference and not _NAME.fullmatch(entry):
        other = _fill(reference["key"], binding)
        if other not in sig:
            raise OpError(f"{key}: size {entry!r} reads {other}, which is not in the state dict")
        shape = sig[other].shape
        dim = int(reference["dim"])
        if not -len(shape) <= dim < len(shape):
            raise OpError(f"{key}: size {entry!r}: {other} has {len(shape)} dimension(s)")
        return shape[dim]
    if entry not in bound:
        raise OpError(f"{key}: the size {entry!r} is not bound; name it in source_shape")
    return bound[entry]


# -- helpers ------------------------------------------------------------------------------------

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


def _torch_dtype(name: str, op: str) -> Any:  # noqa: ANN401 - a torch.dtype
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

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:  # noqa: ANN401 - any checkpoint
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


# -- renames and layout -------------------------------------------------------------------------


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
class MoveIndex(Op):
    """Move the slice at ``index`` along ``dim`` to position ``to`` (the others shift up or down)."""

    key: str
    dim: int
    index: int
    to: int

    def __post_init__(self) -> None:
        _check_key(self.key, "MoveIndex")

    def _check(self, key: str, spec: TensorSpec) -> int:
        dim = _dim(self.dim, len(spec.shape), key)
        size = spec.shape[dim]
        for name, value in (("index", self.index), ("to", self.to)):
            if not 0 <= value < size:
                raise OpError(f"{key}: {name}={value} is out of range for dim {self.dim} of size {size}")
        return dim

    def predict(self, sig: Signature) -> Signature:
        for key, _ in self._find(self.key, list(sig)):
            self._check(key, sig[key])
        return dict(sig)

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))  # every key checked before any changes
        for key, _ in self._find(self.key, list(state_dict)):
            tensor = state_dict[key]
            dim = self._check(key, _spec(tensor))
            order = list(range(tensor.shape[dim]))
            order.insert(self.to, order.pop(self.index))
            state_dict[key] = tensor.index_select(dim, torch.tensor(order, device=tensor.device))

    def inverse(self) -> Op:
        return MoveIndex(self.key, dim=self.dim, index=self.to, to=self.index, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        found = self._find(self.key, list(sig))
        if not found:
            return f"moved nothing: {self.key}{self._optional_note()}"
        where = found[0][0] if len(found) == 1 else f"{_count(len(found))}: {self.key}"
        return f"moved index {self.index} → {self.to} of dim {self.dim} in {where}"


class _EachKey(Op):
    """An op that maps each key matching ``key`` to a new tensor of its own (shape ops, casts)."""

    __slots__ = ()
    key: str

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        raise NotImplementedError

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:  # noqa: ANN401 - a torch.Tensor
        raise NotImplementedError

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, binding in self._find(self.key, list(sig)):
            out[key] = self._new(key, sig[key], binding, sig)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        sig = _signature(state_dict)
        after = self.predict(sig)  # every key checked before any changes
        for key, _ in self._find(self.key, list(state_dict)):
            state_dict[key] = self._apply_one(state_dict[key], after[key])

    def _changed(self, sig: Signature) -> list[str]:
        return [k for k, _ in self._find(self.key, list(sig))]

    def _where(self, sig: Signature, verb: str) -> str:
        found = self._changed(sig)
        if not found:
            return f"{verb} nothing: {self.key}{self._optional_note()}"
        if len(found) == 1:
            key = found[0]
            after = self._new(key, sig[key], self._find(self.key, [key])[0][1], sig)
            return f"{verb} {key} {_show(sig[key].shape)} → {_show(after.shape)}"
        return f"{verb} {len(found)}: {self.key}"


@dataclass(frozen=True, slots=True, repr=False)
class Permute(_EachKey):
    """Permute the dimensions of every key matching ``key``."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if sorted(self.dims) != list(range(len(self.dims))):
            raise OpError(f"Permute dims must be a permutation of 0..{len(self.dims) - 1}, got {self.dims}")
        _check_key(self.key, "Permute")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        if len(spec.shape) != len(self.dims):
            ndim = len(spec.shape)
            raise OpError(f"{key}: Permute{self.dims} needs {len(self.dims)} dims, the tensor has {ndim}")
        return TensorSpec(tuple(spec.shape[d] for d in self.dims), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:  # noqa: ANN401
        del spec
        return tensor.permute(*self.dims).contiguous()

    def inverse(self) -> Op:
        inverse = [0] * len(self.dims)
        for position, d in enumerate(self.dims):
            inverse[d] = position
        return Permute(self.key, tuple(inverse), optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, f"permuted dims {self.dims} of")


@dataclass(frozen=True, slots=True, repr=False)
class Transpose(_EachKey):
    """Swap two dimensions of every key matching ``key``, whatever its number of dimensions; its own inverse."""

    key: str
    dim0: int = 0
    dim1: int = 1

    def __post_init__(self) -> None:
        _ints((self.dim0, self.dim1), "Transpose", "dim0 and dim1")
        _check_key(self.key, "Transpose")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        a, b = _dim(self.dim0, len(spec.shape), key), _dim(self.dim1, len(spec.shape), key)
        shape = list(spec.shape)
        shape[a], shape[b] = shape[b], shape[a]
        return TensorSpec(tuple(shape), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:  # noqa: ANN401
        del spec
        return tensor.transpose(self.dim0, self.dim1).contiguous()

    def inverse(self) -> Op:
        return Transpose(self.key, self.dim0, self.dim1, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, f"transposed dims {self.dim0} and {self.dim1} of")


@dataclass(frozen=True, slots=True, repr=False)
class Reshape(_EachKey):
    """Reshape every key matching ``key``; ``-1`` infers one size.

    Sizes may be numbers, names bound by ``source_shape`` (``Reshape(k, ["C"], source_shape=[1,
    1, 1, "C"])``) or another key's size (``"{*b}.norm.weight[0]"``, filled with the key's
    binding), so one op fits every stage. The inverse exists when ``source_shape`` (the shape
    before) is given and every name in it can be read back from the new shape.
    """

    key: str
    shape: tuple[Size, ...]
    source_shape: tuple[Size, ...] | None = None

    def __post_init__(self) -> None:
        shape = self.shape if isinstance(self.shape, list | tuple) else (self.shape,)
        object.__setattr__(self, "shape", tuple(shape))
        what = f"Reshape {self.key}"
        if any(isinstance(d, int) and not isinstance(d, bool) and d < -1 for d in self.shape):
            raise OpError(f"{what}: sizes must be >= 0, or -1 once to infer one, got {_show(self.shape)}")
        for entry in self.shape:
            _check_size(entry, what, infer=True, names=True)
        if self.source_shape is not None:
            source = self.source_shape if isinstance(self.source_shape, list | tuple) else (self.source_shape,)
            object.__setattr__(self, "source_shape", tuple(source))
            if any(isinstance(d, int) and not isinstance(d, bool) and d < 0 for d in source):
                # source_shape is compared with the tensor's shape and becomes the inverse's shape:
                # a -1 there would match no tensor, so every run would fail.
                raise OpError(
                    f"{what}: source_shape must be the exact shape before, sizes >= 0 "
                    f"(no -1; name a size instead, e.g. 'C'), got {_show(source)}",
                )
            for entry in source:
                _check_size(entry, what, infer=False, names=True)
        named = {d for d in self.shape if isinstance(d, str) and _NAME.fullmatch(d)}
        unbound = named - set(self.source_shape or ())
        if unbound:
            raise OpError(f"{what}: the size {min(unbound)!r} is not bound; name it in source_shape")
        _check_key(self.key, "Reshape")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        bound: dict[str, int] = {}
        if self.source_shape is not None:
            mismatch = OpError(f"{key}: expected shape {_show(self.source_shape)}, got {list(spec.shape)}")
            if len(self.source_shape) != len(spec.shape):
                raise mismatch
            for want, got in zip(self.source_shape, spec.shape, strict=True):
                if isinstance(want, str) and _NAME.fullmatch(want):
                    if bound.setdefault(want, got) != got:
                        raise mismatch
                elif _resolve(want, key, binding, sig, bound) != got:
                    raise mismatch
        shape = tuple(-1 if d == -1 else _resolve(d, key, binding, sig, bound) for d in self.shape)
        numel = math.prod(spec.shape)
        known = math.prod(d for d in shape if d != -1)
        if shape.count(-1) > 1 or (known == 0 and -1 in shape):
            raise OpError(f"{key}: cannot infer the -1 in {_show(self.shape)}")
        if known:
            shape = tuple(numel // known if d == -1 else d for d in shape)
        if math.prod(shape) != numel:
            raise OpError(f"{key}: cannot reshape {list(spec.shape)} ({numel} elements) to {_show(self.shape)}")
        return TensorSpec(shape, spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:  # noqa: ANN401
        return tensor.reshape(spec.shape)

    def inverse(self) -> Op | None:
        if self.source_shape is None:
            return None
        if all(isinstance(d, int) for d in self.source_shape):
            return Reshape(self.key, self.source_shape, source_shape=None, optional=self.optional)
        rest = [f"_{i}" for i, d in enumerate(self.shape) if d == -1]
        source = tuple(f"_{i}" if d == -1 else d for i, d in enumerate(self.shape))
        names = {d for d in source if isinstance(d, str) and _NAME.fullmatch(d)} - set(rest)
        unknown = [d for d in self.source_shape if isinstance(d, str) and _NAME.fullmatch(d) and d not in names]
        if len(unknown) > 1:
            return None
        shape = tuple(-1 if d in unknown else d for d in self.source_shape)
        return Reshape(self.key, shape, source_shape=source, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, "reshaped")


@dataclass(frozen=True, slots=True, repr=False)
class Squeeze(_EachKey):
    """Remove dimensions of size 1 (``dims``, positions before) from every key matching ``key``."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", _ints(self.dims, "Squeeze", "dims"))
        _check_key(self.key, "Squeeze")

    def _positions(self, key: str, ndim: int) -> list[int]:
        positions = sorted({_dim(d, ndim, key) for d in self.dims})
        if len(positions) != len(self.dims):
            raise OpError(f"{key}: Squeeze dims {list(self.dims)} name a dimension twice")
        return positions

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        positions = self._positions(key, len(spec.shape))
        for d in positions:
            if spec.shape[d] != 1:
                raise OpError(f"{key}: dim {d} of {list(spec.shape)} has size {spec.shape[d]}, not 1")
        return TensorSpec(tuple(n for i, n in enumerate(spec.shape) if i not in positions), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:  # noqa: ANN401
        return tensor.reshape(spec.shape)

    def inverse(self) -> Op:
        return Unsqueeze(self.key, self.dims, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, "squeezed")


@dataclass(frozen=True, slots=True, repr=False)
class Unsqueeze(_EachKey):
    """Insert dimensions of size 1 at ``dims`` (positions after) into every key matching ``key``: linear -> 1x1 conv."""

    key: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", _ints(self.dims, "Unsqueeze", "dims"))
        _check_key(self.key, "Unsqueeze")

    def _new(self, key: str, spec: TensorSpec, binding: Mapping[str, str], sig: Signature) -> TensorSpec:
        del binding, sig
        ndim = len(spec.shape) + len(self.dims)
        positions = sorted({_dim(d, ndim, key) for d in self.dims})
        if len(positions) != len(self.dims):
            raise OpError(f"{key}: Unsqueeze dims {list(self.dims)} name a dimension twice")
        sizes = iter(spec.shape)
        return TensorSpec(tuple(1 if i in positions else next(sizes) for i in range(ndim)), spec.dtype)

    def _apply_one(self, tensor: Any, spec: TensorSpec) -> Any:  # noqa: ANN401
        return tensor.reshape(spec.shape)

    def inverse(self) -> Op:
        return Squeeze(self.key, self.dims, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        return self._where(sig, "unsqueezed")


# -- fusing and splitting -----------------------------------------------------------------------


def _check_sizes(sizes: object, parts: int, op: str) -> tuple[Size, ...] | None:
    if sizes is None:
        return None
    items = tuple(sizes) if isinstance(sizes, list | tuple) else (sizes,)
    for entry in items:
        _check_size(entry, op, infer=True, names=False)
    if len(items) != parts:
        raise OpError(f"{op}: sizes {_show(items)} name {len(items)} part(s), not {parts}")
    return items


def _split_sizes(  # noqa: PLR0913, PLR0917 - the key, its size, the parts, and what resolves references
    key: str,
    total: int,
    parts: int,
    sizes: tuple[Size, ...] | None,
    binding: Mapping[str, str],
    sig: Mapping[str, TensorSpec],
) -> tuple[int, ...]:
    if sizes is None:
        if total % parts:
            raise OpError(f"{key}: size {total} does not split into {parts} equal parts; give sizes=[...]")
        return (total // parts,) * parts
    resolved = [-1 if e == -1 else _resolve(e, key, binding, sig, {}) for e in sizes]
    inferred = resolved.count(-1)
    rest = total - sum(s for s in resolved if s != -1)
    if inferred and (rest < 0 or rest % inferred):
        raise OpError(f"{key}: sizes {_show(sizes)} leave {rest} of {total}, which does not split into {inferred}")
    found = tuple(rest // inferred if s == -1 else s for s in resolved)
    if len(found) != parts or sum(found) != total:
        raise OpError(f"{key}: sizes {_show(sizes)} do not split size {total} into {parts} parts")
    return found


@dataclass(frozen=True, slots=True, repr=False)
class Concat(Op):
    """Concatenate ``keys`` along ``dim`` into the key ``into``, removing the parts.

    Templates bind across the keys: ``Concat(["l.{i}.q", "l.{i}.k", "l.{i}.v"], into="l.{i}.qkv")``.
    With ``sizes=None`` the parts must be equal along ``dim`` (so the inverse Split is exact);
    ``sizes`` may name another key's size (``"l.{i}.q_norm.weight[0]"``) and use ``-1`` for
    parts of equal size that take the rest.
    """

    keys: tuple[str, ...]
    into: str
    dim: int = 0
    sizes: tuple[Size, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys) if isinstance(self.keys, list | tuple) else (self.keys,))
        if len(self.keys) < 2:  # noqa: PLR2004 - concatenating needs two parts
            raise OpError("Concat needs at least two keys")
        if len(set(self.keys)) != len(self.keys):
            raise OpError(f"Concat names a key twice: {list(self.keys)}")
        for template in (*self.keys, self.into):
            _no_glob(template, "Concat")
        object.__setattr__(self, "sizes", _check_sizes(self.sizes, len(self.keys), "Concat"))

    def _bound_groups(self, keys: Sequence[str]) -> list[tuple[list[str], str, dict[str, str]]]:
        groups = []
        present = set(keys)
        made: dict[str, str] = {}
        for first, binding in self._find(self.keys[0], keys):
            parts = [first] + [_fill(t, binding) for t in self.keys[1:]]
            missing = [p for p in parts if p not in present]
            if missing:
                raise OpError(f"Concat: {', '.join(missing)} missing (needed with {first})")
            into = _fill(self.into, binding)
            if into in present and into not in parts:
                raise OpError(f"Concat into {into}, which already exists")
            if into in made:
                raise OpError(f"Concat: {made[into]} and {first} would both become {into}")
            made[into] = first
            groups.append((parts, into, binding))
        return groups

    def groups(self, keys: Sequence[str]) -> list[tuple[list[str], str]]:
        """Return, per concatenation, its parts (in order) and the key they become."""
        return [(parts, into) for parts, into, _ in self._bound_groups(keys)]

    def _result(self, parts: list[str], binding: Mapping[str, str], sig: Mapping[str, TensorSpec]) -> TensorSpec:
        specs = [sig[p] for p in parts]
        first = specs[0]
        dim = _dim(self.dim, len(first.shape), parts[0])
        for key, spec in zip(parts[1:], specs[1:], strict=True):
            if (
                len(spec.shape) != len(first.shape)
                or spec.dtype != first.dtype
                or any(a != b for i, (a, b) in enumerate(zip(spec.shape, first.shape, strict=True)) if i != dim)
            ):
                raise OpError(f"Concat: {key} {spec} does not fit {parts[0]} {first} along dim {self.dim}")
        sizes = tuple(s.shape[dim] for s in specs)
        if self.sizes is None and len(set(sizes)) > 1:
            raise OpError(
                f"Concat: {', '.join(parts)} differ in size along dim {self.dim} ({list(sizes)}); "
                f"give sizes={list(sizes)} so the inverse Split is exact",
            )
        if self.sizes is not None:
            expected = [None if e == -1 else _resolve(e, parts[0], binding, sig, {}) for e in self.sizes]
            rest = {s for s, e in zip(sizes, expected, strict=True) if e is None}
            if len(rest) > 1 or any(e is not None and e != s for s, e in zip(sizes, expected, strict=True)):
                have = f"{', '.join(parts)} have sizes {list(sizes)}"
                raise OpError(f"Concat: {have} along dim {self.dim}, not {_show(self.sizes)}")
        shape = list(first.shape)
        shape[dim] = sum(sizes)
        return TensorSpec(tuple(shape), first.dtype)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for parts, into, binding in self._bound_groups(list(sig)):
            result = self._result(parts, binding, sig)
            for p in parts:
                del out[p]
            out[into] = result
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))
        for parts, into in self.groups(list(state_dict)):
            tensors = [state_dict.pop(p) for p in parts]
            state_dict[into] = torch.cat(tensors, dim=self.dim)

    def inverse(self) -> Op:
        return Split(self.into, into=self.keys, dim=self.dim, sizes=self.sizes, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(list(sig))
        if not groups:
            return f"concatenated nothing: {self.keys[0]}{self._optional_note()}"
        if len(groups) == 1:
            parts, into = groups[0]
            return f"concatenated {', '.join(parts)} into {into} along dim {self.dim}"
        return f"concatenated {len(self.keys)} into {self.into} along dim {self.dim}{_times(len(groups))}"


@dataclass(frozen=True, slots=True, repr=False)
class Split(Op):
    """Split ``key`` along ``dim`` into the keys ``into`` (equal parts when ``sizes`` is None).

    ``sizes`` may name another key's size (``"l.{i}.q_norm.weight[0]"``) and use ``-1`` for
    parts of equal size that share the rest: ``sizes=["{*a}.o_proj.weight[1]", -1, -1]``
    splits a grouped-query qkv whatever the head counts.
    """

    key: str
    into: tuple[str, ...]
    dim: int = 0
    sizes: tuple[Size, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "into", tuple(self.into) if isinstance(self.into, list | tuple) else (self.into,))
        if len(self.into) < 2:  # noqa: PLR2004 - splitting needs two parts
            raise OpError("Split needs at least two target keys")
        if len(set(self.into)) != len(self.into):
            raise OpError(f"Split names a target key twice: {list(self.into)}")
        for template in (self.key, *self.into):
            _no_glob(template, "Split")
        object.__setattr__(self, "sizes", _check_sizes(self.sizes, len(self.into), "Split"))

    def _bound_groups(self, keys: Sequence[str]) -> list[tuple[str, list[str], dict[str, str]]]:
        present = set(keys)
        groups = []
        made: dict[str, str] = {}
        for key, binding in self._find(self.key, keys):
            parts = [_fill(t, binding) for t in self.into]
            clash = [p for p in parts if p in present and p != key]
            if clash:
                raise OpError(f"Split {key} onto {', '.join(clash)}, which already exist(s)")
            for part in parts:
                if part in made:
                    raise OpError(f"Split: {made[part]} and {key} would both make {part}")
                made[part] = key
            groups.append((key, parts, binding))
        return groups

    def groups(self, keys: Sequence[str]) -> list[tuple[str, list[str]]]:
        """Return, per split, the key split and the keys it becomes (in order)."""
        return [(key, parts) for key, parts, _ in self._bound_groups(keys)]

    def _sizes(
        self, key: str, binding: Mapping[str, str], sig: Mapping[str, TensorSpec]
    ) -> tuple[int, tuple[int, ...]]:
        spec = sig[key]
        dim = _dim(self.dim, len(spec.shape), key)
        return dim, _split_sizes(key, spec.shape[dim], len(self.into), self.sizes, binding, sig)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, parts, binding in self._bound_groups(list(sig)):
            spec = out.pop(key)
            dim, sizes = self._sizes(key, binding, sig)
            for part, size in zip(parts, sizes, strict=True):
                shape = list(spec.shape)
                shape[dim] = size
                out[part] = TensorSpec(tuple(shape), spec.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        sig = _signature(state_dict)
        self.predict(sig)
        for key, parts, binding in self._bound_groups(list(state_dict)):
            dim, sizes = self._sizes(key, binding, sig)
            tensor = state_dict.pop(key)
            # clone: each part gets its own storage, so dropping one later frees it.
            for part, piece in zip(parts, tensor.split(list(sizes), dim=dim), strict=True):
                state_dict[part] = piece.clone()

    def inverse(self) -> Op:
        return Concat(self.into, into=self.key, dim=self.dim, sizes=self.sizes, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(list(sig))
        if not groups:
            return f"split nothing: {self.key}{self._optional_note()}"
        if len(groups) == 1:
            key, parts = groups[0]
            return f"split {key} into {', '.join(parts)} along dim {self.dim}"
        return f"split {self.key} into {len(self.into)} along dim {self.dim}{_times(len(groups))}"


@dataclass(frozen=True, slots=True, repr=False)
class Stack(Op):
    """Stack every binding of an index placeholder into one tensor, along a new dimension ``dim``.

    ``key`` has exactly one placeholder that ``into`` lacks: the index, whose bindings must be
    exactly ``0..N-1`` per target (in numeric order, never by text: ``10`` after ``9``). So
    ``Stack("{*m}.experts.{e}.w2.weight", into="{*m}.experts.down_proj")`` fuses the experts of
    every layer, for 4, 8 or 64 experts alike. Its inverse is :class:`Unstack`.
    """

    key: str
    into: str
    dim: int = 0

    def __post_init__(self) -> None:
        _no_glob(self.key, "Stack")
        _no_glob(self.into, "Stack")
        _index_name(self.key, self.into, "Stack")

    def groups(self, keys: Sequence[str]) -> list[tuple[list[str], str]]:
        """Return, per target key, the keys stacked into it in index order."""
        index = _index_name(self.key, self.into, "Stack")
        by_into: dict[str, list[tuple[int, str]]] = {}
        for key, binding in self._find(self.key, keys):
            raw = binding[index]
            if not _INDEX.fullmatch(raw):
                raise OpError(f"Stack: {key}: {{{index}}} is {raw!r}, not an index 0, 1, 2, ...")
            by_into.setdefault(_fill(self.into, binding), []).append((int(raw), key))
        present = set(keys)
        groups = []
        for into, members in sorted(by_into.items()):
            members.sort()
            indices = [i for i, _ in members]
            if indices != list(range(len(indices))):
                missing = sorted(set(range(indices[-1] + 1)) - set(indices))
                raise OpError(
                    f"Stack into {into}: {{{index}}} must run 0..N-1 without gaps, but "
                    f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} missing "
                    f"(found {', '.join(map(str, indices))})",
                )
            parts = [key for _, key in members]
            if into in present and into not in parts:
                raise OpError(f"Stack into {into}, which already exists")
            groups.append((parts, into))
        return groups

    def _result(self, parts: list[str], into: str, sig: Mapping[str, TensorSpec]) -> TensorSpec:
        first = sig[parts[0]]
        for part in parts[1:]:
            if sig[part] != first:
                raise OpError(f"Stack into {into}: {part} is {sig[part]}, {parts[0]} is {first}; parts must be alike")
        dim = _dim(self.dim, len(first.shape) + 1, into)
        shape = list(first.shape)
        shape.insert(dim, len(parts))
        return TensorSpec(tuple(shape), first.dtype)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for parts, into in self.groups(list(sig)):
            result = self._result(parts, into, sig)
            for part in parts:
                del out[part]
            out[into] = result
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        sig = _signature(state_dict)
        self.predict(sig)
        for parts, into in self.groups(list(state_dict)):
            dim = _dim(self.dim, len(sig[parts[0]].shape) + 1, into)
            tensors = [state_dict.pop(p) for p in parts]
            state_dict[into] = torch.stack(tensors, dim=dim)

    def inverse(self) -> Op:
        return Unstack(self.into, into=self.key, dim=self.dim, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(list(sig))
        if not groups:
            return f"stacked nothing: {self.key}{self._optional_note()}"
        counts = sorted({len(parts) for parts, _ in groups})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        into = groups[0][1] if len(groups) == 1 else self.into
        return f"stacked {n} into {into} along new dim {self.dim}{_times(len(groups))}: {self.key}"


@dataclass(frozen=True, slots=True, repr=False)
class Unstack(Op):
    """Unstack ``key`` along ``dim`` into one key per index: ``into`` has one placeholder ``key`` lacks.

    ``Unstack("{*m}.experts.down_proj", into="{*m}.experts.{e}.w2.weight")`` makes experts
    ``0..N-1`` from a tensor of ``N`` along ``dim``. Its inverse is :class:`Stack`.
    """

    key: str
    into: str
    dim: int = 0

    def __post_init__(self) -> None:
        _no_glob(self.key, "Unstack")
        _no_glob(self.into, "Unstack")
        _index_name(self.into, self.key, "Unstack")

    def groups(self, sig: Mapping[str, TensorSpec]) -> list[tuple[str, list[str]]]:
        """Return, per key unstacked, the keys it becomes in index order (sizes come from ``sig``)."""
        index = _index_name(self.into, self.key, "Unstack")
        present = set(sig)
        made: dict[str, str] = {}
        groups = []
        for key, binding in self._find(self.key, list(sig)):
            shape = sig[key].shape
            dim = _dim(self.dim, len(shape), key)
            if shape[dim] == 0:
                raise OpError(f"{key}: dim {self.dim} has size 0, nothing to unstack")
            parts = [_fill(self.into, {**binding, index: str(n)}) for n in range(shape[dim])]
            for part in parts:
                if part in present and part != key:
                    raise OpError(f"Unstack {key} onto {part}, which already exists")
                if part in made:
                    raise OpError(f"Unstack: {made[part]} and {key} would both make {part}")
                made[part] = key
            groups.append((key, parts))
        return groups

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, parts in self.groups(sig):
            spec = out.pop(key)
            dim = _dim(self.dim, len(spec.shape), key)
            shape = spec.shape[:dim] + spec.shape[dim + 1 :]
            out.update({part: TensorSpec(shape, spec.dtype) for part in parts})
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        sig = _signature(state_dict)
        self.predict(sig)
        for key, parts in self.groups(sig):
            dim = _dim(self.dim, len(sig[key].shape), key)
            tensor = state_dict.pop(key)
            # clone: each part gets its own storage, so dropping one later frees it.
            for part, piece in zip(parts, tensor.unbind(dim), strict=True):
                state_dict[part] = piece.clone(memory_format=torch.contiguous_format)

    def inverse(self) -> Op:
        return Stack(self.into, into=self.key, dim=self.dim, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        groups = self.groups(sig)
        if not groups:
            return f"unstacked nothing: {self.key}{self._optional_note()}"
        counts = sorted({len(parts) for _, parts in groups})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        key = groups[0][0] if len(groups) == 1 else self.key
        return f"unstacked {key} into {n} along dim {self.dim}{_times(len(groups))}: {self.into}"


# -- values -------------------------------------------------------------------------------------


def _range(key: str, size: int, start: int, stop: int | None) -> tuple[int, int]:
    """Normalise ``[start:stop]`` over a dim of ``size`` (negatives count from the end)."""
    begin = start + size if start < 0 else start
    end = size if stop is None else stop + size if stop < 0 else stop
    if not 0 <= begin < end <= size:
        shown = f"[{start}:{'' if stop is None else stop}]"
        raise OpError(f"{key}: {shown} is not a non-empty range of a dim of size {size}")
    return begin, end


def _check_range(start: object, stop: object, op: str) -> None:
    if isinstance(start, bool) or not isinstance(start, int):
        raise OpError(f"{op}: start must be a whole number, got {start!r}")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int)):
        raise OpError(f"{op}: stop must be a whole number or None, got {stop!r}")


@dataclass(frozen=True, slots=True, repr=False)
class Slice(Op):
    """Move ``key[start:stop]`` along ``dim`` out to the key ``into``; ``key`` keeps the rest.

    DINOv2's class-token position: ``Slice("pos_embed", into="pos_embed_cls", dim=1, start=0,
    stop=1)`` leaves ``pos_embed[:, 1:]``. Negative ``start``/``stop`` count from the end. The
    inverse, :class:`Unslice`, puts it back.
    """

    key: str
    into: str
    dim: int
    start: int
    stop: int | None = None

    def __post_init__(self) -> None:
        _no_glob(self.key, "Slice")
        _no_glob(self.into, "Slice")
        _check_range(self.start, self.stop, "Slice")

    def groups(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Return, per key sliced, the key the slice goes to."""
        present = set(keys)
        pairs = [(key, _fill(self.into, binding)) for key, binding in self._find(self.key, keys)]
        for key, into in pairs:
            if into in present:
                raise OpError(f"Slice {key} into {into}, which already exists")
        return pairs

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, into in self.groups(list(sig)):
            spec = sig[key]
            dim = _dim(self.dim, len(spec.shape), key)
            begin, end = _range(key, spec.shape[dim], self.start, self.stop)
            rest, piece = list(spec.shape), list(spec.shape)
            rest[dim] -= end - begin
            piece[dim] = end - begin
            out[key] = TensorSpec(tuple(rest), spec.dtype)
            out[into] = TensorSpec(tuple(piece), spec.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        self.predict(_signature(state_dict))
        for key, into in self.groups(list(state_dict)):
            tensor = state_dict[key]
            dim = _dim(self.dim, tensor.dim(), key)
            size = tensor.shape[dim]
            begin, end = _range(key, size, self.start, self.stop)
            state_dict[into] = tensor.narrow(dim, begin, end - begin).clone()
            state_dict[key] = torch.cat([tensor.narrow(dim, 0, begin), tensor.narrow(dim, end, size - end)], dim=dim)

    def inverse(self) -> Op:
        return Unslice(self.into, into=self.key, dim=self.dim, start=self.start, stop=self.stop, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        pairs = self.groups(list(sig))
        shown = f"[{self.start}:{'' if self.stop is None else self.stop}]"
        if not pairs:
            return f"sliced nothing: {self.key}{self._optional_note()}"
        key, into = pairs[0] if len(pairs) == 1 else (self.key, self.into)
        return f"moved {shown} of dim {self.dim} of {key} to {into}{_times(len(pairs))}"


@dataclass(frozen=True, slots=True, repr=False)
class Unslice(Op):
    """Put ``key`` back into ``into`` as its ``[start:stop]`` along ``dim`` (positions in the result); remove ``key``.

    The inverse of :class:`Slice` with the same ``dim``, ``start`` and ``stop``.
    """

    key: str
    into: str
    dim: int
    start: int
    stop: int | None = None

    def __post_init__(self) -> None:
        _no_glob(self.key, "Unslice")
        _no_glob(self.into, "Unslice")
        _check_range(self.start, self.stop, "Unslice")

    def groups(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Return, per key put back, the key it goes into."""
        present = set(keys)
        pairs = [(key, _fill(self.into, binding)) for key, binding in self._find(self.key, keys)]
        for key, into in pairs:
            if into not in present:
                raise OpError(f"Unslice {key} into {into}, which is not in the state dict")
        return pairs

    def _place(self, key: str, into: str, sig: Mapping[str, TensorSpec]) -> tuple[int, int, TensorSpec]:
        piece, whole = sig[key], sig[into]
        dim = _dim(self.dim, len(whole.shape), into)
        if (
            len(piece.shape) != len(whole.shape)
            or piece.dtype != whole.dtype
            or any(a != b for i, (a, b) in enumerate(zip(piece.shape, whole.shape, strict=True)) if i != dim)
        ):
            raise OpError(f"Unslice: {key} {piece} does not fit {into} {whole} along dim {self.dim}")
        size = whole.shape[dim] + piece.shape[dim]
        begin, end = _range(into, size, self.start, self.stop)
        if end - begin != piece.shape[dim]:
            raise OpError(f"Unslice: {key} has size {piece.shape[dim]} along dim {self.dim}, the range {end - begin}")
        shape = list(whole.shape)
        shape[dim] = size
        return dim, begin, TensorSpec(tuple(shape), whole.dtype)

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, into in self.groups(list(sig)):
            out[into] = self._place(key, into, sig)[2]
            del out[key]
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        import torch

        sig = _signature(state_dict)
        self.predict(sig)
        for key, into in self.groups(list(state_dict)):
            dim, begin, _ = self._place(key, into, sig)
            piece, whole = state_dict.pop(key), state_dict[into]
            rest = whole.shape[dim] - begin
            state_dict[into] = torch.cat([whole.narrow(dim, 0, begin), piece, whole.narrow(dim, begin, rest)], dim=dim)

    def inverse(self) -> Op:
        return Slice(self.into, into=self.key, dim=self.dim, start=self.start, stop=self.stop, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        pairs = self.groups(list(sig))
        shown = f"[{self.start}:{'' if self.stop is None else self.stop}]"
        if not pairs:
            return f"put back nothing: {self.key}{self._optional_note()}"
        key, into = pairs[0] if len(pairs) == 1 else (self.key, self.into)
        return f"put {key} back into {into} as {shown} of dim {self.dim}{_times(len(pairs))}"


@dataclass(frozen=True, slots=True, repr=False)
class AddInto(Op):
    """Add ``key`` into ``into`` (broadcast to ``into``'s shape, same dtype) and remove ``key``. Lossy; no inverse.

    DINOv2 with registers in timm: ``cls_token + pos_embed[:, 0]`` is
    ``Slice("pos_embed", into="cls_pos", dim=1, start=0, stop=1)`` then ``AddInto("cls_pos", into="cls_token")``.
    """

    key: str
    into: str
    lossy: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _no_glob(self.key, "AddInto")
        _no_glob(self.into, "AddInto")

    def groups(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Return, per key added, the key it is added into."""
        present = set(keys)
        pairs = [(key, _fill(self.into, binding)) for key, binding in self._find(self.key, keys)]
        for key, into in pairs:
            if into not in present or into == key:
                raise OpError(f"AddInto {key} into {into}, which is not another key of the state dict")
        return pairs

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key, into in self.groups(list(sig)):
            piece, whole = sig[key], sig[into]
            if piece.dtype != whole.dtype or not _broadcasts(piece.shape, whole.shape):
                raise OpError(f"AddInto: {key} {piece} does not add into {into} {whole} (same dtype, broadcastable)")
            del out[key]
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        self.predict(_signature(state_dict))
        for key, into in self.groups(list(state_dict)):
            state_dict[into] = state_dict[into] + state_dict.pop(key)

    def effect(self, sig: Signature) -> str:
        pairs = self.groups(list(sig))
        if not pairs:
            return f"added nothing: {self.key}{self._optional_note()}"
        key, into = pairs[0] if len(pairs) == 1 else (self.key, self.into)
        return f"added {key} into {into}{_times(len(pairs))} (lossy)"


def _broadcasts(piece: tuple[int, ...], whole: tuple[int, ...]) -> bool:
    """Whether ``piece`` broadcasts to ``whole`` without changing it."""
    if len(piece) > len(whole):
        return all(d == 1 for d in piece[: len(piece) - len(whole)]) and _broadcasts(
            piece[len(piece) - len(whole) :], whole
        )
    return all(p in {1, w} for p, w in zip(reversed(piece), reversed(whole), strict=False))


# -- keys in and out ----------------------------------------------------------------------------


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


_OTHERS = ("error", "keep")


@dataclass(frozen=True, slots=True, repr=False)
class Cast(Op):
    """Cast every key matching ``pattern`` to ``dtype``.

    Lossy unless ``source_dtype`` is given and ``dtype`` holds every value of it (a widening
    cast, e.g. float16 -> float32); the inverse exists when ``source_dtype`` is given. With
    ``others="keep"`` the cast goes by dtype rather than by key: only the keys of
    ``source_dtype`` are cast and the others left as they are (``Cast("*", "float32",
    source_dtype="float16", others="keep")``); then there is no inverse, as the way back
    cannot tell the keys it widened from those that were already ``dtype``.
    """

    pattern: str
    dtype: str
    source_dtype: str | None = None
    others: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "Cast"))
        if self.source_dtype is not None:
            object.__setattr__(self, "source_dtype", _dtype_name(self.source_dtype, "Cast"))
        if self.others not in _OTHERS:
            raise OpError(f"Cast: others must be 'error' or 'keep', got {self.others!r}")
        if self.others == "keep" and self.source_dtype is None:
            raise OpError("Cast: others='keep' casts the keys of source_dtype; give source_dtype")
        _check_key(self.pattern, "Cast")

    def is_lossy(self) -> bool:
        return self.source_dtype is None or (
            self.source_dtype != self.dtype and (self.source_dtype, self.dtype) not in _WIDENS
        )

    def _cast(self, sig: Signature) -> list[str]:
        """Return the keys the op casts; raise OpError on a key of another dtype (unless others='keep')."""
        found = [k for k, _ in _matches(self.pattern, list(sig))]
        if self.others == "keep":
            found = [k for k in found if sig[k].dtype == self.source_dtype]
        if not found and not self.optional:
            of = f" of dtype {self.source_dtype}" if self.others == "keep" else ""
            raise OpError(f"no key{of} matches {self.pattern!r}")
        for key in found:
            if self.source_dtype is not None and sig[key].dtype != self.source_dtype:
                raise OpError(f"{key}: expected dtype {self.source_dtype}, got {sig[key].dtype}")
        return found

    def predict(self, sig: Signature) -> Signature:
        out = dict(sig)
        for key in self._cast(sig):
            out[key] = TensorSpec(sig[key].shape, self.dtype)
        return out

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        target = _torch_dtype(self.dtype, "Cast")
        for key in self._cast(_signature(state_dict)):
            state_dict[key] = state_dict[key].to(target)

    def inverse(self) -> Op | None:
        if self.source_dtype is None or self.others == "keep":
            return None
        return Cast(self.pattern, self.source_dtype, source_dtype=self.dtype, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        found = self._cast(sig)
        lossy = " (lossy)" if self.is_lossy() else ""
        if not found:
            return f"cast nothing: {self.pattern}{self._optional_note()}"
        what = found[0] if len(found) == 1 else f"{len(found)}"
        source = f" from {self.source_dtype}" if self.source_dtype is not None else ""
        kept = len(_matches(self.pattern, list(sig))) - len(found)
        rest = f", kept {kept} of other dtypes" if kept else ""
        return f"cast {what}{source} to {self.dtype}: {self.pattern}{rest}{lossy}"


# -- the checkpoint beyond the state dict -------------------------------------------------------

_STAMP_KEY = "ckpt_path"
"""The stamp's key (ckpt_path.stamp.STAMP_KEY): metadata ops never touch it."""


class _Unset:
    """The default of ``old`` and ``value``: not given (a file cannot spell it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"

    def __reduce__(self) -> str:
        return "UNSET"  # one object, through pickling (workers) and copying alike

    def __copy__(self) -> _Unset:
        return self

    def __deepcopy__(self, memo: object) -> _Unset:
        return self


UNSET: Any = _Unset()


def _path(path: object, op: str) -> tuple[str, ...]:
    """Read a path: dotted (``"hyper_parameters.lr"``) or a list of keys (for keys with dots in them)."""
    if isinstance(path, str):
        parts = tuple(path.split("."))
    elif isinstance(path, list | tuple) and all(isinstance(p, str) for p in path):
        parts = tuple(path)
    else:
        raise OpError(f"{op}: a path is a dotted string or a list of keys, got {path!r}")
    if not parts or any(p == "" for p in parts):
        raise OpError(f"{op}: {path!r} is not a path (empty segment)")
    return parts


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) if not any("." in p for p in path) else repr(list(path))


def _parent(checkpoint: Any, path: tuple[str, ...], state_dict_at: Sequence[str], op: str) -> Any:  # noqa: ANN401
    """Return the container holding ``path``'s last key, checking the path is metadata."""
    if not state_dict_at:
        raise OpError(f"{op}: the checkpoint is a flat state dict; it holds no metadata")
    at = tuple(state_dict_at)
    if path[: len(at)] == at or at[: len(path)] == path:
        raise OpError(f"{op}: {_dotted(path)} is in the state dict ({'.'.join(at)}); use the state-dict ops")
    if path[0] == _STAMP_KEY:
        raise OpError(f"{op}: {_dotted(path)} is ckpt-path's stamp, which only ckpt-path writes")
    node = checkpoint
    for depth, part in enumerate(path[:-1]):
        node = _child(node, part)
        if node is UNSET:
            return UNSET
        if not isinstance(node, MutableMapping | list):
            where = _dotted(path[: depth + 1])
            raise OpError(f"{op}: {where} is a {type(node).__name__}, not a dict")
    return node


def _child(node: Any, part: str) -> Any:  # noqa: ANN401 - a checkpoint's value
    if isinstance(node, Mapping):
        return node.get(part, UNSET)
    if isinstance(node, list) and _INDEX.fullmatch(part) and int(part) < len(node):
        return node[int(part)]
    return UNSET


def _get(checkpoint: Any, path: tuple[str, ...], state_dict_at: Sequence[str], op: str) -> Any:  # noqa: ANN401
    parent = _parent(checkpoint, path, state_dict_at, op)
    return UNSET if parent is UNSET else _child(parent, path[-1])


def _set(checkpoint: Any, path: tuple[str, ...], value: Any, state_dict_at: Sequence[str], op: str) -> None:  # noqa: ANN401
    parent = _parent(checkpoint, path, state_dict_at, op)
    if parent is UNSET or not isinstance(parent, MutableMapping):
        where = _dotted(path[:-1])
        raise OpError(f"{op}: {where} is not a dict of the checkpoint; make it first, e.g. SetMeta({where!r}, {{}})")
    parent[path[-1]] = value


def _delete(checkpoint: Any, path: tuple[str, ...], state_dict_at: Sequence[str], op: str) -> Any:  # noqa: ANN401
    parent = _parent(checkpoint, path, state_dict_at, op)
    if not isinstance(parent, MutableMapping):
        raise OpError(f"{op}: {_dotted(path)} is not a key of a dict of the checkpoint")
    return parent.pop(path[-1])


class _MetaOp(Op):
    """An op on the checkpoint outside the state dict: no effect on the state dict's shapes."""

    __slots__ = ()
    meta: ClassVar[bool] = True

    def predict(self, sig: Signature) -> Signature:
        return dict(sig)

    def apply(self, state_dict: MutableMapping[str, Any]) -> None:
        """Leave the state dict alone: metadata ops act in :meth:`apply_meta`."""
        del state_dict


def _meta_hash(op: Op) -> int:
    return hash((type(op).__name__, repr(op)))


@dataclass(frozen=True, slots=True, repr=False)
class SetMeta(_MetaOp):
    """Set ``path`` of the checkpoint (outside the state dict) to the literal ``value``.

    - ``SetMeta(path, value)``: the path must be absent; inverse ``DropMeta(path, value=value)``.
    - ``SetMeta(path, value, old=x)``: the path must hold ``x``; inverse ``SetMeta(path, x, old=value)``.
    - ``SetMeta(path, value, replace=True)``: whatever it held is lost; lossy, no inverse.
    """

    path: tuple[str, ...]
    value: Any
    old: Any = UNSET
    replace: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path, "SetMeta"))
        if self.replace and self.old is not UNSET:
            raise OpError("SetMeta: give old= or replace=True, not both")

    __hash__ = _meta_hash

    def is_lossy(self) -> bool:
        return self.replace

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:  # noqa: ANN401
        current = _get(checkpoint, self.path, state_dict_at, "SetMeta")
        where = _dotted(self.path)
        if self.old is not UNSET:
            if current is UNSET and self.optional:
                return
            if current is UNSET or current != self.old:
                got = "is absent" if current is UNSET else f"holds {current!r}"
                raise OpError(f"SetMeta: {where} {got}, not {self.old!r}")
        elif not self.replace and current is not UNSET:
            raise OpError(f"SetMeta: {where} already holds {current!r}; give old={current!r} or replace=True")
        _set(checkpoint, self.path, self.value, state_dict_at, "SetMeta")

    def inverse(self) -> Op | None:
        if self.replace:
            return None
        if self.old is UNSET:
            return DropMeta(self.path, value=self.value)
        return SetMeta(self.path, self.old, old=self.value, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        del sig
        was = f" (was {self.old!r})" if self.old is not UNSET else " (lossy: replaces it)" if self.replace else ""
        return f"set {_dotted(self.path)} = {self.value!r}{was}"


@dataclass(frozen=True, slots=True, repr=False)
class MoveMeta(_MetaOp):
    """Move the value at ``source`` of the checkpoint to ``target``, outside the state dict.

    Renames a hyper-parameter, or moves a config key or a callback's state; ``target``'s dict
    must exist, and nothing is overwritten. Inverse: ``MoveMeta(target, source)``.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", _path(self.source, "MoveMeta"))
        object.__setattr__(self, "target", _path(self.target, "MoveMeta"))
        if self.source == self.target:
            raise OpError(f"MoveMeta: source and target are both {_dotted(self.source)}")

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:  # noqa: ANN401
        value = _get(checkpoint, self.source, state_dict_at, "MoveMeta")
        if value is UNSET:
            if self.optional:
                return
            raise OpError(f"MoveMeta: {_dotted(self.source)} is not in the checkpoint")
        if _get(checkpoint, self.target, state_dict_at, "MoveMeta") is not UNSET:
            raise OpError(f"MoveMeta: {_dotted(self.target)} already exists; it is never overwritten")
        if self.target[: len(self.source)] == self.source:
            raise OpError(f"MoveMeta: {_dotted(self.target)} is inside {_dotted(self.source)}")
        _set(checkpoint, self.target, value, state_dict_at, "MoveMeta")
        _delete(checkpoint, self.source, state_dict_at, "MoveMeta")

    def inverse(self) -> Op:
        return MoveMeta(self.target, self.source, optional=self.optional)

    def effect(self, sig: Signature) -> str:
        del sig
        return f"moved {_dotted(self.source)} → {_dotted(self.target)}"


@dataclass(frozen=True, slots=True, repr=False)
class DropMeta(_MetaOp):
    """Remove ``path`` from the checkpoint (outside the state dict).

    Lossy and without inverse, unless ``value`` says what it holds: then the path must hold
    exactly that, nothing is lost, and the inverse is ``SetMeta(path, value)``.
    """

    path: tuple[str, ...]
    value: Any = UNSET

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path, "DropMeta"))

    __hash__ = _meta_hash

    def is_lossy(self) -> bool:
        return self.value is UNSET

    def apply_meta(self, checkpoint: Any, state_dict_at: Sequence[str]) -> None:  # noqa: ANN401
        current = _get(checkpoint, self.path, state_dict_at, "DropMeta")
        if current is UNSET:
            if self.optional:
                return
            raise OpError(f"DropMeta: {_dotted(self.path)} is not in the checkpoint")
        if self.value is not UNSET and current != self.value:
            raise OpError(f"DropMeta: {_dotted(self.path)} holds {current!r}, not {self.value!r}")
        _delete(checkpoint, self.path, state_dict_at, "DropMeta")

    def inverse(self) -> Op | None:
        if self.value is UNSET:
            return None
        return SetMeta(self.path, self.value)

    def effect(self, sig: Signature) -> str:
        del sig
        return f"dropped {_dotted(self.path)}" + (" (lossy)" if self.is_lossy() else f" (it held {self.value!r})")


# -- reading and running ------------------------------------------------------------------------


def _is_tensor(value: object) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "numel")


def _spec(tensor: Any) -> TensorSpec:  # noqa: ANN401 - a torch.Tensor
    return TensorSpec(tuple(int(d) for d in tensor.shape), str(tensor.dtype).removeprefix("torch."))


OPS: dict[str, type[Op]] = {
    cls.__name__: cls
    for cls in (
        Rename,
        MoveIndex,
        Permute,
        Transpose,
        Reshape,
        Squeeze,
        Unsqueeze,
        Concat,
        Split,
        Stack,
        Unstack,
        Slice,
        Unslice,
        AddInto,
        Drop,
        DropDerived,
        Add,
        Cast,
        SetMeta,
        MoveMeta,
        DropMeta,
    )
}
"""Every op by name, for reading ``ops = [...]`` from a converter file's syntax tree."""


def predict(ops: Sequence[Op], sig: Signature) -> Signature:
    """Apply the shape effects of ``ops`` in order."""
    for op in ops:
        sig = op.predict(sig)
    return sig


def invert(ops: Sequence[Op]) -> tuple[Op, ...] | None:
    """Return the ops that undo ``ops`` (in reverse order), or None when one has no inverse."""
    inverses = [op.inverse() for op in reversed(ops)]
    if any(op is None for op in inverses):
        return None
    return tuple(op for op in inverses if op is not None)


def keys_matching(template: str, keys: Sequence[str]) -> list[str]:
    """Return the keys a key template (or glob pattern) matches, sorted."""
    return [key for key, _ in _matches(template, keys)]


def describe_ops(ops: Sequence[Op], sig: Mapping[str, TensorSpec]) -> list[str]:
    """Say what each op does to a state dict of signature ``sig``, in the user's terms, one line each.

    ``renamed 128: model.layers.{i}.w → backbone.blocks.{i}.w``, ``stacked 8 into ...``,
    ``moved index 3 → 1 of dim 0 in ...``. An op that does not fit says so and ends the list.
    """
    current = dict(sig)
    lines = []
    for index, op in enumerate(ops, 1):
        try:
            lines.append(op.effect(current))
            current = op.predict(current)
        except OpError as exc:
            lines.append(f"op {index} {type(op).__name__} does not fit: {exc}")
            break
    return lines
