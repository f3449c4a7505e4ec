"""Stage 1: train the base denoiser on all timesteps (paper Eq. 6)."""

from __future__ import annotations

import torch

from .config import Config
from .data import ImageDataset, load_dataset
from .diffusion import ForwardProcess
from .errors import ConfigError
from .models import build_unet, load_pretrained_unet, unet_config
from .runs import RunDir
from .training import TrainResult, train


def build_model(cfg: Config, image_shape: tuple[int, int, int]) -> torch.nn.Module:
    """The base UNet a config asks for, sized to the data; errors if the two disagree."""
    c, h, _ = image_shape
    if cfg.model.path:
        model = load_pretrained_unet(cfg.model.path)
        if model.config.in_channels != c or model.config.sample_size not in (h, [h, h], (h, h)):
            raise ConfigError(
                f"model.path {cfg.model.path} expects {model.config.in_channels}-channel images of size "
                f"{model.config.sample_size}, but the data are {c}x{h}x{h}. Set data.image_size and "
                "data.channels to match."
            )
        return model
    return build_unet(unet_config(cfg.model.preset or "tiny", sample_size=h, channels=c))


def model_meta(cfg: Config, data: ImageDataset, **extra: object) -> dict:
    """What a saved model needs to be sampled on its own: schedule and image shape."""
    return {
        "schedule": cfg.schedule.model_dump(mode="json"),
        "image_shape": list(data.shape),
        "data": data.name,
        **extra,
    }


def train_base(cfg: Config, run: RunDir, device: torch.device, data: ImageDataset | None = None,
               progress: bool = True) -> TrainResult:
    """Train (or resume, or skip if finished) the base model into ``run/stage1``."""
    data = data or load_dataset(cfg.data)
    torch.manual_seed(cfg.run.seed)  # initial weights
    model = build_model(cfg, data.shape)
    process = ForwardProcess(cfg.schedule, device)
    return train(
        model, data, process, cfg.stage1, run.stage1, seed=cfg.run.seed, device=device,
        meta=model_meta(cfg, data, stage="base", steps=cfg.stage1.steps), progress=progress,
        desc="stage 1 (base)",
    )
