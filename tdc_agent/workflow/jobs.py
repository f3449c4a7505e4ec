"""The jobs behind the CLI's verbs: each takes a validated config (and the verb's flags), does the
work, and returns a typed result for the CLI to print. ``tdc_agent.cli`` only parses and prints.

* :func:`plan_job` (``plan``), :func:`train_base_job` (``train-base``), :func:`run_job` (``run``),
  :func:`assemble_job` (``assemble``), :func:`evaluate_job` (``evaluate``), :func:`inspect_model`
  (``inspect``). Pruning (``prune``) is :mod:`tdc_agent.workflow.prune`; sampling (``sample``)
  :func:`tdc_agent.workflow.sampling.sample_model`; the memory bank :mod:`tdc_agent.agent.records`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..core.config import Config
from ..core.devices import dist_env, resolve_device
from ..core.errors import ConfigError
from ..core.tally import step_counts, steps_since
from ..models.latent import decoder, training_data
from ..models.macs import MacsCount, count, thop_macs
from ..models.store import load_model
from ..models.backbone import build_preset, denoise
from ..planning.build import build_plan, write_plan
from ..planning.plan import Plan
from ..pruning.units import UnitGraph, analyse
from ..training import TrainResult
from .pipeline import assemble, check_groups, evaluate_run, run_pipeline, variants
from .prune import load_base
from .context import RunContext
from .results import Evaluation, PipelineResult
from .rundir import PIPELINE_SECTIONS, RunDir
from .sampling import generate, write_samples
from .stage1 import check_model_takes, train_base


def base_macs(cfg: Config, model: Path | None, preset: str | None) -> int | None:
    """The thop MACs of a saved model or a preset sized by the config (None when neither is given)."""
    if model is not None:
        return thop_macs(load_model(model)[0])
    if preset is not None:
        return thop_macs(build_preset(cfg.model.backbone, preset, cfg.data.image_size, cfg.data.channels))
    return None


@dataclass
class PlanJob:
    plan: Plan
    base_macs: int | None
    paths: tuple[Path, Path]  # plan.json, plan.png


def plan_job(cfg: Config, model: Path | None = None, preset: str | None = None, out: Path | None = None) -> PlanJob:
    """Build the plan, and write ``plan.json`` and ``plan.png`` into ``out`` (default: the run directory)."""
    p = build_plan(cfg)
    macs = base_macs(cfg, model, preset)
    paths = write_plan(p, out or RunDir.for_config(cfg).path, macs)
    return PlanJob(p, macs, paths)


@dataclass
class Stage1Job:
    result: TrainResult
    grid: Path
    seconds: float


def train_base_job(cfg: Config, run_dir: Path | None = None, progress: bool = True) -> Stage1Job | None:
    """Stage 1 in a run directory, then a sample grid. Returns None on the non-main ranks of torchrun."""
    dev = resolve_device(cfg.run.device)
    data = training_data(cfg, device=dev)  # fails on missing data before anything is written
    check_model_takes(cfg, data.shape)
    run = RunDir.for_config(cfg, run_dir)
    env = dist_env()
    if env.is_main:
        run.prepare(cfg)
        run.log(f"train-base start device={dev} world_size={env.world_size}")
    t0 = time.time()
    result = train_base(cfg, run, dev, data, progress=progress)
    if env.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    if not env.is_main:
        return None
    run.log(f"train-base done steps={result.steps} seconds={result.seconds:.1f}")
    model, meta = load_model(result.model_dir, dev)
    images = generate(lambda x, t: denoise(model, x, t), data.shape, cfg.schedule, cfg.sample,
                      cfg.run.seed, dev, progress=progress)
    images = decoder(meta.get("latent"), dev)(images)
    grid, _ = write_samples(images, run.stage1, "samples")
    return Stage1Job(result, grid, time.time() - t0)


def preflight(cfg: Config, run: RunDir, device: torch.device, groups: Sequence[int] | None,
              show: bool = True) -> RunContext:
    """What ``run`` checks before it writes anything (the groups, the data, the model, the LLM, a
    memory server), kept as the run's context: the plan, the training data, the resolved LLM and the
    memory server's client are the ones every later step uses."""
    ctx = RunContext(cfg, run, device, build_plan(cfg), show)
    check_groups(ctx.plan, groups)  # before run.prepare writes config.yaml and logs/
    shape = ctx.training_data().shape  # fails on missing data before anything is written
    check_model_takes(cfg, shape)
    if cfg.stage2.mode == "tdc":
        from ..agent.llm import ResolvedLLM
        from ..agent.prompts import load_prompts

        # a missing key or dead server fails before compute; the one resolution (and key check) of the run
        ctx.llm = ResolvedLLM.of(cfg.agent.llm, cfg.agent, seed=cfg.run.seed)
        load_prompts(cfg.agent.prompt_dir)  # a template that would fail to render fails before stage 1
        if cfg.agent.memory_url:
            from ..agent.memory import MemoryBank

            # a dead server fails before anything is written; the agent uses this client
            ctx.memory_client = MemoryBank.open_client(url=cfg.agent.memory_url)
    return ctx


@dataclass
class RunJob:
    run: RunDir
    pipeline: PipelineResult | None = None  # None on the non-main ranks of torchrun
    evaluation: Evaluation | None = None
    seconds: float = 0.0


def run_job(cfg: Config, run_dir: Path | None = None, groups: Sequence[int] | None = None, evaluate: bool = True,
            progress: bool = True) -> RunJob:
    """The whole TDC job (resumable): preflight, pipeline, and, when every group is done, evaluation."""
    dev = resolve_device(cfg.run.device)
    before = step_counts()
    ctx = preflight(cfg, RunDir.for_config(cfg, run_dir), dev, groups, progress)
    run = ctx.run
    if dist_env().is_main:
        run.prepare(cfg, sections=PIPELINE_SECTIONS)
        run.log(f"run start device={dev} groups={','.join(map(str, groups)) if groups is not None else 'all'}")
    t0 = time.time()
    out = run_pipeline(ctx, groups)
    if not dist_env().is_main:
        return RunJob(run)
    job = RunJob(run, out)
    if out.complete and evaluate:
        job.evaluation = evaluate_run(cfg, run, dev, show=progress, plan=ctx.plan)
    job.seconds = time.time() - t0
    # what this run built (each should be 1): a step that rebuilds what the run has shows here
    run.log("run built once: " + " ".join(f"{k}={v}" for k, v in steps_since(before).items()))
    if job.evaluation is not None:
        run.log(f"run done in {job.seconds:.1f}s")
    return job


def existing_run(cfg: Config, run_dir: Path | None, verb: str) -> RunDir:
    """The run directory a verb that works on a finished run uses; refused, with nothing written, when it
    holds no run (``config.yaml`` and the stage-1 model), so an unrelated directory is left as it was."""
    run = RunDir.for_config(cfg, run_dir)
    if not run.config_path.is_file() or not run.base_model.exists():
        raise ConfigError(f"{run.path} is not a tdc-agent run directory (it has no config.yaml and stage1/model), "
                          f"so there is nothing to {verb}. Pass --run-dir of a run (or the config it was started with), "
                          "or start one with `tdc-agent run`.")
    return run


def assemble_job(cfg: Config, run_dir: Path | None = None) -> list[Path]:
    """Build the progressive model(s) of a run from its finished groups."""
    run = existing_run(cfg, run_dir, "assemble")
    run.prepare(cfg, sections=PIPELINE_SECTIONS)  # the stored config must be this config
    plan = build_plan(cfg)
    return [assemble(vcfg, run, resolve_device(cfg.run.device), variant, plan) for variant, vcfg in variants(cfg)]


def evaluate_job(cfg: Config, run_dir: Path | None = None, progress: bool = True) -> Evaluation:
    """Evaluate a run's models and write ``evaluation.json`` and ``report.md``."""
    run = existing_run(cfg, run_dir, "evaluate")
    run.prepare(cfg, sections=PIPELINE_SECTIONS)  # e.g. another schedule would overwrite the results with garbage
    return evaluate_run(cfg, run, resolve_device(cfg.run.device), show=progress)


@dataclass
class Inspection:
    graph: UnitGraph
    macs: MacsCount


def inspect_model(cfg: Config, model: Path | None = None, preset: str | None = None) -> Inspection:
    """The prunable units of a saved model or a preset, and its MACs and parameter counts."""
    base, _ = load_base(model, preset, cfg)
    return Inspection(analyse(base), count(base))


def parse_groups(groups: str | None) -> list[int] | None:
    """``"0,1,3"`` to ``[0, 1, 3]`` (sorted, unique); None stays None."""
    if groups is None:
        return None
    try:
        picked = sorted({int(x) for x in groups.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--groups {groups!r} must be comma-separated group numbers, e.g. 0,1,3.") from None
    if not picked:  # "" would run stage 1 and then no group at all, and call that a success
        raise ConfigError(f"--groups {groups!r} names no group. Give comma-separated group numbers (e.g. 0,1,3), "
                          "or leave --groups out for all groups.")
    return picked
