"""Noise schedules: β, ᾱ, SNR (paper Eq. 2) and the timesteps a DDIM run visits. Pure numpy."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

ScheduleName = Literal["linear", "cosine"]


def betas(
    name: ScheduleName, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Return the β schedule in float64.

    ``linear`` is DDPM's; ``cosine`` is IDDPM's (Nichol & Dhariwal 2021, s = 0.008, β clipped at
    0.999), identical to diffusers' ``squaredcos_cap_v2``.
    """
    if timesteps < 1:
        raise ValueError("timesteps must be >= 1")
    if name == "linear":
        return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    if name == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        out = [
            min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
            for i in range(timesteps)
        ]
        return np.asarray(out, dtype=np.float64)
    raise ValueError(f"unknown schedule {name!r}; use 'linear' or 'cosine'")


def alphas_cumprod(betas_: np.ndarray) -> np.ndarray:
    """ᾱ_t = Π_{s<=t} (1 - β_s)."""
    return np.cumprod(1.0 - betas_)


def snr_db(alphas_cumprod_: np.ndarray) -> np.ndarray:
    """Signal-to-noise ratio in dB (Eq. 2): ``10 log10(ᾱ / (1 - ᾱ))``."""
    return 10.0 * np.log10(alphas_cumprod_ / (1.0 - alphas_cumprod_))


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """Timesteps visited by a DDIM run with ``steps`` steps (diffusers' default 'leading' spacing)."""
    steps = min(steps, timesteps)
    ratio = timesteps // steps
    return (np.arange(0, steps) * ratio).round()[::-1].astype(int)
