"""The diffusion process: noise schedules, the forward process and the sampling loops.

The names other layers use, importable from here (``from tdc_agent.diffusion import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from importlib import import_module

_MODULES = {
    "process": ["DenoiseFn", "ForwardProcess"],
    "sampling": ["denoise_loop", "make_scheduler", "sample"],
    "schedule": ["ScheduleName", "alphas_cumprod", "betas", "ddim_timesteps", "snr_db"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
