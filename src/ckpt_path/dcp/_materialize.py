"""Plain tensors for writers of other formats: a DCP checkpoint's lazy tensors evaluated into a scratch file.

A single-file or safetensors writer needs every tensor at the same time. :func:`materialized`
evaluates each lazy tensor on its own and maps its bytes back from a scratch file, so memory
stays near the size of the largest tensor however large the checkpoint is.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ckpt_path import _atomic, _lazy
from ckpt_path.dcp._read import Reader, Unread
from ckpt_path.dcp._write import _writable, computed


def _walk(obj: object) -> Iterator[tuple[str, object]]:
    """Yield every object reachable from ``obj`` (containers, a state dict's ``_metadata``) once, and where it is."""
    stack: list[tuple[str, object]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        where, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield where, node
        prefix = f"{where}." if where else ""
        if isinstance(node, Mapping):
            stack.extend((f"{prefix}{key}", value) for key, value in node.items())
            metadata = getattr(node, "_metadata", None)
            if isinstance(metadata, Mapping):
                stack.extend((f"{prefix}_metadata.{key}", value) for key, value in metadata.items())
        elif isinstance(node, list | tuple):
            stack.extend((f"{prefix}{index}", value) for index, value in enumerate(node))


@contextlib.contextmanager
def materialized(obj: Any, beside: Path) -> Iterator[Any]:
    """Yield a copy of ``obj`` whose lazy tensors are plain tensors mapped from a scratch file.

    Each lazy tensor is evaluated on its own and its bytes written to a scratch file beside
    ``beside`` (removed at once; the mapping keeps it readable), so a writer that needs every
    tensor at the same time (``torch.save``) finds them all in the page cache, and anonymous
    memory stays near the size of the largest tensor. Unread non-tensor entries are read.
    """
    lazies: list[_lazy.LazyTensor] = []
    names: dict[int, str] = {}
    mapped: dict[int, torch.Tensor] = {}
    for where, value in _walk(obj):
        if not isinstance(value, _lazy.LazyTensor):
            continue
        node = _lazy.node_of(value)
        if (
            isinstance(node, _lazy.Stored)
            and isinstance(node.source, Reader)
            and len(node.source.chunks(node.key)) == 1
        ):
            mapped[id(value)] = _lazy.evaluate(value)  # a view of the mapped input already
        else:
            lazies.append(value)
            names[id(value)] = where
    if not lazies:
        yield _rebuilt(obj, mapped)
        return
    fd, name = tempfile.mkstemp(prefix=f".{beside.name}{_atomic.TEMP_MARK}", suffix=".tmp", dir=beside.parent)
    with contextlib.suppress(OSError):  # held while it is written: a concurrent cleanup leaves it alone
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    places: list[tuple[int, int]] = []
    try:
        with os.fdopen(fd, "wb") as handle:
            position = 0
            for value in lazies:
                tensor = _writable(computed(names[id(value)], value))
                nbytes = tensor.numel() * tensor.element_size()
                pad = -position % 64
                handle.write(b"\0" * pad)
                position += pad
                if nbytes:
                    handle.write(memoryview((ctypes.c_char * nbytes).from_address(tensor.data_ptr())))
                places.append((position, nbytes))
                position += nbytes
                del tensor
            handle.flush()
        storage = torch.UntypedStorage.from_file(name, shared=False, nbytes=position) if position else None
    finally:
        Path(name).unlink(missing_ok=True)
    for value, (offset, nbytes) in zip(lazies, places, strict=True):
        if storage is None or nbytes == 0:
            real = torch.empty(value.shape, dtype=value.dtype)
        else:
            own = storage[offset : offset + nbytes]
            real = torch.empty(0, dtype=value.dtype).set_(own, 0, value.shape)  # type: ignore[call-overload]
        mapped[id(value)] = real
    yield _rebuilt(obj, mapped)


def _rebuilt(obj: Any, mapped: Mapping[int, torch.Tensor]) -> Any:
    """Copy the containers of ``obj``, putting the mapped tensor for each lazy one and reading unread entries."""
    if isinstance(obj, _lazy.LazyTensor):
        return mapped[id(obj)]
    if isinstance(obj, Unread):
        return obj.read()
    if isinstance(obj, Mapping):
        copy = type(obj)() if isinstance(obj, dict) else {}
        for key, value in obj.items():
            copy[key] = _rebuilt(value, mapped)
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:
            copy._metadata = metadata  # type: ignore[attr-defined]  # noqa: SLF001
        return copy
    if isinstance(obj, list):
        return [_rebuilt(v, mapped) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_rebuilt(v, mapped) for v in obj)
    return obj
