"""Turn a scheme into a working pruned denoiser that meets a MACs limit.

1. ``fit_levels``: the least pruning that keeps the scheme's shape and meets the limit. The scheme's
   pruning amounts (1 - level) are scaled by one factor, found by bisection, floored to each unit's
   quantum; then units are stepped back up one quantum at a time while the limit holds, so the
   achieved MACs land close under it. Predictions come from the layer geometry
   (:meth:`UnitGraph.predict_macs`).
2. ``build_pruned``: torch-pruning removes the chosen channels group by group, then the backbone's
   fix-ups (for a UNet: Down/Upsample ``channels``, attention ``inner_dim``) and a forward check.
3. ``prune_to_budget``: both, then *measure* MACs with thop; if the measurement exceeds the limit,
   one more quantum is removed and the model rebuilt. Achieved MACs are always measured, never
   taken from the prediction.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp

from .importance import select_pruned
from ..models.macs import MacsCount, count
from .scheme import PruningScheme, SchemeError
from ..models.backbone import eval_mode, example_inputs, output_tensor
from ..models.record import attach, fix_up, make_record
from .units import Unit, UnitGraph, build_graph

def build_pruned(
    base: torch.nn.Module,
    graph: UnitGraph,
    levels: dict[str, float],
    scores: dict[str, torch.Tensor],
) -> tuple[torch.nn.Module, list[list[Any]]]:
    """A pruned copy of ``base`` keeping ``levels`` of each unit; returns (model, pruning history)."""
    model = copy.deepcopy(base)
    dg = build_graph(model)
    modules = dict(model.named_modules())
    for unit in graph.units:
        idxs = _pruned_channels(unit, levels.get(unit.name, 1.0), scores)
        if not idxs:
            continue
        root = modules[unit.name]
        group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs)
        group.prune()
    history = [[name, bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in dg.pruning_history()]
    return _finished(model), history


class OneUnitPruning:
    """Copies of ``base`` with one unit pruned each, from one dependency graph traced once.

    A unit's pruning group (which layers lose which channels) is computed on the base's graph, and
    its handlers are applied to the same-named layers of a fresh copy: what :func:`build_pruned`
    does for a one-unit scheme, without tracing the copy (most of a small model's build time). The
    sensitivity measurement prunes every unit alone, so it builds one such copy per unit. With more
    than one unit pruned, channel offsets through concatenations move after the first, so schemes
    go through :func:`build_pruned`; so does a unit whose group reaches an unwrapped ``nn.Parameter``
    (replaced, not sliced in place, by torch-pruning)."""

    def __init__(self, base: torch.nn.Module, graph: UnitGraph, scores: dict[str, torch.Tensor]):
        self.base, self.graph, self.scores = base, graph, scores
        self.dg = build_graph(base)
        self.modules = dict(base.named_modules())
        self.names = {m: n for n, m in self.modules.items()}

    def build(self, unit_name: str, level: float) -> tuple[torch.nn.Module, list[list[Any]]]:
        """A pruned copy of the base keeping ``level`` of unit ``unit_name`` (and all of the others)."""
        unit = self.graph.unit(unit_name)
        idxs = _pruned_channels(unit, level, self.scores)
        if not idxs:
            return _finished(copy.deepcopy(self.base)), []
        root = self.modules[unit.name]
        group = self.dg.get_pruning_group(root, self.dg.get_pruner_of_module(root).prune_out_channels, idxs)
        if any(dep.target.type == tp.ops.OPTYPE.PARAMETER for dep, _ in group):
            return build_pruned(self.base, self.graph, {unit.name: level}, self.scores)
        model = copy.deepcopy(self.base)
        modules = dict(model.named_modules())
        for dep, dep_idxs in group:
            name = self.names.get(dep.target.module)
            if name is None:  # a graph-only node (concat, split, element-wise op): nothing in the model
                continue
            dep.handler.__self__.pruning_dim = dep.target.pruning_dim  # as Dependency.__call__ does
            plain = tp._helpers.to_plain_idxs(dep_idxs) if dep_idxs and isinstance(
                dep_idxs[0], tp._helpers._HybridIndex) else dep_idxs
            dep.handler(modules[name], plain)
        return _finished(model), [[unit.name, True, [int(i) for i in group[0][1]]]]


def _pruned_channels(unit: Unit, level: float, scores: dict[str, torch.Tensor]) -> list[int]:
    """The channel indices a unit loses when it keeps ``level``, by its criterion's ``scores``."""
    return select_pruned(scores[unit.name], unit.n_levels, round(level * unit.n_levels))


def _finished(model: torch.nn.Module) -> torch.nn.Module:
    """A model torch-pruning has cut, made whole: the backbone's fix-ups, contiguous tensors, a forward check."""
    fix_up(model)
    for t in list(model.parameters()) + list(model.buffers()):
        t.data = t.data.contiguous()  # sliced weights keep odd strides; a reloaded model has none
    _forward_check(model)
    return model


def _forward_check(model: torch.nn.Module) -> None:
    with torch.no_grad(), eval_mode(model):
        x, t = example_inputs(model)
        out = output_tensor(model(x, t))
    if out.shape != x.shape or not torch.isfinite(out).all():
        raise RuntimeError(f"pruned model failed its forward check: output {tuple(out.shape)} for input "
                           f"{tuple(x.shape)}")  # a bug in the engine, not a user error


def fit_levels(graph: UnitGraph, levels: dict[str, float], limit_macs: float,
               notes: list[str] | None = None) -> dict[str, float]:
    """The least pruning with the scheme's shape whose predicted MACs are within ``limit_macs``.

    If the units the scheme prunes cannot reach the limit even at their minimum, the other units
    are pruned too (all alike, as little as needed) and a note says so.
    """
    amount = {u.name: 1.0 - levels.get(u.name, 1.0) for u in graph.units}
    if max(amount.values(), default=0.0) <= 1e-9:
        amount = {n: 1.0 for n in amount}  # no shape given: prune all units alike
    try:
        return _fit(graph, amount, limit_macs)
    except SchemeError:
        if min(amount.values()) > 0:
            raise
    floor_amount = min(a for a in amount.values() if a > 0)
    widened = {n: a if a > 0 else floor_amount for n, a in amount.items()}
    if notes is not None:
        notes.append("the units this scheme prunes cannot reach the MACs limit on their own; the "
                     "other units were pruned too")
    return _fit(graph, widened, limit_macs)


def _fit(graph: UnitGraph, amount: dict[str, float], limit_macs: float) -> dict[str, float]:
    def at(s: float) -> dict[str, float]:
        return {u.name: u.floor(1.0 - s * amount[u.name]) for u in graph.units}

    if graph.predict_macs(at(0.0)) <= limit_macs:
        return at(0.0)
    hi = 1.0 / min(a for a in amount.values() if a > 0)
    if graph.predict_macs(at(hi)) > limit_macs:
        smallest = graph.predict_macs({u.name: 1 / u.n_levels for u in graph.units})
        raise SchemeError(
            f"MACs limit {limit_macs:,.0f} is below what this scheme's shape can reach "
            f"({graph.predict_macs(at(hi)):,.0f}; the smallest model of this architecture has "
            f"{smallest:,.0f}). Raise the limit (plan.k or --macs-fraction) or prune more units."
        )
    lo = 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if graph.predict_macs(at(mid)) <= limit_macs:
            hi = mid
        else:
            lo = mid
    best = at(hi)
    # Give back whole quanta while the limit holds, the units furthest below their target first.
    target = {u.name: max(1.0 - hi * amount[u.name], 0.0) for u in graph.units}
    units = {u.name: u for u in graph.units}
    while True:
        options = []
        for name, level in best.items():
            u = units[name]
            if level >= 1.0:
                continue
            trial = dict(best)
            trial[name] = min(1.0, level + 1 / u.n_levels)
            if graph.predict_macs(trial) <= limit_macs:
                options.append((target[name] - level, -u.macs_share, name, trial))
        if not options:
            return best
        best = max(options)[3]


@dataclass
class PruneResult:
    """A built, measured pruned model and how it was obtained."""

    model: torch.nn.Module
    scheme: PruningScheme  # the fitted scheme actually built
    requested: PruningScheme  # what was asked for (after snapping)
    notes: list[str]
    limit_macs: float | None
    macs: MacsCount
    base_macs: MacsCount
    history: list[list[Any]]
    kept_channels: dict[str, int]
    seconds: float
    predicted_macs: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.macs.thop / self.base_macs.thop

    def summary(self) -> dict[str, Any]:
        return {
            "limit_macs": self.limit_macs,
            "macs_thop": self.macs.thop,
            "macs_op_level": self.macs.op_level,
            "params": self.macs.params,
            "base_macs_thop": self.base_macs.thop,
            "base_macs_op_level": self.base_macs.op_level,
            "base_params": self.base_macs.params,
            "macs_fraction": self.fraction,
            "limit_fraction": (self.limit_macs / self.base_macs.thop) if self.limit_macs else None,
            "fill": (self.macs.thop / self.limit_macs) if self.limit_macs else None,
            "levels": self.scheme.levels,
            "kept_channels": self.kept_channels,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def prune_to_budget(
    base: torch.nn.Module,
    graph: UnitGraph,
    scheme: PruningScheme,
    scores: dict[str, torch.Tensor],
    limit_macs: float | None,
    base_count: MacsCount | None = None,
) -> PruneResult:
    """Validate, fit, build, measure. ``limit_macs=None`` builds the scheme as given."""
    t0 = time.time()
    requested, notes = scheme.validated(graph)
    levels = requested.full(graph)
    if limit_macs is not None:
        levels = fit_levels(graph, levels, limit_macs, notes)
    base_count = base_count or count(base)
    for _attempt in range(8):
        model, history = build_pruned(base, graph, levels, scores)
        measured = count(model)
        if limit_macs is None or measured.thop <= limit_macs:
            break
        # The prediction was optimistic: remove one more quantum from the biggest unit that can shrink.
        shrinkable = [u for u in graph.units if levels[u.name] > 1 / u.n_levels + 1e-9]
        if not shrinkable:
            raise SchemeError(f"cannot reach the MACs limit {limit_macs:,.0f}: every unit is at its minimum.")
        u = max(shrinkable, key=lambda u: u.macs_share)
        levels[u.name] = u.floor(levels[u.name] - 1 / u.n_levels)
        notes.append(f"measured {measured.thop:,} > limit; removed one more quantum from {u.name}")
    else:
        raise SchemeError(f"could not meet the MACs limit {limit_macs:,.0f} after 8 rebuilds.")
    fitted = PruningScheme(levels={k: v for k, v in levels.items() if v < 1.0}, source=scheme.source,
                           rationale=scheme.rationale)
    # the model carries its structure record, so any later save (e.g. after fine-tuning) keeps it
    attach(model, make_record(history, fitted.levels, fitted.kept_channels(graph)))
    return PruneResult(
        model=model, scheme=fitted, requested=requested, notes=notes, limit_macs=limit_macs,
        macs=measured, base_macs=base_count, history=history, kept_channels=fitted.kept_channels(graph),
        seconds=time.time() - t0, predicted_macs=graph.predict_macs(levels),
    )
