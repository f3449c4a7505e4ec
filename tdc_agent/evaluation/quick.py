"""Quick evaluation of a candidate: denoising loss on held-out images at a group's timesteps.

Everything is fixed by the seed: the timesteps (evenly spaced over the group), the images (the
first ``batch_size`` of the held-out set) and the noise (one generator per timestep). The same
model therefore always gets the same number, and two candidates are compared on identical inputs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.data import ImageDataset
from ..diffusion.process import ForwardProcess
from ..models.unet import denoise, eval_mode


def eval_timesteps(timesteps: Sequence[int], n: int) -> list[int]:
    """``n`` timesteps spread evenly over a group (all of them if the group is smaller)."""
    ts = np.asarray(sorted(timesteps))
    pick = np.unique(np.linspace(0, len(ts) - 1, min(n, len(ts))).round().astype(int))
    return [int(t) for t in ts[pick]]


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
            g = torch.Generator().manual_seed(seed * 100_003 + t)
            noise = torch.randn(x0.shape, generator=g).to(device)
            tt = torch.full((len(x0),), t, dtype=torch.long, device=device)
            losses.append(float(process.loss(lambda x, s: denoise(model, x, s), x0, tt, noise)))
    return float(np.mean(losses))
