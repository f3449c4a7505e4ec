"""Benchmarks: the paper's tables measured on the embedded default (digits, tiny UNet). Not a test.

    python tools/bench_tables.py                  # make bench: 3 seeds, every item (~1.5 h on 2 cores)
    python tools/bench_tables.py --scale smoke    # make bench-smoke: the same code paths at toy size

Writes ``benchmarks/results/tables{,-smoke}.{json,md}``. Every experiment is a real run of the
product (``run_pipeline`` + ``evaluate_run``) in its own run directory under ``--work``; a finished
experiment is read back instead of recomputed, so an interrupted benchmark resumes. All runs of a
seed share that seed's stage-1 base (copied, or extended by more steps for equal-compute rows,
which is exact: the learning rate is constant after warmup and every step's randomness is a
function of (seed, step)).

Items (issue #6): 1 Table I at equal training compute; 2 Tables V/VI (single model at one budget,
and inside TDC); 3 Tables II/III and the k ablation; 4 two-stage vs single-stage; 5 speed and
overheads; 6 the stage-2 recipe. Items 3 and 6 prune with group-Taylor (not the agent), so they
isolate the plan and the recipe from the agent's choices.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tdc_agent.core.io import atomic_write_json, read_json
from tdc_agent.models.store import load_model
from tdc_agent.core.config import Config, SampleConfig, load_config
from tdc_agent.core.data import load_dataset
from tdc_agent.diffusion.process import ForwardProcess
from tdc_agent.evaluation.quick import quick_loss
from tdc_agent.models.unet import denoise
from tdc_agent.workflow.context import RunContext
from tdc_agent.workflow.pipeline import evaluate_run, run_pipeline, scorer
from tdc_agent.planning.build import build_plan
from tdc_agent.models.progressive import ProgressiveModel, member_from_dir
from tdc_agent.pruning.criteria import criterion_names
from tdc_agent.models.macs import count
from tdc_agent.workflow.rundir import RunDir
from tdc_agent.workflow.sampling import generate
from tdc_agent.workflow.stage1 import continue_base, train_base
from tdc_agent.training import train

ROOT = Path(__file__).resolve().parent.parent
# every registered criterion (built-in, from code, or by entry point: tdc_agent/pruning/criteria.py)
CLASSICAL = list(criterion_names())

SCALES: dict[str, dict[str, Any]] = {
    "full": {"seeds": [0, 1, 2], "timesteps": 1000, "groups": 4, "stage1": 1000, "stage2": 50, "single_steps": 200,
             "single_budget": 0.75, "samples": 300, "sample_steps": 25, "rounds": 3, "candidates": 2,
             "criteria": CLASSICAL, "shapes": ["constant", "increasing", "decreasing"], "Ns": [8, 10],
             "ks": [0.3, 0.7], "recipes": ["lr-high", "no-warmup", "no-ema", "proportional", "split"],
             "speed_images": 200, "speed_steps": 100, "loop_steps": 100,
             "repeats": 3},
    "smoke": {"seeds": [0], "timesteps": 100, "groups": 3, "stage1": 12, "stage2": 3, "single_steps": 6,
              "single_budget": 0.75, "samples": 16, "sample_steps": 5, "rounds": 1, "candidates": 2,
              "criteria": ["random", "group-taylor"], "shapes": ["constant"], "Ns": [], "ks": [],
              "recipes": ["split"], "speed_images": 8, "speed_steps": 5, "loop_steps": 4, "repeats": 1},
}


def recipe_variants(s: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, config overrides) of item 6; the default recipe is the reference."""
    half = max(1, s["stage2"] // 2)
    return [
        ("lr-low", "stage-2 lr 2.5e-4 (default 5e-4)", {"stage2.lr": 2.5e-4}),
        ("lr-high", "stage-2 lr 1e-3", {"stage2.lr": 1e-3}),
        ("no-warmup", "no stage-2 warmup (default 25 steps)", {"stage2.warmup": 0}),
        ("ema-0.99", "EMA decay 0.99, restarted per group (default 0.999)", {"stage2.ema_decay": 0.99}),
        ("no-ema", "no EMA in stage 2", {"stage2.ema_decay": 0.0}),
        ("proportional", "steps proportional to the group's size (same total)",
         {"stage2.steps_rule": "proportional", "stage2.steps": s["stage2"] * s["groups"]}),
        ("split", f"stage 1 +{half * s['groups']} steps, stage 2 {half}/group (same total)",
         {"stage1.steps": s["stage1"] + half * s["groups"], "stage2.steps": half}),
    ]


class Bench:
    """One scale, one work directory; every experiment cached in its run directory's bench.json."""

    def __init__(self, scale: str, work: Path, device: torch.device, log: Callable[[str], None] = print):
        self.s = SCALES[scale]
        self.scale = scale
        self.work = work
        self.device = device
        self.log = log

    # --- configs and runs ---------------------------------------------------------------------------
    def cfg(self, seed: int, overrides: dict[str, Any] | None = None) -> Config:
        s = self.s
        base = {"run.seed": seed, "run.device": str(self.device), "schedule.timesteps": s["timesteps"],
                "plan.groups": s["groups"], "stage1.steps": s["stage1"], "stage1.ckpt_every": 10**9,
                "stage2.steps": s["stage2"], "stage2.ckpt_every": 10**9, "sample.steps": s["sample_steps"],
                "evaluation.samples": s["samples"], "agent.rounds": s["rounds"],
                "agent.candidates": s["candidates"],
                # this benchmark's protocol: equal steps per group, its own equal-compute rows
                "stage2.steps_rule": "equal", "evaluation.compare_equal_compute": False}
        if self.scale == "smoke":
            base.update({"stage1.batch_size": 16, "stage1.warmup": 2, "stage2.batch_size": 16, "stage2.warmup": 1,
                         "agent.eval_timesteps": 2, "agent.eval_batch_size": 16})
        base.update(overrides or {})
        return load_config(ROOT / "examples" / "digits.yaml", [f"{k}={json.dumps(v)}" for k, v in base.items()])

    def base_run(self, seed: int, steps: int | None = None) -> RunDir:
        """The seed's stage-1 base (``steps`` > the default extends a copy of it)."""
        steps = steps or self.s["stage1"]
        run = RunDir(self.work / f"s{seed}" / ("base" if steps == self.s["stage1"] else f"base-{steps}"))
        if not (run.base_model / "model.safetensors").is_file():
            self.log(f"seed {seed}: stage 1, {steps} steps")
            if steps != self.s["stage1"]:  # trained on from the default base's checkpoint
                continue_base(self.cfg(seed), self.base_run(seed), steps, run.stage1, self.device, progress=False)
            else:
                train_base(self.cfg(seed), run, self.device, progress=False)
        return run

    def pipeline(self, seed: int, name: str, overrides: dict[str, Any], pruned_from: str | None = None
                 ) -> dict[str, Any]:
        """A whole TDC run (stage 2 + evaluation) on the seed's base; cached."""
        run = RunDir(self.work / f"s{seed}" / name)
        done = run.path / "bench.json"
        if done.is_file():
            return read_json(done, "benchmark result")
        cfg = self.cfg(seed, overrides)
        base = self.base_run(seed, cfg.stage1.steps)
        if not (run.base_model / "model.safetensors").is_file():
            shutil.rmtree(run.stage1, ignore_errors=True)
            shutil.copytree(base.stage1, run.stage1)
        if pruned_from is not None:  # reuse another run's pruned starting models (same base, same plan)
            for g in build_plan(cfg).groups:
                src, dst = RunDir(self.work / f"s{seed}" / pruned_from).group(g.index), run.group(g.index)
                if not (dst / "prune.json").is_file():
                    shutil.copytree(src / "pruned", dst / "pruned", dirs_exist_ok=True)
                    shutil.copy(src / "prune.json", dst / "prune.json")
        self.log(f"seed {seed}: {name}")
        t0 = time.time()
        ctx = RunContext.of(cfg, run, self.device, show=False)
        out = run_pipeline(ctx)
        stage2_s = time.time() - t0
        ev = evaluate_run(cfg, run, self.device, show=False, plan=ctx.plan)
        tdc, base = ev.models["tdc"], ev.models["base"]
        res = {"name": name, "seed": seed, "overrides": overrides, "fd": tdc.scores["fd"], "kid": tdc.scores["kid"],
               "real_floor": tdc.scores["real_floor"], "base_fd": base.scores["fd"], "base_kid": base.scores["kid"],
               "base_params": base.params, "stage1_training_macs": ev.training_macs["stage1"],
               "stage1_steps": ev.training_steps["stage1"],
               "macs_per_step": tdc.macs_per_step, "base_macs_per_step": base.macs_per_step,
               "params": tdc.params, "training_macs": ev.training_macs["stage1"] + ev.training_macs["stage2"],
               "training_steps": ev.training_steps["stage1"] + ev.training_steps["stage2"],
               "stage2_seconds": stage2_s, "group_quick_loss": self.group_losses(cfg, run),
               "agent_seconds": self.agent_seconds(cfg, run), "finetune_seconds": self.finetune_seconds(cfg, run),
               "timings": out.timings}
        atomic_write_json(done, res)
        return res

    def group_losses(self, cfg: Config, run: RunDir) -> dict[str, float]:
        """Quick-eval loss of every pruned group's starting model (same images, noise and timesteps
        for every method: the comparison at equal MACs limits)."""
        from tdc_agent.models.latent import held_out

        process = ForwardProcess(cfg.schedule, self.device)
        out = {}
        for g in build_plan(cfg).groups:
            if g.limit_fraction >= 1 - 1e-9:
                continue
            model, _ = load_model(run.group(g.index) / "pruned", self.device)
            out[str(g.index)] = quick_loss(model, held_out(cfg), process, g.timesteps, cfg.agent.eval_timesteps,
                                           cfg.agent.eval_batch_size, cfg.run.seed)
        return out

    def agent_seconds(self, cfg: Config, run: RunDir) -> dict[str, float]:
        """Where the agent's time went, summed over groups (zero for non-agent modes)."""
        tot = {"total": 0.0, "build_and_evaluate": 0.0, "agent_overhead": 0.0}
        for g in build_plan(cfg).groups:
            secs = read_json(run.group(g.index) / "prune.json", "pruning summary").get("seconds")
            if isinstance(secs, dict):
                for k in tot:
                    tot[k] += float(secs.get(k, 0.0))
        return tot

    def finetune_seconds(self, cfg: Config, run: RunDir) -> float:
        total = 0.0
        for g in build_plan(cfg).groups:
            lines = (run.group(g.index) / "finetune" / "metrics.jsonl").read_text().splitlines()
            el = [json.loads(x)["elapsed_s"] for x in lines if '"elapsed_s"' in x]
            total += el[-1] if el else 0.0
        return total

    def score_fn(self, seed: int, fn: Callable, shape: tuple[int, ...], macs: float) -> dict[str, Any]:
        cfg = self.cfg(seed)
        scfg = cfg.sample.model_copy(update={"num": cfg.evaluation.samples})
        images = generate(fn, shape, cfg.schedule, scfg, seed, self.device, progress=False)
        return {**scorer(cfg, shape, self.device)(images), "macs_per_step": macs}

    # --- item 1: Table I ------------------------------------------------------------------------------
    def table1(self, seed: int) -> dict[str, Any]:
        s = self.s
        extra = s["stage2"] * s["groups"]
        noprune = self.pipeline(seed, "tdc-no-prune", {"stage2.mode": "tdc-no-prune"})
        tdc = self.pipeline(seed, "tdc-agent", {"stage2.mode": "tdc"})
        long_run = self.work / f"s{seed}" / "base-long-eval.json"
        if not long_run.is_file():
            run = self.base_run(seed, s["stage1"] + extra)
            base, _ = load_model(run.base_model, self.device)
            c = count(base)
            res = self.score_fn(seed, lambda x, t: denoise(base, x, t), tuple(load_dataset(self.cfg(seed).data).shape),
                                c.thop)
            res.update({"params": c.params, "training_steps": s["stage1"] + extra,
                        "training_macs": float(c.thop) * (s["stage1"] + extra) * self.cfg(seed).stage1.batch_size})
            atomic_write_json(long_run, res)
        long = read_json(long_run, "benchmark result")
        short = {"fd": tdc["base_fd"], "kid": tdc["base_kid"], "macs_per_step": tdc["base_macs_per_step"],
                 "params": tdc["base_params"], "training_macs": tdc["stage1_training_macs"],
                 "training_steps": tdc["stage1_steps"]}
        return {"base_stage1": short, "base_equal_compute": long, "tdc_no_prune": noprune, "tdc": tdc}

    # --- item 2: Tables V and VI ----------------------------------------------------------------------
    def single(self, seed: int) -> dict[str, Any]:
        """One model at one budget for all timesteps: a one-group plan with a constant budget b."""
        s = self.s
        plan = {"plan.groups": 1, "plan.shape": "constant", "plan.k": 2 * s["single_budget"] - 1,
                "stage2.steps": s["single_steps"]}
        out = {m: self.pipeline(seed, f"single-{m}", {**plan, "stage2.mode": m}) for m in s["criteria"]}
        out["agent"] = self.pipeline(seed, "single-agent", {**plan, "stage2.mode": "tdc"})
        out["scratch"] = self.scratch(seed, "single-scratch", f"single-{s['criteria'][-1]}", plan)
        return out

    def inside_tdc(self, seed: int) -> dict[str, Any]:
        out = {m: self.pipeline(seed, f"tdc-{m}", {"stage2.mode": m}) for m in self.s["criteria"]}
        out["agent"] = self.pipeline(seed, "tdc-agent", {"stage2.mode": "tdc"})
        return out

    # --- item 4: two-stage vs single-stage (and "from scratch" of Table V) -----------------------------
    def scratch(self, seed: int, name: str, structure_from: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """Each group's pruned architecture (from ``structure_from``) re-initialised and trained on its
        own timesteps with the same total training compute as the two-stage run (stage 1's compute is
        split evenly over the groups and converted to each model's MACs)."""
        path = self.work / f"s{seed}" / name / "bench.json"
        if path.is_file():
            return read_json(path, "benchmark result")
        cfg = self.cfg(seed, overrides)
        plan = build_plan(cfg)
        data = load_dataset(cfg.data)
        process = ForwardProcess(cfg.schedule, self.device)
        src = RunDir(self.work / f"s{seed}" / structure_from)
        base_macs = count(load_model(src.base_model, self.device)[0]).thop
        members, total_macs, total_steps = [], 0.0, 0
        self.log(f"seed {seed}: {name}")
        for g in plan.groups:
            model, meta = load_model(src.group(g.index) / "pruned", self.device)
            torch.manual_seed(seed + 17 * g.index)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and not list(m.children()):
                    m.reset_parameters()
            macs = count(model).thop
            steps = round(cfg.stage2.steps + cfg.stage1.steps * base_macs / (len(plan.groups) * macs))
            tcfg = cfg.stage1.model_copy(update={"steps": steps})
            res = train(model, data, process, tcfg, path.parent / f"g{g.index}", seed=seed + 1000 * (g.index + 1),
                        device=self.device, timesteps=g.timesteps, meta=meta, progress=False)
            member, _ = member_from_dir(g.index, g.t_start, g.t_end, res.model_dir, g.limit_fraction, self.device)
            members.append(member)
            total_macs += float(macs) * steps * tcfg.batch_size
            total_steps += steps
        pm = ProgressiveModel(members, cfg.schedule, load_dataset(cfg.data).shape)
        out = self.score_fn(seed, pm, pm.image_shape, pm.sampling_macs(cfg.sample.sampler, cfg.sample.steps)[
            "mean_per_step"])
        out.update({"name": name, "seed": seed, "training_macs": total_macs, "training_steps": total_steps,
                    "params": sum(sum(p.numel() for p in m.model.parameters()) for m in members)})
        atomic_write_json(path, out)
        return out

    def two_stage(self, seed: int) -> dict[str, Any]:
        return {"two_stage": self.pipeline(seed, "tdc-agent", {"stage2.mode": "tdc"}),
                "single_stage": self.scratch(seed, "tdc-scratch", "tdc-agent", {"stage2.mode": "tdc"})}

    # --- item 3: Tables II, III and k -----------------------------------------------------------------
    def ablations(self, seed: int) -> dict[str, Any]:
        gt = {"stage2.mode": "group-taylor"}
        out = {"default": self.pipeline(seed, "tdc-group-taylor", gt)}
        for shape in self.s["shapes"]:
            out[f"shape={shape}"] = self.pipeline(seed, f"shape-{shape}", {**gt, "plan.shape": shape})
        for n in self.s["Ns"]:
            out[f"N={n}"] = self.pipeline(seed, f"N-{n}", {**gt, "plan.groups": n})
        for k in self.s["ks"]:
            out[f"k={k}"] = self.pipeline(seed, f"k-{k}", {**gt, "plan.k": k})
        return out

    # --- item 6: the stage-2 recipe ---------------------------------------------------------------------
    def recipe(self, seed: int) -> dict[str, Any]:
        gt = {"stage2.mode": "group-taylor"}
        out = {"default": self.pipeline(seed, "tdc-group-taylor", gt)}
        for name, _, ov in recipe_variants(self.s):
            if self.s["recipes"] is not None and name not in self.s["recipes"]:
                continue
            same_base = "stage1.steps" not in ov
            out[name] = self.pipeline(seed, f"recipe-{name}", {**gt, **ov},
                                      pruned_from="tdc-group-taylor" if same_base else None)
        out["no-prune-fresh"] = self.pipeline(seed, "tdc-no-prune", {"stage2.mode": "tdc-no-prune"})
        out["no-prune-carried"] = self.pipeline(seed, "recipe-carried", {"stage2.mode": "tdc-no-prune",
                                                                          "stage2.optimizer": "carried"})
        return out

    # --- item 5: speed -----------------------------------------------------------------------------------
    def speed(self, seed: int) -> dict[str, Any]:
        path = self.work / f"s{seed}" / "speed.json"
        if path.is_file():
            return read_json(path, "benchmark result")
        self.log(f"seed {seed}: speed")
        s = self.s
        cfg = self.cfg(seed)
        run = RunDir(self.work / f"s{seed}" / "tdc-agent")
        base, _ = load_model(run.base_model, self.device)
        pm = ProgressiveModel.load(run.progressive(), self.device)
        scfg = SampleConfig(sampler="ddim", steps=s["speed_steps"], num=s["speed_images"],
                            batch_size=s["speed_images"])
        times: dict[str, list[float]] = {"base": [], "progressive": []}
        for _ in range(s["repeats"]):  # interleaved, so drifts in machine load hit both alike
            for name, fn in (("base", lambda x, t: denoise(base, x, t)), ("progressive", pm)):
                t0 = time.perf_counter()
                generate(fn, pm.image_shape, cfg.schedule, scfg, seed, self.device, progress=False)
                times[name].append((time.perf_counter() - t0) / s["speed_images"])
        loop = self.loop_overhead(cfg)
        tdc = self.pipeline(seed, "tdc-agent", {"stage2.mode": "tdc"})
        a = tdc["agent_seconds"]
        stage2 = a["total"] + tdc["finetune_seconds"]
        out = {"sampling_s_per_image": {k: statistics.median(v) for k, v in times.items()},
               "sampling_speedup": statistics.median(times["base"]) / statistics.median(times["progressive"]),
               **loop,
               "stage2_seconds": stage2, "agent_overhead_seconds": a["agent_overhead"],
               "agent_overhead_share": a["agent_overhead"] / stage2 if stage2 else float("nan"),
               "agent_total_share": a["total"] / stage2 if stage2 else float("nan")}
        atomic_write_json(path, out)
        return out

    def loop_overhead(self, cfg: Config) -> dict[str, Any]:
        """Our training loop vs a bare PyTorch loop (same model, batch, AdamW), seconds per step."""
        import tempfile

        from tdc_agent.workflow.stage1 import build_model

        data = load_dataset(cfg.data)
        process = ForwardProcess(cfg.schedule, self.device)
        steps = self.s["loop_steps"]
        tcfg = cfg.stage1.model_copy(update={"steps": steps, "log_every": 10**9, "ckpt_every": 10**9})
        ours, bare = [], []
        for r in range(self.s["repeats"]):
            torch.manual_seed(r)
            model = build_model(cfg, data.shape).to(self.device)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                train(model, data, process, tcfg, d, seed=r, device=self.device, progress=False)
                ours.append((time.perf_counter() - t0) / steps)
            torch.manual_seed(r)
            model = build_model(cfg, data.shape).to(self.device).train()
            opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
            g = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            for _ in range(steps):
                idx = torch.randint(len(data), (tcfg.batch_size,), generator=g)
                x0 = data.images[idx].to(self.device)
                t = torch.randint(process.timesteps, (tcfg.batch_size,), generator=g).to(self.device)
                noise = torch.randn(x0.shape, generator=g).to(self.device)
                loss = process.loss(lambda x, tt: denoise(model, x, tt), x0, t, noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            bare.append((time.perf_counter() - t0) / steps)
        return {"loop_s_per_step": statistics.median(ours), "bare_s_per_step": statistics.median(bare),
                "loop_overhead": statistics.median(ours) / statistics.median(bare) - 1,
                "loop_note": "ours includes EMA, per-step generators, NaN guard, final checkpoint and model export"}


# --- aggregation and the markdown report -------------------------------------------------------------
def ms(values: list[float], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def _col(per_seed: list[dict], *path: str) -> list[float]:
    out = []
    for d in per_seed:
        for p in path:
            d = d[p]
        out.append(float(d))
    return out


def render(results: dict[str, Any], scale: str) -> str:
    s = SCALES[scale]
    seeds = results["seeds"]
    lines = [f"# Benchmarks: the paper's tables on digits ({scale} scale)", "",
             f"Machine: {results['machine']}. Seeds {seeds}; mean ± std over seeds. Stage 1 {s['stage1']} steps, "
             f"stage 2 {s['stage2']} steps per group, N={s['groups']}, T={s['timesteps']}; FD/KID on "
             f"{s['samples']} DDIM-{s['sample_steps']} samples in digits-classifier features "
             f"(real-vs-real floor ≈ {ms(results.get('floors', []))}); agent = builtin policy, "
             f"{s['rounds']} rounds × {s['candidates']} candidates. Regenerate: `{results['command']}`.", ""]
    if "table1" in results:
        t = results["table1"]
        lines += ["## 1. Table I at equal training compute", "",
                  "| model | FD | KID | MACs / step | params | training MACs | training steps |",
                  "|---|---|---|---|---|---|---|"]
        rows = [("base, stage 1 only", "base_stage1"), ("base, trained as long as TDC w/o pruning",
                                                         "base_equal_compute"),
                ("TDC without pruning", "tdc_no_prune"), ("TDC (agent)", "tdc")]
        for label, key in rows:
            r = [x[key] for x in t]
            kid = ms(_col(r, "kid"), "{:.4g}") if "kid" in r[0] else "-"
            tm = ms([v / 1e12 for v in _col(r, "training_macs")], "{:.2f}") + " T" if "training_macs" in r[0] else "-"
            steps = ms(_col(r, "training_steps"), "{:.0f}") if "training_steps" in r[0] else "-"
            params = ms([v / 1e6 for v in _col(r, "params")], "{:.3f}") + " M" if "params" in r[0] else "-"
            lines.append(f"| {label} | {ms(_col(r, 'fd'))} | {kid} | {ms([v / 1e6 for v in _col(r, 'macs_per_step')])}"
                         f" M | {params} | {tm} | {steps} |")
        lines.append("")
    if "single" in results or "inside_tdc" in results:
        lines += ["## 2. Tables V and VI: pruning methods at the same budgets and fine-tuning steps", "",
                  f"Single model: one budget {s['single_budget']} F for all timesteps, {s['single_steps']} "
                  "fine-tuning steps. Inside TDC: every group pruned by the method. Quick loss: held-out images, "
                  "same noise and timesteps for all methods (lower is better); scratch = the same architecture "
                  "re-initialised, trained with the same total compute as base + fine-tune.", "",
                  "| method | single: FD | single: MACs / step | single: quick loss | TDC: FD | TDC: MACs / step |"
                  " TDC: mean group quick loss |", "|---|---|---|---|---|---|---|"]
        methods = list(results.get("single", [{}])[0].keys()) or list(results["inside_tdc"][0].keys())
        for m in methods:
            sg = [x[m] for x in results.get("single", [])]
            td = [x[m] for x in results.get("inside_tdc", []) if m in x]
            sq = ms([statistics.mean(r["group_quick_loss"].values()) for r in sg if r.get("group_quick_loss")],
                    "{:.4f}")
            tq = ms([statistics.mean(r["group_quick_loss"].values()) for r in td if r.get("group_quick_loss")],
                    "{:.4f}")
            lines.append(f"| {m} | {ms(_col(sg, 'fd')) if sg else '-'} | "
                         f"{ms([v / 1e6 for v in _col(sg, 'macs_per_step')]) if sg else '-'} M | {sq} | "
                         f"{ms(_col(td, 'fd')) if td else '-'} | "
                         f"{ms([v / 1e6 for v in _col(td, 'macs_per_step')]) + ' M' if td else '-'} | {tq} |")
        lines.append("")
    if "ablations" in results:
        lines += ["## 3. Tables II, III and k (pruning by group-Taylor)", "",
                  "| setting | FD | MACs / step (× base) | training MACs |", "|---|---|---|---|"]
        for key in results["ablations"][0]:
            r = [x[key] for x in results["ablations"]]
            ratio = [a["macs_per_step"] / a["base_macs_per_step"] for a in r]
            lines.append(f"| {key} | {ms(_col(r, 'fd'))} | {ms(ratio, '{:.3f}')} | "
                         f"{ms([v / 1e12 for v in _col(r, 'training_macs')])} T |")
        lines.append("")
    if "two_stage" in results:
        lines += ["## 4. Two-stage vs single-stage at equal compute (the paper's Fig. 7)", "",
                  "| training | FD | MACs / step | training MACs |", "|---|---|---|---|"]
        for key, label in (("two_stage", "two-stage (base, then prune + fine-tune per group)"),
                           ("single_stage", "single-stage (each group's architecture from scratch)")):
            r = [x[key] for x in results["two_stage"]]
            lines.append(f"| {label} | {ms(_col(r, 'fd'))} | {ms([v / 1e6 for v in _col(r, 'macs_per_step')])} M | "
                         f"{ms([v / 1e12 for v in _col(r, 'training_macs')])} T |")
        lines.append("")
    if "speed" in results:
        sp = results["speed"]
        lines += ["## 5. Speed and overheads", "", "| measure | value |", "|---|---|",
                  f"| sampling, base (ms / image, DDIM-{s['speed_steps']}) | "
                  f"{ms([x['sampling_s_per_image']['base'] * 1e3 for x in sp])} |",
                  f"| sampling, progressive (ms / image) | {ms([x['sampling_s_per_image']['progressive'] * 1e3 for x in sp])} |",
                  f"| sampling speed-up (base / progressive) | {ms(_col(sp, 'sampling_speedup'), '{:.3f}')} × |",
                  f"| training step, our loop (ms) | {ms([x['loop_s_per_step'] * 1e3 for x in sp])} |",
                  f"| training step, bare PyTorch loop (ms) | {ms([x['bare_s_per_step'] * 1e3 for x in sp])} |",
                  f"| our loop's overhead | {ms([x['loop_overhead'] * 100 for x in sp], '{:.1f}')} % |",
                  f"| stage 2 time outside building/evaluating candidates (agent, memory, prompts) | "
                  f"{ms([x['agent_overhead_share'] * 100 for x in sp], '{:.1f}')} % |",
                  f"| stage 2 time in the agent in total (incl. candidate build + quick eval) | "
                  f"{ms([x['agent_total_share'] * 100 for x in sp], '{:.1f}')} % |", ""]
    if "recipe" in results:
        lines += ["## 6. The stage-2 recipe (pruning by group-Taylor, equal total steps)", "",
                  "| recipe | FD | Δ FD vs default (paired by seed) |", "|---|---|---|"]
        descr = {n: d for n, d, _ in recipe_variants(s)}
        descr.update({"default": "default (fresh AdamW, lr 5e-4, warmup 25, EMA 0.999, equal steps)",
                      "no-prune-fresh": "w/o pruning, fresh optimizer", "no-prune-carried":
                      "w/o pruning, optimizer state carried from stage 1"})
        rec = results["recipe"]
        for key in rec[0]:
            ref = "no-prune-fresh" if key.startswith("no-prune") else "default"
            delta = [x[key]["fd"] - x[ref]["fd"] for x in rec]
            lines.append(f"| {descr.get(key, key)} | {ms([x[key]['fd'] for x in rec])} | "
                         f"{ms(delta) if key != ref else '-'} |")
        lines.append("")
    if "targets" in results:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if "table1" in results:
        t = results["table1"]
        ratio = statistics.mean(x["tdc"]["macs_per_step"] / x["tdc"]["base_macs_per_step"] for x in t)
        fd_tdc = statistics.mean(x["tdc"]["fd"] for x in t)
        fd_base = statistics.mean(x["base_equal_compute"]["fd"] for x in t)
        out.append({"target": "TDC MACs/step ≤ 0.82 × base with FD no worse than base (equal compute)",
                    "measured": f"{ratio:.3f} × base; FD {fd_tdc:.2f} vs {fd_base:.2f}",
                    "met": ratio <= 0.82 and fd_tdc <= fd_base})
        fd_np = statistics.mean(x["tdc_no_prune"]["fd"] for x in t)
        out.append({"target": "TDC w/o pruning: FD better than base at equal compute",
                    "measured": f"FD {fd_np:.2f} vs {fd_base:.2f}", "met": fd_np < fd_base})
    if "inside_tdc" in results:
        wins = total = 0
        fd_wins = 0
        for x in results["inside_tdc"]:
            classical = [m for m in x if m != "agent"]
            for g, loss in x["agent"]["group_quick_loss"].items():
                total += 1
                wins += loss < min(x[m]["group_quick_loss"][g] for m in classical)
            fd_wins += x["agent"]["fd"] < min(x[m]["fd"] for m in classical)
        n = len(results["inside_tdc"])
        out.append({"target": "agent beats the best classical criterion on quick loss in ≥ 60 % of groups",
                    "measured": f"{wins}/{total} groups", "met": total > 0 and wins / total >= 0.6})
        out.append({"target": "agent beats the best classical criterion on final FD (inside TDC)",
                    "measured": f"{fd_wins}/{n} seeds", "met": fd_wins * 2 > n})
    if "speed" in results:
        sp = statistics.mean(x["sampling_speedup"] for x in results["speed"])
        out.append({"target": "sampling ≥ 1.15 × faster per image than base", "measured": f"{sp:.3f} ×",
                    "met": sp >= 1.15})
        lo = statistics.mean(x["loop_overhead"] for x in results["speed"])
        out.append({"target": "training loop within 5 % of a bare PyTorch loop", "measured": f"{lo:+.1%}",
                    "met": lo <= 0.05})
        ao = statistics.mean(x["agent_overhead_share"] for x in results["speed"])
        out.append({"target": "agent, memory and counting overhead ≤ 10 % of stage 2 time",
                    "measured": f"{ao:.1%}", "met": ao <= 0.10})
    return out


ITEMS = {"1": ("table1", Bench.table1), "2s": ("single", Bench.single), "2t": ("inside_tdc", Bench.inside_tdc),
         "4": ("two_stage", Bench.two_stage), "5": ("speed", Bench.speed), "3": ("ablations", Bench.ablations),
         "6": ("recipe", Bench.recipe)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--items", default="1,2s,2t,4,5,3,6", help="comma list of 1,2s,2t,3,4,5,6")
    ap.add_argument("--seeds", default=None, help="comma list (default: the scale's)")
    ap.add_argument("--work", type=Path, default=None, help="run directories (default: benchmarks/work/<scale>)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--recipes", default=None, help="item 6 variants to run (comma list; default: the scale's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else SCALES[args.scale]["seeds"]
    work = args.work or ROOT / "benchmarks" / "work" / args.scale
    bench = Bench(args.scale, work, torch.device(args.device),
                  log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    if args.recipes:
        bench.s = {**bench.s, "recipes": args.recipes.split(",")}
    suffix = "" if args.scale == "full" else f"-{args.scale}"
    out_json = args.out / f"tables{suffix}.json"
    results: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                                          f"torch threads, torch {torch.__version__}, device {args.device}",
                               "scale": args.scale, "seeds": seeds,
                               "command": "python tools/bench_tables.py" + ("" if args.scale == "full" else
                                                                            f" --scale {args.scale}")}
    t0 = time.time()
    for item in args.items.split(","):
        key, fn = ITEMS[item]
        results[key] = [fn(bench, seed) for seed in seeds]
        results["floors"] = sorted({r["real_floor"] for p in work.glob("s*/*/bench.json")
                                    for r in [read_json(p, "benchmark result")] if "real_floor" in r})
        results["targets"] = targets(results)
        results["seconds"] = time.time() - t0
        atomic_write_json(out_json, results)
        out_json.with_suffix(".md").write_text(render(results, args.scale) + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] item {item} done; {out_json.with_suffix('.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
