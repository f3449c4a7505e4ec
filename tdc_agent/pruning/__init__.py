"""Structured pruning of diffusers UNets: units, criteria, schemes, the pruner and its records.

The names other layers use, importable from here (``from tdc_agent.pruning import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from importlib import import_module

_MODULES = {
    "apply": ["PruneResult", "build_pruned", "fit_levels"],
    "criteria": ["Criterion", "criterion_names", "get_criterion"],
    "pruner": ["Pruner"],
    "scheme": ["PruningScheme", "SchemeError"],
    "serialize": ["save_pruned"],
    "units": ["UnitGraph", "analyse"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
