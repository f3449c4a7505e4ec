"""The ``unet2d`` backbone: diffusers ``UNet2DModel`` presets, building, loading, and what pruning
needs to know about it (:class:`UNet2DBackbone`, the first implementation of
:class:`tdc_agent.models.backbone.Backbone`).

Presets:

- ``tiny``: sized for the 8x8 digits default on a 2-core CPU (0.7 M params; channels 32/64,
  GroupNorm 8 so every norm group holds >= 4 channels and stays prunable; attention at 4x4).
- ``ddpm-cifar10``: the google/ddpm-cifar10-32 architecture (35.7 M params, 6.06 GMACs by thop).
- ``iddpm-cifar10``: IDDPM's CIFAR-10 width and depth (128 channels, multipliers 1,2,2,2, 3 res
  blocks, attention at 16x16 and 8x8 with 64-dim heads) in diffusers' layout, predicting ε only
  (8.15 GMACs by thop, matching the paper's 8.14 G; 49.1 M params where the paper reports 52.5 M
  for the original code, which also learns variances).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D

from ..core.errors import CheckpointError, ConfigError
from .backbone import Backbone
# the backbone-independent calls, importable from here too (they lived here before the interface)
from .backbone import denoise, eval_mode, example_inputs, param_count  # noqa: F401

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=None,
    ),
    "ddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        attention_head_dim=None,
        dropout=0.1,
    ),
    "iddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        attention_head_dim=64,
        dropout=0.3,
    ),
}

PRESET_DEFAULT_SIZE = {"tiny": (8, 1), "ddpm-cifar10": (32, 3), "iddpm-cifar10": (32, 3)}


def unet_config(preset: str, sample_size: int | None = None, channels: int | None = None) -> dict:
    """The diffusers config dict of a preset, for the given image size and channel count."""
    if preset not in PRESETS:
        raise ConfigError(
            f"Unknown model preset {preset!r}. Use one of {sorted(PRESETS)} or set stage1.init to a "
            "diffusers UNet2DModel folder."
        )
    size, ch = PRESET_DEFAULT_SIZE[preset]
    cfg = dict(PRESETS[preset])
    cfg.update(sample_size=sample_size or size, in_channels=channels or ch, out_channels=channels or ch)
    return cfg


# Far above any real diffusion UNet (Stable Diffusion's widest block has 1280 channels, 2 layers per
# block, 4 blocks): larger numbers are a corrupt or hostile file that would allocate gigabytes, or
# build for minutes, before the weights are checked.
MAX_CHANNELS = 8192
MAX_LAYERS_PER_BLOCK = 16
MAX_BLOCKS = 8
MAX_IO_CHANNELS = 64
MAX_SAMPLE_SIZE = 1024


def check_unet_config(config: Any, path: Path | str) -> None:
    """Refuse a UNet2DModel config whose sizes no real model has, before anything is built."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object (a diffusers UNet2DModel config), not "
                              f"{type(config).__name__}. Re-export the model.")

    def ints(v: Any, hi: int) -> bool:
        vals = v if isinstance(v, (list, tuple)) else [v]
        return all(type(x) is int and 0 < x <= hi for x in vals) and len(vals) <= MAX_BLOCKS

    widths = config.get("block_out_channels", [])
    groups = config.get("norm_num_groups", 32)
    if not (isinstance(widths, list) and ints(widths, MAX_CHANNELS)):
        raise CheckpointError(f"{path}: block_out_channels {widths!r} must be at most {MAX_BLOCKS} positive integers "
                              f"up to {MAX_CHANNELS}.")
    if groups is not None and not (type(groups) is int and groups > 0 and all(w % groups == 0 for w in widths)):
        raise CheckpointError(f"{path}: norm_num_groups {groups!r} must be a positive integer dividing every "
                              f"block width {widths}.")
    bounds = {"layers_per_block": MAX_LAYERS_PER_BLOCK, "in_channels": MAX_IO_CHANNELS,
              "out_channels": MAX_IO_CHANNELS, "sample_size": MAX_SAMPLE_SIZE, "attention_head_dim": MAX_CHANNELS}
    for key, hi in bounds.items():
        v = config.get(key)
        if v is not None and not ints(v, hi):
            raise CheckpointError(f"{path}: {key} {v!r} must be a positive integer up to {hi} (or one per block); no "
                                  "real diffusion UNet is larger. Fix the file or re-export the model.")
    for key in ("down_block_types", "up_block_types"):
        v = config.get(key)
        if v is not None and not (isinstance(v, (list, tuple)) and len(v) <= MAX_BLOCKS):
            raise CheckpointError(f"{path}: {key} must list at most {MAX_BLOCKS} blocks.")


def build_unet(config: dict) -> UNet2DModel:
    """Instantiate a ``UNet2DModel`` from a config dict (diffusers' own keys)."""
    keys = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        return UNet2DModel(**keys)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Cannot build a UNet2DModel from this config: {e}") from None


def load_pretrained_unet(path_or_id: str) -> UNet2DModel:
    """Load a diffusers ``UNet2DModel`` from a folder (or a pipeline folder with ``unet/``) or hub id.

    Only safetensors weights are accepted: ``use_safetensors=True`` makes diffusers refuse pickles.
    """
    p = Path(path_or_id)
    kwargs: dict[str, Any] = {"use_safetensors": True, "low_cpu_mem_usage": False}
    if p.exists():
        if (p / "unet" / "config.json").is_file():
            kwargs["subfolder"] = "unet"
        elif not (p / "config.json").is_file():
            raise CheckpointError(
                f"{p} holds no diffusers UNet (no config.json or unet/config.json). Point stage1.init "
                "at a folder written by UNet2DModel.save_pretrained or a pipeline's save_pretrained."
            )
        from ..core.io import read_json

        config_path = p / kwargs.get("subfolder", "") / "config.json"
        check_unet_config(read_json(config_path, "UNet config"), config_path)
    try:
        return UNet2DModel.from_pretrained(str(path_or_id), **kwargs)
    except Exception as e:  # diffusers raises many types: OSError, EnvironmentError, ValueError
        raise CheckpointError(
            f"Could not load a UNet2DModel from {path_or_id!r}: {e}. Check the path or hub id, and "
            "that the weights are in safetensors format."
        ) from None


class UNet2DBackbone(Backbone):
    """diffusers ``UNet2DModel``: the presets above, ``stage1.init`` from any published one."""

    name = "unet2d"
    module_type = UNet2DModel
    presets = tuple(PRESETS)

    def preset_config(self, preset: str, sample_size: int | None = None, channels: int | None = None) -> dict:
        return unet_config(preset, sample_size, channels)

    def check_config(self, config: Any, path: Path | str) -> None:
        check_unet_config(config, path)

    def build(self, config: dict) -> UNet2DModel:
        return build_unet(config)

    def structure(self, model: torch.nn.Module) -> dict:
        # diffusers keeps the constructor arguments in ``model.config``; pruning leaves it as it was
        return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}

    def load_pretrained(self, path_or_id: str) -> UNet2DModel:
        return load_pretrained_unet(path_or_id)

    def input_shape(self, model: torch.nn.Module) -> tuple[int, int, int]:
        size = model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else (size[0], size[1])
        return model.config.in_channels, h, w

    def fit_hint(self, model: torch.nn.Module) -> str:
        levels = len(model.config.block_out_channels)
        return (f"Its {levels} resolution levels need a height and width divisible by {2 ** (levels - 1)}: resize "
                "the data (data.image_size=...) or pick another preset.")

    def ignored_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        # The output conv must keep one output channel per image channel.
        return [model.conv_out]

    def attention_heads(self, model: torch.nn.Module) -> dict[torch.nn.Module, int]:
        heads: dict[torch.nn.Module, int] = {}
        for m in model.modules():
            if isinstance(m, Attention):
                for proj in (m.to_q, m.to_k, m.to_v):
                    heads[proj] = m.heads
        return heads

    def fix_up(self, model: torch.nn.Module) -> None:
        """Update diffusers attributes that torch-pruning does not know about.

        ``Attention.scale`` is deliberately left at its trained value: the pruned model then computes
        the same attention logits from the channels it kept, which is closer to the base model than
        rescaling by the new head size.
        """
        for m in model.modules():
            if isinstance(m, (Downsample2D, Upsample2D)) and getattr(m, "conv", None) is not None:
                conv = m.conv
                m.channels = conv.in_channels
                m.out_channels = conv.out_channels
            elif isinstance(m, Attention):
                m.inner_dim = m.to_q.out_features
                if hasattr(m, "inner_kv_dim"):
                    m.inner_kv_dim = m.to_k.out_features
                m.query_dim = m.to_q.in_features
                m.out_dim = m.to_out[0].out_features

    def unit_role(self, unit: str) -> str:
        """One of "time embedding", "attention", "resnet inner", "block output"."""
        if unit.startswith("time_embedding"):
            return "time embedding"
        if ".attentions." in unit and any(unit.endswith(p) for p in ("to_q", "to_k", "to_v")):
            return "attention"
        if ".resnets." in unit and unit.endswith("conv1"):
            return "resnet inner"
        return "block output"
