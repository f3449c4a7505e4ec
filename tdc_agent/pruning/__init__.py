"""Structured pruning of diffusers UNets: units, criteria, schemes, the pruner and its records.

The names other layers use, importable from here (``from tdc_agent.pruning import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_MODULES = {
    "apply": ["OneUnitPruning", "PruneResult", "build_pruned", "fit_levels"],
    "criteria": ["Criterion", "criterion_names", "get_criterion"],
    "pruner": ["Pruner"],
    "scheme": ["PruningScheme", "SchemeError"],
    "serialize": ["save_pruned"],
    "units": ["UnitGraph", "analyse"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
