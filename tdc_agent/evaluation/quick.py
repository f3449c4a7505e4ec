"""Quick evaluation of a candidate: denoising loss on held-out images at a group's timesteps.

Everything is fixed by the seed: the timesteps (evenly spaced over the group), the images (the
first ``batch_size`` of the held-out set) and the noise (one generator per timestep). The same
model therefore always gets the same number, and two candidates are compared on identical inputs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.data import ImageDataset
from ..diffusion.process import ForwardProcess
from ..models.backbone import denoise, eval_mode


def eval_timesteps(timesteps: Sequence[int], n: int) -> list[int]:
    """``n`` timesteps spread evenly over a group (all of them if the group is smaller)."""
    ts = np.asarray(sorted(timesteps))
    pick = np.unique(np.linspace(0, len(ts) - 1, min(n, len(ts))).round().astype(int))
    return [int(t) for t in ts[pick]]


def fixed_noise(shape: Sequence[int], seed: int, t: int) -> torch.Tensor:
    """The noise every model is scored with at timestep ``t``: one generator per (seed, timestep), on
    the CPU, so it is the same on every device and for every batch size."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed * 100_003 + t))


@torch.no_grad()
def quick_loss(
    model: torch.nn.Module,
    data: ImageDataset,
    process: ForwardProcess,
    timesteps: Sequence[int],
    n_timesteps: int = 8,
    batch_size: int = 128,
    seed: int = 0,
) -> float:
    """Mean ε-MSE over the chosen timesteps on fixed images and fixed noise."""
    device = next(model.parameters()).device
    x0 = data.images[:batch_size].to(device)
    losses = []
    with eval_mode(model):
        for t in eval_timesteps(timesteps, n_timesteps):
            noise = fixed_noise(x0.shape, seed, t).to(device)
            tt = torch.full((len(x0),), t, dtype=torch.long, device=device)
            losses.append(float(process.loss(lambda x, s: denoise(model, x, s), x0, tt, noise)))
    return float(np.mean(losses))


@torch.no_grad()
def grid_loss(
    denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    process: ForwardProcess,
    timesteps: Sequence[int],
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Held-out ε-MSE of a whole sampler: every image noised at every timestep of ``timesteps``
    (e.g. the DDIM-100 grid), each timestep served by whatever ``denoise_fn`` routes it to (a
    progressive model's member, or one dense model), with fixed noise per (seed, timestep).

    Two models scored with the same ``seed`` see identical inputs, so their ratio is a paired,
    low-variance measure of which is the better denoiser where the sampler runs — unlike FD, it
    does not depend on the sampling noise. Returns the mean over timesteps and the per-timestep
    values.
    """
    device = images.device
    per_t: dict[int, float] = {}
    for t in sorted(int(x) for x in timesteps):
        noise = fixed_noise(images.shape, seed, t).to(device)
        total = 0.0
        for i in range(0, len(images), batch_size):
            x0, eps = images[i:i + batch_size], noise[i:i + batch_size]
            tt = torch.full((len(x0),), t, dtype=torch.long, device=device)
            total += float(process.loss(denoise_fn, x0, tt, eps, reduction="none").sum())
        per_t[t] = total / len(images)
    return {"mean": float(np.mean(list(per_t.values()))), "per_t": per_t}
