"""Forward process, the ε-prediction loss, and DDIM/DDPM sampling through diffusers' schedulers.

The β schedule comes from :mod:`tdc_agent.diffusion.schedule` and is handed to diffusers as
``trained_betas``, so training, grouping and sampling use exactly the same numbers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import schedule as sched
from ..core.config import ScheduleConfig

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def betas_for(cfg: ScheduleConfig) -> np.ndarray:
    return sched.betas(cfg.name, cfg.timesteps, cfg.beta_start, cfg.beta_end)


class ForwardProcess:
    """q(x_t | x_0) for one schedule (Eq. 1), with ᾱ_t kept on the training device."""

    def __init__(self, cfg: ScheduleConfig, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.timesteps = cfg.timesteps
        ac = sched.alphas_cumprod(betas_for(cfg))
        self.alphas_cumprod = torch.tensor(ac, dtype=torch.float32, device=device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def loss(self, denoise_fn: DenoiseFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        """ε-prediction MSE (the standard DDPM objective)."""
        eps = denoise_fn(self.add_noise(x0, noise, t), t)
        err = (eps.float() - noise.float()) ** 2
        if reduction == "none":
            return err.flatten(1).mean(1)
        return err.mean()

    def distill_loss(self, denoise_fn: DenoiseFn, teacher_fn: DenoiseFn, x0: torch.Tensor, t: torch.Tensor,
                     noise: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ε-MSE plus ``weight`` · MSE to the teacher's ε on the same noisy input (output distillation).

        Returns (total, ε-MSE, distillation MSE). The teacher runs without gradients.
        """
        xt = self.add_noise(x0, noise, t)
        eps = denoise_fn(xt, t).float()
        with torch.no_grad():
            target = teacher_fn(xt, t).float()
        eps_loss = ((eps - noise.float()) ** 2).mean()
        kd = ((eps - target) ** 2).mean()
        return eps_loss + weight * kd, eps_loss, kd
