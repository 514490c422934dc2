"""safetensors files, single and sharded, read lazily and written as a stream.

Reading parses the JSON header and memory-maps the file (copy-on-write): every tensor is a view
of the mapping, so no tensor data is read until something touches it, and ``inspect`` or
``convert --dry-run`` cost only the header. Writing goes tensor by tensor from each tensor's own
memory (for a memory-mapped input: the page cache) to the output file, so no tensor is copied
into anonymous memory unless a step made it. The format: 8 bytes little-endian header length,
the JSON header (``__metadata__`` plus ``name -> {dtype, shape, data_offsets}``), then the data.

The stamp lives in ``__metadata__`` as ``ckpt_path.version`` and ``ckpt_path.history`` (JSON).
A sharded Hugging Face layout (``model.safetensors.index.json`` plus shards) keeps it in the
index's ``metadata`` and in every shard.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ckpt_path.errors import CheckpointError, UnreadableCheckpointError

__all__ = [
    "INDEX_SUFFIX",
    "is_safetensors",
    "is_sharded",
    "load_safetensors",
    "load_sharded",
    "save_safetensors",
    "save_sharded",
]

INDEX_SUFFIX = ".safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("C64", "complex64")):
    if isinstance(getattr(torch, _attr, None), torch.dtype):
        _DTYPES[_name] = getattr(torch, _attr)
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

Progress = Callable[[int, int], None]
"""Called with (bytes written so far, bytes in all)."""


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` names a single safetensors file."""
    return path.suffix == ".safetensors"


def is_sharded(path: Path) -> bool:
    """Whether ``path`` names the index of a sharded safetensors layout."""
    return path.name.endswith(INDEX_SUFFIX)


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """Return the header, where the data starts, and the file size; check every entry."""
    name = str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:  # noqa: PLR2004 - the length field is 8 bytes
                raise UnreadableCheckpointError(name, "truncated safetensors file (no header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                raise UnreadableCheckpointError(name, "corrupt safetensors header (its length runs past the file)")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise UnreadableCheckpointError(name, exc.strerror or str(exc)) from None
    except (ValueError, UnicodeDecodeError):
        raise UnreadableCheckpointError(name, "corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise UnreadableCheckpointError(name, "corrupt safetensors header (not a JSON object)")
    start = 8 + length
    for key, entry in header.items():
        if key != "__metadata__":
            _check_entry(name, key, entry, size - start)
    return header, start, size


def _check_entry(name: str, key: str, entry: object, data_size: int) -> None:
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
        raise UnreadableCheckpointError(name, f"corrupt safetensors header at {key!r} (unknown dtype)")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UnreadableCheckpointError(name, f"corrupt safetensors header at {key!r} (bad shape)")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2  # noqa: PLR2004 - [begin, end]
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise UnreadableCheckpointError(name, f"{key!r} points past the end of the file (truncated?)")
    itemsize = _DTYPES[entry["dtype"]].itemsize
    if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise UnreadableCheckpointError(name, f"corrupt safetensors header at {key!r} (size does not match shape)")


def _stamp_from_metadata(metadata: Mapping[str, str], name: str) -> dict[str, Any] | None:
    version = metadata.get("ckpt_path.version")
    if version is None:
        return None
    try:
        history = json.loads(metadata.get("ckpt_path.history", "[]"))
    except ValueError:
        raise CheckpointError(f"{name}: the ckpt_path.history metadata is not JSON") from None
    return {"version": version, "history": history if isinstance(history, list) else []}


def _plain_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in metadata.items() if not k.startswith("ckpt_path.")}


def load_safetensors(path: str | Path) -> tuple[OrderedDict[str, torch.Tensor], dict[str, str]]:
    """Map a safetensors file lazily; return its state dict and its other ``__metadata__``.

    The stamp, if any, is in ``state_dict._metadata["ckpt_path"]`` as for a flat torch state dict.
    """
    path = Path(path)
    header, start, size = _read_header(path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise UnreadableCheckpointError(str(path), "corrupt safetensors header (__metadata__ is not an object)")
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size) if size else None
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
        entry = header[key]
        dtype, shape = _DTYPES[entry["dtype"]], tuple(entry["shape"])
        offset = start + entry["data_offsets"][0]
        if storage is None or math.prod(shape) == 0:
            state_dict[key] = torch.empty(shape, dtype=dtype)
        elif offset % dtype.itemsize == 0:
            # Each tensor gets a storage of its own bytes (a view of the mapping), so torch.save
            # later writes just those bytes, not the whole file once per tensor.
            nbytes = entry["data_offsets"][1] - entry["data_offsets"][0]
            own = storage[offset : offset + nbytes]
            state_dict[key] = torch.empty(0, dtype=dtype).set_(own, 0, shape)  # type: ignore[call-overload]
        else:  # a misaligned tensor cannot be a view of the mapping: read it
            with path.open("rb") as handle:
                handle.seek(offset)
                data = bytearray(handle.read(entry["data_offsets"][1] - entry["data_offsets"][0]))
            state_dict[key] = torch.frombuffer(data, dtype=dtype).reshape(shape)
    stamp = _stamp_from_metadata(metadata, str(path))
    state_dict._metadata = OrderedDict({"ckpt_path": stamp}) if stamp else OrderedDict()  # type: ignore[attr-defined]  # noqa: SLF001
    return state_dict, _plain_metadata(metadata)


def load_sharded(index_path: str | Path) -> tuple[OrderedDict[str, torch.Tensor], dict[str, str], int]:
    """Map every shard of a sharded layout; return the state dict, metadata and the largest shard size."""
    index_path = Path(index_path)
    name = str(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnreadableCheckpointError(name, exc.strerror or str(exc)) from None
    except ValueError:
        raise UnreadableCheckpointError(name, "the index is not JSON") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UnreadableCheckpointError(name, 'the index has no "weight_map" of key -> shard file')
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    shared_metadata: dict[str, str] = {}
    largest = 0
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise UnreadableCheckpointError(name, f"shard {shard} is missing")
        tensors, shard_metadata = load_safetensors(shard_path)
        shared_metadata.update(shard_metadata)
        largest = max(largest, shard_path.stat().st_size)
        for key in (k for k, v in weight_map.items() if v == shard):
            if key not in tensors:
                raise UnreadableCheckpointError(name, f"the index puts {key} in {shard}, which does not hold it")
            state_dict[key] = tensors[key]
    metadata = index.get("metadata") or {}
    stamp = _stamp_from_metadata(metadata, name) if isinstance(metadata, dict) else None
    state_dict._metadata = OrderedDict({"ckpt_path": stamp}) if stamp else OrderedDict()  # type: ignore[attr-defined]  # noqa: SLF001
    plain = {**shared_metadata, **(_plain_metadata(metadata) if isinstance(metadata, dict) else {})}
    plain.pop("total_size", None)
    return state_dict, plain, largest


def _with_format(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata with ``format`` set (``pt`` unless given): Hugging Face loaders require it."""
    return {"format": "pt", **(metadata or {})}


def _stamp_metadata(state_dict: Mapping[str, Any]) -> dict[str, str]:
    stamp = getattr(state_dict, "_metadata", {}).get("ckpt_path")
    if not stamp:
        return {}
    return {"ckpt_path.version": stamp["version"], "ckpt_path.history": json.dumps(stamp.get("history", []))}


def tensor_items(state_dict: Mapping[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """Return the state dict's tensors in writing order; refuse anything safetensors cannot hold."""
    items = []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"safetensors holds only tensors, but {key} is a {type(value).__name__}")
        if value.dtype not in _NAMES:
            raise CheckpointError(f"safetensors cannot hold {key}: dtype {value.dtype} has no safetensors name")
        items.append((key, value))
    # Larger elements first, as the reference writer does, so every tensor starts aligned.
    return sorted(items, key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))


def _header(items: list[tuple[str, torch.Tensor]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, tensor in items:
        nbytes = tensor.numel() * tensor.dtype.itemsize
        header[key] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    data = json.dumps(header, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 8)
    return struct.pack("<Q", len(data)) + data


def _write_tensors(
    handle: Any,  # noqa: ANN401 - a binary file
    items: list[tuple[str, torch.Tensor]],
    progress: Progress | None,
    done: int,
    total: int,
) -> int:
    for _, tensor in items:
        flat = tensor.detach().contiguous()
        nbytes = flat.numel() * flat.dtype.itemsize
        if nbytes:
            # A view of the tensor's own memory: nothing is copied on the way to the file.
            handle.write(memoryview((ctypes.c_char * nbytes).from_address(flat.data_ptr())))
        done += nbytes
        if progress is not None:
            progress(done, total)
    return done


def save_safetensors(
    state_dict: Mapping[str, Any],
    handle: Any,  # noqa: ANN401 - a binary file
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> None:
    """Write a flat state dict as one safetensors file to an open binary file."""
    items = tensor_items(state_dict)
    meta = {**_with_format(metadata), **_stamp_metadata(state_dict)}
    handle.write(_header(items, meta))
    total = sum(t.numel() * t.dtype.itemsize for _, t in items)
    _write_tensors(handle, items, progress, 0, total)


def _shards(items: list[tuple[str, torch.Tensor]], limit: int) -> list[list[tuple[str, torch.Tensor]]]:
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for key, tensor in sorted(items, key=lambda kv: kv[0]):
        nbytes = tensor.numel() * tensor.dtype.itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((key, tensor))
        size += nbytes
    return shards


def _shard_name(prefix: str, number: int, count: int) -> str:
    return f"{prefix}-{number:05d}-of-{count:05d}.safetensors"


def layout_files(index_path: Path) -> list[Path]:
    """Return the files of the sharded layout at ``index_path`` that exist now (shards only).

    The shards its index names, and any file named like one of its shards
    (``PREFIX-00001-of-00003.safetensors``); other layouts in the directory are left alone.
    """
    prefix = index_path.name[: -len(INDEX_SUFFIX)] or "model"
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{5}}-of-\d{{5}}\.safetensors")
    found = (
        {p for p in index_path.parent.iterdir() if pattern.fullmatch(p.name)} if index_path.parent.is_dir() else set()
    )
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        found |= {index_path.parent / name for name in set(weight_map.values()) if "/" not in name}
    return sorted(p for p in found if p.is_file())


def save_sharded(  # noqa: PLR0913 - a layout needs its index, writer, size and metadata
    state_dict: Mapping[str, Any],
    index_path: Path,
    open_file: Callable[[Path], contextlib.AbstractContextManager[Any]],
    *,
    shard_size: int,
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Write a sharded layout: shards of at most ``shard_size`` bytes (or one tensor), then the index.

    ``open_file(path)`` opens the binary file that will become ``path``; the caller places
    them all once every one is written. Returns the paths written, index last.
    """
    items = tensor_items(state_dict)
    meta = {**_with_format(metadata), **_stamp_metadata(state_dict)}
    prefix = index_path.name[: -len(INDEX_SUFFIX)] or "model"
    groups = _shards(items, shard_size)
    total = sum(t.numel() * t.dtype.itemsize for _, t in items)
    weight_map: dict[str, str] = {}
    written: list[Path] = []
    done = 0
    for number, group in enumerate(groups, 1):
        shard = index_path.parent / _shard_name(prefix, number, len(groups))
        ordered = sorted(group, key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))
        with open_file(shard) as handle:
            handle.write(_header(ordered, meta))
            done = _write_tensors(handle, ordered, progress, done, total)
        written.append(shard)
        weight_map.update(dict.fromkeys((key for key, _ in group), shard.name))
    index = {"metadata": {**meta, "total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open_file(index_path) as handle:
        handle.write((json.dumps(index, indent=2) + "\n").encode())
    written.append(index_path)
    return written


@contextlib.contextmanager
def counting(handle: Any, progress: Progress | None, total: int) -> Iterator[Any]:  # noqa: ANN401
    """Wrap a binary file so that every write reports progress in bytes."""
    if progress is None:
        yield handle
        return
    yield _Counting(handle, progress, total)


class _Counting:
    def __init__(self, handle: Any, progress: Progress, total: int) -> None:  # noqa: ANN401
        self._handle = handle
        self._progress = progress
        self._total = total
        self._done = 0

    def write(self, data: Any) -> int:  # noqa: ANN401 - bytes-like
        written: int = self._handle.write(data)
        self._done += len(memoryview(data).cast("B")) if not isinstance(data, bytes) else len(data)
        self._progress(min(self._done, self._total), self._total)
        return written

    def flush(self) -> None:
        self._handle.flush()

    def fileno(self) -> int:
        return int(self._handle.fileno())

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        return getattr(self._handle, name)
