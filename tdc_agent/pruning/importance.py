"""Which channels go: per-channel importance of every unit, from a registered criterion
(:mod:`tdc_agent.pruning.criteria`; users add their own there). The built-ins:

- ``random``: torch-pruning's RandomImportance (seeded).
- ``magnitude`` (L2) and ``l1``: GroupMagnitudeImportance, p = 2 / 1.
- ``taylor``: GroupTaylorImportance with gradients of the ε-loss at uniformly drawn timesteps.
- ``diff-pruning``: Taylor with gradients accumulated from t = 0 upward until
  L_t < thr · max L (Fang et al. 2023, thr = 0.05).
- ``group-taylor``: Taylor with gradients accumulated over one group's own timesteps (for TDC).

"Taylor" is the same score in all three: torch-pruning's GroupTaylorImportance with its default
``multivariable=False``, i.e. per channel ``Σ |θ · ∂L/∂θ|`` over the channel's weights (and those
coupled to it), the sum of each weight's own first-order estimate. Diff-Pruning's reference code
uses ``multivariable=True``, ``|Σ θ · ∂L/∂θ|``: one first-order estimate for removing the whole
channel, where contributions of opposite sign cancel. Our ``diff-pruning`` keeps its timestep rule
but not that variant (the benchmarks in the README were measured so). The three criteria differ
only in *which* timesteps' gradients are summed (uniform draws / the early-t window / the group's own).

A criterion's ``gradients`` rule (uniform / early-t / group) is what the three Taylor criteria
differ in; a registered criterion of a user's picks one of these rules or none.

Scores are computed once on the dense model; a unit's channel indices do not change when other
units are pruned, so the same scores serve every scheme built from that model.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch

from ..core.data import ImageDataset
from ..diffusion.process import ForwardProcess
from ..core.errors import ConfigError
from ..models.backbone import denoise
from .criteria import GradientRule, get_criterion
from .units import UnitGraph, build_graph


def accumulate_gradients(
    model: torch.nn.Module,
    rule: GradientRule,
    data: ImageDataset,
    process: ForwardProcess,
    timesteps: Sequence[int] | None = None,
    batch_size: int = 32,
    n_timesteps: int = 20,
    threshold: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Fill ``.grad`` of every parameter by ``rule`` (a criterion's ``gradients``); returns what was done."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=False)
    model.eval()  # no dropout: the same model gives the same scores

    def loss_at(t: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(len(data), (len(t),), generator=g)
        noise = torch.randn(data.images[idx].shape, generator=g)
        return process.loss(lambda x, tt: denoise(model, x, tt), data.images[idx].to(device),
                            t.to(device), noise.to(device))

    T = process.timesteps
    if rule == "uniform":
        used = torch.randint(T, (n_timesteps * batch_size,), generator=g).view(n_timesteps, batch_size)
        for t in used:
            (loss_at(t) / n_timesteps).backward()
        info = {"batches": float(n_timesteps)}
    elif rule == "early-t":
        grid = np.unique(np.linspace(0, T - 1, max(2, n_timesteps * 5)).round().astype(int))
        max_loss, used_n = 0.0, 0
        for t in grid:
            loss = loss_at(torch.full((batch_size,), int(t)))
            max_loss = max(max_loss, float(loss.detach()))
            if used_n and float(loss.detach()) < threshold * max_loss:
                break
            loss.backward()
            used_n += 1
        info = {"batches": float(used_n), "t_stop": float(t)}
    elif rule == "group":
        if not timesteps:
            raise ConfigError("This criterion scores on the group's own timesteps, so it needs them "
                              "(use --group with a plan).")
        ts = np.asarray(list(timesteps))
        pick = ts[np.unique(np.linspace(0, len(ts) - 1, min(len(ts), n_timesteps)).round().astype(int))]
        for t in pick:
            (loss_at(torch.full((batch_size,), int(t))) / len(pick)).backward()
        info = {"batches": float(len(pick))}
    else:
        raise ValueError(f"unknown gradient rule {rule!r}")
    for p in model.parameters():  # Taylor reads .grad; a parameter without one would crash it
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return info


def channel_scores(
    model: torch.nn.Module,
    graph: UnitGraph,
    criterion: str,
    data: ImageDataset | None = None,
    process: ForwardProcess | None = None,
    timesteps: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Importance of every channel of every unit (higher = keep) by the registered ``criterion``,
    computed on a copy of ``model``."""
    crit = get_criterion(criterion)
    imp = crit.importance()
    work = copy.deepcopy(model)
    if crit.gradients is not None:
        if data is None or process is None:
            raise ConfigError(f"criterion {criterion!r} needs data and a noise schedule "
                              "(pass --base with a trained model and --config).")
        accumulate_gradients(work, crit.gradients, data, process, timesteps, seed=seed)
    torch.manual_seed(seed)  # RandomImportance draws from the global generator
    dg = build_graph(work)
    modules = dict(work.named_modules())
    scores: dict[str, torch.Tensor] = {}
    for unit in graph.units:
        root = modules[unit.name]
        pruner = dg.get_pruner_of_module(root)
        group = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(unit.channels)))
        s = imp(group)
        if s is None or len(s) != unit.channels:
            s = torch.zeros(unit.channels)
        scores[unit.name] = s.detach().float().cpu()
    return scores


def select_pruned(scores: torch.Tensor, n_levels: int, keep: int) -> list[int]:
    """Channel indices to remove: the same number from each of the unit's equal contiguous blocks
    (its GroupNorm groups / heads), the least important first within each block. The unit has
    ``n_levels`` keep levels (:attr:`Unit.n_levels`); ``keep`` of them stay."""
    channels = len(scores)
    quantum = channels // n_levels
    remove_per_block = n_levels - keep
    if remove_per_block <= 0:
        return []
    out: list[int] = []
    for b in range(quantum):
        block = scores[b * n_levels:(b + 1) * n_levels]
        # stable tie-break by index, so equal scores prune the same channels every time
        order = sorted(range(n_levels), key=lambda i: (float(block[i]), i))
        out.extend(b * n_levels + i for i in order[:remove_per_block])
    return sorted(out)
