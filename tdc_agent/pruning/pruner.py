"""``Pruner``: one base model, its units, and cached channel scores; builds budget-fitted candidates."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.data import ImageDataset
from ..diffusion.process import ForwardProcess
from .apply import PruneResult, prune_to_budget
from .criteria import get_criterion
from .importance import channel_scores
from ..models.macs import MacsCount, count
from .scheme import PruningScheme
from .units import UnitGraph, analyse


class Pruner:
    """Builds pruned candidates of one base model.

    The dependency analysis, the base MACs count and each criterion's channel scores are computed
    once and reused for every candidate, which is what keeps a candidate at a few seconds on
    ``ddpm-cifar10``.
    """

    def __init__(
        self,
        base: torch.nn.Module,
        data: ImageDataset | None = None,
        process: ForwardProcess | None = None,
        seed: int = 0,
    ):
        self.base = base.eval()
        self.graph: UnitGraph = analyse(self.base)
        self.base_count: MacsCount = count(self.base)
        self.data = data
        self.process = process
        self.seed = seed
        self._scores: dict[tuple[str, tuple[int, ...] | None], dict[str, torch.Tensor]] = {}

    def scores(self, criterion: str, timesteps: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        # only a criterion that scores on the group's timesteps has scores per timestep set
        per_group = get_criterion(criterion).gradients == "group"
        key = (criterion, tuple(timesteps) if per_group and timesteps else None)
        if key not in self._scores:
            self._scores[key] = channel_scores(self.base, self.graph, criterion, self.data, self.process,
                                               timesteps, self.seed)
        return self._scores[key]

    def prune(
        self,
        scheme: PruningScheme | None = None,
        limit_macs: float | None = None,
        criterion: str = "magnitude",
        timesteps: Sequence[int] | None = None,
    ) -> PruneResult:
        """Validate, fit to ``limit_macs``, build with ``criterion``'s channel choice, and measure."""
        scheme = scheme or PruningScheme(source=criterion)
        result = prune_to_budget(self.base, self.graph, scheme, self.scores(criterion, timesteps),
                                 limit_macs, self.base_count)
        result.extra["criterion"] = criterion
        return result

    def limit(self, fraction: float) -> float:
        """A MACs limit as a fraction of the base model's thop MACs."""
        return fraction * self.base_count.thop
