"""Stage 1: train the base denoiser on all timesteps (paper Eq. 6)."""

from __future__ import annotations

import torch

from .config import Config
from .checkpoint import save_model
from .data import ImageDataset
from .devices import barrier, dist_env
from .diffusion import ForwardProcess
from .errors import ConfigError
from .models import build_unet, load_pretrained_unet, unet_config
from .runs import RunDir
from .training import TrainResult, train


def build_model(cfg: Config, image_shape: tuple[int, int, int]) -> torch.nn.Module:
    """The base UNet a config asks for, sized to the data; errors if the two disagree."""
    c, h, _ = image_shape
    if cfg.stage1.init:
        model = load_pretrained_unet(cfg.stage1.init)
        if model.config.in_channels != c or model.config.sample_size not in (h, [h, h], (h, h)):
            raise ConfigError(
                f"stage1.init {cfg.stage1.init} expects {model.config.in_channels}-channel inputs of size "
                f"{model.config.sample_size}, but the training data are {c}x{h}x{h}. Set data.image_size and "
                "data.channels (or the latent autoencoder) to match."
            )
        return model
    return build_unet(unet_config(cfg.model.preset or "tiny", sample_size=h, channels=c))


def model_meta(cfg: Config, data: ImageDataset, **extra: object) -> dict:
    """What a saved model needs to be sampled on its own: schedule, input shape, latent decoder."""
    from .latent import latent_meta

    meta = {"schedule": cfg.schedule.model_dump(mode="json"), "image_shape": list(data.shape), "data": data.name,
            **extra}
    latent = latent_meta(cfg, data.shape)
    if latent:
        meta["latent"] = latent
    return meta


def train_base(cfg: Config, run: RunDir, device: torch.device, data: ImageDataset | None = None,
               progress: bool = True) -> TrainResult:
    """Train (or resume, or skip if finished) the base model into ``run/stage1``.

    With ``stage1.init`` the pretrained UNet is the starting point; with ``stage1.steps=0`` it is
    the base as it is.
    """
    from .latent import training_data

    data = data or training_data(cfg, device=device)
    torch.manual_seed(cfg.run.seed)  # initial weights
    model = build_model(cfg, data.shape)
    process = ForwardProcess(cfg.schedule, device)
    if cfg.stage1.steps == 0:
        if not (run.base_model / "model.safetensors").is_file() and dist_env().is_main:
            save_model(run.base_model, model, model_meta(cfg, data, stage="base", steps=0, init=cfg.stage1.init))
        barrier()
        return TrainResult(0, None, run.base_model, run.stage1 / "metrics.jsonl", 0.0, 0)
    return train(
        model, data, process, cfg.stage1, run.stage1, seed=cfg.run.seed, device=device,
        meta=model_meta(cfg, data, stage="base", steps=cfg.stage1.steps, init=cfg.stage1.init), progress=progress,
        desc="stage 1 (base)",
    )
