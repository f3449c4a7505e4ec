"""The TDC plan: timestep groups, their MACs budgets, and building, writing and reading plans.

The names other layers use, importable from here (``from tdc_agent.planning import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_MODULES = {
    "build": ["build_plan", "load_plan", "plan_table", "write_plan"],
    "plan": ["Group", "GroupTask", "Plan"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
