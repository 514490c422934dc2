"""Upgrade checkpoints automatically when Lightning loads them, and stamp the ones it saves.

Mix :class:`CkptPathMixin` into a ``LightningModule``::

    class Forecaster(CkptPathMixin, L.LightningModule):
        ckpt_path_version = "1.1.0"          # the version this code writes
        ckpt_path_converters = "converters"  # optional: default as the command line finds it
        ckpt_path_unstamped = "auto"         # optional: what checkpoints without a stamp are

Then ``Forecaster.load_from_checkpoint(old)`` and ``Trainer.fit(model, ckpt_path=old)`` convert
an old checkpoint in memory to ``ckpt_path_version`` before its weights load (Lightning calls
``on_load_checkpoint`` first in both), through the same pipeline as ``ckpt-path convert``.
Every checkpoint Lightning saves is stamped. A checkpoint whose version cannot be told is
refused with a :class:`~ckpt_path.errors.NoStampError`; it is never loaded unconverted. The file
on disk is not touched. Nothing here imports Lightning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from ckpt_path.checkpoint import Checkpoint
from ckpt_path.errors import NoStampError
from ckpt_path.pipeline import upgrade
from ckpt_path.registry import Registry
from ckpt_path.stamp import STAMP_KEY, Stamp, parse_stamp, write_stamp

__all__ = ["CkptPathMixin", "upgrade_checkpoint"]

log = logging.getLogger("ckpt_path")


def upgrade_checkpoint(  # noqa: PLR0913 - mirrors upgrade()
    checkpoint: dict[str, Any],
    registry: Registry,
    target: str,
    *,
    allow_lossy: bool = False,
    source: str | None = None,
    unstamped: str | None = None,
) -> dict[str, Any]:
    """Convert a checkpoint dict in place to ``target`` and return it (the same object).

    The version comes from ``source``, else the stamp, else the project's ``version-key``, else
    ``unstamped`` (a version or ``"auto"``); see :func:`ckpt_path.pipeline.upgrade`.
    """
    held = Checkpoint.from_object(checkpoint)
    done = upgrade(held, registry, target, source=source, unstamped=unstamped, allow_lossy=allow_lossy)
    if held.obj is not checkpoint:  # a converter returned a new dict: keep the caller's
        converted = dict(held.obj)
        checkpoint.clear()
        checkpoint.update(converted)
    for warning in done.warnings:
        log.warning("%s", warning)
    if done.plan.steps:
        log.info("upgraded a checkpoint in memory along %s", " -> ".join(str(v) for v in done.plan.versions))
    return checkpoint


class CkptPathMixin:
    """A LightningModule mixin: convert old checkpoints on load, stamp new ones on save."""

    ckpt_path_version: ClassVar[str | None] = None
    """The version this code writes and loads; None means ``latest`` of the graph."""
    ckpt_path_converters: ClassVar[str | Path | None] = None
    """The converters directory; None finds it as the command line does."""
    ckpt_path_allow_lossy: ClassVar[bool] = False
    ckpt_path_unstamped: ClassVar[str | None] = None
    """What a checkpoint without a stamp (and without the project's ``version-key``) is: a
    version, or ``"auto"`` to infer it from the schemas. None refuses such checkpoints."""

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
            upgrade_checkpoint(
                checkpoint,
                registry,
                self._ckpt_path_target(),
                allow_lossy=self.ckpt_path_allow_lossy,
                unstamped=self.ckpt_path_unstamped,
            )
        except NoStampError as exc:
            name = type(self).__name__
            raise NoStampError(
                "the checkpoint",
                f'set {name}.ckpt_path_unstamped to the version that wrote it (or "auto" to infer it from '
                "the schemas), set version-key in [tool.ckpt-path], or stamp the file once with "
                "`ckpt-path stamp CKPT VERSION`",
            ) from exc
        stamp = parse_stamp(checkpoint[STAMP_KEY])
        # Lightning builds each saved checkpoint afresh: carry the history over.
        self._ckpt_path_history = stamp.history
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
