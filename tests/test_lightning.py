"""A real Lightning Trainer resumes from a checkpoint of an older model version.

Version 1.0.0 of a tiny regression model keeps its first layer in ``encoder.0``; version 2.0.0
calls it ``embed``. The converter is one ``Rename``. ``load_from_checkpoint`` and
``Trainer.fit(ckpt_path=...)`` both go through :class:`ckpt_path.lightning.CkptPathMixin`.
"""

from __future__ import annotations

import warnings

import lightning
import pytest
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

from ckpt_path import load_checkpoint, read_stamp
from ckpt_path.lightning import CkptPathMixin

pytestmark = [
    # Lightning's advice for real training runs, not about behaviour under test.
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*number of training batches.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning"),
]

CONVERTER = '''"""Rename the first layer: encoder.0 became embed."""

from ckpt_path.ops import Rename

source = "1.0.0"
target = "2.0.0"
reversible = True
ops = [Rename("encoder.0.{p}", "embed.{p}")]
'''


def _data(seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


class _Base(CkptPathMixin, lightning.LightningModule):
    def training_step(self, batch, _index):
        x, y = batch
        return functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _models(converters):
    class ModelV1(_Base):
        ckpt_path_version = "1.0.0"
        ckpt_path_converters = converters

        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(self.encoder(x))

    class ModelV2(_Base):
        ckpt_path_version = "2.0.0"
        ckpt_path_converters = converters

        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(torch.tanh(self.embed(x)))

    return ModelV1, ModelV2


def _trainer(steps: int):
    return lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.fixture
def old_checkpoint(tmp_path):
    """Train version 1.0.0 for one step and save its checkpoint; return (path, classes, model)."""
    converters = tmp_path / "converters"
    converters.mkdir()
    (converters / "001_embed.py").write_text(CONVERTER)
    model_v1, model_v2 = _models(converters)
    torch.manual_seed(0)
    old = model_v1()
    trainer = _trainer(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's start-up chatter
        trainer.fit(old, _data())
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    return path, model_v1, model_v2, old


def test_saved_checkpoint_is_stamped(old_checkpoint):
    """Lightning's own save goes through the mixin and stamps the checkpoint's version."""
    path, *_ = old_checkpoint
    loaded = load_checkpoint(path)
    stamp = read_stamp(loaded.obj, loaded.state_dict_at)
    assert stamp is not None
    assert stamp.version == "1.0.0"
    assert "encoder.0.weight" in loaded.obj["state_dict"]


def test_load_from_checkpoint_upgrades_an_old_checkpoint(old_checkpoint):
    """The new model class loads the old checkpoint strictly and predicts exactly as the old one."""
    path, _, model_v2, old = old_checkpoint
    new = model_v2.load_from_checkpoint(path)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(new(x), old(x))
    before = torch.load(path, weights_only=True)
    assert "encoder.0.weight" in before["state_dict"]  # the file was not touched


def test_trainer_resumes_from_an_old_checkpoint_and_trains_on(old_checkpoint, tmp_path):
    """Trainer.fit(ckpt_path=old) upgrades the weights, restores the optimizer and keeps training."""
    path, _, model_v2, old = old_checkpoint
    new = model_v2()
    trainer = _trainer(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(new, _data(), ckpt_path=path)
    assert trainer.global_step == 3
    assert not torch.equal(new.embed.weight, old.encoder[0].weight)  # it trained on
    resumed = tmp_path / "resumed.ckpt"
    trainer.save_checkpoint(resumed)
    loaded = load_checkpoint(resumed)
    stamp = read_stamp(loaded.obj, loaded.state_dict_at)
    assert stamp is not None
    assert stamp.version == "2.0.0"
    assert [(h["source"], h["target"]) for h in stamp.history] == [("1.0.0", "2.0.0")]


def test_resume_without_the_mixin_fails(old_checkpoint):
    """Without ckpt-path the renamed layer makes Lightning's strict load fail (the test can fail)."""
    path, *_ = old_checkpoint

    class Plain(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.head = nn.Linear(8, 1)

    with pytest.raises(RuntimeError, match="Missing key"):
        Plain.load_from_checkpoint(path)
