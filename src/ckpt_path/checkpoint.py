"""A checkpoint in memory: the object, where its state dict lies, its stamp, and the files it came from.

Every entry point builds one :class:`Checkpoint` (from a file by
:func:`ckpt_path.storage.load_checkpoint`, from an object by :meth:`Checkpoint.from_object`)
and hands it to :func:`ckpt_path.pipeline.upgrade`. :func:`find_state_dict` says where a
checkpoint object keeps its state dict; the formats that read and write files are in
:mod:`ckpt_path.storage`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_path.errors import CheckpointError, StampError, StateDictError
from ckpt_path.stamp import STAMP_KEY, Stamp, read_stamp, write_stamp

__all__ = [
    "Checkpoint",
    "Written",
    "find_state_dict",
    "get_state_dict",
    "stamp_fields",
]

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
IN_MEMORY = "<checkpoint>"
"""How a checkpoint object handed in from Python (not read from a file) is named in messages."""


@dataclass(slots=True, kw_only=True)
class Checkpoint:
    """One checkpoint: the object, where its state dict lies, its stamp, its format, its files.

    Every entry point (the command line, :func:`ckpt_path.load`, the Lightning mixin, the
    testing helpers, ``check``) builds one of these, by :func:`ckpt_path.storage.load_checkpoint` from a file or
    by :meth:`from_object` from an object in memory, and hands it to
    :func:`ckpt_path.pipeline.upgrade`. ``state_dict_at`` is the sequence of keys from the
    top-level object to the state dict (empty for a flat state dict). ``stamp`` is read once,
    when the checkpoint is made, and kept current by the runner.
    """

    obj: Any
    state_dict_at: tuple[str, ...]
    stamp: Stamp | None
    format: str
    """``torch``, ``torch-legacy``, ``safetensors``, ``safetensors-sharded``, ``dcp`` or ``object`` (made in memory)."""
    file: Path | None = None
    files: tuple[Path, ...] = ()
    """Every file the checkpoint was read from (an index and its shards); never written to."""
    sizes: tuple[tuple[int, int, int, int], ...] = ()
    """Device, inode, size and modification time of each of ``files`` when read (see ``storage.check_unchanged``)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """safetensors ``__metadata__`` other than the stamp, kept when writing safetensors again."""
    shard_size: int | None = None
    """For a sharded input: the size of its largest shard, the default for the output's shards."""
    placeholders: tuple[str, ...] = ()
    """Globals read as inert placeholders because nothing allowed them (see :mod:`ckpt_path.torchfiles`)."""
    read_as_dict: tuple[str, ...] = ()
    """Dict subclasses read as plain dicts (declared ``read_as_dict``, or by a peek)."""
    damaged_stamp: StampError | None = None
    """What is wrong with a stamp that could not be trusted (then ``stamp`` is None)."""

    @classmethod
    def from_object(cls, obj: Any, *, state_dict_key: str | None = None) -> Checkpoint:
        """Wrap a checkpoint object held in memory (a dict, a flat state dict)."""
        state_dict_at = find_state_dict(obj, state_dict_key)
        return cls(obj=obj, state_dict_at=state_dict_at, format="object", **stamp_fields(obj, state_dict_at, None))

    @property
    def name(self) -> str:
        """The file it was read from, or ``<checkpoint>`` for an object held in memory."""
        return str(self.file) if self.file is not None else IN_MEMORY

    @property
    def state_dict(self) -> MutableMapping[str, Any]:
        """The state dict inside the checkpoint."""
        return get_state_dict(self.obj, self.state_dict_at)

    def restamp(self, stamp: Stamp) -> None:
        """Write ``stamp`` into the object (a flat plain dict becomes an ``OrderedDict``)."""
        self.obj = write_stamp(self.obj, self.state_dict_at, stamp)
        self.stamp = stamp


def stamp_fields(obj: object, state_dict_at: Sequence[str], path: Path | None) -> dict[str, Any]:
    """Read the stamp once, for :class:`Checkpoint`: ``stamp``, or ``damaged_stamp`` saying what is wrong with it."""
    try:
        return {"stamp": read_stamp(obj, state_dict_at), "damaged_stamp": None}
    except StampError as exc:
        return {"stamp": None, "damaged_stamp": exc.at(str(path)) if path is not None else exc}


def _is_tensor(value: object) -> bool:
    """Whether ``value`` is a tensor, without importing torch: no tensor exists before torch is imported."""
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)  # None too while torch is still importing
    return tensor is not None and isinstance(value, tensor)


def _is_tensor_map(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and all(_is_tensor(v) for v in value.values())
    )


def find_state_dict(obj: object, override: str | None = None) -> tuple[str, ...]:
    """Find where the state dict lies inside a checkpoint object.

    ``override`` is a dotted key path (``model.ema``) that wins over detection. Detection
    tries, in order: a flat mapping of tensors, then the keys ``state_dict`` (Lightning),
    ``model``, ``model_state_dict``, ``module`` and ``net``. The state dict's keys must be
    strings.
    """
    if override is not None:
        at = tuple(p for p in override.split(".") if p)
        try:
            found = get_state_dict(obj, at)
        except (KeyError, TypeError, IndexError, CheckpointError):
            raise StateDictError(f"no state dict at {override!r} in this checkpoint") from None
        return _string_keys(found, at)
    if not isinstance(obj, Mapping):
        raise StateDictError(f"a checkpoint must be a dict, not a {type(obj).__name__}")
    tensors = [k for k, v in obj.items() if _is_tensor(v)]
    if tensors and len(tensors) >= len([k for k in obj if k != STAMP_KEY]):
        return _string_keys(obj, ())
    for key in _STATE_DICT_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping) and (not value or _is_tensor_map(_tensor_part(value))):
            return _string_keys(value, (key,))
    if not obj or tensors:
        return _string_keys(obj, ())
    keys = ", ".join(sorted(map(str, obj))[:10])
    raise StateDictError(
        f"cannot tell where the state dict is (top-level keys: {keys}); pass --state-dict KEY",
    )


def _string_keys(state_dict: Mapping[Any, Any], at: tuple[str, ...]) -> tuple[str, ...]:
    odd = [k for k in state_dict if not isinstance(k, str)]
    if odd:
        where = ".".join(at) or "the state dict"
        raise StateDictError(
            f"{where} has a key that is not a string ({odd[0]!r} of type {type(odd[0]).__name__}); "
            "a state dict maps parameter names to tensors",
        )
    return at


def _tensor_part(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    # Some state dicts hold a few non-tensors (e.g. `_extra_state`); judge by the tensors.
    return {k: v for k, v in mapping.items() if _is_tensor(v)}


def get_state_dict(obj: Any, at: Sequence[str]) -> MutableMapping[str, Any]:
    """Follow the keys ``at`` into ``obj`` and return the state dict there."""
    node = obj
    for key in at:
        node = node[key]
    if not isinstance(node, MutableMapping):
        raise StateDictError(f"{'.'.join(at) or 'the checkpoint'} is a {type(node).__name__}, not a dict")
    return node


@dataclass(frozen=True, slots=True, kw_only=True)
class Written:
    """Where a checkpoint was written, and how many of its tensor bytes were copied or written.

    ``copied_bytes`` came from the input file as they were (kernel-side, never through Python);
    ``written_bytes`` were written from memory (tensors a step computed, or every tensor when
    nothing could be copied).
    """

    path: Path
    copied_bytes: int
    written_bytes: int
