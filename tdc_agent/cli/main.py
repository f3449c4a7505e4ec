"""The ``tdc-agent`` command: ``tdc-agent <verb> --config x.yaml key=value ...``.

Every verb validates its inputs (config, device, data, model files) before it writes anything, and
turns user errors into one paragraph and exit code 2.
"""

from __future__ import annotations

import errno

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..core.config import Config, load_config
from ..core.errors import TDCError
from ..core.progress import console
from ..core.redaction import redact, register_secret_env

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="TDC Training for diffusion models: timestep groups, a base denoiser, and agent-pruned "
    "group models.",
    pretty_exceptions_enable=False,
)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: the packaged digits.yaml).")
OverridesArg = typer.Argument(None, help="Config overrides, e.g. plan.groups=4 stage1.steps=500.")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (overrides run.device).")
RunDirOpt = typer.Option(None, "--run-dir", help="Run directory (default: run.output_dir/run.name).")


def kv_table(title: str, rows: dict[str, str]) -> Table:
    """A two-column table of named results (what most verbs print at the end)."""
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows.items():
        t.add_row(k, v)
    return t


def _config(config: Optional[Path], overrides: Optional[List[str]], device: Optional[str] = None) -> Config:
    extra = list(overrides or [])
    if device is not None:
        extra.append(f"run.device={device}")
    from ..models.pretrained import apply_init

    cfg, note = apply_init(load_config(config, extra))
    # the key's variable may have any name: scrub its value from whatever this process prints or logs
    register_secret_env(cfg.agent.api_key_env)
    if note:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    return cfg


@app.command()
def plan(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    timesteps: Optional[int] = typer.Option(None, "--timesteps", "-T", help="Number of diffusion timesteps."),
    groups: Optional[int] = typer.Option(None, "--groups", "-N", help="Number of timestep groups."),
    k: Optional[float] = typer.Option(None, "--k", help="Smallest budget as a fraction of F, in (0, 1]."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="linear or cosine."),
    shape: Optional[str] = typer.Option(None, "--shape", help="paper, constant, increasing or decreasing."),
    model: Optional[Path] = typer.Option(None, "--model", help="Saved model dir: show limits in MACs."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset: show limits in MACs."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where plan.json/plan.png go (default: run dir)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON to stdout."),
) -> None:
    """Group the timesteps by SNR and give every group a MACs budget (paper Eq. 2-5)."""
    from ..planning.build import build_plan, plan_table, write_plan
    from ..workflow.rundir import PIPELINE_SECTIONS, RunDir

    extra = list(overrides or [])
    for key, val in (("schedule.timesteps", timesteps), ("plan.groups", groups), ("plan.k", k),
                     ("schedule.name", schedule), ("plan.shape", shape)):
        if val is not None:
            extra.append(f"{key}={val}")
    cfg = load_config(config, extra)
    p = build_plan(cfg)
    base_macs = _base_macs(cfg, model, preset)
    out_dir = out or RunDir.for_config(cfg).path
    paths = write_plan(p, out_dir, base_macs)
    if as_json:
        d = p.to_dict()
        d["base_macs"] = base_macs
        typer.echo(json.dumps(d, indent=2))
        return
    console.print(plan_table(p, base_macs))
    for w in p.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"plan written to {paths[0]} and {paths[1]}")


def _base_macs(cfg: Config, model: Optional[Path], preset: Optional[str]) -> Optional[int]:
    from ..models.macs import thop_macs

    if model is not None:
        from ..models.store import load_model

        return thop_macs(load_model(model)[0])
    if preset is not None:
        from ..models.unet import build_unet, unet_config

        return thop_macs(build_unet(unet_config(preset, cfg.data.image_size, cfg.data.channels)))
    return None


@app.command("train-base")
def train_base(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    device: Optional[str] = DeviceOpt,
    run_dir: Optional[Path] = RunDirOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Stage 1: train the base denoiser on all timesteps, then draw a sample grid."""
    from ..core.devices import dist_env, resolve_device
    from ..models.latent import decoder, training_data
    from ..workflow.rundir import PIPELINE_SECTIONS, RunDir
    from ..workflow.sampling import generate, write_samples
    from ..workflow.stage1 import train_base as _train

    cfg = _config(config, overrides, device)
    dev = resolve_device(cfg.run.device)
    data = training_data(cfg, device=dev)  # fails on missing data before anything is written
    from ..workflow.stage1 import check_model_takes

    check_model_takes(cfg, data.shape)
    run = RunDir.for_config(cfg, run_dir)
    env = dist_env()
    if env.is_main:
        run.prepare(cfg)
        run.log(f"train-base start device={dev} world_size={env.world_size}")
    t0 = time.time()
    result = _train(cfg, run, dev, data, progress=not quiet)
    if env.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    if not env.is_main:
        return
    run.log(f"train-base done steps={result.steps} seconds={result.seconds:.1f}")
    from ..models.store import load_model
    from ..models.unet import denoise

    model, meta = load_model(result.model_dir, dev)
    images = generate(lambda x, t: denoise(model, x, t), data.shape, cfg.schedule, cfg.sample,
                      cfg.run.seed, dev, progress=not quiet)
    images = decoder(meta.get("latent"), dev)(images)
    grid, _ = write_samples(images, run.stage1, "samples")
    trained = result.steps - result.resumed_from
    rows = {
        "steps": str(result.steps),
        "resumed from step": str(result.resumed_from),
        "final loss": f"{result.final_loss:.4f}" if result.final_loss is not None else "-",
        "train time": f"{result.seconds:.1f} s",
        "time per step": f"{result.seconds / trained:.3f} s" if trained and result.seconds else "-",
        "model": str(result.model_dir),
        "sample grid": str(grid),
    }
    console.print(kv_table("stage 1", rows))
    if result.ddp_param_max_diff is not None:
        console.print(f"DDP parameter sync check: max |θ_r - θ_0| = {result.ddp_param_max_diff:g}")
    console.print(f"total {time.time() - t0:.1f}s")


def _parse_groups(groups: Optional[str]) -> Optional[list[int]]:
    from ..core.errors import ConfigError

    if groups is None:
        return None
    try:
        return sorted({int(x) for x in groups.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--groups {groups!r} must be comma-separated group numbers, e.g. 0,1,3.") from None


@app.command("run")
def run_cmd(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    device: Optional[str] = DeviceOpt,
    run_dir: Optional[Path] = RunDirOpt,
    groups: Optional[str] = typer.Option(None, "--groups", help="Only these groups (e.g. 3,4), to spread groups over jobs."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Stop after assembling (no sampling, FD or report)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The whole TDC job: plan, stage 1, per-group agent pruning and fine-tuning, progressive model,
    evaluation against the base, report. Rerun the same command to resume after a kill."""
    from ..core.data import load_dataset
    from ..core.devices import dist_env, resolve_device
    from ..workflow.pipeline import check_groups, evaluate_run, run_pipeline
    from ..planning.build import build_plan
    from ..workflow.rundir import PIPELINE_SECTIONS, RunDir

    cfg = _config(config, overrides, device)
    dev = resolve_device(cfg.run.device)
    group_list = _parse_groups(groups)
    check_groups(build_plan(cfg), group_list)  # before run.prepare writes config.yaml and logs/
    shape = load_dataset(cfg.data).shape  # fails on missing data before anything is written
    if not cfg.latent.vae:  # (latents get their shape from the autoencoder)
        from ..workflow.stage1 import check_model_takes

        check_model_takes(cfg, shape)
    if cfg.stage2.mode == "tdc":
        from ..agent.llm import resolve_llm

        resolve_llm(cfg.agent.llm, cfg.agent)  # a missing key or dead server fails before compute
        if cfg.agent.memory_url:
            from ..agent.memory import MemoryBank

            MemoryBank.open_client(url=cfg.agent.memory_url)  # a dead server fails before anything is written
    run = RunDir.for_config(cfg, run_dir)
    if dist_env().is_main:
        run.prepare(cfg, sections=PIPELINE_SECTIONS)
        run.log(f"run start device={dev} groups={groups or 'all'}")
    t0 = time.time()
    out = run_pipeline(cfg, run, dev, group_list, show=not quiet)
    if not dist_env().is_main:
        return
    if "progressive" not in out:
        console.print(f"groups done: {out['groups_done']} of {out['groups_total']}; when all are done, run "
                      f"`tdc-agent assemble --run-dir {run.path}` (or this command without --groups).")
        return
    if no_eval:
        console.print(f"progressive model: {out['progressive']}")
        return
    res = evaluate_run(cfg, run, dev, show=not quiet)
    rows = {}
    labels = {"base": "base", "base_equal_compute": f"base, equal compute ({res.get('equal_compute_steps')} steps)",
              "tdc_no_prune": "TDC w/o pruning", "tdc": "TDC"}
    for name in ("base", "base_equal_compute", "tdc_no_prune", "tdc"):
        if name not in res:
            continue
        r = res[name]
        parts = [f"FD {r['fd']:.3f}" + (f" (floor {r['real_floor']:.3f})" if "real_floor" in r else "")] if (
            "fd" in r) else []
        parts += [f"KID {r['kid']:.4g}"] if "kid" in r else []
        parts += [f"{r['macs_per_step'] / 1e6:,.2f} M MACs/step", f"{r['params']:,} params"]
        rows[labels[name]] = ", ".join(parts)
    rows["pipeline time"] = f"{time.time() - t0:.1f} s"
    rows["report"] = str(run.path / "report.md")
    console.print(kv_table("TDC run", rows))
    run.log(f"run done in {time.time() - t0:.1f}s")


@app.command()
def assemble(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    run_dir: Optional[Path] = RunDirOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Build the progressive model from finished groups (after `run --groups ...` jobs)."""
    from ..core.devices import resolve_device
    from ..workflow.pipeline import assemble as _assemble
    from ..workflow.rundir import PIPELINE_SECTIONS, RunDir

    from ..workflow.pipeline import variants

    cfg = _config(config, overrides, device)
    run = RunDir.for_config(cfg, run_dir)
    run.prepare(cfg, sections=PIPELINE_SECTIONS)  # the stored config must be this config
    for variant, vcfg in variants(cfg):
        console.print(f"progressive model: {_assemble(vcfg, run, resolve_device(cfg.run.device), variant)}")


@app.command()
def evaluate(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    run_dir: Optional[Path] = RunDirOpt,
    device: Optional[str] = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Sample the base and progressive models of a run, measure FD/MACs/speed, write report.md."""
    from ..core.devices import resolve_device
    from ..workflow.pipeline import evaluate_run
    from ..workflow.rundir import PIPELINE_SECTIONS, RunDir

    cfg = _config(config, overrides, device)
    run = RunDir.for_config(cfg, run_dir)
    run.prepare(cfg, sections=PIPELINE_SECTIONS)  # e.g. another schedule would overwrite the results with garbage
    res = evaluate_run(cfg, run, resolve_device(cfg.run.device), show=not quiet)
    console.print_json(json.dumps(res))


@app.command()
def sample(
    model: Path = typer.Option(..., "--model", "-m", help="A saved model directory (e.g. RUN/stage1/model)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: MODEL/../samples)."),
    num: int = typer.Option(64, "--num", "-n", min=1, help="Number of samples."),
    sampler: str = typer.Option("ddim", "--sampler", help="ddim or ddpm."),
    steps: int = typer.Option(100, "--steps", min=1, help="Sampling steps (the paper uses 100 DDIM)."),
    eta: float = typer.Option(0.0, "--eta", min=0.0, help="DDIM η (0 = deterministic)."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(500, "--batch-size", min=1),
    device: Optional[str] = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Sample a saved model with DDIM or DDPM; writes a PNG grid and an .npz of samples."""
    from ..core.config import SampleConfig
    from ..core.devices import resolve_device
    from ..core.errors import ConfigError
    from ..workflow.sampling import sample_model_dir

    if sampler not in ("ddim", "ddpm"):
        raise ConfigError(f"--sampler must be ddim or ddpm, got {sampler!r}.")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed {seed} is out of range: use 0 <= seed < 2**63.")
    dev = resolve_device(device or "auto")
    cfg = SampleConfig(sampler=sampler, steps=steps, num=num, eta=eta, batch_size=batch_size)
    out = out or Path(model).parent / "samples"
    from ..models.progressive import is_progressive

    if is_progressive(model):
        from ..models.progressive import ProgressiveModel
        from ..workflow.sampling import generate, write_samples

        pm = ProgressiveModel.load(model, dev)
        t0 = time.time()
        images = generate(lambda x, t: pm(x, t), pm.image_shape, pm.schedule, cfg, seed, dev, progress=not quiet)
        from ..models.latent import decoder

        images = decoder(pm.latent, dev)(images)
        secs = time.time() - t0
        grid, npz = write_samples(images, out)
        m = pm.sampling_macs(sampler, steps)
        console.print(f"{num} samples in {secs:.1f}s: {grid}, {npz}; {m['total'] / 1e6:,.1f} M MACs per image "
                      f"({m['mean_per_step'] / 1e6:,.2f} M per step)")
        return
    res = sample_model_dir(model, cfg, out, seed, dev, progress=not quiet)
    console.print(f"{num} samples in {res.seconds:.1f}s ({res.seconds / num * 1000:.1f} ms/image): "
                  f"{res.grid_path}, {res.npz_path}")


def _check_fits_data(model: "object", cfg: Config, what: str) -> None:
    """The model must take the data's images: refuse a mismatch before any pruning or LLM call."""
    from ..core.data import load_dataset
    from ..core.errors import ConfigError

    if cfg.latent.vae:  # latents: their shape is only known after encoding
        return
    c, h, w = load_dataset(cfg.data).shape
    mc, ms = model.config.in_channels, model.config.sample_size
    ms = ms if isinstance(ms, int) else ms[0]
    if (mc, ms) != (c, h):
        raise ConfigError(
            f"{what} takes {mc}-channel {ms}x{ms} images, but the config's data ({cfg.data.name}) are {c}x{h}x{w}: "
            f"the model and the data disagree. Use a config whose data match the model (e.g. data.name=cifar10 for "
            f"the CIFAR-10 presets), or size a preset to the data with data.image_size={h} data.channels={c}.")


def _load_base(model: Optional[Path], preset: Optional[str], cfg: Config, device: "object" = "cpu"):
    """The model to prune or inspect: a saved model directory, or a preset sized by the config."""
    import torch

    from ..core.errors import ConfigError
    from ..models.unet import build_unet, unet_config

    if (model is None) == (preset is None):
        raise ConfigError("Give exactly one of --preset P or --model DIR (--base DIR for prune).")
    if model is not None:
        from ..models.store import load_model

        return load_model(model, device)
    torch.manual_seed(cfg.run.seed)
    # a preset is sized by data.image_size/channels when set, else by its own default (8x8x1, 32x32x3)
    model = build_unet(unet_config(preset, cfg.data.image_size, cfg.data.channels))
    return model.to(device), {"schedule": cfg.schedule.model_dump()}


@app.command()
def inspect(
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny, ddpm-cifar10 or iddpm-cifar10."),
    model: Optional[Path] = typer.Option(None, "--model", help="A saved model directory."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    as_json: bool = typer.Option(False, "--json", help="Compact JSON (what the agent sees)."),
) -> None:
    """List the prunable units: coupled channel groups, their quanta, MACs share and params."""
    from ..models.macs import count
    from ..pruning.units import analyse

    cfg = _config(config, overrides)
    base, _ = _load_base(model, preset, cfg)
    graph = analyse(base)
    c = count(base)
    if as_json:
        typer.echo(json.dumps({
            "macs_thop": c.thop, "macs_op_level": c.op_level, "params": c.params,
            "units": [u.compact() for u in graph.units],
        }, separators=(",", ":")))
        return
    t = Table(title=f"prunable units ({len(graph.units)}); base {c.thop / 1e6:,.1f} M MACs (thop), "
                    f"{c.op_level / 1e6:,.1f} M (op level), {c.params / 1e6:.2f} M params")
    t.add_column("unit", no_wrap=True)
    t.add_column("role", no_wrap=True)
    for col in ("channels", "quantum", "keep levels", "MACs share", "params", "layers"):
        t.add_column(col, justify="right")
    for u in sorted(graph.units, key=lambda u: -u.macs_share):
        t.add_row(u.name, u.role, str(u.channels), str(u.quantum), f"k/{u.steps}", f"{u.macs_share:.1%}",
                  f"{u.params:,}", str(u.members))
    console.print(t)


@app.command()
def prune(
    method: str = typer.Option("magnitude", "--method", help="random, magnitude, l1, taylor, diff-pruning, group-taylor."),
    macs_fraction: Optional[float] = typer.Option(None, "--macs-fraction", help="MACs limit as a fraction of the base."),
    group: Optional[int] = typer.Option(None, "--group", help="Use this plan group's limit (and timesteps)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Saved base model directory (e.g. RUN/stage1/model)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Prune an untrained preset instead."),
    scheme_file: Optional[Path] = typer.Option(None, "--scheme", help="JSON scheme {unit: keep level} to fit and build."),
    out: Path = typer.Option(..., "--out", help="Output directory (pruned model and prune.json)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    device: Optional[str] = DeviceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    llm: Optional[str] = typer.Option(None, "--llm", help="agent: builtin, openai:<model>, replay:<file>, <provider>:<model>."),
    llm_base_url: Optional[str] = typer.Option(None, "--llm-base-url", help="agent: an OpenAI-compatible server URL."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="agent: rounds R (paper: 5)."),
    candidates: Optional[int] = typer.Option(None, "--candidates", min=1, help="agent: candidates per round K (paper: 3)."),
    prompt_dir: Optional[Path] = typer.Option(None, "--prompt-dir", help="agent: directory overriding prompt templates."),
    memory_dir: Optional[Path] = typer.Option(None, "--memory-dir", help="agent: Chroma directory shared across runs."),
    memory_url: Optional[str] = typer.Option(None, "--memory-url", help="agent: a Chroma server, http://host:port."),
) -> None:
    """Prune a base model to a MACs budget (classical criteria or the agent) and save it (pickle-free)."""
    from ..core.io import atomic_write_json
    from ..core.data import load_dataset
    from ..core.devices import resolve_device
    from ..diffusion.process import ForwardProcess
    from ..core.errors import ConfigError
    from ..planning.build import build_plan
    from ..models.latent import training_data
    from ..pruning.importance import CRITERIA, GRADIENT_CRITERIA
    from ..pruning.pruner import Pruner
    from ..pruning.scheme import PruningScheme
    from ..pruning.serialize import save_pruned
    from ..workflow.sampling import schedule_of

    extra = list(overrides or [])
    for key, val in (("agent.llm", llm), ("agent.base_url", llm_base_url), ("agent.rounds", rounds),
                     ("agent.candidates", candidates), ("agent.prompt_dir", prompt_dir),
                     ("agent.memory_dir", memory_dir), ("agent.memory_url", memory_url)):
        if val is not None:
            extra.append(f"{key}={val}")
    cfg = _config(config, extra, device)
    if method == "agent":
        return _prune_agent(cfg, macs_fraction, group, base, preset, out, as_json)
    if method not in CRITERIA:
        raise ConfigError(f"--method {method!r} is unknown; use agent or one of {', '.join(CRITERIA)}.")
    if (macs_fraction is None) == (group is None):
        raise ConfigError("Give exactly one of --macs-fraction f or --group i.")
    if macs_fraction is not None and not 0 < macs_fraction <= 1:
        raise ConfigError(f"--macs-fraction must be in (0, 1], got {macs_fraction}.")
    dev = resolve_device(cfg.run.device)
    model, meta = _load_base(base, preset, cfg, dev)
    _check_fits_data(model, cfg, f"--preset {preset}" if preset else f"the model in {base}")
    schedule = schedule_of(meta, str(base)) if base is not None else cfg.schedule
    cfg = cfg.model_copy(update={"schedule": schedule})
    timesteps = None
    if group is not None:
        plan = build_plan(cfg)
        if not 0 <= group < len(plan.groups):
            raise ConfigError(f"--group {group} does not exist: the plan has groups 0..{len(plan.groups) - 1}.")
        fraction = plan.groups[group].limit_fraction
        timesteps = plan.groups[group].timesteps
    else:
        fraction = macs_fraction
    scheme = PruningScheme(source=method)
    if scheme_file is not None:
        from ..core.io import read_json

        raw = read_json(scheme_file, "scheme")
        if not isinstance(raw, dict):
            raise ConfigError(f"--scheme {scheme_file} must hold a JSON object mapping unit names to keep levels "
                              f"(e.g. {{\"conv_in\": 0.5}}), not a {type(raw).__name__}.")
        scheme = PruningScheme.model_validate({"levels": raw.get("levels", raw), "source": "file"})
    data = training_data(cfg) if method in GRADIENT_CRITERIA else None
    process = ForwardProcess(schedule, dev) if method in GRADIENT_CRITERIA else None
    pruner = Pruner(model, data, process, cfg.run.seed)
    result = pruner.prune(scheme, pruner.limit(fraction), method, timesteps)
    meta = {**meta, "schedule": schedule.model_dump(mode="json")}
    meta.pop("pruning", None)
    save_pruned(out / "model", result, meta)
    from ..agent.proxy import held_out
    from ..evaluation.quick import quick_loss

    eval_ts = timesteps or list(range(schedule.timesteps))
    loss = quick_loss(result.model, held_out(cfg), process or ForwardProcess(schedule, dev), eval_ts,
                      cfg.agent.eval_timesteps, cfg.agent.eval_batch_size, cfg.run.seed)
    summary = {"method": method, "group": group, "quick_loss": loss, **result.summary()}
    atomic_write_json(out / "prune.json", summary)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(kv_table(f"pruned with {method}", {
        "MACs limit": f"{result.limit_macs / 1e6:,.2f} M ({fraction:.3f} of base)",
        "MACs (thop)": f"{result.macs.thop / 1e6:,.2f} M ({result.fraction:.3f} of base, {summary['fill']:.1%} of limit)",
        "MACs (op level)": f"{result.macs.op_level / 1e6:,.2f} M (base {result.base_macs.op_level / 1e6:,.2f} M)",
        "params": f"{result.macs.params:,} (base {result.base_macs.params:,})",
        "build+fit+count": f"{result.seconds:.2f} s",
        "quick loss": f"{loss:.5f} (held-out images, {len(eval_ts)} timesteps sampled evenly)",
        "saved": str(out / "model"),
    }))
    for n in result.notes:
        console.print(f"[yellow]note:[/] {n}")


def _group_task(cfg: Config, macs_fraction: Optional[float], group: Optional[int], base_macs: int):
    """The GroupTask for --group i (from the plan) or --macs-fraction f (all timesteps)."""
    from ..agent.tools import GroupTask
    from ..core.errors import ConfigError
    from ..planning.build import build_plan

    if (macs_fraction is None) == (group is None):
        raise ConfigError("Give exactly one of --macs-fraction f or --group i.")
    plan = build_plan(cfg)
    if group is not None:
        if not 0 <= group < len(plan.groups):
            raise ConfigError(f"--group {group} does not exist: the plan has groups 0..{len(plan.groups) - 1}.")
        g = plan.groups[group]
        neighbours = [i for i in (group - 1, group + 1) if 0 <= i < len(plan.groups)]
        return GroupTask(g.index, g.t_start, g.t_end, g.snr_min, g.snr_max, g.limit_fraction * base_macs,
                         g.limit_fraction, neighbours)
    if not 0 < macs_fraction <= 1:
        raise ConfigError(f"--macs-fraction must be in (0, 1], got {macs_fraction}.")
    return GroupTask(0, 0, cfg.schedule.timesteps - 1, float(plan.snr.min()), float(plan.snr.max()),
                     macs_fraction * base_macs, macs_fraction, [])


def _prune_agent(cfg: Config, macs_fraction, group, base, preset, out: Path, as_json: bool) -> None:
    from ..agent.proxy import AgentPruning
    from ..core.devices import resolve_device
    from ..models.macs import thop_macs
    from ..workflow.sampling import schedule_of

    dev = resolve_device(cfg.run.device)
    model, meta = _load_base(base, preset, cfg, dev)
    _check_fits_data(model, cfg, f"--preset {preset}" if preset else f"the model in {base}")
    if base is not None:
        cfg = cfg.model_copy(update={"schedule": schedule_of(meta, str(base))})
    task = _group_task(cfg, macs_fraction, group, thop_macs(model))
    ap = AgentPruning(cfg, model, meta, out, cfg.agent.llm, dev, show=not as_json)
    outcome, result = ap.prune_group(task)
    summary = outcome.extra["summary"]
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    u, sec = summary["usage"], summary["seconds"]
    console.print(kv_table(f"agent pruning ({ap.llm_spec}), group {task.index}", {
        "best candidate": f"{summary['best_id']} (loss {summary['best_loss']:.5f})",
        "MACs (thop)": f"{result.macs.thop / 1e6:,.2f} M of limit {task.limit_macs / 1e6:,.2f} M",
        "params": f"{result.macs.params:,}",
        "rounds: loss mean ± std": ", ".join(f"{r['mean']:.4f}±{r['std']:.4f}" for r in summary["rounds"]),
        "LLM usage": f"{u['llm_calls']} calls, {u['input_tokens']}+{u['output_tokens']} tokens"
                     + (f", ${u['cost_usd']:.4f}" if u.get("cost_usd") is not None else ""),
        "time": f"{sec['total']:.1f} s ({sec['agent_overhead']:.1f} s outside building/evaluating)",
        "saved": f"{out / 'model'}; transcript {out / 'transcript.jsonl'}",
    }))


memory_app = typer.Typer(help="The Chroma memory bank of evaluated schemes.", no_args_is_help=True)
prompts_app = typer.Typer(help="The agent's prompt templates.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
app.add_typer(prompts_app, name="prompts")


def _open_memory(run_dir: Optional[Path], memory_dir: Optional[Path], memory_url: Optional[str]):
    """The memory bank's Chroma client, opened exactly as the agent opens it."""
    from ..agent.memory import MemoryBank
    from ..core.errors import ConfigError

    path = memory_dir or (run_dir / "memory" if run_dir else None)
    if not memory_url and (path is None or not Path(path).is_dir()):
        raise ConfigError(f"No memory bank at {path}. Pass --run-dir RUN (holding memory/) or --memory-dir DIR.")
    return MemoryBank.open_client(path, memory_url)


def _memory_records(run_dir, memory_dir, memory_url, group):
    from ..agent.memory import MemoryRecord

    from ..agent.memory import MemoryBankError

    client = _open_memory(run_dir, memory_dir, memory_url)
    recs = []
    try:
        for col in client.list_collections():
            c = client.get_collection(col.name if hasattr(col, "name") else col)
            res = c.get(include=["documents", "metadatas"])
            recs += [MemoryRecord.from_chroma(i, d, m) for i, d, m in zip(res["ids"], res["documents"],
                                                                         res["metadatas"])]
    except Exception as e:  # noqa: BLE001 - a corrupt database fails on first read, not on open
        raise MemoryBankError(f"Cannot read the memory bank ({type(e).__name__}: {e}). It may be corrupt: move "
                              "it away to start a fresh memory.") from None
    if group is not None:
        recs = [r for r in recs if r.group == group]
    return recs


MemRun = typer.Option(None, "--run-dir", help="An agent output directory (holding memory/).")
MemDir = typer.Option(None, "--memory-dir", help="A Chroma directory.")
MemUrl = typer.Option(None, "--memory-url", help="A Chroma server URL.")
MemGroup = typer.Option(None, "--group", help="Only this group.")


def _memory_table(recs, title: str) -> Table:
    t = Table(title=title)
    for col in ("id", "group", "round", "llm", "status", "loss", "MACs", "limit", "params", "pruned units"):
        t.add_column(col, justify="left" if col in ("id", "llm", "status") else "right")
    for r in recs:
        t.add_row(r.id, str(r.group), str(r.round + 1), r.llm, r.status, "-" if r.loss is None else f"{r.loss:.5f}",
                  f"{r.macs / 1e6:,.2f} M", f"{r.limit_macs / 1e6:,.2f} M", f"{r.params:,}", str(len(r.levels)))
    return t


@memory_app.command("list")
def memory_list(run_dir: Optional[Path] = MemRun, memory_dir: Optional[Path] = MemDir,
                memory_url: Optional[str] = MemUrl, group: Optional[int] = MemGroup) -> None:
    """Every recorded scheme."""
    recs = sorted(_memory_records(run_dir, memory_dir, memory_url, group), key=lambda r: (r.run_id, r.group, r.round, r.candidate))
    console.print(_memory_table(recs, f"memory bank: {len(recs)} records"))


@memory_app.command("best")
def memory_best(run_dir: Optional[Path] = MemRun, memory_dir: Optional[Path] = MemDir,
                memory_url: Optional[str] = MemUrl, group: Optional[int] = MemGroup,
                k: int = typer.Option(5, "--k", min=1)) -> None:
    """The lowest-loss schemes (per group)."""
    recs = [r for r in _memory_records(run_dir, memory_dir, memory_url, group) if r.loss is not None and r.status == "ok"]
    best = []
    for g in sorted({r.group for r in recs}):
        best += sorted((r for r in recs if r.group == g), key=lambda r: r.loss)[:k]
    console.print(_memory_table(best, f"best {k} per group"))


@memory_app.command("export")
def memory_export(out: Path = typer.Option(..., "--out", help="File to write: .csv or .json."),
                  run_dir: Optional[Path] = MemRun, memory_dir: Optional[Path] = MemDir,
                  memory_url: Optional[str] = MemUrl, group: Optional[int] = MemGroup) -> None:
    """Export all records as CSV or JSON."""
    import csv
    import io

    from ..core.io import atomic_write_text
    from ..core.errors import ConfigError

    recs = _memory_records(run_dir, memory_dir, memory_url, group)
    if out.suffix == ".json":
        atomic_write_text(out, json.dumps([r.model_dump() for r in recs], indent=2))
    elif out.suffix == ".csv":
        buf = io.StringIO()
        fields = list(recs[0].model_dump().keys()) if recs else ["id"]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for r in recs:
            d = r.model_dump()
            d["levels"] = json.dumps(d["levels"])
            w.writerow(d)
        atomic_write_text(out, buf.getvalue())
    else:
        raise ConfigError(f"--out {out} must end in .csv or .json.")
    console.print(f"{len(recs)} records written to {out}")


@prompts_app.command("show")
def prompts_show(prompt_dir: Optional[Path] = typer.Option(None, "--prompt-dir"),
                 name: Optional[str] = typer.Argument(None, help="system, round, memory or architecture.")) -> None:
    """Print the templates in effect (defaults overridden by --prompt-dir)."""
    from ..agent.prompts import load_prompts

    ps = load_prompts(prompt_dir)
    for n, t in ps.templates.items():
        if name and n != name:
            continue
        console.rule(f"{n} ({ps.sources[n]}) variables: {', '.join(t.input_variables)}")
        typer.echo(t.template)


@prompts_app.command("validate")
def prompts_validate(prompt_dir: Optional[Path] = typer.Option(None, "--prompt-dir")) -> None:
    """Check every template's placeholders (missing or unknown ones are listed)."""
    from ..agent.prompts import load_prompts

    ps = load_prompts(prompt_dir)
    console.print(f"prompt templates OK: {', '.join(f'{n} ({p})' for n, p in ps.sources.items())}")


@prompts_app.command("init")
def prompts_init(directory: Path = typer.Argument(..., help="Where to copy the default templates."),
                 force: bool = typer.Option(False, "--force", help="Overwrite templates already in DIR.")) -> None:
    """Copy the packaged default templates into DIR for editing; use them with --prompt-dir DIR."""
    from ..agent.prompts import init_prompts

    written = init_prompts(directory, force=force)
    console.print(f"wrote {len(written)} prompt templates (use them with --prompt-dir {directory}):", soft_wrap=True)
    for p in written:
        console.print(f"  {p}", highlight=False, soft_wrap=True)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (user errors: 2, with a one-paragraph message)."""
    import click
    from rich.markup import escape

    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except TDCError as e:
        # soft_wrap: paths in messages stay whole, so they can be copied. redact: an error may quote a
        # server's reply, which can echo the key. escape: "[low, high]" in a message is text, not markup.
        console.print(f"[bold red]error:[/] {escape(redact(str(e)))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        console.print("aborted")
        return 1
    except click.exceptions.ClickException as e:
        e.show()
        return e.exit_code
    except OSError as e:
        # A full disk or a read-only / forbidden output folder is the user's to fix, not a bug.
        advice = {errno.ENOSPC: "Free some space (or choose another --run-dir / --out)",
                  errno.EDQUOT: "Free some of your quota (or choose another --run-dir / --out)",
                  errno.EROFS: "Choose a writable --run-dir / --out (the file system is read-only)",
                  errno.EACCES: "Choose a --run-dir / --out you may write to, or fix its permissions",
                  errno.EPERM: "Choose a --run-dir / --out you may write to, or fix its permissions"}.get(e.errno)
        if advice is None:
            raise
        what = redact(f"Cannot write {e.filename or 'a file'}: {e.strerror}.")
        console.print(f"[bold red]error:[/] {escape(what)} "
                      f"{advice}, then rerun the same command: finished steps and the last checkpoint are kept.",
                      highlight=False, soft_wrap=True)
        return 2


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
