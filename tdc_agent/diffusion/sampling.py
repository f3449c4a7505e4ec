"""Sampling: diffusers' DDIM/DDPM schedulers on our β schedule, and the one denoising loop."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ..core.config import ScheduleConfig
from .process import DenoiseFn, betas_for


def make_scheduler(cfg: ScheduleConfig, sampler: str = "ddim") -> DDIMScheduler | DDPMScheduler:
    """A diffusers scheduler using our β schedule, ε-prediction and x0 clipping to [-1, 1].

    DDIM steps must be taken with ``use_clipped_model_output=True`` (as :func:`denoise_loop` does):
    see there why.
    """
    common = dict(
        num_train_timesteps=cfg.timesteps,
        trained_betas=betas_for(cfg).tolist(),
        prediction_type="epsilon",
        clip_sample=True,
    )
    if sampler == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=True)
    if sampler == "ddpm":
        return DDPMScheduler(**common, variance_type="fixed_small")
    raise ValueError(f"unknown sampler {sampler!r}; use 'ddim' or 'ddpm'")


@torch.no_grad()
def sample(
    denoise_fn: DenoiseFn,
    shape: tuple[int, ...],
    cfg: ScheduleConfig,
    sampler: str = "ddim",
    steps: int = 100,
    seed: int = 0,
    eta: float = 0.0,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Draw samples in [-1, 1]. All randomness comes from one CPU generator seeded with ``seed``,
    so the same seed gives the same samples on any device (up to kernel numerics)."""
    scheduler = make_scheduler(cfg, sampler)
    scheduler.set_timesteps(min(steps, cfg.timesteps))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device)
    return denoise_loop(denoise_fn, x, scheduler, eta, gen, progress=progress)


@torch.no_grad()
def denoise_loop(
    denoise_fn: DenoiseFn,
    x: torch.Tensor,
    scheduler: DDIMScheduler | DDPMScheduler,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    iterate: Callable[[Iterable], Iterable] = iter,
) -> torch.Tensor:
    """The one DDIM/DDPM loop: from noise ``x`` through ``scheduler.timesteps`` (already set) to
    samples in [-1, 1]. Step noise is drawn on the CPU from ``generator``, so a seed gives the same
    samples on any device. ``tdc-agent sample`` (via :func:`sample`) and the diffusers export
    (:class:`tdc_agent.pipelines.export.TDCPipeline`) both run it; ``iterate`` wraps the timesteps
    (e.g. a progress bar)."""
    shape, device = x.shape, x.device
    ddim = isinstance(scheduler, DDIMScheduler)
    for i, t in enumerate(iterate(scheduler.timesteps)):
        tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        eps = denoise_fn(x, tt).float()
        if ddim:
            noise = torch.randn(shape, generator=generator).to(device) if eta > 0 else None
            # ε is recomputed from the clipped x0. diffusers' default keeps the model's ε beside the
            # clipped x0, an update that matches neither; the error adds up over steps, and with it
            # every model got worse from DDIM-25 to DDIM-100 (README, "Sampler steps").
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise, use_clipped_model_output=True).prev_sample
        else:
            # diffusers draws DDPM's noise from the generator we pass (on CPU, then moved).
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        if progress is not None:
            progress(i + 1)
    return x.clamp(-1, 1)

