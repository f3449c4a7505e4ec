"""The diffusion process: noise schedules, the forward process and the sampling loops.

The names other layers use, importable from here (``from tdc_agent.diffusion import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_MODULES = {
    "process": ["DenoiseFn", "ForwardProcess"],
    "sampling": ["denoise_loop", "make_scheduler", "sample"],
    "schedule": ["ScheduleName", "alphas_cumprod", "betas", "ddim_timesteps", "snr_db"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
