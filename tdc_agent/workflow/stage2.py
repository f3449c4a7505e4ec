"""Stage 2 (paper Eq. 7-8): for every group, a model within its MACs limit, fine-tuned on the
group's timesteps only, with the same training loop as stage 1.

Per group ``i`` the run directory holds ``stage2/g<i>/``: ``agent/`` (the agent's memory,
transcript and round state, mode ``tdc``), ``pruned/`` (the group's starting model) and
``finetune/`` (checkpoints, metrics and the final ``model/``). Each step is skipped when its
output exists, so a rerun continues where a kill stopped it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write_json, load_tensors, read_json
from ..models.store import load_model, save_model
from ..core.config import Config
from ..core.data import ImageDataset
from ..core.devices import dist_env
from ..diffusion.process import ForwardProcess
from ..evaluation.quick import quick_loss
from ..models.macs import count
from .rundir import RunDir
from ..planning.plan import Group, Plan
from ..training import train


@dataclass
class GroupResult:
    index: int
    model_dir: Path
    summary: dict[str, Any]


def group_steps(cfg: Config, plan: Plan, group: Group) -> int:
    """Fine-tuning steps for one group (equal, or proportional to its share of the timesteps)."""
    if cfg.stage2.steps_rule == "equal":
        return cfg.stage2.steps
    return max(1, round(cfg.stage2.steps * group.num_timesteps / plan.timesteps))


def group_dir(run: RunDir, index: int, variant: str = "") -> Path:
    """``stage2/g<i>`` (or ``stage2-<variant>/g<i>`` for a comparison variant such as ``noprune``)."""
    return run.path / ("stage2" + (f"-{variant}" if variant else "")) / f"g{index}"


def _task(plan: Plan, g: Group, base_macs: int):
    from ..agent.tools import GroupTask

    neighbours = [i for i in (g.index - 1, g.index + 1) if 0 <= i < len(plan.groups)]
    return GroupTask(g.index, g.t_start, g.t_end, g.snr_min, g.snr_max, g.limit_fraction * base_macs,
                     g.limit_fraction, neighbours)


def prepare_group_model(cfg: Config, run: RunDir, plan: Plan, g: Group, base: torch.nn.Module, meta: dict,
                        device: torch.device, pruner_cache: dict, show: bool = True,
                        variant: str = "") -> dict[str, Any]:
    """The group's starting model in ``pruned/`` (agent, baseline criterion, or the base itself)."""
    out = group_dir(run, g.index, variant) / "pruned"
    info_path = group_dir(run, g.index, variant) / "prune.json"
    if (out / "model.safetensors").is_file() and info_path.is_file():
        return read_json(info_path, "group pruning summary")
    mode = cfg.stage2.mode
    gmeta = {**{k: v for k, v in meta.items() if k != "pruning"}, "group": g.index, "t_range": [g.t_start, g.t_end]}
    if mode == "tdc-no-prune" or g.limit_fraction >= 1 - 1e-9:
        # at the full budget there is nothing to prune: the group starts from the base model
        save_model(out, base, gmeta)
        c = count(base)
        info: dict[str, Any] = {"mode": mode if mode == "tdc-no-prune" else f"{mode} (full budget: base)",
                                "levels": {}, "macs_thop": c.thop, "params": c.params}
    elif mode == "tdc":
        from ..agent.proxy import AgentPruning

        ap = AgentPruning(cfg, base, gmeta, group_dir(run, g.index, variant) / "agent", cfg.agent.llm, device,
                          show=show)
        outcome, result = ap.prune_group(_task(plan, g, ap.pruner.base_count.thop), model_dir=out)
        info = {"mode": mode, **outcome.extra["summary"]}
    else:
        from ..pruning.pruner import Pruner
        from ..pruning.serialize import save_pruned

        if "pruner" not in pruner_cache:
            from ..models.latent import training_data

            pruner_cache["pruner"] = Pruner(base, training_data(cfg), ForwardProcess(cfg.schedule, device),
                                            cfg.run.seed)
        p = pruner_cache["pruner"]
        result = p.prune(None, p.limit(g.limit_fraction), mode, g.timesteps)
        save_pruned(out, result, gmeta)
        info = {"mode": mode, **result.summary()}
    atomic_write_json(info_path, json.loads(json.dumps(info, default=str)))
    return info


def finetune_group(cfg: Config, run: RunDir, plan: Plan, g: Group, data: ImageDataset, eval_data: ImageDataset,
                   device: torch.device, show: bool = True, variant: str = "") -> GroupResult:
    """Fine-tune the group's model on its own timesteps; returns where the final model is."""
    gdir = group_dir(run, g.index, variant)
    model, meta = load_model(gdir / "pruned", device)
    process = ForwardProcess(cfg.schedule, device)
    steps = group_steps(cfg, plan, g)
    tcfg = cfg.stage2.model_copy(update={"steps": max(steps, 1)})  # a TrainConfig with stage-2 values
    init_opt = None
    if cfg.stage2.optimizer == "carried":
        init_opt = load_tensors(run.stage1 / "checkpoint" / "optimizer.safetensors", "base optimizer state")
    loss_before = quick_loss(model, eval_data, process, g.timesteps, cfg.agent.eval_timesteps,
                             cfg.agent.eval_batch_size, cfg.run.seed)
    if steps == 0:  # no fine-tuning: the starting model is the group model
        if dist_env().is_main:
            save_model(gdir / "finetune" / "model", model, meta)
        res_dir = gdir / "finetune" / "model"
    else:
        teacher = load_model(run.base_model, device)[0] if cfg.stage2.distill > 0 else None
        res = train(model, data, process, tcfg, gdir / "finetune", seed=cfg.run.seed + 1000 * (g.index + 1),
                    device=device, timesteps=g.timesteps, meta=meta, progress=show,
                    desc=f"stage 2 g{g.index} (t {g.t_start}-{g.t_end})", init_optimizer=init_opt,
                    teacher=teacher, distill=cfg.stage2.distill)
        res_dir = res.model_dir
    tuned, _ = load_model(res_dir, device)
    loss_after = quick_loss(tuned, eval_data, process, g.timesteps, cfg.agent.eval_timesteps,
                            cfg.agent.eval_batch_size, cfg.run.seed)
    summary = {"group": g.index, "steps": steps, "loss_before": loss_before, "loss_after": loss_after}
    from ..core.devices import barrier, dist_env

    if dist_env().is_main:
        atomic_write_json(gdir / "finetune.json", summary)
    barrier()
    return GroupResult(g.index, res_dir, summary)
