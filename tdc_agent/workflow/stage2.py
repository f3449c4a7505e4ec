"""Stage 2 (paper Eq. 7-8): for every group, a model within its MACs limit, fine-tuned on the
group's timesteps only, with the same training loop as stage 1.

Per group ``i`` the run directory holds ``stage2/g<i>/``: ``agent/`` (the agent's transcript and
round state, mode ``tdc``; the memory bank is the run's ``memory/``, shared by all groups), ``pruned/`` (the group's starting model) and
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
from ..core.devices import barrier, dist_env
from ..diffusion.process import ForwardProcess
from ..evaluation.quick import quick_loss
from ..models.macs import count
from .rundir import RunDir
from ..planning.plan import Group, GroupTask, Plan
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


def prepare_group_model(cfg: Config, run: RunDir, plan: Plan, g: Group, base: torch.nn.Module, meta: dict,
                        device: torch.device, pruner_cache: dict, show: bool = True,
                        variant: str = "") -> dict[str, Any]:
    """The group's starting model in ``pruned/`` (agent, baseline criterion, or the base itself)."""
    out = run.group(g.index, variant) / "pruned"
    info_path = run.group(g.index, variant) / "prune.json"
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
        from ..models.macs import thop_macs
        from .prune import prune_with_agent

        task = GroupTask.of(g, thop_macs(base), len(plan.groups))
        summary, _, _ = prune_with_agent(cfg, base, gmeta, task, run.agent(g.index, variant), device, show, model_dir=out,
                                         memory_path=run.agent_memory(g.index, variant))
        info = {"mode": mode, **summary}
    else:
        from .prune import criterion_pruner, prune_with_criterion

        if "pruner" not in pruner_cache:
            pruner_cache["pruner"] = criterion_pruner(cfg, base, mode, device)
        result = prune_with_criterion(pruner_cache["pruner"], mode, g.limit_fraction, g.timesteps, out, gmeta)
        info = {"mode": mode, **result.summary()}
    atomic_write_json(info_path, json.loads(json.dumps(info, default=str)))
    return info


def prepare_in_order(cfg: Config, run: RunDir, plan: Plan, g: Group, base: torch.nn.Module, meta: dict,
                     device: torch.device, pruner_cache: dict, show: bool = True, variant: str = "") -> dict[str, Any]:
    """:func:`prepare_group_model` for ``g``, after groups ``0..g-1`` when the agent prunes.

    The agent of group ``g`` reads the run's memory, where earlier groups' schemes are its neighbour
    hints; so that a run split over jobs (``--groups``) makes the choices one job makes, groups are
    pruned in index order, each under its own lock: a job pruning group 2 first prunes groups 0 and 1
    itself if no other job has (pruning is cheap next to fine-tuning, which stays parallel)."""
    order = plan.groups[: g.index + 1] if cfg.stage2.mode == "tdc" else [g]
    info: dict[str, Any] = {}
    for gj in order:
        with run.lock(f"prune{gj.index}{'-' + variant if variant else ''}"):
            info = prepare_group_model(cfg, run, plan, gj, base, meta, device, pruner_cache, show, variant)
    return info


def finetune_group(cfg: Config, run: RunDir, plan: Plan, g: Group, data: ImageDataset, eval_data: ImageDataset,
                   device: torch.device, show: bool = True, variant: str = "") -> GroupResult:
    """Fine-tune the group's model on its own timesteps; returns where the final model is."""
    gdir = run.group(g.index, variant)
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
    if dist_env().is_main:
        atomic_write_json(gdir / "finetune.json", summary)
    barrier()
    return GroupResult(g.index, res_dir, summary)
