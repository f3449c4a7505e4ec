"""Sampling a saved model to files: a PNG grid and an ``.npz`` of uint8 samples."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.io import atomic_write_bytes
from ..models.store import load_model
from ..core.config import SampleConfig, ScheduleConfig
from ..core.data import to_uint8
from ..core.errors import ConfigError
from ..diffusion.process import DenoiseFn
from ..diffusion.sampling import sample
from ..core.errors import CheckpointError
from ..models.unet import denoise
from ..core.plots import save_grid
from ..models.latent import decoder
from ..models.progressive import ProgressiveModel, is_progressive
from ..core.progress import make_progress


@dataclass
class SampleResult:
    images: torch.Tensor
    grid_path: Path | None
    npz_path: Path | None
    seconds: float
    macs: dict[str, float] | None = None  # a progressive model's MACs per image and per step


def schedule_of(meta: dict, source: str) -> ScheduleConfig:
    try:
        return ScheduleConfig.model_validate(meta["schedule"])
    except Exception:
        raise CheckpointError(f"{source} has no valid 'schedule' entry in tdc_model.json; re-save "
                              "the model with tdc-agent.") from None


def generate(
    denoise_fn: DenoiseFn,
    image_shape: tuple[int, int, int],
    schedule: ScheduleConfig,
    cfg: SampleConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """``cfg.num`` samples in batches of ``cfg.batch_size``; batch ``b`` uses seed ``seed + b``."""
    if cfg.steps > schedule.timesteps:
        # the scheduler would quietly take fewer steps than asked: refuse instead of mislabelling results
        raise ConfigError(f"--steps {cfg.steps} exceeds the model's {schedule.timesteps} diffusion timesteps: a "
                          f"sampler takes at most one step per timestep. Use --steps {schedule.timesteps} or fewer "
                          "(the paper samples with 100 DDIM steps).")
    out = []
    n_batches = (cfg.num + cfg.batch_size - 1) // cfg.batch_size
    bar = make_progress(enabled=progress, loss=False)
    with bar:
        task = bar.add_task(f"sampling ({cfg.sampler}, {cfg.steps} steps)", total=n_batches * cfg.steps)
        for b in range(n_batches):
            n = min(cfg.batch_size, cfg.num - b * cfg.batch_size)
            done = b * cfg.steps
            out.append(sample(
                denoise_fn, (n, *image_shape), schedule, cfg.sampler, cfg.steps, seed + b, cfg.eta,
                device, progress=lambda i, d=done: bar.update(task, completed=d + i),
            ).cpu())
    return torch.cat(out)


def write_samples(images: torch.Tensor, out_dir: str | Path, name: str = "samples",
                  grid_max: int = 100) -> tuple[Path, Path]:
    """Write ``<name>.png`` (first ``grid_max`` images) and ``<name>.npz`` (all, uint8 NHWC)."""
    out_dir = Path(out_dir)
    grid = save_grid(images[:grid_max], out_dir / f"{name}.png")
    buf = io.BytesIO()
    np.savez_compressed(buf, images=to_uint8(images))
    atomic_write_bytes(out_dir / f"{name}.npz", buf.getvalue())
    return grid, out_dir / f"{name}.npz"


def sample_model(model_dir: str | Path, cfg: SampleConfig, out_dir: str | Path, seed: int = 0,
                 device: torch.device | str = "cpu", progress: bool = True) -> SampleResult:
    """Sample a saved model of any kind (a model directory, or a progressive model's directory) and
    write the grid and ``.npz`` into ``out_dir``; a progressive model also reports its MACs."""
    macs = None
    if is_progressive(model_dir):
        pm = ProgressiveModel.load(model_dir, device)
        fn, shape, schedule, latent = (lambda x, t: pm(x, t)), pm.image_shape, pm.schedule, pm.latent
        macs = pm.sampling_macs(cfg.sampler, cfg.steps)
    else:
        model, meta = load_model(model_dir, device)
        model.eval()
        schedule = schedule_of(meta, str(model_dir))
        shape = tuple(meta.get("image_shape") or (model.config.in_channels, model.config.sample_size,
                                                  model.config.sample_size))
        fn, latent = (lambda x, t: denoise(model, x, t)), meta.get("latent")
    t0 = time.time()
    images = generate(fn, shape, schedule, cfg, seed, device, progress)
    images = decoder(latent, device)(images)
    seconds = time.time() - t0
    grid, npz = write_samples(images, out_dir)
    return SampleResult(images, grid, npz, seconds, macs)
