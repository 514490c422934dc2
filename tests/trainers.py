"""A quiet Lightning Trainer on CPU, shared by the tests of the Lightning mixin."""

from __future__ import annotations

from typing import Any

import lightning


def quiet_trainer(steps: int, **options: Any) -> lightning.Trainer:
    """Return a Trainer of ``steps`` steps on CPU with no logger, checkpointing, progress bar or summary."""
    return lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
