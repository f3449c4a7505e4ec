"""Starting from a pretrained diffusers model (``stage1.init``): its noise schedule comes with it.

A DDPM checkpoint is only meaningful with the β schedule it was trained with, so the schedule is
read from the checkpoint's scheduler config (a pipeline folder's ``scheduler/``, a
``scheduler_config.json`` beside the UNet, or the same on the hub) and replaces the config's
``schedule`` section. The weights themselves are loaded by :func:`models.load_pretrained_unet`
(safetensors only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import Config, ScheduleConfig
from ..core.errors import CheckpointError


def read_scheduler_config(spec: str) -> dict[str, Any] | None:
    """The checkpoint's scheduler config, or None when it ships without one."""
    from diffusers import DDPMScheduler

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


def schedule_from_scheduler_config(sc: dict[str, Any], source: str) -> ScheduleConfig:
    """Our schedule section for a diffusers scheduler config (ε-prediction, linear or cosine β)."""
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
    return ScheduleConfig(name=names[kind], timesteps=int(sc.get("num_train_timesteps", 1000)),
                          beta_start=float(sc.get("beta_start", 1e-4)), beta_end=float(sc.get("beta_end", 0.02)))


def apply_init(cfg: Config) -> tuple[Config, str | None]:
    """The config with the pretrained checkpoint's schedule, and a note when that changed anything."""
    if not cfg.stage1.init:
        return cfg, None
    sc = read_scheduler_config(cfg.stage1.init)
    if sc is None:
        return cfg, (f"stage1.init {cfg.stage1.init} has no scheduler config; using the config's schedule "
                     f"({cfg.schedule.name}, T={cfg.schedule.timesteps}). Make sure it is the one the model was "
                     "trained with.")
    sched = schedule_from_scheduler_config(sc, cfg.stage1.init)
    if sched == cfg.schedule:
        return cfg, None
    data = cfg.model_dump()
    data["schedule"] = sched.model_dump()
    new = Config.model_validate(data)
    return new, (f"schedule taken from stage1.init: {sched.name}, T={sched.timesteps}, β {sched.beta_start:g}"
                 f"→{sched.beta_end:g} (the config said {cfg.schedule.name}, T={cfg.schedule.timesteps}).")
