"""Stage 2 (paper Eq. 7-8): for every group, a model within its MACs limit, fine-tuned on the
group's timesteps only, with the same training loop as stage 1.

Per group ``i`` the run directory holds ``stage2/g<i>/``: ``agent/`` (the agent's transcript and
round state, mode ``tdc``; the memory bank is the run's ``memory/``, shared by all groups), ``pruned/`` (the group's starting model) and
``finetune/`` (checkpoints, metrics and the final ``model/``). Each step is skipped when its
output exists, so a rerun continues where a kill stopped it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.io import atomic_write_json, load_tensors, read_json
from ..models.store import load_model, save_model
from ..core.config import Config
from ..core.devices import barrier, dist_env, rank0_says
from ..core.progress import console
from ..diffusion.process import ForwardProcess
from ..evaluation.quick import eval_timesteps, quick_loss
from ..models.macs import count
from .context import RunContext
from .rundir import RunDir
from ..planning.plan import Group, GroupTask, Plan
from ..training import train


@dataclass
class GroupResult:
    index: int
    model_dir: Path
    summary: dict[str, Any]


def share_steps(total: int, floor: int, weights: Sequence[float]) -> list[int]:
    """``total`` steps over groups: ``floor`` each first, the rest shared in proportion to
    ``weights`` (each group at least 1 step; rounding may move the sum by up to one per group)."""
    rest = max(0, total - floor * len(weights))
    s = float(sum(weights))
    return [max(1, floor + round(rest * w / s)) if s > 0 else max(1, floor) for w in weights]


def group_steps(cfg: Config, plan: Plan, group: Group, needs: Sequence[float] | None = None) -> int:
    """Planned fine-tuning steps for one group: at least ``stage2.floor_steps``; with ``equal``
    ``stage2.steps`` each; with ``proportional`` / ``need`` the total ``stage2.steps`` less the
    floors, shared by the groups' sizes / by ``needs`` (:func:`group_needs`: each group's share of
    the base's held-out loss). A member that fails its check after these steps may add
    ``extra_steps``; :func:`finetune_group` records what it really trained."""
    s2 = cfg.stage2
    if s2.steps == 0:
        return 0  # no fine-tuning at all: the floor does not apply
    floor = s2.floor_steps
    if s2.steps_rule == "equal":
        return max(s2.steps, floor)
    if s2.steps_rule == "need":
        if needs is None:
            raise ValueError("stage2.steps_rule=need shares steps by the groups' needs: pass group_needs(...)")
        weights = list(needs)
    else:
        weights = [float(g.num_timesteps) for g in plan.groups]
    return share_steps(s2.steps, floor, weights)[group.index]


def need_path(run: RunDir, variant: str = "") -> Path:
    return run.stage2(variant) / "need.json"


def group_needs(ctx: RunContext, cfg: Config, variant: str = "") -> dict[str, Any]:
    """What each group needs (``stage2.steps_rule: need``): the base's held-out quick loss on the
    group's timesteps (val split, fixed noise: the member check's inputs) times the group's number
    of timesteps, i.e. the group's part of the ε-loss that stage 2 minimises. A high-noise group
    whose loss is near zero gets little beyond its floor; a group that carries most of the loss gets
    most of the rest. Measured once per run (``stage2/need.json``: ``needs``, ``base_losses`` and
    the forwards, which count in the training compute) and read back by every job; the member
    checks reuse these base losses instead of measuring them again."""
    path = need_path(ctx.run, variant)
    if not rank0_says(path.is_file()):  # a collective under torchrun: every rank takes the same branch
        if dist_env().is_main:  # rank 0 measures; the lock keeps jobs on the same run directory to one
            with ctx.run.lock(f"need{'-' + variant if variant else ''}"):
                if not path.is_file():
                    base = load_model(ctx.run.base_model, ctx.device)[0]
                    data, process = ctx.held_out(), ForwardProcess(cfg.schedule, ctx.device)
                    losses = [quick_loss(base, data, process, g.timesteps, cfg.agent.eval_timesteps,
                                         cfg.agent.eval_batch_size, cfg.run.seed) for g in ctx.plan.groups]
                    images = sum(len(data.images[: cfg.agent.eval_batch_size])
                                 * len(eval_timesteps(g.timesteps, cfg.agent.eval_timesteps)) for g in ctx.plan.groups)
                    atomic_write_json(path, {"needs": [x * g.num_timesteps for x, g in zip(losses, ctx.plan.groups)],
                                             "base_losses": losses, "forward_macs": float(count(base).thop) * images})
        barrier()
    return read_json(path, "stage-2 group needs")


def stored_needs(cfg: Config, run: RunDir, variant: str = "") -> list[float] | None:
    """The needs a run measured (``None`` when its steps rule does not use them)."""
    if cfg.stage2.steps_rule != "need":
        return None
    path = need_path(run, variant)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: stage2.steps_rule=need measures it before the first fine-tune; "
                                "run `tdc-agent run` to measure it")
    return [float(x) for x in read_json(path, "stage-2 group needs")["needs"]]


def trained_steps(cfg: Config, run: RunDir, plan: Plan, group: Group, variant: str = "") -> int:
    """The steps a group really trained (planned plus any extra), or the plan when not yet trained."""
    done = run.group(group.index, variant) / "finetune.json"
    if done.is_file():
        return int(read_json(done, "group fine-tune summary")["steps"])
    return group_steps(cfg, plan, group, stored_needs(cfg, run, variant))


def prepare_group_model(ctx: RunContext, cfg: Config, g: Group, base: torch.nn.Module, meta: dict,
                        variant: str = "") -> dict[str, Any]:
    """The group's starting model in ``pruned/`` (agent, baseline criterion, or the base itself).
    ``cfg`` is the variant's config (its ``stage2.mode``); the agent and the pruner are ``ctx``'s."""
    run, plan = ctx.run, ctx.plan
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
        agent = ctx.agent(base, meta, run.agent(g.index, variant), run.agent_memory(g.index, variant))
        task = GroupTask.of(g, agent.pruner.base_count.thop, len(plan.groups))
        outcome, _ = agent.prune_group(task, model_dir=out, out_dir=run.agent(g.index, variant))
        info = {"mode": mode, **outcome.extra["summary"]}
    else:
        from .prune import prune_with_criterion

        result = prune_with_criterion(ctx.pruner(base, mode), mode, g.limit_fraction, g.timesteps, out, gmeta)
        info = {"mode": mode, **result.summary()}
    atomic_write_json(info_path, json.loads(json.dumps(info, default=str)))
    return info


def prepare_in_order(ctx: RunContext, cfg: Config, g: Group, base: torch.nn.Module, meta: dict,
                     variant: str = "") -> dict[str, Any]:
    """:func:`prepare_group_model` for ``g``, after groups ``0..g-1`` when the agent prunes.

    The agent of group ``g`` reads the run's memory, where earlier groups' schemes are its neighbour
    hints; so that a run split over jobs (``--groups``) makes the choices one job makes, groups are
    pruned in index order, each under its own lock: a job pruning group 2 first prunes groups 0 and 1
    itself if no other job has (pruning is cheap next to fine-tuning, which stays parallel)."""
    order = ctx.plan.groups[: g.index + 1] if cfg.stage2.mode == "tdc" else [g]
    info: dict[str, Any] = {}
    for gj in order:
        with ctx.run.lock(f"prune{gj.index}{'-' + variant if variant else ''}"):
            info = prepare_group_model(ctx, cfg, gj, base, meta, variant)
    return info


def finetune_group(ctx: RunContext, cfg: Config, g: Group, show: bool = True, variant: str = "") -> GroupResult:
    """Fine-tune the group's model on its own timesteps (``cfg``: the variant's config), then check
    it against the base.

    The member's held-out quick loss on the group's timesteps is compared with the base's; while it
    is above ``stage2.max_loss_ratio`` x the base's, training goes on from its last checkpoint,
    ``floor_steps`` at a time, up to ``stage2.extra_steps`` more. ``finetune.json`` records the
    losses (base, pruned, each check), the steps trained and whether the member ended worse.
    """
    run, plan, device = ctx.run, ctx.plan, ctx.device
    data, eval_data = ctx.training_data(), ctx.held_out()
    gdir = run.group(g.index, variant)
    model, meta = load_model(gdir / "pruned", device)
    process = ForwardProcess(cfg.schedule, device)
    need = group_needs(ctx, cfg, variant) if cfg.stage2.steps_rule == "need" else None
    planned = group_steps(cfg, plan, g, need["needs"] if need else None)
    ft_dir = gdir / "finetune"
    target_file = ft_dir / "target.json"  # the steps of an extension in progress (resume)
    steps = max(planned, int(read_json(target_file, "fine-tune target")["steps"])) if target_file.is_file() else planned
    init_opt = None
    if cfg.stage2.optimizer == "carried":
        init_opt = load_tensors(run.stage1 / "checkpoint" / "optimizer.safetensors", "base optimizer state")

    def loss_of(m: torch.nn.Module) -> float:
        return quick_loss(m, eval_data, process, g.timesteps, cfg.agent.eval_timesteps, cfg.agent.eval_batch_size,
                          cfg.run.seed)

    base = load_model(run.base_model, device)[0]
    loss_base = float(need["base_losses"][g.index]) if need else loss_of(base)  # the same inputs: measured once
    loss_before = loss_of(model)
    teacher = base if cfg.stage2.distill > 0 else None
    is_main = dist_env().is_main
    checks: list[dict[str, float]] = []
    chunk = max(1, cfg.stage2.floor_steps)
    while True:
        if steps == 0:  # no fine-tuning: the starting model is the group model
            if is_main:
                save_model(ft_dir / "model", model, meta)
            res_dir = ft_dir / "model"
        else:
            tcfg = cfg.stage2.model_copy(update={"steps": steps})  # a TrainConfig with stage-2 values
            res = train(model, data, process, tcfg, ft_dir, seed=cfg.run.seed + 1000 * (g.index + 1),
                        device=device, timesteps=g.timesteps, meta=meta, progress=show,
                        desc=f"stage 2 g{g.index} (t {g.t_start}-{g.t_end})", init_optimizer=init_opt,
                        teacher=teacher, distill=cfg.stage2.distill)
            res_dir = res.model_dir
        loss_after = loss_of(load_model(res_dir, device)[0])
        checks.append({"steps": steps, "loss": loss_after})
        worse = loss_after > cfg.stage2.max_loss_ratio * loss_base
        if not rank0_says(worse and steps > 0 and steps + chunk <= planned + cfg.stage2.extra_steps):
            break
        # Train on from the final checkpoint: drop the exported model first, then record the new
        # target, so a kill between the two resumes at the old target and checks again.
        if is_main:
            shutil.rmtree(res_dir)
        barrier()
        steps += chunk
        if is_main:
            atomic_write_json(target_file, {"steps": steps}, scrub=False)
        if show:
            console.print(f"[yellow]group {g.index}: held-out loss {loss_after:.4f} is {loss_after / loss_base:.3f} x "
                          f"the base's {loss_base:.4f} (limit stage2.max_loss_ratio={cfg.stage2.max_loss_ratio}); "
                          f"training on to {steps} steps[/]")
    ratio = loss_after / loss_base if loss_base > 0 else float("inf")
    worse = ratio > cfg.stage2.max_loss_ratio
    if worse:
        console.print(
            f"[bold red]group {g.index} (t {g.t_start}-{g.t_end}) ends WORSE than the base on its own timesteps: "
            f"held-out loss {loss_after:.4f} = {ratio:.3f} x the base's {loss_base:.4f} after {steps} steps "
            f"(planned {planned}, stage2.extra_steps={cfg.stage2.extra_steps} used up). The report flags it; "
            "raise stage2.extra_steps or the group's budget (plan.k), or prune less.[/]")
    images = len(eval_data.images[: cfg.agent.eval_batch_size]) * len(eval_timesteps(g.timesteps, cfg.agent.eval_timesteps))
    # the base once (already counted in need.json under the need rule), the pruned member before
    # training, then the member at every check
    check_macs = float(count(base).thop * (need is None) + count(model).thop * (1 + len(checks))) * images
    summary = {"group": g.index, "steps": steps, "planned_steps": planned, "extra_steps": steps - planned,
               "loss_base": loss_base, "loss_before": loss_before, "loss_after": loss_after,
               "loss_ratio": ratio, "worse_than_base": worse, "checks": checks, "check_forward_macs": check_macs}
    if is_main:
        atomic_write_json(gdir / "finetune.json", summary)
    barrier()
    return GroupResult(g.index, res_dir, summary)
