"""Denoiser models: diffusers ``UNet2DModel`` presets, loading, and the one ``denoise`` adapter.

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

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import UNet2DModel

from ..core.errors import CheckpointError, ConfigError

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


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def denoise(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The one adapter every caller uses: noisy images and timesteps in, predicted ε out.

    Works for a diffusers UNet (which returns an output object), a DDP wrapper of one, or anything
    returning a tensor. Models with learned variances (2C output channels) keep the ε half.
    """
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    out = model(x, t)
    eps = out.sample if hasattr(out, "sample") else out
    if eps.shape[1] == 2 * x.shape[1]:
        eps = eps[:, : x.shape[1]]
    return eps


def example_inputs(model: torch.nn.Module, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero image batch and timestep 1 on the model's device: what tracing and counting run."""
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    device = next(model.parameters()).device
    return (torch.zeros(batch, cfg.in_channels, size, size, device=device),
            torch.ones(batch, dtype=torch.long, device=device))


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a block with the model in eval mode (no dropout), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_takes(model: torch.nn.Module, shape: tuple[int, ...], what: str, data: str = "",
                forward: bool = False) -> None:
    """The one check that a denoiser takes the data: images (or latents) of ``shape`` (C, H, W).

    Its declared input channels and size must match the data's; with ``forward`` it also runs once,
    in eval mode and without gradients, on one blank input, so a size its downsamplings cannot take
    (e.g. 9x9 through two 2x downsamplings) fails here. A mismatch is a :class:`ConfigError` naming
    ``what`` (the model, as the user gave it) and ``data`` (the dataset's name), with the fix: one
    clear error before anything is written or any LLM is called, not a traceback from deep inside
    training, pruning or evaluation. Models without a diffusers config (``in_channels``) are only
    run, when ``forward`` asks for it."""
    c, h, w = (tuple(shape) + (0, 0, 0))[:3]
    config = getattr(model, "config", None)
    mc = getattr(config, "in_channels", None)
    if mc is not None:
        ms = getattr(config, "sample_size", None)
        size = tuple(ms) if isinstance(ms, (list, tuple)) else (ms, ms)
        if mc != c or (ms is not None and size != (h, w)):
            shown = f"{size[0]}x{size[1]}" if ms is not None else "any-size"
            raise ConfigError(
                f"{what} takes {mc}-channel {shown} inputs, but the data{f' ({data})' if data else ''} are "
                f"{c}x{h}x{w}: the model and the data disagree. Use data that match the model (e.g. "
                f"data.name=cifar10 for the CIFAR-10 presets, or its latent.vae), or size the model to the data "
                f"(data.image_size={h} data.channels={c} for a preset).")
    if not forward:
        return
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *shape, device=device), torch.zeros(1, dtype=torch.long, device=device))
    except (RuntimeError, ValueError) as e:
        levels = len(getattr(config, "block_out_channels", ()) or ()) or 1
        raise ConfigError(
            f"{what} cannot take the data's {'x'.join(map(str, shape))} images ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}). Its {levels} resolution levels need a height and width divisible "
            f"by {2 ** (levels - 1)}: resize the data (data.image_size=...) or pick another preset.") from None
