"""Global pruning: how many channels each unit keeps, from one importance threshold over all units.

This is torch-pruning's ``global_pruning=True`` ranking rule (``BasePruner._prune`` in torch-pruning
1.6): every group's importance (the criterion's own, normalised per group by the importance's
``normalizer``, ``"mean"`` for magnitude and Taylor) is averaged over the group's channel groups
(GroupNorm groups / heads: ``imp.view(ch_groups, -1).mean(0)``), the averages of all groups are
concatenated, and every channel index at or below the ``n``-th smallest is removed. Units whose
channels matter little lose many, the others few: a non-uniform shape, unlike a per-layer ratio.

Two things differ from calling ``MetaPruner(global_pruning=True)`` and are deliberate:

* **No unit loses everything.** In a single pruning step, torch-pruning's ``max_pruning_ratio``
  only stops groups that are *already* pruned beyond it (``_check_pruning_ratio``); the threshold
  itself can take every channel of a group, which its ``check_pruning_group`` then refuses, and the
  group is silently left whole. Here each unit keeps at least ``1 - max_pruning_ratio`` of its
  channels (and always one quantum).
* **The MACs limit is met, not a channel ratio.** ``n`` is bisected on the layer geometry's MACs
  prediction (:meth:`UnitGraph.predict_macs`), then the most important removed quanta are given back
  while the limit holds (the global order decides which), so the achieved MACs land close under the
  limit. The model is built by our builder (same channel choice per quantum block as every other
  criterion) and its MACs measured.
"""

from __future__ import annotations

import math
import torch

from .scheme import SchemeError
from .units import UnitGraph

DEFAULT_MAX_PRUNING_RATIO = 0.8


def quantum_importance(graph: UnitGraph, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per unit, one importance per keep step: the channel scores averaged over the unit's equal
    contiguous blocks (torch-pruning's ``imp.view(ch_groups, -1).mean(0)``; our blocks are the same
    layout, :func:`tdc_agent.pruning.importance.select_pruned`)."""
    out = {}
    for u in graph.units:
        s = scores[u.name].float()
        out[u.name] = s.view(u.quantum, u.n_levels).mean(0)
    return out


def _caps(graph: UnitGraph, max_pruning_ratio: float) -> dict[str, int]:
    # steps a unit may lose: at most max_pruning_ratio of them, and never its last one
    return {u.name: min(u.n_levels - 1, math.floor(max_pruning_ratio * u.n_levels + 1e-9)) for u in graph.units}


def levels_at(graph: UnitGraph, imp: dict[str, torch.Tensor], n_remove: int, caps: dict[str, int]) -> dict[str, float]:
    """Keep levels when the ``n_remove`` least important steps over all units go (ties at the
    threshold go too, as in torch-pruning), each unit capped at ``caps`` removed steps."""
    if n_remove <= 0:
        return {}
    cat = torch.cat([imp[u.name] for u in graph.units])
    thres = torch.topk(cat, min(n_remove, len(cat)), largest=False).values[-1]
    levels = {}
    for u in graph.units:
        removed = min(int((imp[u.name] <= thres).sum()), caps[u.name])
        if removed:
            levels[u.name] = (u.n_levels - removed) / u.n_levels
    return levels


def global_levels(graph: UnitGraph, scores: dict[str, torch.Tensor], limit_macs: float,
                  max_pruning_ratio: float = DEFAULT_MAX_PRUNING_RATIO) -> dict[str, float]:
    """The least global pruning (by the threshold rule above) whose predicted MACs are within
    ``limit_macs``, then filled back up to the limit with the most important removed steps.

    Raises :class:`SchemeError` when even the capped maximum cannot reach the limit."""
    if not 0 < max_pruning_ratio < 1:
        raise ValueError(f"max_pruning_ratio must be in (0, 1), got {max_pruning_ratio}")
    imp = quantum_importance(graph, scores)
    caps = _caps(graph, max_pruning_ratio)
    total = sum(len(v) for v in imp.values())
    if graph.predict_macs({}) <= limit_macs:
        return {}
    if graph.predict_macs(levels_at(graph, imp, total, caps)) > limit_macs:
        raise SchemeError(
            f"MACs limit {limit_macs:,.0f} is below what global pruning can reach with every unit keeping at "
            f"least {1 - max_pruning_ratio:.0%} of its channels ({graph.predict_macs(levels_at(graph, imp, total, caps)):,.0f}). "
            "Raise max_pruning_ratio or the limit.")
    lo, hi = 0, total  # predicted MACs fall as n grows; find the least n within the limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if graph.predict_macs(levels_at(graph, imp, mid, caps)) <= limit_macs:
            hi = mid
        else:
            lo = mid
    levels = levels_at(graph, imp, hi, caps)
    # give back removed steps, the most important first, while the limit holds; the step given back
    # in a unit is its most important removed one, i.e. the one just below its kept ones
    units = {u.name: u for u in graph.units}
    while True:
        options = []
        for name, level in levels.items():
            u = units[name]
            kept = round(level * u.n_levels)
            order = torch.sort(imp[name], descending=True).values
            options.append((float(order[kept]), name))
        given = False
        for _, name in sorted(options, reverse=True):
            u = units[name]
            trial = dict(levels)
            up = levels[name] + 1 / u.n_levels
            if up >= 1 - 1e-9:
                trial.pop(name)
            else:
                trial[name] = up
            if graph.predict_macs(trial) <= limit_macs:
                levels, given = trial, True
                break
        if not given:
            return levels
