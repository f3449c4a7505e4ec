"""``Pruner``: one base model, its units, and cached channel scores; builds budget-fitted candidates."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.data import ImageDataset
from ..diffusion.process import ForwardProcess
from .apply import PruneResult, prune_to_budget
from .criteria import get_criterion
from .global_pruning import DEFAULT_MAX_PRUNING_RATIO, global_levels
from .importance import channel_scores
from ..models.macs import MacsCount, count
from .scheme import PruningScheme, SchemeError
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

    def prune_global(
        self,
        limit_macs: float,
        criterion: str = "magnitude",
        timesteps: Sequence[int] | None = None,
        max_pruning_ratio: float = DEFAULT_MAX_PRUNING_RATIO,
    ) -> PruneResult:
        """Global pruning with ``criterion``'s scores (:mod:`tdc_agent.pruning.global_pruning`): one
        importance threshold over all units decides how much each keeps, within ``limit_macs``; no
        unit loses more than ``max_pruning_ratio`` of its channels. Built, then measured."""
        scores = self.scores(criterion, timesteps)
        levels = global_levels(self.graph, scores, limit_macs, max_pruning_ratio)
        scheme = PruningScheme(levels=levels, source=f"global-{criterion}")
        # built as given (no refit: a refit would rescale the shape the threshold chose)
        result = prune_to_budget(self.base, self.graph, scheme, scores, None, self.base_count)
        if result.macs.thop > limit_macs:
            raise SchemeError(f"global pruning predicted {result.predicted_macs:,.0f} MACs but the built model "
                              f"measures {result.macs.thop:,}, above the limit {limit_macs:,.0f}.")
        result.limit_macs = limit_macs
        result.extra.update(criterion=f"global-{criterion}", max_pruning_ratio=max_pruning_ratio)
        return result

    def limit(self, fraction: float) -> float:
        """A MACs limit as a fraction of the base model's thop MACs."""
        return fraction * self.base_count.thop
