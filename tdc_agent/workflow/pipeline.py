"""The whole TDC job: plan → stage 1 → per group (agent pruning → fine-tune) → progressive model →
samples → evaluation against the base → report. Every step is skipped when its output exists, so
rerunning the same command after a kill continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.markup import escape

from ..core.io import atomic_write_json
from ..models.backbone import input_shape
from ..models.store import load_model
from ..core.config import Config
from ..core.devices import barrier, dist_env, rank0_says
from ..core.errors import ConfigError, TDCError
from ..planning.build import build_plan
from ..core.progress import console
from ..models.progressive import ProgressiveModel, member_from_dir
from ..models.macs import count
from .context import RunContext
from .results import Evaluation, ModelScore, PipelineResult
from .rundir import RunDir
from ..diffusion.schedule import ddim_timesteps
from ..planning.plan import Plan
from .stage1 import continue_base, equal_compute_steps, train_base
from .stage2 import finetune_group, prepare_in_order, trained_steps


def check_groups(plan: Plan, groups: Sequence[int] | None) -> None:
    """A :class:`ConfigError` naming the valid range when ``groups`` (``run --groups``) are not in ``plan``."""
    if groups is None:
        return
    bad = [g for g in groups if not 0 <= g < len(plan.groups)]
    if bad:
        raise ConfigError(f"--groups {bad} do not exist: the plan has groups 0..{len(plan.groups) - 1} "
                          f"(plan.groups={len(plan.groups)}). Pick groups in that range.")


def run_pipeline(ctx: RunContext, groups: Sequence[int] | None = None) -> PipelineResult:
    """Plan, stage 1 and stage 2 for ``groups`` (default all); assembles when every group is done.
    Everything a run builds once (plan, data, LLM, memory bank, agent, pruner) comes from ``ctx``."""
    cfg, run, device, show = ctx.cfg, ctx.run, ctx.device, ctx.show
    t0 = time.time()
    check_groups(ctx.plan, groups)
    for w in ctx.plan.warnings:
        console.print(f"[yellow]plan warning:[/] {escape(w)}")
    data = ctx.training_data()
    run.log("run: stage 1")
    t1 = time.time()
    with run.lock("stage1"):  # another job on this run directory may be training it: wait, then reuse
        stage1 = train_base(cfg, run, device, data, progress=show)
    timings = {"stage1": time.time() - t1}
    base, meta = load_model(stage1.model_dir, device)
    env = dist_env()
    base_macs = count(base).thop
    if env.is_main:
        ctx.keep_plan(base_macs)
    plan = ctx.plan
    out = PipelineResult(len(plan.groups), timings=timings)
    for variant, vcfg in variants(cfg):
        for g in plan.groups:
            if groups is not None and g.index not in groups:
                continue
            if (run.group(g.index, variant) / "finetune.json").is_file():
                continue
            with run.lock(f"group{g.index}{'-' + variant if variant else ''}"):
                # another job may have finished this group while we waited for its lock
                if rank0_says((run.group(g.index, variant) / "finetune.json").is_file()):
                    continue
                if env.is_main:
                    run.log(f"run: group {g.index}{f' ({variant})' if variant else ''}")
                tg = time.time()
                # Under torchrun, rank 0 alone prunes (one agent, one memory writer); every rank fine-tunes.
                if env.is_main:
                    prepare_in_order(ctx, vcfg, g, base, meta, variant)
                barrier()
                res = finetune_group(ctx, vcfg, g, show and env.is_main, variant)
            timings[f"group_{g.index}{'_' + variant if variant else ''}"] = time.time() - tg
            if show:
                console.print(f"group {g.index}{f' ({variant})' if variant else ''} (t {g.t_start}-{g.t_end}): held-out "
                              f"loss {res.summary['loss_before']:.4f} → {res.summary['loss_after']:.4f} after "
                              f"{res.summary['steps']} steps (base {res.summary['loss_base']:.4f}, "
                              f"{res.summary['loss_ratio']:.3f} x)")
        done = [g.index for g in plan.groups if (run.group(g.index, variant) / "finetune.json").is_file()]
        if not variant:
            out.groups_done = done
        if len(done) == len(plan.groups):
            if env.is_main:
                assemble(vcfg, run, device, variant, plan=plan)
            barrier()
            out.progressive[variant] = str(run.progressive(variant))
    if cfg.evaluation.compare_equal_compute and len(out.groups_done) == len(plan.groups):
        steps = equal_compute_total_steps(cfg, run, plan, base_macs)
        run.log(f"run: base continued to {steps} steps (equal compute)")
        t2 = time.time()
        with run.lock("equal-compute"):
            continue_base(cfg, run, steps, run.equal_compute, device, data, progress=show)
        timings["base_equal_compute"] = time.time() - t2
    out.seconds = time.time() - t0
    return out


def equal_compute_total_steps(cfg: Config, run: RunDir, plan, base_macs: int) -> int:
    """Stage 1's steps plus the base steps that cost what the run's stage 2 cost (teacher and proxy
    forwards included)."""
    tm = training_macs(cfg, run, plan, base_macs)
    return cfg.stage1.steps + equal_compute_steps(tm["teacher"] + tm["proxy"], tm["stage2"], base_macs,
                                                  cfg.stage1.batch_size)


def variants(cfg: Config) -> list[tuple[str, Config]]:
    """The stage-2 variants a run trains: its own mode, plus TDC without pruning when compared."""
    out = [("", cfg)]
    if cfg.evaluation.compare_no_prune and cfg.stage2.mode != "tdc-no-prune":
        out.append(("noprune", cfg.model_copy(update={"stage2": cfg.stage2.model_copy(
            update={"mode": "tdc-no-prune"})})))
    return out


def assemble(cfg: Config, run: RunDir, device: torch.device, variant: str = "", plan: Plan | None = None) -> Path:
    """Build ``RUN/progressive`` (or ``progressive-<variant>``) from the finished groups (idempotent);
    ``plan``: the run's plan, when the caller holds it (else built from ``cfg``)."""
    with run.lock("assemble" + (f"-{variant}" if variant else "")):
        return _assemble(cfg, run, device, variant, plan or build_plan(cfg))


def _assemble(cfg: Config, run: RunDir, device: torch.device, variant: str, plan: Plan) -> Path:
    target = run.progressive(variant)
    if (target / "manifest.json").is_file():
        problem = _manifest_problem(target, plan, device)
        if problem is None:
            return target
        # `evaluate` tells the user to assemble again when the manifest is bad: do rebuild it
        console.print(f"[yellow]note:[/] rebuilding {escape(str(target))}: {escape(problem)}", emoji=False)
        run.log(f"assemble: rebuilding {target}: {problem}")
    missing = [g.index for g in plan.groups if not (run.group(g.index, variant) / "finetune.json").is_file()]
    if missing:
        raise ConfigError(f"Cannot assemble: groups {missing} are not finished. Run `tdc-agent run --groups "
                          f"{','.join(map(str, missing))}` first.")
    members, dirs = [], []
    meta = {}
    for g in plan.groups:
        d = run.group(g.index, variant) / "finetune" / "model"
        m, meta = member_from_dir(g.index, g.t_start, g.t_end, d, g.limit_fraction, device)
        members.append(m)
        dirs.append(d)
    shape = meta.get("image_shape") or list(input_shape(members[0].model))
    pm = ProgressiveModel(members, cfg.schedule, shape, meta.get("latent"))
    pm.save(target, dirs)
    run.log("run: assembled progressive model")
    return target


def _manifest_problem(target: Path, plan: Any, device: torch.device) -> str | None:
    """Why an existing progressive model is not this plan's (None when it is, and loads cleanly)."""
    try:
        pm = ProgressiveModel.load(target, device)
    except TDCError as e:
        return str(e)
    have = sorted((m.group, m.t_start, m.t_end) for m in pm.members)
    want = sorted((g.index, g.t_start, g.t_end) for g in plan.groups)
    if have != want:
        return f"its members cover groups/timesteps {have}, the plan's groups are {want}"
    return None


def evaluate_run(cfg: Config, run: RunDir, device: torch.device, show: bool = True,
                 plan: Plan | None = None) -> Evaluation:
    """Sample base and progressive models with the same seeds, measure FD, MACs, speed; write the report.
    ``plan``: the run's plan, when the caller holds it (else built from ``cfg``)."""
    with run.lock("evaluate"):  # two jobs finishing together evaluate one after the other
        return _evaluate_run(cfg, run, device, show, plan or build_plan(cfg))


def _evaluate_run(cfg: Config, run: RunDir, device: torch.device, show: bool, plan: Plan) -> Evaluation:
    from ..models.unet import denoise
    from .sampling import generate, write_samples

    base, _ = load_model(run.base_model, device)
    base.eval()
    pm = ProgressiveModel.load(run.progressive(), device)
    shape = pm.image_shape
    scfg = cfg.sample.model_copy(update={"num": cfg.evaluation.samples})
    protocol: dict[str, Any] = {"sampler": scfg.sampler, "steps": scfg.steps, "samples": scfg.num,
                                "seed": cfg.run.seed, "eta": scfg.eta}
    scores: dict[str, ModelScore] = {}
    equal_steps = None
    base_count = count(base)
    ts = ddim_timesteps(cfg.schedule.timesteps, scfg.steps).tolist() if scfg.sampler == "ddim" else list(
        range(cfg.schedule.timesteps))
    table = plan.routing_table()
    planned = float(sum(plan.budget[t] for t in ts) / len(ts)) * base_count.thop
    planned_limits = float(sum(plan.groups[table[t]].limit_fraction for t in ts) / len(ts)) * base_count.thop
    models = [("base", lambda x, t: denoise(base, x, t), base_count.thop, None),
              ("tdc", pm, pm.sampling_macs(scfg.sampler, scfg.steps)["mean_per_step"], pm)]
    if cfg.evaluation.compare_equal_compute and (run.equal_compute / "model" / "model.safetensors").is_file():
        eq, eq_meta = load_model(run.equal_compute / "model", device)
        eq.eval()
        models.insert(1, ("base_equal_compute", lambda x, t: denoise(eq, x, t), base_count.thop, None))
        equal_steps = int(eq_meta.get("steps", 0))
    if (run.progressive("noprune") / "manifest.json").is_file():
        pm_np = ProgressiveModel.load(run.progressive("noprune"), device)
        models.insert(1, ("tdc_no_prune", pm_np, pm_np.sampling_macs(scfg.sampler, scfg.steps)["mean_per_step"],
                          pm_np))
    from ..models.latent import decoder

    decode = decoder(pm.latent, device)  # latent diffusion: samples are decoded before anything sees them
    image_shape = tuple(pm.latent["image_shape"]) if pm.latent else tuple(shape)
    score = scorer(cfg, image_shape, device)
    protocol["metric"] = cfg.evaluation.resolved_metric(cfg.data, image_shape)
    for name, fn, macs, prog in models:
        t0 = time.time()
        images = decode(generate(fn, shape, cfg.schedule, scfg, cfg.run.seed, device, progress=show))
        secs = time.time() - t0
        write_samples(images, run.samples, name)
        params = (sum(sum(p.numel() for p in m.model.parameters()) for m in prog.members) if prog is not None
                  else base_count.params)
        scores[name] = ModelScore(macs, secs / len(images), params, score(images))
    scores["tdc"].planned_macs_per_step = planned
    scores["tdc"].group_limit_macs_per_step = planned_limits
    results = Evaluation(protocol, scores,
                         {"stage1": cfg.stage1.steps, "stage2": sum(trained_steps(cfg, run, plan, g) for g in plan.groups)},
                         training_macs(cfg, run, plan, base_count.thop), equal_steps)
    atomic_write_json(run.evaluation, results.to_dict())
    from .report import write_report

    write_report(cfg, run, results, plan)
    return results


def scorer(cfg: Config, shape: tuple[int, ...], device: torch.device) -> Callable[[torch.Tensor], dict[str, Any]]:
    """The configured sample-quality metric as a function of a batch of images (loaded once)."""
    metric = cfg.evaluation.resolved_metric(cfg.data, shape)
    if metric == "none":
        return lambda images: {}
    if metric == "digits-fd":
        from ..evaluation.fd import digits_fd

        if tuple(shape) != (1, 8, 8):
            raise ConfigError(f"evaluation.metric=digits-fd needs 1x8x8 digits, the model makes {tuple(shape)}; "
                              "use evaluation.metric=fid.")
        return lambda images: digits_fd(images, cfg.run.seed).to_dict()
    from ..evaluation.fid import InceptionEvaluator

    ev = InceptionEvaluator(cfg.data, cfg.evaluation.inception_weights, device, cfg.evaluation.reference_samples,
                            cfg.run.seed)
    return lambda images: ev.score(images).to_dict()


def training_macs(cfg: Config, run: RunDir, plan, base_macs: int) -> dict[str, float]:
    """Training compute as forward MACs x images, for stage 1 and each variant's stage 2.

    ``stage2[_variant]`` counts the group models' own forwards over the steps they really trained
    (extra steps after a failed check included; a backward costs about twice a forward, the same
    factor for every row); ``teacher[_variant]`` the base's forwards for distillation (no
    backward); ``proxy[_variant]`` the agent's quick evaluations of candidates and the held-out
    checks of each member against the base (and, with ``steps_rule: need``, the base's loss per group).
    """
    from ..core.io import read_json as _read

    out = {"stage1": float(base_macs) * cfg.stage1.steps * cfg.stage1.batch_size}
    for variant, vcfg in variants(cfg):
        suffix = f"_{variant}" if variant else ""
        student = teacher = proxy = 0.0
        for g in plan.groups:
            info_path = run.group(g.index, variant) / "prune.json"
            info = _read(info_path, "group pruning summary") if info_path.is_file() else {}
            ft_path = run.group(g.index, variant) / "finetune.json"
            ft = _read(ft_path, "group fine-tune summary") if ft_path.is_file() else {}
            images = float(trained_steps(vcfg, run, plan, g, variant) * vcfg.stage2.batch_size)
            student += float(info.get("macs_thop") or base_macs) * images
            if vcfg.stage2.distill > 0:
                teacher += float(base_macs) * images
            proxy += float(info.get("proxy_forward_macs") or 0.0) + float(ft.get("check_forward_macs") or 0.0)
        need = run.stage2(variant) / "need.json"  # stage2.steps_rule=need: the base's loss per group
        if need.is_file():
            proxy += float(_read(need, "stage-2 group needs").get("forward_macs") or 0.0)
        out["stage2" + suffix] = student
        out["teacher" + suffix] = teacher
        out["proxy" + suffix] = proxy
    return out
