"""Evaluation: the quick group loss (for the agent), Fréchet distances on digits and Inception FID.

The names other layers use, importable from here (``from tdc_agent.evaluation import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_MODULES = {
    "fd": ["digits_fd"],
    "fid": ["InceptionEvaluator"],
    "quick": ["eval_timesteps", "quick_loss"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
