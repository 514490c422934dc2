"""The stamp: the version recorded inside a checkpoint, and the steps that led to it.

A dict checkpoint keeps it under its top-level key ``"ckpt_path"``; a flat state dict keeps it
in ``state_dict._metadata["ckpt_path"]`` so that ``model.load_state_dict(sd, strict=True)``
still sees only parameter keys. A stamp read from a file is checked field by field: a damaged
one is reported with what is wrong, never trusted. This module does not import torch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ckpt_path.errors import StampError, VersionError
from ckpt_path.versions import parse_version

__all__ = ["STAMP_KEY", "Stamp", "read_stamp", "write_stamp"]

STAMP_KEY = "ckpt_path"
"""Key of the stamp: top level of a dict checkpoint, or ``state_dict._metadata`` when flat."""

_MAX_TEXT = 512
"""Longest string a stamp field may hold; anything longer is damage, not a version."""
_ENTRY_FIELDS = ("source", "target", "converter", "digest", "at")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stamp:
    """The version recorded in a checkpoint and the steps that led to it.

    ``optimizer_parameters`` lists, per optimizer, the parameter name behind each index of its
    state (recorded by the Lightning mixin when it saves), so optimizer state can follow the
    parameters through a conversion. None when it was not recorded.
    """

    version: str
    history: tuple[dict[str, Any], ...] = ()
    optimizer_parameters: tuple[tuple[str, ...], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the stamp as stored in a checkpoint."""
        stored: dict[str, Any] = {"version": self.version, "history": [dict(h) for h in self.history]}
        if self.optimizer_parameters is not None:
            stored["optimizer_parameters"] = [list(names) for names in self.optimizer_parameters]
        return stored

    def advanced(self, *, source: str, target: str, converter: str, digest: str | None) -> Stamp:
        """Return the stamp after one more step, with its history entry appended."""
        entry = {
            "source": source,
            "target": target,
            "converter": converter,
            "digest": digest,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Stamp(version=target, history=(*self.history, entry), optimizer_parameters=self.optimizer_parameters)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise StampError(f"{what} is a {type(value).__name__}, not a string")
    if len(value) > _MAX_TEXT:
        raise StampError(f"{what} is {len(value)} characters long")
    return value


def _entry(raw: object, index: int) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise StampError(f"history entry {index} is a {type(raw).__name__}, not a mapping")
    entry: dict[str, Any] = {}
    for name in _ENTRY_FIELDS:
        value = raw.get(name)
        entry[name] = None if value is None else _text(value, f"history entry {index} field {name!r}")
    return entry


def _parameters(raw: object) -> tuple[tuple[str, ...], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list | tuple) or not all(isinstance(names, list | tuple) for names in raw):
        raise StampError("optimizer_parameters is not a list of lists of parameter names")
    return tuple(tuple(_text(n, "an optimizer parameter name") for n in names) for names in raw)


def parse_stamp(raw: object) -> Stamp:
    """Check a stored stamp field by field and return it; raise :class:`StampError` naming the damage."""
    if not isinstance(raw, Mapping):
        raise StampError(f"it is a {type(raw).__name__}, not a mapping")
    version = _text(raw.get("version"), "version")
    try:
        parse_version(version)
    except VersionError as exc:
        raise StampError(str(exc)) from None
    history = raw.get("history", [])
    if history is None:
        history = []
    if not isinstance(history, list | tuple):
        raise StampError(f"history is a {type(history).__name__}, not a list")
    return Stamp(
        version=version,
        history=tuple(_entry(h, i) for i, h in enumerate(history)),
        optimizer_parameters=_parameters(raw.get("optimizer_parameters")),
    )


def _flat_metadata(obj: object) -> Mapping[str, Any] | None:
    metadata = getattr(obj, "_metadata", None)
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise StampError(f"the state dict's _metadata is a {type(metadata).__name__}, not a mapping")
    return metadata


def read_stamp(obj: object, state_dict_at: Sequence[str] = ()) -> Stamp | None:
    """Return the stamp of a checkpoint object, or None when it has none.

    ``state_dict_at`` is where the state dict lies (empty for a flat state dict, whose stamp
    is in its ``_metadata``). A damaged stamp raises :class:`StampError`.
    """
    if state_dict_at:
        raw = obj.get(STAMP_KEY) if isinstance(obj, Mapping) else None
    else:
        metadata = _flat_metadata(obj)
        raw = metadata.get(STAMP_KEY) if metadata is not None else None
    return None if raw is None else parse_stamp(raw)


def write_stamp(obj: Any, state_dict_at: Sequence[str], stamp: Stamp) -> Any:
    """Write ``stamp`` into a checkpoint object and return the object.

    A dict checkpoint gets a top-level ``ckpt_path`` key. A flat state dict gets it in its
    ``_metadata`` (turning a plain dict into an ``OrderedDict``), so that
    ``model.load_state_dict(sd, strict=True)`` still sees only parameter keys. A ``_metadata``
    that is not a mapping (damage, reported when the stamp was read) is replaced.
    """
    if state_dict_at:
        obj[STAMP_KEY] = stamp.to_dict()
        return obj
    try:
        metadata = _flat_metadata(obj)
    except StampError:  # damage already reported on reading; the new stamp replaces it
        metadata = None
    if not isinstance(obj, OrderedDict):
        obj = OrderedDict(obj)
    writable = OrderedDict(metadata) if metadata is not None and not isinstance(metadata, dict) else metadata
    writable = OrderedDict() if writable is None else writable
    writable[STAMP_KEY] = stamp.to_dict()
    obj._metadata = writable  # noqa: SLF001 - torch's own convention for state-dict metadata
    return obj
