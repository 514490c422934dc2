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

Nothing read is trusted: every header entry is checked (types, bounds, overlaps) before a
tensor is made, an index may name only files in its own directory, and a shard may hold only
what the index says it holds. Anything else is one :class:`UnreadableCheckpointError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import math
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ckpt_path._ranges import InputRecord, InputRecords, copy_range
from ckpt_path.errors import CheckpointError, SaveError, UnreadableCheckpointError, UnwritableError

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
"""Largest header read or written: the limit of the safetensors library itself."""
_MAX_SIZE = 2**63 - 1
"""Largest element count or byte size of one tensor (torch's sizes and strides are int64)."""
_SHOWN = 200
"""Longest key or name a message shows."""
_GENERATIONS = 100
"""How many alternative shard names (``PREFIX.N-...``) are tried before giving up."""
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


class Opener(Protocol):
    """Opens the binary file that will become ``target`` (see ``ckpt_path._atomic.Transaction.open``)."""

    def __call__(self, target: Path, *, fresh: bool = ...) -> contextlib.AbstractContextManager[Any]:
        """``fresh``: ``target`` is a new name that no file may have when it is placed."""
        ...


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` names a single safetensors file (``.safetensors``, in any case)."""
    return path.suffix.lower() == ".safetensors"


def is_sharded(path: Path) -> bool:
    """Whether ``path`` names the index of a sharded safetensors layout (in any case)."""
    return path.name.lower().endswith(INDEX_SUFFIX)


def _prefix(index_path: Path) -> str:
    """Return the shards' name prefix of the layout whose index is ``index_path`` (``model``)."""
    return index_path.name[: -len(INDEX_SUFFIX)] or "model"


def _shown(text: object) -> str:
    """Return a key or file name for a one-line message: quoted, control characters escaped, at most 200 characters."""
    shown = str(text)
    return repr(shown if len(shown) <= _SHOWN else shown[:_SHOWN] + "...")


# --- reading -------------------------------------------------------------------------------------


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """Return the header, where the data starts, and the file size; check every entry."""
    name = str(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:  # noqa: PLR2004 - the length field is 8 bytes
                raise UnreadableCheckpointError(name, "truncated safetensors file (no header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                raise UnreadableCheckpointError(name, "corrupt safetensors header (its length runs past the file)")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise UnreadableCheckpointError(name, exc.strerror or str(exc)) from None
    except RecursionError:
        raise UnreadableCheckpointError(name, "corrupt safetensors header (nested too deeply)") from None
    except ValueError:  # UnicodeDecodeError is one
        raise UnreadableCheckpointError(name, "corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise UnreadableCheckpointError(name, "corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise UnreadableCheckpointError(name, "corrupt safetensors header (__metadata__ must map names to strings)")
    start = 8 + length
    spans = sorted(
        (_check_entry(name, key, entry, size - start), key) for key, entry in header.items() if key != "__metadata__"
    )
    for ((_, end), before), ((begin, _), key) in itertools.pairwise(spans):
        if begin < end:
            raise UnreadableCheckpointError(
                name, f"corrupt safetensors header ({_shown(key)} overlaps {_shown(before)})"
            )
    return header, start, size


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, which is an int too


def _check_entry(name: str, key: str, entry: object, data_size: int) -> tuple[int, int]:
    """Check one tensor's header entry; return its data offsets."""
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise UnreadableCheckpointError(name, f"corrupt safetensors header at {_shown(key)} (unknown dtype)")
    assert isinstance(entry, dict)  # noqa: S101 - for mypy: dtype came from it
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    itemsize = _DTYPES[dtype].itemsize
    if (
        not isinstance(shape, list)
        or not all(_is_int(d) and d >= 0 for d in shape)
        or math.prod(max(d, 1) for d in shape) * itemsize > _MAX_SIZE
    ):
        raise UnreadableCheckpointError(name, f"corrupt safetensors header at {_shown(key)} (bad shape)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):  # noqa: PLR2004
        raise UnreadableCheckpointError(name, f"corrupt safetensors header at {_shown(key)} (bad data_offsets)")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise UnreadableCheckpointError(name, f"corrupt safetensors header at {_shown(key)} (bad data_offsets)")
    if end > data_size:
        raise UnreadableCheckpointError(name, f"{_shown(key)} points past the end of the file (truncated?)")
    if end - begin != math.prod(shape) * itemsize:
        raise UnreadableCheckpointError(
            name, f"corrupt safetensors header at {_shown(key)} (size does not match shape)"
        )
    return begin, end


def _loads(text: str | bytes, name: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadableCheckpointError(name, f"{what} is nested too deeply") from None
    except ValueError:
        raise UnreadableCheckpointError(name, f"{what} is not JSON") from None


def _stamp_from_metadata(metadata: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    version = metadata.get("ckpt_path.version")
    if version is None:
        return None
    if not isinstance(version, str):
        raise UnreadableCheckpointError(name, "the ckpt_path.version metadata is not a string")
    raw = metadata.get("ckpt_path.history", "[]")
    if not isinstance(raw, str):
        raise UnreadableCheckpointError(name, "the ckpt_path.history metadata is not a string of JSON")
    history = _loads(raw, name, "the ckpt_path.history metadata")
    if not isinstance(history, list):
        raise UnreadableCheckpointError(name, "the ckpt_path.history metadata is not a JSON list of steps")
    return {"version": version, "history": history}


def _plain_metadata(metadata: Mapping[str, Any], name: str) -> dict[str, str]:
    """Metadata other than the stamp, as strings (an index may hold numbers; nested values become JSON)."""
    plain = {}
    for key, value in metadata.items():
        if key.startswith("ckpt_path."):
            continue
        try:
            plain[key] = value if isinstance(value, str) else json.dumps(value)
        except RecursionError:
            raise UnreadableCheckpointError(name, f"the metadata {_shown(key)} is nested too deeply") from None
    return plain


def load_safetensors(path: str | Path) -> tuple[OrderedDict[str, torch.Tensor], dict[str, str]]:
    """Map a safetensors file lazily; return its state dict and its other ``__metadata__``.

    The stamp, if any, is in ``state_dict._metadata["ckpt_path"]`` as for a flat torch state dict.
    """
    path = Path(path)
    header, start, size = _read_header(path)
    metadata = header.pop("__metadata__", None) or {}
    stamp = _stamp_from_metadata(metadata, str(path))
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
    state_dict._metadata = OrderedDict({"ckpt_path": stamp}) if stamp else OrderedDict()  # type: ignore[attr-defined]  # noqa: SLF001
    return state_dict, _plain_metadata(metadata, str(path))


def _lies_beside(index_path: Path, shard: str) -> bool:
    """Whether the shard is a file of the index's directory, or a Hugging Face cache blob linked from it.

    A hub cache keeps ``REPO/snapshots/REVISION/<file>`` as links into ``REPO/blobs/``; that and
    only that leads out of the index's directory.
    """
    real = Path(os.path.realpath(index_path.parent / shard)).parent
    if real == Path(os.path.realpath(index_path.parent)):
        return True
    snapshot = index_path.parent
    return snapshot.parent.name == "snapshots" and real == Path(os.path.realpath(snapshot.parent.parent / "blobs"))


def _check_shard_name(index_path: Path, shard: str) -> Path:
    """Return the path of a shard the index names; refuse anything but a file in the index's directory."""
    name = str(index_path)
    if (
        shard in {"", ".", ".."}
        or any(c in shard for c in "/\\\0")
        or Path(shard).is_absolute()
        or not _lies_beside(index_path, shard)
    ):
        raise UnreadableCheckpointError(
            name,
            f"the index names the shard {_shown(shard)}, which is not a file in the index's directory; "
            "shards must lie beside their index",
        )
    return index_path.parent / shard


def _indexed(name: str, shard: str, tensors: Mapping[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """Return the tensors of ``shard`` the index puts there; refuse when they and the shard disagree."""
    for key in keys:
        if key not in tensors:
            raise UnreadableCheckpointError(
                name, f"the index puts {_shown(key)} in {_shown(shard)}, which does not hold it"
            )
    unlisted = sorted(set(tensors) - set(keys))
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise UnreadableCheckpointError(
            name,
            f"{_shown(shard)} holds {_shown(unlisted[0])}{more}, which the index does not put there; "
            "add it to the index's weight_map, or remove it from the shard",
        )
    return {key: tensors[key] for key in keys}


def load_sharded(index_path: str | Path) -> tuple[OrderedDict[str, torch.Tensor], dict[str, str], int]:
    """Map every shard of a sharded layout; return the state dict, metadata and the largest shard size.

    Every shard must lie in the index's directory (checked before any shard is read) and hold
    exactly the tensors the index puts in it.
    """
    index_path = Path(index_path)
    name = str(index_path)
    try:
        text = index_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UnreadableCheckpointError(name, exc.strerror or str(exc)) from None
    except ValueError:
        raise UnreadableCheckpointError(name, "the index is not JSON") from None
    index = _loads(text, name, "the index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UnreadableCheckpointError(name, 'the index has no "weight_map" of key -> shard file')
    metadata = index.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise UnreadableCheckpointError(name, 'the index\'s "metadata" is not a JSON object')
    stamp = _stamp_from_metadata(metadata, name)
    plain_index = _plain_metadata(metadata, name)
    shards = {shard: _check_shard_name(index_path, shard) for shard in sorted(set(weight_map.values()))}
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    shared_metadata: dict[str, str] = {}
    largest = 0
    for shard, shard_path in shards.items():
        if not shard_path.is_file():
            raise UnreadableCheckpointError(name, f"shard {_shown(shard)} is missing")
        tensors, shard_metadata = load_safetensors(shard_path)
        shared_metadata.update(shard_metadata)
        largest = max(largest, shard_path.stat().st_size)
        state_dict.update(_indexed(name, shard, tensors, [k for k, v in weight_map.items() if v == shard]))
    state_dict._metadata = OrderedDict({"ckpt_path": stamp}) if stamp else OrderedDict()  # type: ignore[attr-defined]  # noqa: SLF001
    plain = {**shared_metadata, **plain_index}
    plain.pop("total_size", None)
    return state_dict, plain, largest


# --- writing -------------------------------------------------------------------------------------


def _with_format(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata with ``format`` set (``pt`` unless given): Hugging Face loaders require it."""
    return {"format": "pt", **(metadata or {})}


def _stamp_metadata(state_dict: Mapping[str, Any]) -> dict[str, str]:
    stamp = getattr(state_dict, "_metadata", {}).get("ckpt_path")
    if not stamp:
        return {}
    return {"ckpt_path.version": stamp["version"], "ckpt_path.history": json.dumps(stamp.get("history", []))}


def unwritable(tensor: torch.Tensor, *, safetensors: bool) -> str | None:
    """Say why ``tensor`` cannot be written with its values (as safetensors, or by torch.save), or None."""
    problem = None
    if tensor.is_meta:
        problem = (
            "it is a meta tensor, which has a shape but no values; "
            "a converter must give it values (e.g. torch.zeros) before it can be saved"
        )
    elif tensor.layout == torch._mkldnn:  # type: ignore[attr-defined]  # noqa: SLF001 - torch's name for it
        problem = "it is an MKL-DNN tensor; a converter must make it dense first (.to_dense())"
    elif safetensors and tensor.is_nested:
        problem = "it is a nested tensor, which safetensors cannot hold; save as .pt instead"
    elif safetensors and tensor.layout != torch.strided:
        problem = f"its layout is {tensor.layout}, which safetensors cannot hold; a converter must make it dense"
    elif safetensors and tensor.device.type != "cpu":
        problem = f"it is on {tensor.device}; a converter must move it to the CPU (.cpu())"
    return problem


def tensor_items(state_dict: Mapping[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """Return the state dict's tensors in writing order; refuse anything safetensors cannot hold."""
    items = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise UnwritableError(
                None, f"safetensors names tensors with strings, but the state dict has the key {_shown(key)}"
            )
        if key == "__metadata__":
            raise UnwritableError(
                key,
                "safetensors reserves the name __metadata__ for its metadata, so no tensor may have it; "
                "a converter must rename that key",
            )
        if not isinstance(value, torch.Tensor):
            raise UnwritableError(key, f"safetensors holds only tensors, but {_shown(key)} is a {type(value).__name__}")
        if value.dtype not in _NAMES:
            raise UnwritableError(
                key, f"safetensors cannot hold {_shown(key)}: dtype {value.dtype} has no safetensors name"
            )
        problem = unwritable(value, safetensors=True)
        if problem is not None:
            raise UnwritableError(key, f"cannot write {_shown(key)} as safetensors: {problem}")
        items.append((key, value))
    # Larger elements first, as the reference writer does, so every tensor starts aligned.
    return sorted(items, key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))


def _header(items: list[tuple[str, torch.Tensor]], metadata: Mapping[str, str], name: str) -> bytes:
    """Return the length field and JSON header of a file holding ``items``; refuse one over the readers' limit."""
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
    if len(data) > _MAX_HEADER:
        raise SaveError(
            name,
            f"its safetensors header would be {len(data) / 2**20:.1f} MiB "
            f"({len(items)} tensors and the metadata), over the {_MAX_HEADER // 2**20} MiB that safetensors "
            "readers accept; write a sharded layout (*.safetensors.index.json) or a torch file (.pt) instead",
        )
    return struct.pack("<Q", len(data)) + data


def input_ranges(path: Path) -> InputRecords:
    """Return the byte ranges of a safetensors file's tensors, to copy them as they are."""
    header, start, _ = _read_header(path)
    records = [
        InputRecord(name=key, data_offset=start + entry["data_offsets"][0], size=_nbytes(entry), crc=None)
        for key, entry in header.items()
        if key != "__metadata__"
    ]
    return InputRecords(path, records)


def _nbytes(entry: Mapping[str, Any]) -> int:
    begin, end = entry["data_offsets"]
    return int(end) - int(begin)


@dataclass(slots=True)
class Copied:
    """What a writer copied from the input as it was, and what it wrote from memory."""

    copied_bytes: int = 0
    written_bytes: int = 0


def _write_tensors(  # noqa: PLR0913 - where to write, what, from where, and progress
    handle: Any,
    items: list[tuple[str, torch.Tensor]],
    progress: Progress | None,
    done: int,
    total: int,
    *,
    inputs: Sequence[InputRecords] = (),
    tally: Copied | None = None,
) -> int:
    tally = tally if tally is not None else Copied()
    for _, tensor in items:
        found = next(((i, r) for i in inputs if (r := i.find_tensor(tensor)) is not None), None)
        if found is not None and not tensor.is_conj() and not tensor.is_neg():
            inputs_of, record = found
            handle.flush()
            at = handle.tell()
            with inputs_of.path.open("rb") as source:
                copy_range(source.fileno(), record.data_offset, handle.fileno(), at, record.size, lambda _n: None)
            handle.seek(at + record.size)
            done += record.size
            tally.copied_bytes += record.size
            if progress is not None:
                progress(done, total)
            continue
        # The values the tensor holds: a conjugate or negative view keeps its sign in a flag,
        # not in its memory, so resolve it first (a no-op for every other tensor).
        flat = tensor.detach().resolve_conj().resolve_neg().contiguous()
        nbytes = flat.numel() * flat.dtype.itemsize
        if nbytes:
            # A view of the tensor's own memory: nothing is copied on the way to the file.
            handle.write(memoryview((ctypes.c_char * nbytes).from_address(flat.data_ptr())))
        done += nbytes
        tally.written_bytes += nbytes
        if progress is not None:
            progress(done, total)
    return done


def save_safetensors(  # noqa: PLR0913 - what to write, where, and what may be copied
    state_dict: Mapping[str, Any],
    handle: Any,
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    *,
    inputs: Sequence[InputRecords] = (),
    tally: Copied | None = None,
) -> None:
    """Write a flat state dict as one safetensors file to an open binary file.

    A tensor whose bytes are exactly a range of an input file (``inputs``; an unchanged
    tensor of a memory-mapped input) is copied from that file kernel-side, not through Python.
    """
    items = tensor_items(state_dict)
    meta = {**_with_format(metadata), **_stamp_metadata(state_dict)}
    handle.write(_header(items, meta, getattr(handle, "name", "the safetensors file")))
    total = sum(t.numel() * t.dtype.itemsize for _, t in items)
    _write_tensors(handle, items, progress, 0, total, inputs=inputs, tally=tally)


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


def shard_pattern(index_path: Path) -> str:
    """Return the regex of the layout's shard names: ``PREFIX-NNNNN-of-NNNNN.safetensors``, ``PREFIX.N-...``."""
    return rf"{re.escape(_prefix(index_path))}(?:\.[1-9][0-9]*)?-[0-9]{{5}}-of-[0-9]{{5}}\.safetensors"


def shard_paths(index_path: Path, count: int) -> list[Path]:
    """Names for ``count`` new shards beside the index, none of which any file has now.

    ``PREFIX-00001-of-00002.safetensors``, Hugging Face's names, when they are free; when a
    layout with as many shards is being replaced they are taken, and ``PREFIX.1-...``
    (``PREFIX.2-...``, ...) is used, so the old layout stays whole until the new index replaces
    the old one.
    """
    prefix = _prefix(index_path)
    for generation in range(_GENERATIONS):
        stem = f"{prefix}.{generation}" if generation else prefix
        paths = [index_path.parent / _shard_name(stem, n, count) for n in range(1, count + 1)]
        if not any(os.path.lexists(p) for p in paths):
            return paths
    raise CheckpointError(
        f"cannot write {index_path}: shard names {prefix}.1 to {prefix}.{_GENERATIONS - 1} are all taken; "
        "remove old shards from its directory",
    )


def layout_files(index_path: Path) -> list[Path]:
    """Return the shards of the layout at ``index_path`` that exist now: what replacing it removes.

    Only files in the index's directory named like this layout's shards: every
    ``PREFIX-NNNNN-of-NNNNN.safetensors``, and the ``PREFIX.N-NNNNN-of-NNNNN.safetensors`` its
    index names. Whatever else the index names (``config.json``, ``../x``) is never included,
    nor are other layouts' shards.
    """
    prefix = _prefix(index_path)
    directory = index_path.parent
    plain = re.compile(rf"{re.escape(prefix)}-[0-9]{{5}}-of-[0-9]{{5}}\.safetensors")
    own = re.compile(shard_pattern(index_path))
    found = {p for p in directory.iterdir() if plain.fullmatch(p.name)} if directory.is_dir() else set()
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError, RecursionError):
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        found |= {
            directory / name for name in set(weight_map.values()) if isinstance(name, str) and own.fullmatch(name)
        }
    return sorted(p for p in found if p.is_file())


def save_sharded(  # noqa: PLR0913 - a layout needs its index, writer, size and metadata
    state_dict: Mapping[str, Any],
    index_path: Path,
    open_file: Opener,
    *,
    shard_size: int,
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    inputs: Sequence[InputRecords] = (),
    tally: Copied | None = None,
) -> list[Path]:
    """Write a sharded layout: shards of at most ``shard_size`` bytes (or one tensor), then the index.

    Every shard gets a name no file has now (see :func:`shard_paths`) and is opened ``fresh``;
    ``open_file(path)`` opens the binary file that will become ``path``, and the caller places
    them all, index last, once every one is written. Every header is built and checked before
    the first byte is written. Returns the paths written, index last.
    """
    items = tensor_items(state_dict)
    meta = {**_with_format(metadata), **_stamp_metadata(state_dict)}
    groups = _shards(items, shard_size)
    total = sum(t.numel() * t.dtype.itemsize for _, t in items)
    planned = []
    weight_map: dict[str, str] = {}
    for shard, group in zip(shard_paths(index_path, len(groups)), groups, strict=True):
        ordered = sorted(group, key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))
        planned.append((shard, ordered, _header(ordered, meta, str(shard))))
        weight_map.update(dict.fromkeys((key for key, _ in group), shard.name))
    index = {"metadata": {**meta, "total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    done = 0
    for shard, ordered, header in planned:
        with open_file(shard, fresh=True) as handle:
            handle.write(header)
            done = _write_tensors(handle, ordered, progress, done, total, inputs=inputs, tally=tally)
    with open_file(index_path) as handle:
        handle.write((json.dumps(index, indent=2) + "\n").encode())
    return [*(shard for shard, _, _ in planned), index_path]
