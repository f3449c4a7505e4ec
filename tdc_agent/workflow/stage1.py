"""Stage 1: train the base denoiser on all timesteps (paper Eq. 6)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from ..core.io import resolve_dir
from ..models.store import save_model
from ..core.config import Config
from ..core.data import ImageDataset
from ..core.devices import barrier, dist_env
from ..diffusion.process import ForwardProcess
from ..models.backbone import build_preset, check_takes, get_backbone
from .rundir import RunDir
from ..training import TrainResult, train

# Training compute of one step relative to its forward pass (forward + backward ≈ 3 forwards).
STEP_COST = 3.0


def build_model(cfg: Config, image_shape: tuple[int, int, int]) -> torch.nn.Module:
    """The base denoiser a config asks for (``model.backbone``), sized to the data; errors if the two disagree."""
    c, h, _ = image_shape
    if cfg.stage1.init:
        model = get_backbone(cfg.model.backbone).load_pretrained(cfg.stage1.init)
        check_takes(model, image_shape, f"stage1.init {cfg.stage1.init}", cfg.data.name)
        return model
    return build_preset(cfg.model.backbone, cfg.model.preset, sample_size=h, channels=c)


def check_model_takes(cfg: Config, image_shape: tuple[int, int, int]) -> None:
    """Build the configured base and run it once on one blank input of ``image_shape``
    (:func:`~tdc_agent.models.backbone.check_takes`), so data the denoiser cannot take fail before
    anything is written, with advice, instead of deep inside stage 1 or evaluation."""
    model = build_model(cfg, image_shape)
    check_takes(model, image_shape, f"The {cfg.stage1.init or cfg.model.preset} {type(model).__name__}",
                cfg.data.name, forward=True)


def model_meta(cfg: Config, data: ImageDataset, **extra: object) -> dict:
    """What a saved model needs to be sampled on its own: schedule, input shape, latent decoder."""
    from ..models.latent import latent_meta

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
    from ..models.latent import training_data

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


def equal_compute_steps(extra_forward_macs: float, extra_train_macs: float, base_macs: float, batch_size: int) -> int:
    """Base steps that cost what stage 2 cost: ``extra_train_macs`` are forward MACs of trained
    models (each with a backward), ``extra_forward_macs`` forward-only MACs (teacher, proxy)."""
    cost = STEP_COST * extra_train_macs + extra_forward_macs
    return max(0, math.ceil(cost / (STEP_COST * base_macs * batch_size) - 1e-9))


def continue_base(cfg: Config, run: RunDir, total_steps: int, out_dir: Path, device: torch.device,
                  data: ImageDataset | None = None, progress: bool = True) -> TrainResult:
    """The base trained on from stage 1's final checkpoint to ``total_steps`` in ``out_dir``.

    This is the honest comparison for TDC ("train the base longer with the same compute"). The
    training loop draws every step's batch from (seed, step) and restores AdamW and EMA state, so
    the continuation is exactly what a longer stage 1 would have produced.
    """
    from ..models.latent import training_data

    out_dir = Path(out_dir)
    if not (out_dir / "model" / "model.safetensors").is_file() and not (out_dir / "checkpoint").is_dir():
        if dist_env().is_main:
            tmp = out_dir.with_name(out_dir.name + ".copying")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(resolve_dir(run.stage1 / "checkpoint"), tmp / "checkpoint")
            if (run.stage1 / "metrics.jsonl").is_file():
                shutil.copy(run.stage1 / "metrics.jsonl", tmp / "metrics.jsonl")
            shutil.rmtree(out_dir, ignore_errors=True)
            tmp.rename(out_dir)
        barrier()
    data = data or training_data(cfg, device=device)
    model = build_model(cfg, data.shape)
    process = ForwardProcess(cfg.schedule, device)
    tcfg = cfg.stage1.model_copy(update={"steps": total_steps})
    return train(model, data, process, tcfg, out_dir, seed=cfg.run.seed, device=device,
                 meta=model_meta(cfg, data, stage="base", steps=total_steps, init=cfg.stage1.init),
                 progress=progress, desc=f"base to {total_steps} steps (equal compute)")
