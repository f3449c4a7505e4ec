"""What a pretrained diffusers checkpoint (``stage1.init``) says about its noise schedule.

A DDPM checkpoint is only meaningful with the β schedule it was trained with, so the schedule is
read from the checkpoint's scheduler config (a pipeline folder's ``scheduler/``, a
``scheduler_config.json`` beside the UNet, or the same on the hub). :func:`tdc_agent.core.config.load_config`
puts it in place of the config's ``schedule`` section, so every caller (``tdc-agent plan``,
``tdc-agent run``, library code) plans with the same schedule. The weights themselves are loaded by
:func:`tdc_agent.models.unet.load_pretrained_unet` (safetensors only).

This module sits in ``core`` (below ``models``) because it reads configuration, not weights:
config resolution must not need the model layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CheckpointError


def read_scheduler_config(spec: str) -> dict[str, Any] | None:
    """The checkpoint's scheduler config, or None when it ships without one."""
    from diffusers import DDPMScheduler  # diffusers is heavy to import: only configs with stage1.init pay

    p = Path(spec)
    if p.exists():
        for cand in (p / "scheduler" / "scheduler_config.json", p / "scheduler_config.json"):
            if cand.is_file():
                return dict(DDPMScheduler.load_config(str(cand.parent)))
        return None
    for sub in ("scheduler", None):
        try:
            return dict(DDPMScheduler.load_config(spec, subfolder=sub))
        except (OSError, ValueError):
            continue
    return None


def schedule_from_scheduler_config(sc: dict[str, Any], source: str) -> dict[str, Any]:
    """The fields of our ``schedule`` section for a diffusers scheduler config (ε-prediction,
    linear or cosine β); :class:`~tdc_agent.core.errors.CheckpointError` for what we cannot express."""
    if sc.get("trained_betas") is not None:
        raise CheckpointError(f"{source}: the scheduler uses explicit trained_betas, which tdc-agent's schedule "
                              "section cannot express. Use a checkpoint with a linear or cosine schedule.")
    if sc.get("prediction_type", "epsilon") != "epsilon":
        raise CheckpointError(f"{source}: the model predicts {sc['prediction_type']!r}; tdc-agent trains and samples "
                              "ε-prediction models only.")
    kind = sc.get("beta_schedule", "linear")
    names = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
    if kind not in names:
        raise CheckpointError(f"{source}: beta_schedule {kind!r} is not supported (linear or squaredcos_cap_v2).")
    return {"name": names[kind], "timesteps": int(sc.get("num_train_timesteps", 1000)),
            "beta_start": float(sc.get("beta_start", 1e-4)), "beta_end": float(sc.get("beta_end", 0.02))}
