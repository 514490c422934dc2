"""The demo model: a tiny weather forecaster whose code changed over six versions.

The model follows neural-lam in spirit (see its issue #48 on checkpoint-breaking changes):
it embeds the fields of every grid node, passes a message from the grid to the mesh and
back, mixes the nodes with self-attention and maps back to the fields, predicting the
increment of every field. One class per version; each subclass states only what its version
changed, which is exactly what a converter in ``converters/`` must redo (or undo) in a
checkpoint:

- **0.1.0** ``grid_prev_embedder = Sequential(Linear(F, H), SiLU())``, a g2m block whose
  ``grid_mlp = Sequential(Linear(H, H), SiLU())`` (keys ``g2m_gnn.grid_mlp.0.*``), attention
  with separate ``processor.q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``, and
  ``output_map = Linear(H, F)``. Features in the order of ``FEATURES["0.1.0"]``.
- **0.2.0** the grid MLP is the bare Linear (keys ``g2m_gnn.grid_mlp.*``); the SiLU moved
  into ``forward``. Converter ``001_rename_grid_mlp`` (a convert function, upgrade only).
- **0.3.0** msl moved from position 3 to position 1 of the features, for input and output
  alike: the embedder's weight columns and the output map's rows and bias move.
  ``002_move_msl`` (ops, reversible: the downgrade is its inverse).
- **1.0.0** q, k and v are fused into ``processor.qkv_proj = Linear(H, 3 H)``, split in
  that order in ``forward``. ``003_fuse_qkv`` (ops, reversible).
- **1.0.0+lam** (branch lam) ``output_map`` is called ``head``. ``004_lam_head`` (ops,
  reversible) and ``005_lam_to_1_1`` (merging the branch into 1.1.0).
- **1.1.0** a learnable ``output_scale`` of shape [F], ones at init, multiplies the output
  map. ``006_output_scale`` (ops, reversible; the way back drops a trained scale, so it is
  lossy).

Models take and return tensors [batch, nodes, F] whose last dimension follows the version's
feature order. :func:`arrange` and :func:`disarrange` translate between that layout and
fields named by feature, so outputs of two versions compare feature by feature.

:func:`make_checkpoint` builds a Lightning-style checkpoint dict of any version from a seed,
optionally after a few Adam steps on synthetic data, holding only what
``torch.load(weights_only=True)`` accepts. Only torch is needed; Lightning is not.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional

__all__ = [
    "FEATURES",
    "HIDDEN",
    "MODELS",
    "arrange",
    "disarrange",
    "make_checkpoint",
    "make_fields",
    "make_model",
    "outputs",
]

HIDDEN = 16
"""Width H of every hidden layer."""

_FEATURES_0_1 = ("t2m", "u10", "v10", "msl", "tp", "z500")
_FEATURES_0_3 = ("t2m", "msl", "u10", "v10", "tp", "z500")

_LEARNING_RATE = 1e-2
_TRAIN_BATCH = 4
_TRAIN_NODES = 8


# -- building blocks -------------------------------------------------------------------------


class _GridToMesh(nn.Module):
    """Grid-to-mesh step with a single mesh node.

    Every grid node sends the mesh node a message; the mesh node's state (the mean of the
    messages) is added back to every grid node.
    """

    def messages(self, h: Tensor) -> Tensor:
        """Compute the message each grid node sends, [batch, nodes, H]."""
        raise NotImplementedError

    def forward(self, h: Tensor) -> Tensor:
        """Add the mesh node's state to every grid node."""
        return h + self.messages(h).mean(dim=-2, keepdim=True)


class GridToMesh010(_GridToMesh):
    """0.1.0: the grid MLP is a Sequential, so its Linear is ``grid_mlp.0``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.grid_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())

    def messages(self, h: Tensor) -> Tensor:
        """Apply the grid MLP to each grid node."""
        out: Tensor = self.grid_mlp(h)
        return out


class GridToMesh020(_GridToMesh):
    """0.2.0: the grid MLP is the bare Linear; the activation is applied here."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.grid_mlp = nn.Linear(hidden, hidden)

    def messages(self, h: Tensor) -> Tensor:
        """Apply the grid MLP to each grid node."""
        return functional.silu(self.grid_mlp(h))


class _Attention(nn.Module):
    """Single-head self-attention across the grid nodes, with a residual connection."""

    out_proj: nn.Linear

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Compute queries, keys and values, each [batch, nodes, H]."""
        raise NotImplementedError

    def forward(self, h: Tensor) -> Tensor:
        """Mix the nodes by attention and add the result to ``h``."""
        q, k, v = self.project(h)
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        mixed: Tensor = self.out_proj(weights @ v)
        return h + mixed


class Attention010(_Attention):
    """Up to 0.3.0: separate ``q_proj``, ``k_proj`` and ``v_proj``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project once for each of q, k and v."""
        return self.q_proj(h), self.k_proj(h), self.v_proj(h)


class Attention100(_Attention):
    """From 1.0.0: one fused ``qkv_proj`` whose output is q, k and v in that order."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(hidden, 3 * hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project once and split the result in three."""
        q, k, v = self.qkv_proj(h).chunk(3, dim=-1)
        return q, k, v


# -- one model per version -------------------------------------------------------------------


class Forecaster010(nn.Module):
    """Version 0.1.0: the first release.

    ``forward`` maps the fields [batch, nodes, F] in the order of :attr:`features` to the
    forecast in the same layout: the fields plus the predicted increment.
    """

    features: ClassVar[tuple[str, ...]] = _FEATURES_0_1
    g2m_class: ClassVar[type[_GridToMesh]] = GridToMesh010
    processor_class: ClassVar[type[_Attention]] = Attention010

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        width = len(self.features)
        self.grid_prev_embedder = nn.Sequential(nn.Linear(width, hidden), nn.SiLU())
        self.g2m_gnn = self.g2m_class(hidden)
        self.processor = self.processor_class(hidden)
        self.output_map = nn.Linear(hidden, width)

    def readout(self, h: Tensor) -> Tensor:
        """Predict the increment of every field, [batch, nodes, F]."""
        out: Tensor = self.output_map(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Forecast the next state of the fields ``x``."""
        h = self.grid_prev_embedder(x)
        h = self.processor(self.g2m_gnn(h))
        return x + self.readout(h)


class Forecaster020(Forecaster010):
    """Version 0.2.0: ``g2m_gnn.grid_mlp.0.*`` became ``g2m_gnn.grid_mlp.*``."""

    g2m_class = GridToMesh020


class Forecaster030(Forecaster020):
    """Version 0.3.0: msl moved from position 3 to 1, in the input and the output."""

    features = _FEATURES_0_3


class Forecaster100(Forecaster030):
    """Version 1.0.0: ``processor.{q,k,v}_proj`` fused into ``processor.qkv_proj``."""

    processor_class = Attention100


class Forecaster100Lam(Forecaster100):
    """Version 1.0.0+lam, branch lam: ``output_map`` is called ``head``."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__(hidden)
        self.head = self.output_map
        del self.output_map

    def readout(self, h: Tensor) -> Tensor:
        """Predict the increment with ``head``."""
        out: Tensor = self.head(h)
        return out


class Forecaster110(Forecaster100):
    """Version 1.1.0: a learnable ``output_scale`` [F], ones at init, scales the increment."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__(hidden)
        self.output_scale = nn.Parameter(torch.ones(len(self.features)))

    def readout(self, h: Tensor) -> Tensor:
        """Scale the output map's increment by ``output_scale``."""
        return self.output_scale * super().readout(h)


MODELS: dict[str, type[nn.Module]] = {
    "0.1.0": Forecaster010,
    "0.2.0": Forecaster020,
    "0.3.0": Forecaster030,
    "1.0.0": Forecaster100,
    "1.0.0+lam": Forecaster100Lam,
    "1.1.0": Forecaster110,
}
"""The model class of every version, keyed by the version string the converters use."""

FEATURES: dict[str, list[str]] = {
    "0.1.0": list(_FEATURES_0_1),
    "0.2.0": list(_FEATURES_0_1),
    "0.3.0": list(_FEATURES_0_3),
    "1.0.0": list(_FEATURES_0_3),
    "1.0.0+lam": list(_FEATURES_0_3),
    "1.1.0": list(_FEATURES_0_3),
}
"""The feature order of every version: the last dimension of the model's input and output."""


def _features(version: str) -> list[str]:
    try:
        return FEATURES[version]
    except KeyError:
        raise ValueError(f"no demo model for version {version!r}; known: {', '.join(FEATURES)}") from None


# -- features by name ------------------------------------------------------------------------


def arrange(fields: dict[str, Tensor], version: str) -> Tensor:
    """Stack named fields, each [batch, nodes], into the version's input [batch, nodes, F].

    Fields the version does not use are ignored; a missing one is a ``ValueError``.
    """
    order = _features(version)
    missing = [name for name in order if name not in fields]
    if missing:
        raise ValueError(f"version {version} needs fields {', '.join(missing)}")
    return torch.stack([fields[name] for name in order], dim=-1)


def disarrange(output: Tensor, version: str) -> dict[str, Tensor]:
    """Split a version's output [batch, nodes, F] into fields named by feature.

    The inverse of :func:`arrange`: the result maps each feature to a [batch, nodes] view.
    """
    order = _features(version)
    if output.shape[-1] != len(order):
        raise ValueError(f"version {version} has {len(order)} features, got a last dimension of {output.shape[-1]}")
    return {name: output[..., index] for index, name in enumerate(order)}


def make_fields(seed: int = 0, batch: int = 2, nodes: int = 5) -> dict[str, Tensor]:
    """Random fields [batch, nodes] for every feature any version knows, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, nodes, generator=generator) for name in _FEATURES_0_1}


def outputs(model: nn.Module, fields: dict[str, Tensor], version: str) -> dict[str, Tensor]:
    """Run ``model`` of ``version`` on named fields and name its forecast by feature.

    The model runs without gradients; its train/eval mode is left as it is (no layer here
    depends on it).
    """
    with torch.no_grad():
        forecast: Tensor = model(arrange(fields, version))
    return disarrange(forecast, version)


# -- checkpoints -----------------------------------------------------------------------------


def make_model(version: str, seed: int = 0, hidden: int = HIDDEN) -> nn.Module:
    """Build a freshly initialised model of ``version``; the same seed gives the same parameters.

    The global random state is left as it was.
    """
    _features(version)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[version](hidden)


def _train(model: nn.Module, version: str, steps: int, seed: int) -> torch.optim.Adam:
    """Fit ``model`` for ``steps`` Adam steps to a toy dynamics: every field drifts one node on."""
    optimizer = torch.optim.Adam(model.named_parameters(), lr=_LEARNING_RATE)  # names travel with the state
    for step in range(steps):
        fields = make_fields(seed=seed * 1_000 + step, batch=_TRAIN_BATCH, nodes=_TRAIN_NODES)
        target = {name: field.roll(1, dims=-1) for name, field in fields.items()}
        loss = functional.mse_loss(model(arrange(fields, version)), arrange(target, version))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        optimizer.step()
    return optimizer


def make_checkpoint(version: str, seed: int = 0, train_steps: int = 0) -> dict[str, Any]:
    """Build a Lightning-style checkpoint of the model of ``version`` from ``seed``.

    With ``train_steps`` > 0 the model first takes that many Adam steps on synthetic data, so
    its parameters move off their initial values and the checkpoint carries
    ``optimizer_states``; otherwise that list is empty. Everything inside loads with
    ``torch.load(weights_only=True)``.
    """
    model = make_model(version, seed)
    optimizers = [_train(model, version, train_steps, seed).state_dict()] if train_steps else []
    return {
        "epoch": 0,
        "global_step": train_steps,
        "state_dict": model.state_dict(),
        "optimizer_states": optimizers,
        "hyper_parameters": {"hidden": HIDDEN},
    }
