"""Upgrade checkpoints automatically when Lightning loads them, and stamp the ones it saves.

Mix :class:`CkptPathMixin` into a ``LightningModule``::

    class Forecaster(CkptPathMixin, L.LightningModule):
        ckpt_path_version = "1.1.0"          # the version this code writes
        ckpt_path_converters = "converters"  # optional: default as the command line finds it
        ckpt_path_unstamped = "auto"         # optional: what checkpoints without a stamp are

Then ``Forecaster.load_from_checkpoint(old)`` and ``Trainer.fit(model, ckpt_path=old)`` convert
an old checkpoint in memory to ``ckpt_path_version`` before its weights load (Lightning calls
``on_load_checkpoint`` first in both), through the same pipeline as ``ckpt-path convert``.
Every checkpoint Lightning saves is stamped, with the name of the parameter behind each entry of
each optimizer's state (``optimizer_parameters``), so the optimizer state follows the parameters
through a conversion (see :mod:`ckpt_path.optimizer`); a step that changes parameters whose
state cannot follow is refused (:class:`~ckpt_path.errors.OptimizerStateError`) unless
``ckpt_path_drop_optimizer_state``. When resuming, the state is also put in the order of the
optimizer that loads it, by name, so a model that registers its parameters in another order
resumes on the right state. A checkpoint whose version cannot be told is refused with a
:class:`~ckpt_path.errors.NoStampError`; it is never loaded unconverted. The file on disk is not
touched. Nothing here imports Lightning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from ckpt_path import optimizer
from ckpt_path.checkpoint import Checkpoint
from ckpt_path.errors import NoStampError, StampError
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
    drop_optimizer_state: bool = False,
) -> dict[str, Any]:
    """Convert a checkpoint dict in place to ``target`` and return it (the same object).

    The version comes from ``source``, else the stamp, else the project's ``version-key``, else
    ``unstamped`` (a version or ``"auto"``); see :func:`ckpt_path.pipeline.upgrade`. Optimizer
    state follows the parameters, or the conversion is refused unless ``drop_optimizer_state``.
    """
    return _upgrade_in_place(
        checkpoint,
        registry,
        target,
        allow_lossy=allow_lossy,
        source=source,
        unstamped=unstamped,
        drop_optimizer_state=drop_optimizer_state,
    )


def _upgrade_in_place(  # noqa: PLR0913 - mirrors upgrade()
    checkpoint: dict[str, Any],
    registry: Registry,
    target: str,
    *,
    allow_lossy: bool,
    source: str | None,
    unstamped: str | None,
    drop_optimizer_state: bool,
    optimizer_level: int = logging.WARNING,
) -> dict[str, Any]:
    """:func:`upgrade_checkpoint`, logging what happened to the optimizer state at ``optimizer_level``."""
    held = Checkpoint.from_object(checkpoint)
    done = upgrade(
        held,
        registry,
        target,
        source=source,
        unstamped=unstamped,
        allow_lossy=allow_lossy,
        drop_optimizer_state=drop_optimizer_state,
    )
    if held.obj is not checkpoint:  # a converter returned a new dict: keep the caller's
        converted = dict(held.obj)
        checkpoint.clear()
        checkpoint.update(converted)
    about_optimizer = {f"step {r.step.source} -> {r.step.target}: {r.optimizer}" for r in done.steps if r.optimizer}
    for warning in done.warnings:
        log.log(optimizer_level if warning in about_optimizer else logging.WARNING, "%s", warning)
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
    ckpt_path_drop_optimizer_state: ClassVar[bool] = False
    """When resuming, drop optimizer state that cannot follow a changed parameter (lossy: those
    parameters resume with fresh state) instead of refusing. Loading without resuming
    (``load_from_checkpoint``, ``validate``, ``test``, ``predict``) never needs the optimizer
    state, so there it is always dropped where it cannot follow."""

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
        trainer = self._ckpt_path_trainer()
        fitting = _fitting(trainer)
        try:
            _upgrade_in_place(
                checkpoint,
                registry,
                self._ckpt_path_target(),
                allow_lossy=self.ckpt_path_allow_lossy,
                source=None,
                unstamped=self.ckpt_path_unstamped,
                # Only a resumed fit loads the optimizer state; anywhere else it is never used.
                drop_optimizer_state=self.ckpt_path_drop_optimizer_state or not fitting,
                optimizer_level=logging.WARNING if fitting else logging.DEBUG,
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
        if fitting:
            # The optimizers exist before the checkpoint is restored only with strategies that
            # restore after setup; otherwise on_fit_start, which runs before Lightning loads the
            # optimizer state, puts it in the optimizers' order.
            if getattr(getattr(trainer, "strategy", None), "restore_checkpoint_after_setup", False):
                self._ckpt_path_align(checkpoint)
            else:
                self._ckpt_path_resuming = checkpoint
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)

    def on_fit_start(self) -> None:
        """Put a resumed checkpoint's optimizer state in the order of the optimizers that load it.

        A subclass that overrides this hook must call ``super().on_fit_start()``.
        """
        checkpoint = self.__dict__.pop("_ckpt_path_resuming", None)
        if checkpoint is not None:
            self._ckpt_path_align(checkpoint)
        parent = getattr(super(), "on_fit_start", None)
        if parent is not None:
            parent()

    def _ckpt_path_trainer(self) -> Any:
        try:
            return getattr(self, "trainer", None)  # Lightning raises when no trainer is attached
        except RuntimeError:
            return None

    def _ckpt_path_named_parameters(self) -> list[tuple[str, Any]]:
        named = getattr(self, "named_parameters", None)
        return list(named()) if callable(named) else []

    def _ckpt_path_align(self, checkpoint: dict[str, Any]) -> None:
        """Reorder ``checkpoint["optimizer_states"]`` by parameter name to the live optimizers."""
        optimizers = list(getattr(self._ckpt_path_trainer(), "optimizers", None) or ())
        states = checkpoint.get(optimizer.LIST_PLACE)
        state_dict = checkpoint.get("state_dict")
        if not optimizers or not isinstance(states, list) or not isinstance(state_dict, dict):
            return
        try:
            recorded = parse_stamp(checkpoint[STAMP_KEY]).optimizer_parameters
        except (KeyError, StampError):
            recorded = None
        if recorded is not None and len(recorded) != len(states):
            recorded = None
        name_of = {id(p): name for name, p in self._ckpt_path_named_parameters()}
        for index, (live, state) in enumerate(zip(optimizers, states, strict=False)):
            groups = [[name_of.get(id(p)) for p in group["params"]] for group in live.param_groups]
            if any(name is None for group in groups for name in group):
                continue  # a tensor that is not a named parameter: nothing to match by name
            names = optimizer.parameter_names(state, recorded[index] if recorded else None, state_dict)
            problem = optimizer.align(state, names, [[n for n in group if n is not None] for group in groups])
            if problem:
                log.warning("resuming optimizer %d: %s", index, problem)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp every checkpoint Lightning saves with this code's version."""
        version = self.ckpt_path_version or str(self.ckpt_path_registry().planner.resolve("latest"))
        previous = checkpoint.get(STAMP_KEY)
        history = tuple(previous.get("history", ())) if isinstance(previous, dict) else ()
        history = history or tuple(getattr(self, "_ckpt_path_history", ()))
        stamp = Stamp(version=version, history=history, optimizer_parameters=self._ckpt_path_recorded(checkpoint))
        write_stamp(checkpoint, ("state_dict",), stamp)
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)

    def _ckpt_path_recorded(self, checkpoint: dict[str, Any]) -> tuple[tuple[str, ...], ...] | None:
        """Per optimizer saved in ``checkpoint``, the parameter name behind each index of its state."""
        optimizers = list(getattr(self._ckpt_path_trainer(), "optimizers", None) or ())
        states = checkpoint.get(optimizer.LIST_PLACE)
        if not optimizers or not isinstance(states, list) or len(states) != len(optimizers):
            return None
        return optimizer.record_parameters(self._ckpt_path_named_parameters(), optimizers)


def _fitting(trainer: Any) -> bool:
    """Whether ``trainer`` is fitting (the only time Lightning loads the optimizer state)."""
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    return str(getattr(fn, "value", fn)) == "fit"
