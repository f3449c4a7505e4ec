"""The jobs behind the CLI (plan, train-base, run, assemble, evaluate, prune, sample) and the run they share.

The names other layers use, importable from here (``from tdc_agent.workflow import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from importlib import import_module

_MODULES = {
    "context": ["RunContext"],
    "jobs": ["assemble_job", "evaluate_job", "inspect_model", "parse_groups", "plan_job", "run_job", "train_base_job"],
    "pipeline": ["assemble", "evaluate_run", "run_pipeline"],
    "prune": ["agent_prune_to_target", "prune_to_target"],
    "sampling": ["sample_model"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
