"""Conformance with the peers: their conversion rules, written once as generic ops files, reproduced bitwise.

Each case is one ops file with no number that depends on the model's size, run through the
real pipeline (read from the syntax tree, planned, run, checked) on models of several sizes.

- transformers (installed): Mixtral's expert fusion from ``conversion_mapping.py`` ("mixtral"),
  compared with transformers' own loading (``from_pretrained``) and with what its
  ``save_pretrained`` writes back.
- timm cannot be imported here (it imports torchvision, and the only torchvision wheel for this
  torch breaks the CPU build), so its filters are reproduced below from timm's source as
  published (``timm/models/swin_transformer.py``, ``convnext.py`` and ``vision_transformer.py``:
  ``checkpoint_filter_fn`` and ``_convert_dinov2``), only the branches these checkpoints take.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt_fixtures import assert_bitwise_equal
from ckpt_path import Registry
from ckpt_path.runner import run
from peers import mixtral

# -- helpers ------------------------------------------------------------------------------------


def converters(tmp_path: Path, name: str, body: str) -> Registry:
    """Write one ops file into a fresh converters directory and return its registry."""
    directory = tmp_path / "converters"
    directory.mkdir()
    (directory / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return Registry.from_directory(directory)


def convert(registry: Registry, state_dict: dict[str, torch.Tensor], source: str, target: str) -> dict[str, Any]:
    """Run the plan ``source -> target`` on a copy of a flat state dict; return the state dict it gives."""
    plan = registry.plan(source, target, allow_lossy=True)
    result = run(plan, {"state_dict": {k: v.clone() for k, v in state_dict.items()}})
    converted: dict[str, Any] = result.checkpoint["state_dict"]
    return converted


def generic(body: str) -> None:
    """Assert an ops file's ``ops`` hold no number but dims and the like: nothing per model size."""
    ops = body[body.index("ops = [") :]
    numbers = set(re.findall(r"(?<![\w{.])\d+(?![\w}])", ops))
    assert numbers <= {"0", "1", "2", "3"}, numbers  # dims, a slice's bounds


# -- transformers: Mixtral's experts ------------------------------------------------------------

MIXTRAL = '''\
"""Fuse Mixtral's experts as transformers v5 loads them (conversion_mapping.py, "mixtral")."""

from ckpt_path.ops import Concat, Rename, Stack

source = "4.0.0"
target = "5.0.0"
reversible = True

ops = [
    # MergeModulelist(dim=0) of experts.*.w1 and of experts.*.w3, then Concatenate(dim=1)
    Stack("{*m}.block_sparse_moe.experts.{e}.w1.weight", into="{*m}.block_sparse_moe.experts.w1"),
    Stack("{*m}.block_sparse_moe.experts.{e}.w3.weight", into="{*m}.block_sparse_moe.experts.w3"),
    Concat(
        ["{*m}.block_sparse_moe.experts.w1", "{*m}.block_sparse_moe.experts.w3"],
        into="{*m}.mlp.experts.gate_up_proj",
        dim=1,
    ),
    # MergeModulelist(dim=0) of experts.*.w2
    Stack("{*m}.block_sparse_moe.experts.{e}.w2.weight", into="{*m}.mlp.experts.down_proj"),
    # WeightRenaming(".block_sparse_moe.", ".mlp."): only the router is left under block_sparse_moe. A
    # narrower target than "{*m}.mlp.{*w}" keeps the inverse exact: it must not match the fused experts.
    Rename("{*m}.block_sparse_moe.gate.{p}", "{*m}.mlp.gate.{p}"),
]
'''


def test_transformers_declares_the_mixtral_fusion_we_reproduce():
    """The installed transformers maps Mixtral's per-expert w1/w3 to gate_up_proj and w2 to down_proj."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    mapping = get_checkpoint_conversion_mapping("mixtral")
    targets = {str(getattr(rule, "target_patterns", "")) for rule in mapping}
    assert any("gate_up_proj" in t for t in targets)
    assert any("down_proj" in t for t in targets)
    assert any(".mlp." in t for t in targets)


@pytest.mark.parametrize("experts", [2, 4, 8, 12])
def test_mixtral_fusion_matches_transformers_loading_bitwise(tmp_path, experts):
    """Legacy per-expert weights, as save_pretrained writes them, become exactly what from_pretrained loads."""
    from safetensors.torch import load_file
    from transformers import MixtralForCausalLM

    saved = tmp_path / "saved"
    mixtral(experts, saved)
    legacy = load_file(saved / "model.safetensors")
    assert f"model.layers.1.block_sparse_moe.experts.{experts - 1}.w3.weight" in legacy
    loaded = MixtralForCausalLM.from_pretrained(saved).state_dict()
    registry = converters(tmp_path, "fuse_experts", MIXTRAL)
    ours = convert(registry, legacy, "4.0.0", "5.0.0")
    assert ours["model.layers.0.mlp.experts.gate_up_proj"].shape == (experts, 24, 16)
    assert_bitwise_equal(ours, dict(loaded))


@pytest.mark.parametrize("experts", [2, 4, 8, 12])
def test_mixtral_inverse_matches_transformers_save_pretrained_bitwise(tmp_path, experts):
    """Our inverse of the fusion, run on the model transformers loaded, is what its save_pretrained writes."""
    from safetensors.torch import load_file
    from transformers import MixtralForCausalLM

    mixtral(experts, tmp_path / "saved")
    model = MixtralForCausalLM.from_pretrained(tmp_path / "saved")
    model.save_pretrained(tmp_path / "again")
    written = load_file(tmp_path / "again" / "model.safetensors")
    registry = converters(tmp_path, "fuse_experts", MIXTRAL)
    ours = convert(registry, dict(model.state_dict()), "5.0.0", "4.0.0")
    assert_bitwise_equal(ours, written)


def test_mixtral_ops_file_is_generic():
    """The Mixtral ops file names no expert count, layer count or size."""
    generic(MIXTRAL)


# -- timm: Swin's stage shift -------------------------------------------------------------------


def timm_swin_filter(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reproduce timm's swin_transformer.checkpoint_filter_fn for an original (Microsoft) checkpoint.

    Reproduced from timm's source: buffers the model recomputes are skipped, each stage's
    downsample moves to the start of the next stage, the head becomes head.fc. The patch-embed
    and bias-table resampling apply only when the model's sizes differ, which here they do not.
    """
    old_weights = "head.fc.weight" not in state_dict
    out_dict = {}
    for k, v in state_dict.items():
        if any(n in k for n in ("relative_position_index", "attn_mask")):
            continue  # skip buffers that should not be persistent
        if old_weights:
            k = re.sub(r"layers.(\d+).downsample", lambda x: f"layers.{int(x.group(1)) + 1}.downsample", k)  # noqa: PLW2901
            k = k.replace("head.", "head.fc.")  # noqa: PLW2901
        out_dict[k] = v
    return out_dict


def microsoft_swin(depths: tuple[int, ...], dim: int, window: int, resolution: int) -> dict[str, torch.Tensor]:
    """Return a random Swin checkpoint in the original layout: downsample at the end of each stage."""
    generator = torch.Generator().manual_seed(sum(depths) * dim)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    sd = {"patch_embed.proj.weight": r(dim, 3, 4, 4), "patch_embed.proj.bias": r(dim)}
    sd |= {"patch_embed.norm.weight": r(dim), "patch_embed.norm.bias": r(dim)}
    for i, depth in enumerate(depths):
        d, res, heads = dim * 2**i, resolution // 2**i, 2**i
        win = min(window, res)
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            sd |= {b + "norm1.weight": r(d), b + "norm1.bias": r(d), b + "norm2.weight": r(d), b + "norm2.bias": r(d)}
            sd[b + "attn.relative_position_bias_table"] = r((2 * win - 1) ** 2, heads)
            sd[b + "attn.relative_position_index"] = torch.randint(0, (2 * win - 1) ** 2, (win * win, win * win))
            sd |= {b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d)}
            sd |= {b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d)}
            sd |= {b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d)}
            sd |= {b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d)}
            if j % 2 and res > window:  # shifted windows keep their mask as a buffer
                sd[b + "attn_mask"] = r((res // win) ** 2, win * win, win * win)
        if i < len(depths) - 1:
            sd |= {f"layers.{i}.downsample.norm.weight": r(4 * d), f"layers.{i}.downsample.norm.bias": r(4 * d)}
            sd[f"layers.{i}.downsample.reduction.weight"] = r(2 * d, 4 * d)
    last = dim * 2 ** (len(depths) - 1)
    sd |= {"norm.weight": r(last), "norm.bias": r(last), "head.weight": r(10, last), "head.bias": r(10)}
    return sd


SWIN = '''\
"""timm's Swin filter: drop recomputed buffers, move each downsample to the next stage, head.fc."""

from ckpt_path.ops import DropDerived, Rename

source = "1.0.0"
target = "2.0.0"

ops = [
    DropDerived("{*b}.relative_position_index"),
    DropDerived("{*b}.attn_mask", optional=True),  # only shifted windows larger than the image have one
    Rename("layers.{i}.downsample.{*p}", "layers.{i+1}.downsample.{*p}"),
    Rename("head.{p}", "head.fc.{p}"),
]
'''


@pytest.mark.parametrize(
    ("depths", "dim", "window", "resolution"),
    [
        pytest.param((2, 2, 6, 2), 8, 2, 16, id="tiny-like"),
        pytest.param((1, 1, 2, 1), 12, 4, 16, id="shallow-wide"),
        pytest.param((2, 2, 2), 6, 2, 8, id="three-stages"),
    ],
)
def test_swin_filter_is_one_generic_ops_file(tmp_path, depths, dim, window, resolution):
    """One ops file reproduces timm's Swin filter bitwise for every depth, width and stage count, losslessly."""
    original = microsoft_swin(depths, dim, window, resolution)
    registry = converters(tmp_path, "swin", SWIN)
    plan = registry.plan("1.0.0", "2.0.0")
    assert not plan.lossy
    assert_bitwise_equal(convert(registry, original, "1.0.0", "2.0.0"), timm_swin_filter(dict(original)))
    generic(SWIN)


# -- timm: ConvNeXt(-V2) from Meta's layout, reshapes per stage --------------------------------


def timm_convnext_filter(
    state_dict: dict[str, torch.Tensor], model_shapes: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Reproduce timm's convnext.checkpoint_filter_fn for a Meta (FB) checkpoint, from timm's source.

    Keys are remapped by string replacement; GRN parameters (1, 1, 1, C) become (C,), and every
    2-d weight but the head's is reshaped to the model's shape (1x1 convs when conv_mlp=True).
    """
    out_dict = {}
    for k, v in state_dict.items():
        k = k.replace("downsample_layers.0.", "stem.")  # noqa: PLW2901
        k = re.sub(r"stages.([0-9]+).([0-9]+)", r"stages.\1.blocks.\2", k)  # noqa: PLW2901
        k = re.sub(r"downsample_layers.([0-9]+).([0-9]+)", r"stages.\1.downsample.\2", k)  # noqa: PLW2901
        k = k.replace("dwconv", "conv_dw")  # noqa: PLW2901
        k = k.replace("pwconv", "mlp.fc")  # noqa: PLW2901
        if "grn" in k:
            k = k.replace("grn.beta", "mlp.grn.bias")  # noqa: PLW2901
            k = k.replace("grn.gamma", "mlp.grn.weight")  # noqa: PLW2901
            v = v.reshape(v.shape[-1])  # noqa: PLW2901
        k = k.replace("head.", "head.fc.")  # noqa: PLW2901
        if k.startswith("norm."):
            k = k.replace("norm", "head.norm")  # noqa: PLW2901
        if v.ndim == 2 and "head" not in k:
            v = v.reshape(model_shapes[k])  # noqa: PLW2901
        out_dict[k] = v
    return out_dict


def meta_convnext(depths: tuple[int, ...], dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Return a random ConvNeXt-V2 checkpoint in Meta's layout (GRN gamma/beta shaped (1, 1, 1, C))."""
    generator = torch.Generator().manual_seed(sum(dims))

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    sd = {"downsample_layers.0.0.weight": r(dims[0], 3, 4, 4), "downsample_layers.0.0.bias": r(dims[0])}
    sd |= {"downsample_layers.0.1.weight": r(dims[0]), "downsample_layers.0.1.bias": r(dims[0])}
    for i in range(1, len(dims)):
        p = f"downsample_layers.{i}."
        sd |= {p + "0.weight": r(dims[i - 1]), p + "0.bias": r(dims[i - 1])}
        sd |= {p + "1.weight": r(dims[i], dims[i - 1], 2, 2), p + "1.bias": r(dims[i])}
    for i, (depth, d) in enumerate(zip(depths, dims, strict=True)):
        for j in range(depth):
            b = f"stages.{i}.{j}."
            sd |= {b + "dwconv.weight": r(d, 1, 7, 7), b + "dwconv.bias": r(d)}
            sd |= {b + "norm.weight": r(d), b + "norm.bias": r(d)}
            sd |= {b + "pwconv1.weight": r(4 * d, d), b + "pwconv1.bias": r(4 * d)}
            sd |= {b + "grn.gamma": r(1, 1, 1, 4 * d), b + "grn.beta": r(1, 1, 1, 4 * d)}
            sd |= {b + "pwconv2.weight": r(d, 4 * d), b + "pwconv2.bias": r(d)}
    sd |= {"norm.weight": r(dims[-1]), "norm.bias": r(dims[-1])}
    sd |= {"head.weight": r(7, dims[-1]), "head.bias": r(7)}
    return sd


CONVNEXT = '''\
"""timm's ConvNeXt filter for Meta checkpoints: timm's names, GRN reshaped per stage."""

from ckpt_path.ops import Rename, Reshape, Unsqueeze

source = "1.0.0"
target = "2.0.0"
reversible = True

ops = [
    Rename("downsample_layers.0.{*p}", "stem.{*p}"),
    Rename("stages.{i}.{j}.{*p}", "stages.{i}.blocks.{j}.{*p}"),
    Rename("downsample_layers.{i}.{j}.{p}", "stages.{i}.downsample.{j}.{p}"),
    Rename("{*b}.dwconv.{p}", "{*b}.conv_dw.{p}"),
    Rename("{*b}.pwconv{n}.{p}", "{*b}.mlp.fc{n}.{p}"),
    Rename("{*b}.grn.beta", "{*b}.mlp.grn.bias"),
    Rename("{*b}.grn.gamma", "{*b}.mlp.grn.weight"),
    Reshape("{*b}.mlp.grn.{p}", ["C"], source_shape=[1, 1, 1, "C"]),  # C is each stage's own width
    Rename("head.{p}", "head.fc.{p}"),
    Rename("norm.{p}", "head.norm.{p}"),
]
'''

CONV_MLP = '    Unsqueeze("{*b}.mlp.fc{n}.weight", [2, 3]),  # conv_mlp=True: linear -> 1x1 conv\n]\n'


@pytest.mark.parametrize(
    ("depths", "dims"),
    [
        pytest.param((2, 2, 6, 2), (8, 16, 32, 64), id="atto-like"),
        pytest.param((3, 3, 9, 3), (12, 24, 48, 96), id="tiny-like"),
        pytest.param((1, 2), (5, 7), id="two-stages-odd-widths"),
    ],
)
@pytest.mark.parametrize("conv_mlp", [False, True])
def test_convnext_filter_is_one_generic_ops_file(tmp_path, depths, dims, conv_mlp):
    """One ops file gives timm's ConvNeXt filter bitwise for every size; its inverse restores Meta's layout."""
    body = CONVNEXT[: CONVNEXT.rindex("]")] + CONV_MLP if conv_mlp else CONVNEXT
    original = meta_convnext(depths, dims)
    registry = converters(tmp_path, "convnext", body)
    ours = convert(registry, original, "1.0.0", "2.0.0")
    model_shapes = {k: tuple(v.shape) for k, v in ours.items()}
    if not conv_mlp:  # the model's fc weights are linear: its reshape keeps them 2-d
        assert model_shapes["stages.0.blocks.0.mlp.fc1.weight"] == (4 * dims[0], dims[0])
    assert_bitwise_equal(ours, timm_convnext_filter(dict(original), model_shapes))
    assert_bitwise_equal(convert(registry, ours, "2.0.0", "1.0.0"), original)
    generic(body)


# -- timm: DINOv2 with registers ----------------------------------------------------------------


def timm_convert_dinov2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reproduce timm's vision_transformer._convert_dinov2, from timm's source."""
    out_dict = {}
    state_dict.pop("mask_token", None)
    if "register_tokens" in state_dict:
        out_dict["reg_token"] = state_dict.pop("register_tokens")
        out_dict["cls_token"] = state_dict.pop("cls_token") + state_dict["pos_embed"][:, 0]
        out_dict["pos_embed"] = state_dict.pop("pos_embed")[:, 1:]
    for k, v in state_dict.items():
        if re.match(r"blocks\.(\d+)\.mlp\.w12\.(?:weight|bias)", k):
            out_dict[k.replace("w12", "fc1")] = v
            continue
        if re.match(r"blocks\.(\d+)\.mlp\.w3\.(?:weight|bias)", k):
            out_dict[k.replace("w3", "fc2")] = v
            continue
        out_dict[k] = v
    return out_dict


def meta_dinov2(depth: int, width: int, tokens: int, registers: int) -> dict[str, torch.Tensor]:
    """Return a random DINOv2 checkpoint with registers and SwiGLU MLPs, in Meta's layout."""
    generator = torch.Generator().manual_seed(depth * width)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    sd = {"cls_token": r(1, 1, width), "pos_embed": r(1, tokens + 1, width), "mask_token": r(1, width)}
    sd["register_tokens"] = r(1, registers, width)
    for i in range(depth):
        sd |= {f"blocks.{i}.mlp.w12.weight": r(4 * width, width), f"blocks.{i}.mlp.w12.bias": r(4 * width)}
        sd |= {f"blocks.{i}.mlp.w3.weight": r(width, 2 * width), f"blocks.{i}.mlp.w3.bias": r(width)}
        sd[f"blocks.{i}.norm1.weight"] = r(width)
    return sd


DINOV2 = '''\
"""timm's DINOv2 conversion: registers, the class token's position folded in, SwiGLU renamed."""

from ckpt_path.ops import AddInto, Drop, Rename, Slice

source = "1.0.0"
target = "2.0.0"

ops = [
    Drop("mask_token", optional=True),  # lossy: timm does not keep it
    Rename("register_tokens", "reg_token"),
    Slice("pos_embed", into="cls_pos_embed", dim=1, start=0, stop=1),  # pos_embed[:, 0] out; [:, 1:] stays
    AddInto("cls_pos_embed", into="cls_token"),  # cls_token + pos_embed[:, 0]
    Rename("blocks.{i}.mlp.w12.{p}", "blocks.{i}.mlp.fc1.{p}"),
    Rename("blocks.{i}.mlp.w3.{p}", "blocks.{i}.mlp.fc2.{p}"),
]
'''


@pytest.mark.parametrize(("depth", "width", "tokens", "registers"), [(2, 8, 16, 4), (3, 12, 9, 1)])
def test_dinov2_registers_are_one_generic_ops_file(tmp_path, depth, width, tokens, registers):
    """Slice and AddInto reproduce timm's cls_token + pos_embed[:, 0] and pos_embed[:, 1:] bitwise, any size."""
    original = meta_dinov2(depth, width, tokens, registers)
    registry = converters(tmp_path, "dinov2", DINOV2)
    assert registry.plan("1.0.0", "2.0.0", allow_lossy=True).lossy
    ours = convert(registry, original, "1.0.0", "2.0.0")
    assert_bitwise_equal(ours, timm_convert_dinov2(dict(original)))
    generic(DINOV2)
