"""Load an old DCP checkpoint straight into a new model along a path of renames: a planner for DCP's ``load``.

::

    from torch.distributed.checkpoint import load
    from ckpt_path.dcp_planner import UpgradingLoadPlanner

    state_dict = {"model": model.state_dict()}
    load(state_dict, checkpoint_id="step-1000", planner=UpgradingLoadPlanner("step-1000", registry))

The planner plans and runs the path from the checkpoint's version to ``target`` through the
same pipeline as ``ckpt-path convert`` (:func:`ckpt_path.pipeline.upgrade`), on the metadata
only (lazy tensors; nothing is computed), and reads which entry of the new layout is which
entry of the old one. DCP then reads every chunk straight from the old files into the new
model, sharded as that model is, with any number of processes: nothing is converted on disk.
A step that computes a tensor (``MoveIndex``, ``Concat``, ``Cast``, ...) cannot be read this
way: asking for such a tensor is a :class:`~ckpt_path.errors.CheckpointError` naming it (convert
the checkpoint with ``ckpt-path convert`` instead); tensors the model does not ask for do not
matter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex

from ckpt_path import _lazy, dcp
from ckpt_path.errors import StoredEntriesError
from ckpt_path.pipeline import upgrade
from ckpt_path.registry import Registry

__all__ = ["UpgradingLoadPlanner", "renamed_entries"]


def renamed_entries(
    path: str | os.PathLike[str],
    registry: Registry,
    target: str = "latest",
    *,
    source: str | None = None,
    allow_lossy: bool = False,
) -> tuple[dict[str, str], dict[str, tuple[str | int, ...]], list[str]]:
    """Run the path from the checkpoint at ``path`` to ``target`` on its metadata; say what became what.

    Returns ``(renames, paths, computed)``: each entry of the new layout that is an entry of the
    old one (new DCP key -> old key), the nested path of every new entry, and the new entries a
    step computed (they cannot be read from the old files as they are).
    """
    with dcp.metadata_only():
        done = upgrade(Path(path), registry, target, source=source, allow_lossy=allow_lossy)
    renames: dict[str, str] = {}
    paths: dict[str, tuple[str | int, ...]] = {}
    computed: list[str] = []
    for fqn, key_path, value in dcp.flatten(done.checkpoint.obj):
        paths[fqn] = key_path
        node = _lazy.node_of(value) if isinstance(value, _lazy.LazyTensor) else None
        if isinstance(node, _lazy.Stored) and isinstance(node.source, dcp.Reader):
            renames[fqn] = node.key
        elif isinstance(value, dcp.Unread):
            renames[fqn] = value.key
        else:
            computed.append(fqn)
    return renames, paths, computed


class UpgradingLoadPlanner(DefaultLoadPlanner):
    """A ``DefaultLoadPlanner`` that reads an old checkpoint as the layout of ``target`` (a path of renames)."""

    def __init__(
        self,
        checkpoint_id: str | os.PathLike[str],
        registry: Registry,
        target: str = "latest",
        *,
        source: str | None = None,
        allow_lossy: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._checkpoint = Path(checkpoint_id)
        self._registry, self._target, self._source, self._allow_lossy = registry, target, source, allow_lossy

    def set_up_planner(
        self,
        state_dict: dict[str, Any],
        metadata: Metadata | None = None,
        is_coordinator: bool = False,  # noqa: FBT001, FBT002 - DefaultLoadPlanner's signature
    ) -> None:
        """Rename the checkpoint's metadata to the new layout (in place: the storage reader shares it), then plan."""
        if metadata is not None:
            renames, paths, computed = renamed_entries(
                self._checkpoint, self._registry, self._target, source=self._source, allow_lossy=self._allow_lossy
            )
            wanted, _ = flatten_state_dict(state_dict)
            refused = sorted(set(wanted) & set(computed))
            if refused:
                raise StoredEntriesError(str(self._checkpoint), str(self._target), refused)
            _rename(metadata, renames, paths)
        super().set_up_planner(state_dict, metadata, is_coordinator)


def _rename(metadata: Metadata, renames: dict[str, str], paths: dict[str, tuple[str | int, ...]]) -> None:
    """Rewrite ``metadata`` so that every renamed entry is found under its new key (chunks and all)."""
    entries = dict(metadata.state_dict_metadata)
    storage = dict(metadata.storage_data or {})
    by_old: dict[str, list[str]] = {}
    for new, old in renames.items():
        by_old.setdefault(old, []).append(new)
    metadata.state_dict_metadata = {new: entries[old] for new, old in renames.items()}
    renamed_storage: dict[Any, Any] = {}
    for index, info in storage.items():
        for new in by_old.get(index.fqn, []):
            renamed_storage[MetadataIndex(new, index.offset, index.index)] = info
    metadata.storage_data = renamed_storage
    metadata.planner_data = {new: paths[new] for new in renames}
