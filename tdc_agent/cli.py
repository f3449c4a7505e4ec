"""The ``tdc-agent`` command: ``tdc-agent <verb> --config x.yaml key=value ...``.

Every verb validates its inputs (config, device, data, model files) before it writes anything, and
turns user errors into one paragraph and exit code 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .config import Config, load_config
from .errors import TDCError
from .progress import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="TDC Training for diffusion models: timestep groups, a base denoiser, and agent-pruned "
    "group models.",
    pretty_exceptions_enable=False,
)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: examples/digits.yaml).")
OverridesArg = typer.Argument(None, help="Config overrides, e.g. plan.groups=4 stage1.steps=500.")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (overrides run.device).")
RunDirOpt = typer.Option(None, "--run-dir", help="Run directory (default: run.output_dir/run.name).")


def _config(config: Optional[Path], overrides: Optional[List[str]], device: Optional[str] = None) -> Config:
    extra = list(overrides or [])
    if device is not None:
        extra.append(f"run.device={device}")
    return load_config(config, extra)


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
    from .planning import build_plan, plan_table, write_plan
    from .runs import RunDir

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
    from .pruning.macs import thop_macs

    if model is not None:
        from .checkpoint import load_model

        return thop_macs(load_model(model)[0])
    if preset is not None:
        from .models import build_unet, unet_config

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
    from .data import load_dataset
    from .devices import dist_env, resolve_device
    from .runs import RunDir
    from .sampling import generate, write_samples
    from .stage1 import train_base as _train

    cfg = _config(config, overrides, device)
    dev = resolve_device(cfg.run.device)
    data = load_dataset(cfg.data)  # fails on missing data before anything is written
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
    from .checkpoint import load_model
    from .models import denoise

    model, meta = load_model(result.model_dir, dev)
    images = generate(lambda x, t: denoise(model, x, t), data.shape, cfg.schedule, cfg.sample,
                      cfg.run.seed, dev, progress=not quiet)
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
    table = Table(title="stage 1", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(k, v)
    console.print(table)
    if result.ddp_param_max_diff is not None:
        console.print(f"DDP parameter sync check: max |θ_r - θ_0| = {result.ddp_param_max_diff:g}")
    console.print(f"total {time.time() - t0:.1f}s")


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
    from .config import SampleConfig
    from .devices import resolve_device
    from .errors import ConfigError
    from .sampling import sample_model_dir

    if sampler not in ("ddim", "ddpm"):
        raise ConfigError(f"--sampler must be ddim or ddpm, got {sampler!r}.")
    dev = resolve_device(device or "auto")
    cfg = SampleConfig(sampler=sampler, steps=steps, num=num, eta=eta, batch_size=batch_size)
    out = out or Path(model).parent / "samples"
    res = sample_model_dir(model, cfg, out, seed, dev, progress=not quiet)
    console.print(f"{num} samples in {res.seconds:.1f}s ({res.seconds / num * 1000:.1f} ms/image): "
                  f"{res.grid_path}, {res.npz_path}")


def _load_base(model: Optional[Path], preset: Optional[str], cfg: Config, device: "object" = "cpu"):
    """The model to prune or inspect: a saved model directory, or a preset sized by the config."""
    import torch

    from .errors import ConfigError
    from .models import build_unet, unet_config

    if (model is None) == (preset is None):
        raise ConfigError("Give exactly one of --preset P or --model DIR (--base DIR for prune).")
    if model is not None:
        from .checkpoint import load_model

        return load_model(model, device)
    torch.manual_seed(cfg.run.seed)
    size = cfg.data.image_size if cfg.data.image_size else None
    channels = cfg.data.channels if cfg.data.channels else None
    if preset != "tiny" and cfg.data.name == "digits" and size is None:
        size, channels = None, None  # CIFAR presets default to 32x32x3
    return build_unet(unet_config(preset, size, channels)).to(device), {"schedule": cfg.schedule.model_dump()}


@app.command()
def inspect(
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny, ddpm-cifar10 or iddpm-cifar10."),
    model: Optional[Path] = typer.Option(None, "--model", help="A saved model directory."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    as_json: bool = typer.Option(False, "--json", help="Compact JSON (what the agent sees)."),
) -> None:
    """List the prunable units: coupled channel groups, their quanta, MACs share and params."""
    from .pruning.macs import count
    from .pruning.units import analyse

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
) -> None:
    """Prune a base model to a MACs budget with a classical criterion and save it (pickle-free)."""
    from .checkpoint import atomic_write_json
    from .data import load_dataset
    from .devices import resolve_device
    from .diffusion import ForwardProcess
    from .errors import ConfigError
    from .planning import build_plan
    from .pruning.importance import CRITERIA, GRADIENT_CRITERIA
    from .pruning.pruner import Pruner
    from .pruning.scheme import PruningScheme
    from .pruning.serialize import save_pruned
    from .sampling import schedule_of

    cfg = _config(config, overrides, device)
    if method not in CRITERIA:
        raise ConfigError(f"--method {method!r} is unknown; use one of {', '.join(CRITERIA)}.")
    if (macs_fraction is None) == (group is None):
        raise ConfigError("Give exactly one of --macs-fraction f or --group i.")
    if macs_fraction is not None and not 0 < macs_fraction <= 1:
        raise ConfigError(f"--macs-fraction must be in (0, 1], got {macs_fraction}.")
    dev = resolve_device(cfg.run.device)
    model, meta = _load_base(base, preset, cfg, dev)
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
        from .checkpoint import read_json

        raw = read_json(scheme_file, "scheme")
        scheme = PruningScheme.model_validate({"levels": raw.get("levels", raw), "source": "file"})
    data = load_dataset(cfg.data) if method in GRADIENT_CRITERIA else None
    process = ForwardProcess(schedule, dev) if method in GRADIENT_CRITERIA else None
    pruner = Pruner(model, data, process, cfg.run.seed)
    result = pruner.prune(scheme, pruner.limit(fraction), method, timesteps)
    meta = {**meta, "schedule": schedule.model_dump(mode="json")}
    meta.pop("pruning", None)
    save_pruned(out / "model", result, meta)
    summary = {"method": method, "group": group, **result.summary()}
    atomic_write_json(out / "prune.json", summary)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    t = Table(title=f"pruned with {method}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("MACs limit", f"{result.limit_macs / 1e6:,.2f} M ({fraction:.3f} of base)")
    t.add_row("MACs (thop)", f"{result.macs.thop / 1e6:,.2f} M ({result.fraction:.3f} of base, "
                             f"{summary['fill']:.1%} of limit)")
    t.add_row("MACs (op level)", f"{result.macs.op_level / 1e6:,.2f} M (base {result.base_macs.op_level / 1e6:,.2f} M)")
    t.add_row("params", f"{result.macs.params:,} (base {result.base_macs.params:,})")
    t.add_row("build+fit+count", f"{result.seconds:.2f} s")
    t.add_row("saved", str(out / "model"))
    console.print(t)
    for n in result.notes:
        console.print(f"[yellow]note:[/] {n}")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (user errors: 2, with a one-paragraph message)."""
    import click

    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except TDCError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        console.print("aborted")
        return 1
    except click.exceptions.ClickException as e:
        e.show()
        return e.exit_code


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
