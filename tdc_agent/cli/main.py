"""The ``tdc-agent`` command: ``tdc-agent <verb> --config x.yaml key=value ...``.

Every verb validates its inputs (config, device, data, model files) before it writes anything, and
turns user errors into one paragraph and exit code 2.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..core.config import Config, ConfigNote, load_config
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
MaxTokensOpt = typer.Option(None, "--max-tokens-per-group", min=1,
                            help="agent: LLM token budget per group (agent.max_tokens_per_group; default 150000).")


def kv_table(title: str, rows: dict[str, str]) -> Table:
    """A two-column table of named results (what most verbs print at the end)."""
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows.items():
        t.add_row(k, v)
    return t


def _config(config: Optional[Path], overrides: Optional[List[str]], device: Optional[str] = None) -> Config:
    """The resolved config every verb works with (the library's :func:`load_config`; its notes printed)."""
    extra = list(overrides or [])
    if device is not None:
        extra.append(f"run.device={device}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigNote)  # shown every time, not once per process
        cfg = load_config(config, extra)
    # the key's variable may have any name: scrub its value from whatever this process prints or logs
    register_secret_env(cfg.agent.api_key_env)
    for w in caught:
        if issubclass(w.category, ConfigNote):
            console.print(f"[yellow]note:[/] {escape(str(w.message))}", soft_wrap=True, emoji=False)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
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
    if out is not None:
        _check_dir_target(out)
    from ..planning.build import plan_table
    from ..workflow.jobs import plan_job

    extra = list(overrides or [])
    for key, val in (("schedule.timesteps", timesteps), ("plan.groups", groups), ("plan.k", k),
                     ("schedule.name", schedule), ("plan.shape", shape)):
        if val is not None:
            extra.append(f"{key}={val}")
    job = plan_job(_config(config, extra), model, preset, out)
    if as_json:
        d = job.plan.to_dict()
        d["base_macs"] = job.base_macs
        typer.echo(json.dumps(d, indent=2))
        return
    console.print(plan_table(job.plan, job.base_macs))
    for w in job.plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", emoji=False)
    console.print(f"plan written to {job.paths[0]} and {job.paths[1]}")


def _check_dir_target(path: Path) -> None:
    """Refuse a directory option that cannot become a directory (a file there, or a file among its
    parents) before the workflow (torch, diffusers) is imported, so the refusal takes about a second;
    the error is the OSError the write would raise, shown as one paragraph by the handler below."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
            return


@app.command("train-base")
def train_base_cmd(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    device: Optional[str] = DeviceOpt,
    run_dir: Optional[Path] = RunDirOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Stage 1: train the base denoiser on all timesteps, then draw a sample grid."""
    from ..workflow.jobs import train_base_job

    job = train_base_job(_config(config, overrides, device), run_dir, progress=not quiet)
    if job is None:  # a non-main torchrun rank
        return
    result = job.result
    trained = result.steps - result.resumed_from
    rows = {
        "steps": str(result.steps),
        "resumed from step": str(result.resumed_from),
        "final loss": f"{result.final_loss:.4f}" if result.final_loss is not None else "-",
        "train time": f"{result.seconds:.1f} s",
        "time per step": f"{result.seconds / trained:.3f} s" if trained and result.seconds else "-",
        "model": str(result.model_dir),
        "sample grid": str(job.grid),
    }
    console.print(kv_table("stage 1", rows))
    if result.ddp_param_max_diff is not None:
        console.print(f"DDP parameter sync check: max |θ_r - θ_0| = {result.ddp_param_max_diff:g}")
    console.print(f"total {job.seconds:.1f}s")


@app.command("run")
def run_cmd(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    device: Optional[str] = DeviceOpt,
    run_dir: Optional[Path] = RunDirOpt,
    groups: Optional[str] = typer.Option(None, "--groups", help="Only these groups (e.g. 3,4), to spread groups over jobs."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Stop after assembling (no sampling, FD or report)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    max_tokens_per_group: Optional[int] = MaxTokensOpt,
) -> None:
    """The whole TDC job: plan, stage 1, per-group agent pruning and fine-tuning, progressive model,
    evaluation against the base, report. Rerun the same command to resume after a kill."""
    extra = list(overrides or [])
    if max_tokens_per_group is not None:
        extra.append(f"agent.max_tokens_per_group={max_tokens_per_group}")
    cfg = _config(config, extra, device)
    if cfg.stage2.mode == "tdc":
        from ..agent.prompts import load_prompts

        # refused in about a second, before the workflow (torch, diffusers, LangChain) is imported;
        # the run's preflight checks them again for library callers
        load_prompts(cfg.agent.prompt_dir)
    from ..workflow.jobs import parse_groups, run_job

    job = run_job(cfg, run_dir, parse_groups(groups), evaluate=not no_eval, progress=not quiet)
    out = job.pipeline
    if out is None:  # a non-main torchrun rank
        return
    if not out.complete:
        console.print(f"groups done: {out.groups_done} of {out.groups_total}; when all are done, run "
                      f"`tdc-agent assemble --run-dir {job.run.path}` (or this command without --groups).")
        return
    if job.evaluation is None:
        console.print(f"progressive model: {out.progressive['']}")
        return
    res = job.evaluation
    rows = {}
    labels = {"base": "base", "base_equal_compute": f"base, equal compute ({res.equal_compute_steps} steps)",
              "tdc_no_prune": "TDC w/o pruning", "tdc": "TDC"}
    for name in ("base", "base_equal_compute", "tdc_no_prune", "tdc"):
        if name not in res.models:
            continue
        m = res.models[name]
        r = m.scores
        parts = [f"FD {r['fd']:.3f}" + (f" (floor {r['real_floor']:.3f})" if "real_floor" in r else "")] if (
            "fd" in r) else []
        parts += [f"KID {r['kid']:.4g}"] if "kid" in r else []
        parts += [f"intra-FD {r['intra_fd']:.3f}"] if "intra_fd" in r else []
        parts += [f"{m.macs_per_step / 1e6:,.2f} M MACs/step", f"{m.params:,} params"]
        rows[labels[name]] = ", ".join(parts)
    rows["pipeline time"] = f"{job.seconds:.1f} s"
    rows["report"] = str(job.run.report)
    console.print(kv_table("TDC run", rows))


@app.command()
def assemble(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    run_dir: Optional[Path] = RunDirOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Build the progressive model from finished groups (after `run --groups ...` jobs)."""
    from ..workflow.jobs import assemble_job

    for path in assemble_job(_config(config, overrides, device), run_dir):
        console.print(f"progressive model: {path}")


@app.command()
def evaluate(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    run_dir: Optional[Path] = RunDirOpt,
    device: Optional[str] = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Sample the base and progressive models of a run, measure FD/MACs/speed, write report.md."""
    from ..workflow.jobs import evaluate_job

    res = evaluate_job(_config(config, overrides, device), run_dir, progress=not quiet)
    console.print_json(json.dumps(res.to_dict()))


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
    from ..workflow.sampling import sample_model

    if sampler not in ("ddim", "ddpm"):
        raise ConfigError(f"--sampler must be ddim or ddpm, got {sampler!r}.")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed {seed} is out of range: use 0 <= seed < 2**63.")
    cfg = SampleConfig(sampler=sampler, steps=steps, num=num, eta=eta, batch_size=batch_size)
    res = sample_model(model, cfg, out or Path(model).parent / "samples", seed, resolve_device(device or "auto"),
                       progress=not quiet)
    if res.macs is not None:  # a progressive model
        m = res.macs
        console.print(f"{num} samples in {res.seconds:.1f}s: {res.grid_path}, {res.npz_path}; "
                      f"{m['total'] / 1e6:,.1f} M MACs per image ({m['mean_per_step'] / 1e6:,.2f} M per step)")
        return
    console.print(f"{num} samples in {res.seconds:.1f}s ({res.seconds / num * 1000:.1f} ms/image): "
                  f"{res.grid_path}, {res.npz_path}")


@app.command()
def inspect(
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny, ddpm-cifar10 or iddpm-cifar10."),
    model: Optional[Path] = typer.Option(None, "--model", help="A saved model directory."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    as_json: bool = typer.Option(False, "--json", help="Compact JSON (what the agent sees)."),
) -> None:
    """List the prunable units: coupled channel groups, their quanta, MACs share and params."""
    from ..workflow.jobs import inspect_model

    ins = inspect_model(_config(config, overrides), model, preset)
    graph, c = ins.graph, ins.macs
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
        t.add_row(u.name, u.role, str(u.channels), str(u.quantum), f"k/{u.n_levels}", f"{u.macs_share:.1%}",
                  f"{u.params:,}", str(u.members))
    console.print(t)


@app.command()
def prune(
    method: str = typer.Option("magnitude", "--method",
                               help="agent, or a pruning criterion: random, magnitude, l1, taylor, diff-pruning, "
                                    "group-taylor, or one registered (README: Pruning criteria)."),
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
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="agent: rounds R (default 2; paper: 5)."),
    candidates: Optional[int] = typer.Option(None, "--candidates", min=1, help="agent: candidates per round K (paper: 3)."),
    prompt_dir: Optional[Path] = typer.Option(None, "--prompt-dir", help="agent: directory overriding prompt templates."),
    memory_dir: Optional[Path] = typer.Option(None, "--memory-dir", help="agent: Chroma directory shared across runs."),
    memory_url: Optional[str] = typer.Option(None, "--memory-url", help="agent: a Chroma server, http://host:port."),
    llm_protocol: Optional[str] = typer.Option(None, "--llm-protocol",
                                               help="agent: tools (tool calling) or json (schemes as JSON text, for "
                                                    "models without tool calling)."),
    tool_choice: Optional[str] = typer.Option(None, "--tool-choice",
                                              help="agent: passed to bind_tools: auto, any/required, or a tool name."),
    max_tokens_per_group: Optional[int] = MaxTokensOpt,
) -> None:
    """Prune a base model to a MACs budget (classical criteria or the agent) and save it (pickle-free)."""
    extra = list(overrides or [])
    for key, val in (("agent.llm", llm), ("agent.base_url", llm_base_url), ("agent.rounds", rounds),
                     ("agent.candidates", candidates), ("agent.prompt_dir", prompt_dir),
                     ("agent.memory_dir", memory_dir), ("agent.memory_url", memory_url),
                     ("agent.protocol", llm_protocol), ("agent.tool_choice", tool_choice),
                     ("agent.max_tokens_per_group", max_tokens_per_group)):
        if val is not None:
            extra.append(f"{key}={val}")
    cfg = _config(config, extra, device)
    if method == "agent":
        from ..agent.llm import ResolvedLLM

        # the LLM first (spec, key, server): its refusals come before the workflow's imports (~10 s)
        llm_ = ResolvedLLM.of(cfg.agent.llm, cfg.agent, seed=cfg.run.seed)
    from ..workflow.prune import agent_prune_to_target, prune_to_target

    if method == "agent":
        ap = agent_prune_to_target(cfg, out, base, preset, macs_fraction, group, show=not as_json, llm=llm_)
        summary, result, task = ap.summary, ap.result, ap.task
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        u, sec = summary["usage"], summary["seconds"]
        console.print(kv_table(f"agent pruning ({ap.llm}), group {task.index}", {
            "best candidate": f"{summary['best_id']} (loss {summary['best_loss']:.5f})",
            "MACs (thop)": f"{result.macs.thop / 1e6:,.2f} M of limit {task.limit_macs / 1e6:,.2f} M",
            "params": f"{result.macs.params:,}",
            "rounds: loss mean ± std": ", ".join(f"{r['mean']:.4f}±{r['std']:.4f}" for r in summary["rounds"]),
            "LLM usage": f"{u['llm_calls']} calls, {u['input_tokens']}+{u['output_tokens']} tokens"
                         + (f", ${u['cost_usd']:.4f}" if u.get("cost_usd") is not None else ""),
            "time": f"{sec['total']:.1f} s ({sec['agent_overhead']:.1f} s outside building/evaluating)",
            "saved": f"{out / 'model'}; transcript {out / 'transcript.jsonl'}",
        }))
        return
    res = prune_to_target(cfg, method, out, base, preset, macs_fraction, group, scheme_file)
    result, summary = res.result, res.summary
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(kv_table(f"pruned with {method}", {
        "MACs limit": f"{result.limit_macs / 1e6:,.2f} M ({res.fraction:.3f} of base)",
        "MACs (thop)": f"{result.macs.thop / 1e6:,.2f} M ({result.fraction:.3f} of base, {summary['fill']:.1%} of limit)",
        "MACs (op level)": f"{result.macs.op_level / 1e6:,.2f} M (base {result.base_macs.op_level / 1e6:,.2f} M)",
        "params": f"{result.macs.params:,} (base {result.base_macs.params:,})",
        "build+fit+count": f"{result.seconds:.2f} s",
        "quick loss": f"{summary['quick_loss']:.5f} (held-out images, {res.eval_timesteps} timesteps sampled evenly)",
        "saved": str(res.model_dir),
    }))
    for n in result.notes:
        console.print(f"[yellow]note:[/] {escape(n)}", emoji=False)


memory_app = typer.Typer(help="The Chroma memory bank of evaluated schemes.", no_args_is_help=True)
prompts_app = typer.Typer(help="The agent's prompt templates.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
app.add_typer(prompts_app, name="prompts")


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
    from ..agent.records import memory_records

    recs = sorted(memory_records(run_dir, memory_dir, memory_url, group), key=lambda r: (r.run_id, r.group, r.round, r.candidate))
    console.print(_memory_table(recs, f"memory bank: {len(recs)} records"))


@memory_app.command("best")
def memory_best(run_dir: Optional[Path] = MemRun, memory_dir: Optional[Path] = MemDir,
                memory_url: Optional[str] = MemUrl, group: Optional[int] = MemGroup,
                k: int = typer.Option(5, "--k", min=1)) -> None:
    """The lowest-loss schemes (per group)."""
    from ..agent.records import best_records, memory_records

    best = best_records(memory_records(run_dir, memory_dir, memory_url, group), k)
    console.print(_memory_table(best, f"best {k} per group"))


@memory_app.command("export")
def memory_export(out: Path = typer.Option(..., "--out", help="File to write: .csv or .json."),
                  run_dir: Optional[Path] = MemRun, memory_dir: Optional[Path] = MemDir,
                  memory_url: Optional[str] = MemUrl, group: Optional[int] = MemGroup) -> None:
    """Export all records as CSV or JSON."""
    from ..agent.records import export_records, memory_records

    recs = memory_records(run_dir, memory_dir, memory_url, group)
    export_records(recs, out)
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


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, Exit, Abort) of click *and* of the click Typer bundles (``typer._click``,
    with Exit/Abort in ``typer.exceptions``): Typer >= 0.16 raises its own copies, which click's
    classes never match."""
    import click

    errors, exits, aborts = [click.exceptions.ClickException], [click.exceptions.Exit], [click.exceptions.Abort]
    try:
        from typer import _click as bundled  # type: ignore[attr-defined]

        errors.append(bundled.exceptions.ClickException)
    except (ImportError, AttributeError):  # an older Typer uses click itself
        pass
    exits.append(getattr(typer, "Exit", click.exceptions.Exit))
    aborts.append(getattr(typer, "Abort", click.exceptions.Abort))
    return tuple(errors), tuple(exits), tuple(aborts)


# errno -> what the user can do about it; the path comes first in the paragraph
_OS_ADVICE = {
    errno.ENOSPC: "The disk is full: free some space (or choose another --run-dir / --out)",
    errno.EDQUOT: "The disk quota is used up: free some of it (or choose another --run-dir / --out)",
    errno.EROFS: "The file system is read-only: choose a writable --run-dir / --out",
    errno.EACCES: "Permission denied: choose a path you may use (--run-dir / --out / --memory-dir), or fix its "
                  "permissions",
    errno.EPERM: "Permission denied: choose a path you may use (--run-dir / --out / --memory-dir), or fix its "
                 "permissions",
    errno.EEXIST: "Something else is in the way there (e.g. a file where a directory belongs): move it away or "
                  "choose another path",
    errno.ENOTDIR: "A part of that path is a file, not a directory: choose a path whose parents are directories "
                   "(or move the file away)",
    errno.EISDIR: "It is a directory where a file belongs: pass a file name (e.g. --out records.json) or move "
                  "the directory away",
    errno.ENAMETOOLONG: "The path or one of its names is too long for the file system: choose a shorter path",
    errno.ENOENT: "It does not exist: check the path (and that its parent directory exists)",
    errno.ELOOP: "It is a symbolic link loop: fix or remove the link",
    errno.EMFILE: "Too many files are open: raise the limit (ulimit -n) or run fewer jobs at once",
    errno.EBUSY: "It is busy (in use by another process or a mount point): choose another path",
    errno.EXDEV: "It is on another file system than its destination: keep the run directory on one file system",
}


def os_error_paragraph(e: OSError) -> str:
    """One paragraph for any OSError: the path(s), the system's words, and what to do."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None) or "a file"
    advice = _OS_ADVICE.get(e.errno, "Check the path, its permissions and the free space")
    return (f"Cannot use {paths}: {e.strerror or type(e).__name__}. {advice}; then rerun the same command: "
            "finished steps and the last checkpoint are kept.")


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "DefaultCPUAllocator" in text
                                            or "not enough memory" in text)


def _error(message: str) -> None:
    """Print one paragraph: scrubbed of credentials, markup and emoji codes shown as text."""
    from rich.markup import escape

    # soft_wrap: paths in messages stay whole, so they can be copied. redact: an error may quote a
    # server's reply, which can echo the key. escape/emoji=False: "[low, high]" or ":x:" in a server's
    # message is text, not markup.
    console.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True, emoji=False)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (user errors: 2, with a one-paragraph message).

    Everything written to stdout/stderr meanwhile goes through the secret scrubber.
    """
    from pydantic import ValidationError

    from ..core.config import format_validation_error
    from ..core.redaction import RedactingStream

    click_error, click_exit, click_abort = _click_exceptions()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except TDCError as e:
        _error(str(e))
        return e.exit_code
    except click_exit as e:
        return e.exit_code
    except click_abort:
        console.print("aborted")
        return 1
    except click_error as e:
        # the usual "Usage: ..." line and "Error: ..." (exit 2 for usage errors, as click's own)
        e.show()
        return e.exit_code
    except ValidationError as e:
        # a setting built from command-line options (e.g. `sample --eta inf`) that the config refuses
        _error(format_validation_error(e, "the command-line options"))
        return 2
    except OSError as e:
        # A full disk, a read-only folder, a file where a directory belongs...: the user's to fix.
        _error(os_error_paragraph(e))
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        _error(f"Ran out of memory ({type(e).__name__}: {' '.join(str(e).split())[:200]}). Lower the sizes "
               "that allocate: data.image_size, stage1/stage2.batch_size, sample.batch_size (--batch-size), "
               "agent.eval_batch_size, or use a device with more memory.")
        return 2
    finally:
        sys.stdout, sys.stderr = saved


def main() -> None:
    """Console-script entry point. An unexpected error (a bug) still shows its traceback, scrubbed of
    credentials like every other output."""
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:
        code = 130
    except Exception:  # noqa: BLE001 - printed (scrubbed) for the bug report, then exit 1
        import traceback

        sys.stderr.write(redact(traceback.format_exc()))
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
