"""The Lightning mixin at its edges: a converter returning a new dict, resuming under other strategies and optimizers.

A tiny model (``embed``: Linear 4 -> 8, ``head``: Linear 8 -> 1) trains a few steps with a real
Trainer and saves; other model classes resume from that checkpoint. Each test checks the Adam
state each parameter gets right after the restore (a fit whose max_steps is already reached runs
no step), or the converted dict the caller holds.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

from ckpt_path import Registry
from ckpt_path.lightning import CkptPathMixin, upgrade_checkpoint
from ckpt_path.stamp import STAMP_KEY, Stamp, read_stamp, write_stamp
from trainers import quiet_trainer

pytestmark = [
    # Lightning's advice for real training runs, not about behaviour under test.
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*number of training batches.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning"),
]

STEPS = 4
"""Steps trained before the checkpoint is saved: a fit to STEPS from it restores and stops."""

RETURNS_A_NEW_DICT = '''"""Rename the first layer, building a new checkpoint dict rather than changing the one given."""

source = "1.0.0"
target = "2.0.0"


def convert(ckpt):
    renamed = {key.replace("encoder.0.", "embed."): value for key, value in ckpt["state_dict"].items()}
    return {**ckpt, "state_dict": renamed}
'''

NOTHING_CHANGES = '''"""A release that changed no weight."""

from ckpt_path.ops import Rename

source = "1.0.0"
target = "2.0.0"
reversible = True
ops = [Rename("unused.{p}", "still_unused.{p}", optional=True)]
'''


def _data() -> DataLoader[tuple[torch.Tensor, ...]]:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


def _fit(model: lightning.LightningModule, steps: int, ckpt_path: Path | None = None, **options: Any) -> Any:
    trainer = quiet_trainer(steps, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's start-up chatter
        trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return trainer


class _Base(CkptPathMixin, lightning.LightningModule):
    ckpt_path_version = "1.0.0"

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.embed(x)))
        return out

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
        x, y = batch
        return functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _classes(converters: Path) -> dict[str, type[_Base]]:
    """Version 1.0.0 of the model, and versions 2.0.0 that resume from it in different ways."""

    class Old(_Base):
        ckpt_path_converters = converters

    class New(Old):
        ckpt_path_version = "2.0.0"

    class HeadFirst(New):
        """Registers the head before the embedding: its optimizer numbers the parameters the other way round."""

        def __init__(self) -> None:
            lightning.LightningModule.__init__(self)
            self.head = nn.Linear(8, 1)
            self.embed = nn.Linear(4, 8)

    class FrozenEmbedding(New):
        """Optimizes the head only: the embedding is frozen."""

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.head.parameters(), lr=1e-2)

    return {"old": Old, "new": New, "head first": HeadFirst, "frozen embedding": FrozenEmbedding}


class _RestoresAfterSetup(SingleDeviceStrategy):
    """A strategy that restores the checkpoint once the optimizers exist, as FSDP and DeepSpeed do."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train version 1.0.0 for STEPS steps and save it; return its path, the classes and its Adam state by name."""
    root = tmp_path_factory.mktemp("saved")
    converters = root / "converters"
    converters.mkdir()
    (converters / "001_nothing.py").write_text(NOTHING_CHANGES, encoding="utf-8")
    classes = _classes(converters)
    torch.manual_seed(0)
    old = classes["old"]()
    trainer = _fit(old, STEPS)
    path = root / "old.ckpt"
    trainer.save_checkpoint(path)
    adam = trainer.optimizers[0]
    state = {name: {k: v.clone() for k, v in adam.state[p].items()} for name, p in old.named_parameters()}
    return {"path": path, "classes": classes, "state": state}


def _state_by_name(model: lightning.LightningModule, trainer: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Return the Adam state the trainer's optimizer holds, by parameter name."""
    adam = trainer.optimizers[0]
    return {name: adam.state[p] for name, p in model.named_parameters() if p in adam.state}


def _assert_same_state(got: dict[str, dict[str, torch.Tensor]], expected: dict[str, dict[str, torch.Tensor]]) -> None:
    assert sorted(got) == sorted(expected)
    for name, fields in expected.items():
        for field, value in fields.items():
            assert torch.equal(got[name][field], value), (name, field)


def test_resume_under_a_strategy_that_restores_after_setup_gives_each_parameter_its_state(saved):
    """With optimizers built before the restore (FSDP, DeepSpeed), reordered parameters still get their own state."""
    model = saved["classes"]["head first"]()
    trainer = _fit(model, STEPS, ckpt_path=saved["path"], strategy=_RestoresAfterSetup(device=torch.device("cpu")))
    assert trainer.global_step == STEPS
    _assert_same_state(_state_by_name(model, trainer), saved["state"])


def test_resume_with_a_frozen_layer_uses_the_rest_of_the_state_and_says_so(saved, caplog):
    """Code that optimizes fewer parameters resumes with their own state; the unused state is named in a warning."""
    model = saved["classes"]["frozen embedding"]()
    with caplog.at_level("WARNING", logger="ckpt_path"):
        trainer = _fit(model, STEPS, ckpt_path=saved["path"])
    expected = {name: fields for name, fields in saved["state"].items() if name.startswith("head.")}
    _assert_same_state(_state_by_name(model, trainer), expected)
    assert (
        "resuming optimizer 0: the optimizer state of embed.weight, embed.bias was not used "
        "(no such parameter to optimize)"
    ) in caplog.text


def test_a_weights_only_save_is_stamped_without_optimizer_names(saved, tmp_path):
    """save_checkpoint(weights_only=True) holds no optimizer state: it is stamped with its version and no names."""
    model = saved["classes"]["old"]()
    trainer = _fit(model, 1)
    path = tmp_path / "weights.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    loaded = torch.load(path, weights_only=True)
    assert "optimizer_states" not in loaded
    stamp = read_stamp(loaded, ("state_dict",))
    assert stamp is not None
    assert (stamp.version, stamp.optimizer_parameters) == ("1.0.0", None)


class _WithTemperature(_Base):
    """Also optimizes a tensor that is not a registered parameter (a learnable temperature kept outside the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = torch.ones(1, requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.temperature

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([*self.parameters(), self.temperature], lr=1e-2)


def test_an_optimizer_with_an_unnamed_tensor_is_saved_unnamed_and_resumed_in_its_order(tmp_path):
    """No name is guessed for a tensor that is no parameter: none are recorded, and resuming keeps the saved order."""
    converters = tmp_path / "converters"
    converters.mkdir()
    (converters / "001_nothing.py").write_text(NOTHING_CHANGES, encoding="utf-8")
    model_class = type("Temperature", (_WithTemperature,), {"ckpt_path_converters": converters})
    torch.manual_seed(0)
    old = model_class()
    trainer = _fit(old, STEPS)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    saved_state = [dict(trainer.optimizers[0].state[p]) for p in [*old.parameters(), old.temperature]]
    stamp = read_stamp(torch.load(path, weights_only=True), ("state_dict",))
    assert stamp is not None
    assert stamp.optimizer_parameters is None
    new = model_class()
    resumed = _fit(new, STEPS, ckpt_path=path)
    adam = resumed.optimizers[0]
    for tensor, expected in zip([*new.parameters(), new.temperature], saved_state, strict=True):
        assert torch.equal(adam.state[tensor]["exp_avg"], expected["exp_avg"])


def test_upgrade_checkpoint_keeps_the_callers_dict_when_a_converter_returns_a_new_one(tmp_path):
    """upgrade_checkpoint returns the dict it was given, now converted, even when a converter builds a new dict."""
    converters = tmp_path / "converters"
    converters.mkdir()
    (converters / "001_rename.py").write_text(RETURNS_A_NEW_DICT, encoding="utf-8")
    weights = {
        "encoder.0.weight": torch.randn(8, 4),
        "encoder.0.bias": torch.randn(8),
        "head.weight": torch.randn(1, 8),
    }
    ckpt: dict[str, Any] = write_stamp(
        {"state_dict": dict(weights), "epoch": 3}, ("state_dict",), Stamp(version="1.0.0")
    )
    same = upgrade_checkpoint(ckpt, Registry.from_directory(converters), "2.0.0")
    assert same is ckpt
    assert ckpt["state_dict"].keys() == {"embed.weight", "embed.bias", "head.weight"}
    assert ckpt["state_dict"]["embed.weight"] is weights["encoder.0.weight"]
    assert ckpt["epoch"] == 3
    assert ckpt[STAMP_KEY]["version"] == "2.0.0"
