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

from ckpt_path import Registry
from ckpt_path.commands import convert_file
from ckpt_path.errors import OptimizerStateError
from ckpt_path.lightning import CkptPathMixin
from ckpt_path.stamp import STAMP_KEY, read_stamp
from ckpt_path.storage import load_checkpoint
from trainers import quiet_trainer

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


def _data(seed: int = 0) -> DataLoader[tuple[torch.Tensor, ...]]:
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


@pytest.fixture
def old_checkpoint(tmp_path):
    """Train version 1.0.0 for one step and save its checkpoint; return (path, classes, model)."""
    converters = tmp_path / "converters"
    converters.mkdir()
    (converters / "001_embed.py").write_text(CONVERTER)
    model_v1, model_v2 = _models(converters)
    torch.manual_seed(0)
    old = model_v1()
    trainer = quiet_trainer(1)
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
    trainer = quiet_trainer(3)
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


# -- optimizer state through a feature reorder -------------------------------------------------

REORDER = '''"""Input feature 3 moved to position 1, output feature 2 to position 0."""

from ckpt_path.ops import MoveIndex

source = "1.0.0"
target = "2.0.0"
reversible = True
ops = [MoveIndex("embed.weight", dim=1, index=3, to=1), MoveIndex("head.{p}", dim=0, index=2, to=0)]
'''
IN_ORDER = [0, 3, 1, 2]
OUT_ORDER = [2, 0, 1]
FIRST, MORE = 4, 4
"""Steps trained before the checkpoint (one epoch of 4 batches), then steps resumed."""


def _features(layout: str) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=generator)
    y = torch.stack([x.sum(dim=1), x[:, 0] * x[:, 1], x[:, 3]], dim=1)
    if layout == "B":
        x, y = x[:, IN_ORDER], y[:, OUT_ORDER]
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _reorder_models(converters):
    class LayoutA(_Base):
        ckpt_path_version = "1.0.0"
        ckpt_path_converters = converters

        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.embed(x)))

    class LayoutB(LayoutA):
        ckpt_path_version = "2.0.0"

    class LayoutBReordered(LayoutB):
        """Layout B, whose code registers the head before the embedding."""

        def __init__(self):
            lightning.LightningModule.__init__(self)
            self.head = nn.Linear(8, 3)
            self.embed = nn.Linear(4, 8)

    return LayoutA, LayoutB, LayoutBReordered


def _fit(model, layout: str, steps: int, ckpt_path=None):
    trainer = quiet_trainer(steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _features(layout), ckpt_path=ckpt_path)
    return trainer


def _in_layout_b(state_dict):
    """Return the weights of layout A as layout B holds them (what the converter does)."""
    moved = {k: v.detach().clone() for k, v in state_dict.items()}
    moved["embed.weight"] = moved["embed.weight"][:, IN_ORDER]
    moved["head.weight"] = moved["head.weight"][OUT_ORDER]
    moved["head.bias"] = moved["head.bias"][OUT_ORDER]
    return moved


def _distance(model, expected) -> float:
    return max(float((model.state_dict()[k] - v).abs().max()) for k, v in expected.items())


@pytest.fixture(scope="module")
def reordered(tmp_path_factory):
    """Train layout A for an epoch and save; resume it for MORE steps (the true run); return both."""
    root = tmp_path_factory.mktemp("reorder")
    converters = root / "converters"
    converters.mkdir()
    (converters / "001_reorder.py").write_text(REORDER)
    layout_a, layout_b, layout_b_reordered = _reorder_models(converters)
    torch.manual_seed(0)
    trainer = _fit(layout_a(), "A", FIRST)
    path = root / "a.ckpt"
    trainer.save_checkpoint(path)
    truth = layout_a()
    _fit(truth, "A", FIRST + MORE, ckpt_path=path)
    unnamed = torch.load(path, weights_only=True)
    unnamed[STAMP_KEY].pop("optimizer_parameters", None)
    torch.save(unnamed, root / "unnamed.ckpt")
    return {
        "path": path,
        "unnamed": root / "unnamed.ckpt",
        "converters": converters,
        "B": layout_b,
        "B reordered": layout_b_reordered,
        "truth": _in_layout_b(truth.state_dict()),
    }


def test_saved_checkpoint_records_the_optimizer_parameters(reordered):
    """The mixin stamps which parameter is behind each index of each optimizer's state."""
    stamp = read_stamp(torch.load(reordered["path"], weights_only=True), ("state_dict",))
    assert stamp is not None
    assert stamp.optimizer_parameters == (("embed.weight", "embed.bias", "head.weight", "head.bias"),)


def test_resume_across_a_feature_reorder_trains_as_the_true_run(reordered):
    """Trainer.fit(ckpt_path=A) in layout B moves Adam's moments with the features: weights match to 1e-6."""
    model = reordered["B"]()
    trainer = _fit(model, "B", FIRST + MORE, ckpt_path=reordered["path"])
    assert trainer.global_step == FIRST + MORE
    assert _distance(model, reordered["truth"]) < 1e-6


def test_resume_from_a_converted_file_trains_as_the_true_run(reordered, tmp_path):
    """A checkpoint converted by convert_file resumes in layout B as the true run (1e-6)."""
    converted = tmp_path / "b.ckpt"
    convert_file(
        reordered["path"], converted, target="2.0.0", registry=Registry.from_directory(reordered["converters"])
    )
    model = reordered["B"]()
    _fit(model, "B", FIRST + MORE, ckpt_path=converted)
    assert _distance(model, reordered["truth"]) < 1e-6


def test_parameters_registered_in_a_new_order_resume_on_their_own_state(reordered):
    """Code that registers its parameters in another order resumes without Adam's shape error, as the true run."""
    model = reordered["B reordered"]()
    assert next(iter(dict(model.named_parameters()))) == "head.weight"
    _fit(model, "B", FIRST + MORE, ckpt_path=reordered["path"])
    assert _distance(model, reordered["truth"]) < 1e-6


def test_resume_without_recorded_names_is_refused(reordered):
    """Without recorded names, resuming across the reorder is refused (naming the parameters); loading is not."""
    with pytest.raises(OptimizerStateError, match="--drop-optimizer-state") as raised:
        _fit(reordered["B"](), "B", FIRST + MORE, ckpt_path=reordered["unnamed"])
    assert raised.value.parameters == ("embed.weight", "head.bias", "head.weight")
    assert "ckpt_path_drop_optimizer_state = True in the Lightning mixin" in str(raised.value)  # the mixin's switch
    model = reordered["B"].load_from_checkpoint(reordered["unnamed"])  # no resume: the state is not needed
    expected = _in_layout_b(torch.load(reordered["unnamed"], weights_only=True)["state_dict"])
    assert _distance(model, expected) == 0


def test_drop_optimizer_state_resumes_with_fresh_state(reordered, caplog):
    """ckpt_path_drop_optimizer_state resumes without the state it cannot match, and says so."""
    dropping = type("Dropping", (reordered["B"],), {"ckpt_path_drop_optimizer_state": True})
    model = dropping()
    with caplog.at_level("WARNING", logger="ckpt_path"):
        trainer = _fit(model, "B", FIRST + MORE, ckpt_path=reordered["unnamed"])
    assert trainer.global_step == FIRST + MORE
    assert "dropped the optimizer state in optimizer_states[0]" in caplog.text
