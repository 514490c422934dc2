"""Shapes: the signature of a state dict, differences between two, and schemas.

A *signature* maps each tensor key to its shape and dtype; it is computed from tensor
metadata only, so it costs nothing on memory-mapped or meta tensors. A *schema*
(``<converters>/schemas/<version>.json``) describes the state dict of one version; shapes may
name dimensions (``["hidden", 17]``), a name binding to one size per checkpoint, and keys may
be glob patterns.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_path.errors import SchemaError

__all__ = [
    "Schema",
    "ShapeDiff",
    "TensorSpec",
    "check_untouched",
    "diff_signatures",
    "load_schema",
    "signature",
]

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Shape and dtype of one tensor."""

    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"[{', '.join(map(str, self.shape))}] {self.dtype}"


def dtype_name(dtype: Any) -> str:
    """Name a torch dtype the way schemas do: ``float32``, ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def signature(state_dict: Mapping[str, Any]) -> dict[str, TensorSpec]:
    """Return the signature of a state dict: every tensor's shape and dtype (no data read)."""
    sig = {}
    for key, value in state_dict.items():
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is not None and dtype is not None and hasattr(value, "numel"):
            sig[key] = TensorSpec(tuple(int(d) for d in shape), dtype_name(dtype))
    return sig


@dataclass(frozen=True, slots=True, kw_only=True)
class ShapeDiff:
    """What one step did to a state dict: keys added, removed, and reshaped or re-typed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    before: Mapping[str, TensorSpec] = field(default_factory=dict, repr=False)
    after: Mapping[str, TensorSpec] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> list[str]:
        """One line per key: ``+ key [shape] dtype``, ``- key ...``, ``~ key old -> new``."""
        lines = [f"+ {k} {self.after[k]}" for k in self.added]
        lines += [f"- {k} {self.before[k]}" for k in self.removed]
        lines += [f"~ {k} {self.before[k]} -> {self.after[k]}" for k in self.changed]
        return lines


def diff_signatures(before: Mapping[str, TensorSpec], after: Mapping[str, TensorSpec]) -> ShapeDiff:
    """Compare two signatures; every list is sorted."""
    return ShapeDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(sorted(k for k in before.keys() & after.keys() if before[k] != after[k])),
        before=before,
        after=after,
    )


def matches_any(key: str, patterns: Iterable[str]) -> bool:
    """Whether ``key`` matches one of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def check_untouched(
    before: Mapping[str, TensorSpec],
    after: Mapping[str, TensorSpec],
    touches: Iterable[str],
) -> list[str]:
    """Return problems where a key outside ``touches`` was removed, added, reshaped or re-typed."""
    patterns = tuple(touches)
    problems = []
    for key in sorted(before.keys() | after.keys()):
        if matches_any(key, patterns):
            continue
        old, new = before.get(key), after.get(key)
        if new is None:
            problems.append(f"{key}: removed (was {old}) but not in touches")
        elif old is None:
            problems.append(f"{key}: added ({new}) but not in touches")
        elif old != new:
            problems.append(f"{key}: expected {old}, got {new} (not in touches)")
    return problems


Dim = int | str


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaEntry:
    """One key (or glob pattern) of a schema."""

    key: str
    shape: tuple[Dim, ...] | None
    dtype: str | None

    @property
    def is_pattern(self) -> bool:
        """Whether the key is a glob pattern."""
        return any(c in _GLOB_CHARS for c in self.key)

    def describe(self) -> str:
        """Show the expected shape and dtype."""
        shape = "[" + ", ".join(map(str, self.shape)) + "]" if self.shape is not None else "[any]"
        return f"{shape} {self.dtype or 'any'}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Schema:
    """The expected state dict of one version."""

    version: str
    entries: tuple[SchemaEntry, ...]
    file: str | None = None

    def check(self, sig: Mapping[str, TensorSpec]) -> list[str]:
        """Return every way ``sig`` differs from the schema, sorted by key (empty if it matches)."""
        exact = {e.key: e for e in self.entries if not e.is_pattern}
        patterns = [e for e in self.entries if e.is_pattern]
        used: set[str] = set()
        bound: dict[str, tuple[int, str]] = {}
        problems: list[tuple[str, str]] = []
        for key in sorted(sig):
            entry = exact.get(key) or next((p for p in patterns if fnmatch.fnmatchcase(key, p.key)), None)
            if entry is None:
                problems.append((key, f"{key}: unexpected ({sig[key]})"))
                continue
            used.add(entry.key)
            problem = _check_entry(key, entry, sig[key], bound)
            if problem:
                problems.append((key, problem))
        for entry in self.entries:
            if entry.key not in used:
                what = "no key matches" if entry.is_pattern else "missing"
                problems.append((entry.key, f"{entry.key}: {what} (expected {entry.describe()})"))
        return [p for _, p in sorted(problems)]

    def signature(self) -> dict[str, TensorSpec] | None:
        """Return the one signature the schema allows, or None when it allows several.

        A schema with glob keys, named dimensions or a free dtype describes many state dicts.
        """
        found: dict[str, TensorSpec] = {}
        for entry in self.entries:
            if entry.is_pattern or entry.dtype is None or entry.shape is None:
                return None
            if not all(isinstance(d, int) for d in entry.shape):
                return None
            found[entry.key] = TensorSpec(tuple(int(d) for d in entry.shape), entry.dtype)
        return found

    def to_dict(self) -> dict[str, Any]:
        """Return the schema as stored in its JSON file."""
        tensors: dict[str, Any] = {}
        for e in self.entries:
            item: dict[str, Any] = {}
            if e.shape is not None:
                item["shape"] = list(e.shape)
            if e.dtype is not None:
                item["dtype"] = e.dtype
            tensors[e.key] = item
        return {"version": self.version, "tensors": tensors}

    def to_json(self) -> str:
        """Return the schema as JSON text, one key per line so diffs stay readable."""
        body = self.to_dict()["tensors"]
        lines = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in body.items()]
        inner = ",\n".join(lines)
        return f'{{\n  "version": {json.dumps(self.version)},\n  "tensors": {{\n{inner}\n  }}\n}}\n'

    @classmethod
    def from_signature(cls, version: str, sig: Mapping[str, TensorSpec], *, dtypes: bool = True) -> Schema:
        """Capture a schema with concrete shapes from a real state dict's signature.

        With ``dtypes=False`` every entry leaves its dtype free (the layout ships in several).
        """
        return cls(
            version=version,
            entries=tuple(
                SchemaEntry(key=k, shape=sig[k].shape, dtype=sig[k].dtype if dtypes else None) for k in sorted(sig)
            ),
        )


def _check_entry(key: str, entry: SchemaEntry, spec: TensorSpec, bound: dict[str, tuple[int, str]]) -> str:
    if entry.dtype is not None and entry.dtype != spec.dtype:
        return f"{key}: expected {entry.describe()}, got {spec}"
    if entry.shape is None:
        return ""
    if len(entry.shape) != len(spec.shape):
        return f"{key}: expected {entry.describe()}, got {spec}"
    for want, got in zip(entry.shape, spec.shape, strict=True):
        if isinstance(want, int):
            if want != got:
                return f"{key}: expected {entry.describe()}, got {spec}"
        elif want in bound and bound[want][0] != got:
            size, where = bound[want]
            return f"{key}: expected {entry.describe()} with {want}={size} (bound at {where}), got {spec}"
        else:
            bound.setdefault(want, (got, key))
    return ""


def _parse_entry(key: str, raw: object, file: str) -> SchemaEntry:
    if not isinstance(raw, Mapping):
        raise SchemaError(file, 'expected {"shape": [...], "dtype": ...}', key)
    shape = raw.get("shape")
    dtype = raw.get("dtype")
    if shape is not None and (
        not isinstance(shape, list)
        or not all((isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str) for d in shape)
    ):
        raise SchemaError(file, "shape must be a list of sizes and dimension names", key)
    if dtype is not None and not isinstance(dtype, str):
        raise SchemaError(file, "dtype must be a string such as float32", key)
    return SchemaEntry(key=key, shape=tuple(shape) if shape is not None else None, dtype=dtype)


def load_schema(path: str | Path) -> Schema:
    """Read a schema file; a malformed one raises :class:`SchemaError` naming the file.

    Only a regular file (or a link to one) is read: a FIFO or a device is refused, never waited on.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without a writer, then is refused
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise SchemaError(str(path), "not a regular file; a schema is a JSON file")
            raw = json.loads(handle.read().decode("utf-8"))
    except OSError as exc:
        raise SchemaError(str(path), f"cannot read it: {exc.strerror or exc}") from None
    except RecursionError:
        raise SchemaError(str(path), "its JSON is nested too deeply") from None
    except ValueError as exc:
        raise SchemaError(str(path), f"not JSON ({exc})") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("tensors"), Mapping):
        raise SchemaError(str(path), 'a schema is {"version": ..., "tensors": {key: {"shape": ..., "dtype": ...}}}')
    version = str(raw.get("version", path.stem))
    entries = tuple(_parse_entry(k, v, str(path)) for k, v in raw["tensors"].items())
    return Schema(version=version, entries=entries, file=str(path))
