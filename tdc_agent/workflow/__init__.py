"""The jobs behind the CLI (plan, train-base, run, assemble, evaluate, prune, sample) and the run they share.

The names other layers use, importable from here (``from tdc_agent.workflow import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_MODULES = {
    "context": ["RunContext"],
    "jobs": ["assemble_job", "evaluate_job", "inspect_model", "parse_groups", "plan_job", "run_job", "train_base_job"],
    "pipeline": ["assemble", "evaluate_run", "run_pipeline"],
    "prune": ["agent_prune_to_target", "prune_to_target"],
    "sampling": ["sample_model"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
