"""Upgrade checkpoints automatically when Lightning loads them, and stamp the ones it saves.

Mix :class:`CkptPathMixin` into a ``LightningModule``::

    class Forecaster(CkptPathMixin, L.LightningModule):
        ckpt_path_version = "1.1.0"          # the version this code writes
        ckpt_path_converters = "converters"  # optional: default as the command line finds it

Then ``Forecaster.load_from_checkpoint(old)`` and ``Trainer.fit(model, ckpt_path=old)`` convert
an old checkpoint in memory to ``ckpt_path_version`` before its weights load (Lightning calls
``on_load_checkpoint`` first in both), and every checkpoint Lightning saves is stamped. The
file on disk is not touched; the path taken and the command that would persist it are logged.
Nothing here imports Lightning.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any, ClassVar

from ckpt_path.checkpoint import STAMP_KEY, Loaded, Stamp, find_state_dict, read_stamp, write_stamp
from ckpt_path.errors import CkptPathError, NoStampError
from ckpt_path.provenance import source_version
from ckpt_path.registry import Registry
from ckpt_path.runner import run

__all__ = ["CkptPathMixin", "upgrade_checkpoint"]

log = logging.getLogger("ckpt_path")


def upgrade_checkpoint(
    checkpoint: dict[str, Any],
    registry: Registry,
    target: str,
    *,
    allow_lossy: bool = False,
    source: str | None = None,
) -> dict[str, Any]:
    """Convert a checkpoint dict in place to ``target`` and return it (the same object).

    The version comes from ``source``, else the stamp, else the project's ``version-key``.
    """
    sd_path = find_state_dict(checkpoint)
    loaded = Loaded(obj=checkpoint, path=Path("<checkpoint>"), format="torch", state_dict_path=sd_path)
    version, _ = source_version(loaded, source, registry)
    plan = registry.plan(version, target, allow_lossy=allow_lossy)
    outcome = run(plan, checkpoint, state_dict_path=sd_path, schemas=registry.schema)
    if outcome.checkpoint is not checkpoint:  # a converter returned a new dict: keep the caller's
        converted = dict(outcome.checkpoint)
        checkpoint.clear()
        checkpoint.update(converted)
    for warning in outcome.warnings:
        log.warning("%s", warning)
    if plan.steps:
        log.info(
            "upgraded a checkpoint in memory along %s",
            " -> ".join(str(v) for v in plan.versions),
        )
    return checkpoint


class CkptPathMixin:
    """A LightningModule mixin: convert old checkpoints on load, stamp new ones on save."""

    ckpt_path_version: ClassVar[str | None] = None
    """The version this code writes and loads; None means ``latest`` of the graph."""
    ckpt_path_converters: ClassVar[str | Path | None] = None
    """The converters directory; None finds it as the command line does."""
    ckpt_path_allow_lossy: ClassVar[bool] = False

    @classmethod
    def ckpt_path_registry(cls) -> Registry:
        """Return the registry used on load (read once per class)."""
        cached = cls.__dict__.get("_ckpt_path_registry")
        if cached is None:
            cached = Registry.from_directory(cls.ckpt_path_converters)
            cls._ckpt_path_registry = cached  # type: ignore[attr-defined]
        return cached

    def _ckpt_path_target(self) -> str:
        return self.ckpt_path_version or "latest"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Convert ``checkpoint`` to this code's version before Lightning loads its weights."""
        registry = self.ckpt_path_registry()
        try:
            before = read_stamp(checkpoint, find_state_dict(checkpoint))
            upgrade_checkpoint(checkpoint, registry, self._ckpt_path_target(), allow_lossy=self.ckpt_path_allow_lossy)
        except NoStampError:
            log.warning(
                "the checkpoint has no ckpt-path stamp and no version-key; loading it as it is. "
                "Stamp it once with `ckpt-path stamp CKPT VERSION`",
            )
        except CkptPathError as exc:
            raise RuntimeError(f"ckpt-path could not upgrade the checkpoint: {exc}") from exc
        else:
            after = read_stamp(checkpoint, find_state_dict(checkpoint))
            # Lightning builds each saved checkpoint afresh: carry the history over.
            self._ckpt_path_history = after.history if after is not None else ()
            if before is not None and after is not None and before.version != after.version:
                log.info(
                    "to keep the upgraded checkpoint: ckpt-path convert CKPT -o OUTPUT --to %s",
                    shlex.quote(after.version),
                )
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp every checkpoint Lightning saves with this code's version."""
        version = self.ckpt_path_version or str(self.ckpt_path_registry().planner.resolve("latest"))
        previous = checkpoint.get(STAMP_KEY)
        history = tuple(previous.get("history", ())) if isinstance(previous, dict) else ()
        history = history or tuple(getattr(self, "_ckpt_path_history", ()))
        write_stamp(checkpoint, ("state_dict",), Stamp(version=version, history=history))
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
