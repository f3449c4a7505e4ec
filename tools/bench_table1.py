"""Table I with statistical power: does TDC beat the base at equal training compute? (`make bench`)

    python tools/bench_table1.py run                                  # every seed, then the tables
    python tools/bench_table1.py run --scale smoke --jobs 1           # the same code paths at toy size
    python tools/bench_table1.py run --device cuda --jobs 0           # one process per seed and grid point

Protocol (digits, the tiny UNet):

* Stage 1 trains on the ``train`` split; the agent's quick evaluation uses the disjoint ``test``
  split; FD is measured against all 1797 digits in the digits-classifier features.
* Convergence: the base is also trained on for +20 % steps (``base-1.2x``); the table reports the
  paired ratio, so "+20 % no longer improves FD beyond noise" is checked, not assumed.
* Stage 2 gets ``stage2_fraction`` x stage 1's steps in total (equal per group, or shared by the
  groups' sizes: a tuned choice).
* The recipe (stage-2 lr, steps rule, distillation on/off) is chosen on *tuning seeds* (grid below,
  group-Taylor pruning), never on the reported seeds; the choice is written to ``tune/choice.json``.
* Reported seeds: every model of a seed samples the same noise (``samples`` images, DDIM); rows are
  compared with ``base-equal-compute`` (the base trained on from its stage-1 checkpoint for the
  training compute of the most expensive headline TDC row; a step costs 3 forwards, teacher and
  agent forwards 1) by per-seed FD ratios with a t interval over seeds and a paired bootstrap over
  samples (same resampled indices for both models of a seed).

Every experiment lives in its own folder under ``--work`` and is skipped when its result exists,
so an interrupted benchmark resumes. Writes ``benchmarks/results/table1{,-smoke}.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from tdc_agent.core.io import atomic_write_json, read_json
from tdc_agent.models.store import load_model  # noqa: E402
from tdc_agent.core.config import Config, load_config  # noqa: E402
from tdc_agent.core.errors import DataError  # noqa: E402
from tdc_agent.evaluation.fd import (  # noqa: E402
    class_labels, digits_classifier, features, frechet, gaussian, intra_fd, real_floor_splits)
from tdc_agent.evaluation.stats import (  # noqa: E402
    paired_bootstrap_ratio, paired_ratios, percentile_interval, t_interval)
from tdc_agent.models.unet import denoise  # noqa: E402
from tdc_agent.workflow.context import RunContext  # noqa: E402
from tdc_agent.workflow.pipeline import run_pipeline, training_macs  # noqa: E402
from tdc_agent.planning.build import build_plan  # noqa: E402
from tdc_agent.models.progressive import ProgressiveModel  # noqa: E402
from tdc_agent.models.macs import count  # noqa: E402
from tdc_agent.workflow.rundir import RunDir  # noqa: E402
from tdc_agent.workflow.sampling import generate  # noqa: E402
from tdc_agent.workflow.stage1 import STEP_COST, continue_base, train_base  # noqa: E402
from tdc_agent.workflow.stage2 import prepare_in_order, trained_steps  # noqa: E402
from tdc_agent.diffusion.process import ForwardProcess  # noqa: E402
from workers import run_workers  # noqa: E402
from tdc_agent.diffusion.schedule import ddim_timesteps  # noqa: E402
from tdc_agent.evaluation.quick import grid_loss  # noqa: E402

SCALES: dict[str, dict[str, Any]] = {
    # what fits this project's 2-core CPU in about an hour (make bench): lr fixed at the value the
    # GPU-scale tuning chose on seeds 100-101, then steps rule x distillation tuned on seeds 100-101
    "cpu": {"seeds": [0, 1, 2, 3, 4, 5, 6, 7], "tune_seeds": [100, 101], "timesteps": 1000, "groups": 4, "k": 0.5,
            "budget_rule": "mean", "stage1": 1500, "batch": 128, "stage2_fraction": 0.5, "samples": 2000,
            "sample_steps": 100, "fd_steps": [25, 50, 100], "rounds": 5, "candidates": 3, "lrs": [1e-3],
            "rules": ["equal", "proportional"], "distill_grid": [False],
            "distill": 1.0, "stage2_ema": 0.99, "stage1_ema": 0.995, "stage1_ema_warmup": 200, "bootstrap": 100,
            "floor_splits": 100},
    # the GPU scale (one process per seed and row on one GPU)
    "full": {"seeds": [0, 1, 2, 3, 4, 5, 6, 7], "tune_seeds": [100, 101], "timesteps": 1000, "groups": 4, "k": 0.5,
             "budget_rule": "mean", "stage1": 2000, "batch": 256, "stage2_fraction": 0.5, "samples": 2000,
             "sample_steps": 100, "fd_steps": [25, 50, 100], "rounds": 5, "candidates": 3, "lrs": [2e-4, 5e-4, 1e-3],
             "rules": ["equal", "proportional"], "distill_grid": [False, True], "distill": 1.0,
             "stage2_ema": 0.99, "stage1_ema": 0.995, "stage1_ema_warmup": 200, "bootstrap": 100,
             "floor_splits": 100},
    "smoke": {"seeds": [0, 1], "tune_seeds": [100], "timesteps": 100, "groups": 3, "k": 0.5,
              "budget_rule": "mean", "stage1": 16, "batch": 16, "stage2_fraction": 0.5, "samples": 48,
              "sample_steps": 4, "fd_steps": [2, 4], "rounds": 1, "candidates": 2, "lrs": [1e-3], "rules": ["equal"],
              "distill_grid": [False], "distill": 1.0,
              "stage2_ema": 0.9, "stage1_ema": 0.9, "stage1_ema_warmup": 4, "bootstrap": 20, "floor_splits": 4},
}

# The reported rows: (name, stage-2 mode, distillation on?). "default" rows take the tuned choice.
HEADLINE = ("tdc-no-prune", "tdc-agent")
ROW_NAMES = [f"{n}{v}" for n in ("tdc-agent", "tdc-no-prune", "tdc-group-taylor") for v in ("", "-other")]


def rows_for(choice: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Every TDC row: each mode with the tuned distillation setting (headline names) and the other."""
    d = bool(choice["distill"])
    other = "nodistill" if d else "distill"
    out = []
    for name, mode in (("tdc-no-prune", "tdc-no-prune"), ("tdc-agent", "tdc"), ("tdc-group-taylor", "group-taylor")):
        out.append((name, mode, d))
        out.append((f"{name}-{other}", mode, not d))
    return out


def resolve_row(name: str, choice: dict[str, Any]) -> str:
    """``X-other`` (a job name fixed before the choice) is ``X-distill`` or ``X-nodistill``."""
    if name.endswith("-other"):
        return name[: -len("-other")] + ("-nodistill" if choice["distill"] else "-distill")
    return name


class Bench:
    def __init__(self, scale: str, work: Path, device: str):
        self.scale = scale
        self.s = SCALES[scale]
        self.work = work
        self.device = torch.device(device)

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # --- configs ----------------------------------------------------------------------------------
    def cfg(self, seed: int, overrides: dict[str, Any] | None = None) -> Config:
        s = self.s
        stage2_total = int(round(s["stage1"] * s["stage2_fraction"]))
        base = {
            "run.seed": seed, "run.device": str(self.device), "data.split": "train",
            "schedule.timesteps": s["timesteps"], "plan.groups": s["groups"], "plan.k": s["k"],
            "plan.budget_rule": s["budget_rule"], "stage1.steps": s["stage1"], "stage1.batch_size": s["batch"],
            "stage1.ckpt_every": 10**9, "stage1.log_every": 50, "stage1.ema_decay": s["stage1_ema"],
            "stage1.ema_warmup": s["stage1_ema_warmup"],
            "stage2.steps": stage2_total, "stage2.steps_rule": "proportional", "stage2.batch_size": s["batch"],
            "stage2.ckpt_every": 10**9, "stage2.log_every": 50, "stage2.ema_decay": s["stage2_ema"],
            "stage2.ema_warmup": 0, "sample.steps": s["sample_steps"], "evaluation.samples": s["samples"],
            "evaluation.compare_equal_compute": False, "agent.rounds": s["rounds"],
            "agent.candidates": s["candidates"],
        }
        if self.scale == "smoke":
            base.update({"stage1.warmup": 2, "stage2.warmup": 1, "agent.eval_timesteps": 2,
                         "agent.eval_batch_size": 16})
        base.update(overrides or {})
        return load_config(ROOT / "examples" / "digits.yaml", [f"{k}={json.dumps(v)}" for k, v in base.items()])

    def recipe(self, rule: str) -> dict[str, Any]:
        """Stage-2 overrides for a steps rule, at the same total steps (``steps`` is per group with
        ``equal`` and the total with ``proportional`` and ``need``)."""
        total = int(round(self.s["stage1"] * self.s["stage2_fraction"]))
        return {"stage2.steps_rule": rule, "stage2.steps": total // self.s["groups"] if rule == "equal" else total}

    def seed_dir(self, seed: int) -> Path:
        return self.work / f"s{seed}"

    def seed_lock(self, seed: int):
        """One writer of a seed's shared parts (base, pruned models) across worker processes."""
        self.seed_dir(seed).mkdir(parents=True, exist_ok=True)
        return RunDir(self.seed_dir(seed)).lock("seed")

    # --- shared parts -----------------------------------------------------------------------------
    def base(self, seed: int) -> RunDir:
        run = RunDir(self.seed_dir(seed) / "base")
        if not (run.base_model / "model.safetensors").is_file():
            self.log(f"seed {seed}: stage 1 ({self.s['stage1']} steps)")
            train_base(self.cfg(seed), run, self.device, progress=False)
        return run

    def pruned(self, seed: int, name: str, mode: str, memory_from: Path | None = None,
               dirname: str | None = None, llm: Any = None) -> RunDir:
        """A run directory (``<name>-pruned`` unless ``dirname``) holding the seed's base and every
        group's pruned starting model for ``mode`` (``memory_from``: a memory bank copied in first,
        so the agent starts with its records; ``llm``: a LangChain chat model instead of ``agent.llm``)."""
        run = RunDir(self.seed_dir(seed) / (dirname or f"{name}-pruned"))
        cfg = self.cfg(seed, {"stage2.mode": mode})
        plan = build_plan(cfg)
        if all((run.group(g.index) / "prune.json").is_file() for g in plan.groups):
            return run
        base_run = self.base(seed)
        if not (run.base_model / "model.safetensors").is_file():
            shutil.copytree(base_run.stage1 / "model", run.base_model, dirs_exist_ok=True)
        if memory_from is not None and not run.memory.exists():
            shutil.copytree(memory_from, run.memory)
        self.log(f"seed {seed}: pruning for {name} ({mode})")
        base, meta = load_model(run.base_model, self.device)
        if llm is not None:
            from tdc_agent.agent.llm import ResolvedLLM  # the agent's imports only where a chat model is given

            llm = ResolvedLLM.of(llm, cfg.agent, cfg.run.seed)
        ctx = RunContext(cfg, run, self.device, plan, show=False, llm=llm)
        for g in plan.groups:
            prepare_in_order(ctx, cfg, g, base, meta)
        return run

    def stage2_row(self, seed: int, name: str, mode: str, distill: bool, lr: float, source: RunDir,
                   rule: str) -> RunDir:
        """A whole stage 2 (+ progressive model) for one row, starting from ``source``'s pruned models."""
        run = RunDir(self.seed_dir(seed) / name)
        ov = {"stage2.mode": mode, "stage2.lr": lr, "stage2.distill": self.s["distill"] if distill else 0.0,
              **self.recipe(rule)}
        cfg = self.cfg(seed, ov)
        if (run.progressive() / "manifest.json").is_file():
            return run
        if not (run.base_model / "model.safetensors").is_file():
            shutil.copytree(source.base_model, run.base_model, dirs_exist_ok=True)
        atomic_write_json(run.path / "bench_row.json", {"mode": mode, "lr": lr, "distill": cfg.stage2.distill,
                                                        "steps_rule": rule})
        for g in build_plan(cfg).groups:
            src, dst = source.group(g.index), run.group(g.index)
            if not (dst / "prune.json").is_file():
                shutil.copytree(src / "pruned", dst / "pruned", dirs_exist_ok=True)
                shutil.copy(src / "prune.json", dst / "prune.json")
        self.log(f"seed {seed}: stage 2 {name} (lr {lr}, distill {distill})")
        run_pipeline(RunContext.of(cfg, run, self.device, show=False))
        return run

    # --- scoring ------------------------------------------------------------------------------------
    def sample_features(self, seed: int, name: str, fn, macs: float, extra: dict[str, Any]) -> dict[str, Any]:
        """Sample ``fn`` with the seed's noise at every step count of ``fd_steps`` (DDIM, η = 0: the
        same initial noise gives paired samples at every count), store the classifier features, and
        score the sampler's held-out ε-loss on the DDIM grid of the headline step count."""
        out = self.seed_dir(seed) / "scores" / f"{name}.json"
        if out.is_file():
            return read_json(out, "benchmark score")
        cfg = self.cfg(seed)
        clf, acc = digits_classifier()
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        fd_by_steps: dict[str, float] = {}
        for steps in self.s["fd_steps"]:
            scfg = cfg.sample.model_copy(update={"num": self.s["samples"], "batch_size": self.s["samples"],
                                                 "steps": steps})
            images = generate(fn, (1, 8, 8), cfg.schedule, scfg, seed, self.device, progress=False)
            feats = features(images, clf)
            np.save(self.seed_dir(seed) / "scores" / f"{name}@{steps}.npy", feats.astype(np.float32))
            fd_by_steps[str(steps)] = frechet(feats, self.reference())
        sample_s = time.time() - t0
        eps = grid_loss(fn, self.test_images(), ForwardProcess(cfg.schedule, self.device),
                        ddim_timesteps(cfg.schedule.timesteps, self.s["sample_steps"]).tolist(), seed=seed)
        entry = {"name": name, "seed": seed, "fd": fd_by_steps[str(self.s["sample_steps"])], "fd_by_steps": fd_by_steps,
                 "eps_loss": eps["mean"], "eps_loss_per_t": eps["per_t"], "macs_per_step": float(macs),
                 "sample_seconds": sample_s, "classifier_test_accuracy": acc, **extra}
        atomic_write_json(out, entry)
        self.log(f"seed {seed}: {name} FD " + ", ".join(f"DDIM-{k} {v:.3f}" for k, v in fd_by_steps.items())
                 + f"; eps-loss {eps['mean']:.5f}")
        return entry

    def test_images(self) -> torch.Tensor:
        """The held-out test split (never trained on, never seen by the agent) on the device."""
        from tdc_agent.core.config import DataConfig
        from tdc_agent.core.data import load_dataset

        return load_dataset(DataConfig(name="digits", split="test")).images.to(self.device)

    _ref: np.ndarray | None = None

    def reference(self) -> np.ndarray:
        if self._ref is None:
            from tdc_agent.core.config import DataConfig
            from tdc_agent.core.data import load_dataset

            clf, _ = digits_classifier()
            self._ref = features(load_dataset(DataConfig(name="digits", split="all")).images, clf)
        return self._ref

    def table_path(self, out_dir: Path) -> Path:
        """Where ``aggregate`` writes Table I (``table1.json``; toy scales get their name appended)."""
        return out_dir / ("table1.json" if self.scale in ("cpu", "full") else f"table1-{self.scale}.json")

    _ref_labels: np.ndarray | None = None

    def intra_fd(self, seed: int, name: str, steps: int | str | None = None) -> float:
        """Intra-FD (per-class FD, averaged) of a scored model at ``steps`` sampler steps (default: the
        headline count), from the features its scoring stored; a :class:`DataError` when a class has
        too few samples."""
        clf, _ = digits_classifier()
        if self._ref_labels is None:
            self._ref_labels = class_labels(self.reference(), clf)
        f = np.load(self.seed_dir(seed) / "scores" / f"{name}@{steps or self.s['sample_steps']}.npy").astype(np.float64)
        return intra_fd(f, self.reference(), class_labels(f, clf), self._ref_labels)

    def score_base(self, seed: int, name: str, run_model: Path, steps: int) -> dict[str, Any]:
        model, _ = load_model(run_model, self.device)
        model.eval()
        c = count(model)
        train_macs = STEP_COST * float(c.thop) * steps * self.s["batch"]
        return self.sample_features(seed, name, lambda x, t: denoise(model, x, t), c.thop,
                                    {"training_steps": steps, "train_macs": train_macs, "teacher_macs": 0.0,
                                     "proxy_macs": 0.0, "params": c.params})

    def score_tdc(self, seed: int, name: str, run: RunDir) -> dict[str, Any]:
        cached = self.seed_dir(seed) / "scores" / f"{name}.json"
        if cached.is_file():
            return read_json(cached, "benchmark score")
        row = read_json(run.path / "bench_row.json", "benchmark row")
        cfg = self.cfg(seed, {"stage2.mode": row["mode"], "stage2.distill": row["distill"],
                              **self.recipe(row["steps_rule"])})
        plan = build_plan(cfg)
        pm = ProgressiveModel.load(run.progressive(), self.device)
        base_macs = count(load_model(run.base_model, self.device)[0]).thop
        tm = training_macs(cfg, run, plan, base_macs)
        macs = pm.sampling_macs(cfg.sample.sampler, cfg.sample.steps)["mean_per_step"]
        train_macs = STEP_COST * (tm["stage1"] + tm["stage2"]) + tm["teacher"] + tm["proxy"]
        params = sum(sum(p.numel() for p in m.model.parameters()) for m in pm.members)
        members = [read_json(run.group(g.index) / "finetune.json", "group fine-tune summary") for g in plan.groups]
        return self.sample_features(seed, name, pm, macs, {
            "training_steps": cfg.stage1.steps + sum(trained_steps(cfg, run, plan, g) for g in plan.groups),
            "member_loss_ratios": [m["loss_ratio"] for m in members],
            "member_steps": [m["steps"] for m in members], "member_planned_steps": [m["planned_steps"] for m in members],
            "train_macs": train_macs,
            "teacher_macs": tm["teacher"], "proxy_macs": tm["proxy"], "params": params,
            "base_macs_per_step": float(base_macs)})

    # --- workers ------------------------------------------------------------------------------------
    def tune_worker(self, seed: int, lr: float, rule: str, distill: bool) -> dict[str, Any]:
        """One grid point on one tuning seed: group-Taylor TDC with this recipe."""
        name = self.tune_name(lr, rule, distill)
        with self.seed_lock(seed):
            src = self.pruned(seed, "tdc-group-taylor", "group-taylor")
            # the tuning seeds' bases are scored too (the base's FD by sampler steps, on seeds not reported)
            self.score_base(seed, "base", self.base(seed).base_model, self.s["stage1"])
        run = self.stage2_row(seed, name, "group-taylor", distill, lr, src, rule)
        return self.score_tdc(seed, name, run)

    def wait_for(self, path: Path, what: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while not path.is_file():
            if time.time() > deadline:
                raise SystemExit(f"gave up waiting for {what} ({path}) after {timeout:.0f} s")
            time.sleep(2)

    SOURCES = {"tdc-no-prune": "tdc-no-prune", "tdc-agent": "tdc", "tdc-group-taylor": "group-taylor"}

    def base_worker(self, seed: int, timeout: float) -> None:
        """A reported seed's base, its +20 % continuation and the pruned starting models of every mode
        (the equal-compute base is :meth:`equal_worker`'s, after the rows)."""
        s = self.s
        base = self.base(seed)
        self.score_base(seed, "base", base.base_model, s["stage1"])
        for name, mode in self.SOURCES.items():
            self.pruned(seed, name, mode)
            atomic_write_json(self.seed_dir(seed) / f"{name}-pruned" / "done.json", {"mode": mode})
        longer = int(round(1.2 * s["stage1"]))
        long_dir = self.seed_dir(seed) / "base-1.2x"
        if not (self.seed_dir(seed) / "scores" / "base-1.2x.json").is_file():
            self.log(f"seed {seed}: base to {longer} steps (+20 %)")
            continue_base(self.cfg(seed), base, longer, long_dir, self.device, progress=False)
        self.score_base(seed, "base-1.2x", long_dir / "model", longer)

    def equal_worker(self, seed: int, timeout: float) -> None:
        """The equal-compute base of a reported seed: trained on from its stage-1 checkpoint for the
        training compute the most expensive headline TDC row really used (its groups' extra steps
        after failed checks included), so it starts once those rows have finished."""
        base = self.base(seed)
        self.wait_for(self.work / "tune" / "choice.json", "the tuning choice", timeout)
        choice = read_json(self.work / "tune" / "choice.json", "tuning choice")
        model, _ = load_model(base.base_model, self.device)
        base_macs = count(model).thop
        need = 0.0
        for name, mode, distill in rows_for(choice):
            if name not in HEADLINE:
                continue
            run = RunDir(self.seed_dir(seed) / name)
            self.wait_for(run.progressive() / "manifest.json", f"seed {seed}'s row {name}", timeout)
            cfg = self.cfg(seed, {"stage2.mode": mode, "stage2.distill": self.s["distill"] if distill else 0.0,
                                  **self.recipe(choice["steps_rule"])})
            tm = training_macs(cfg, run, build_plan(cfg), base_macs)
            need = max(need, STEP_COST * (tm["stage1"] + tm["stage2"]) + tm["teacher"] + tm["proxy"])
        self.equal_compute(seed, base, need)

    def row_worker(self, seed: int, name: str, timeout: float) -> None:
        """One TDC row of a reported seed (stage 2 from the seed's pruned models, then its score)."""
        allowed = self.work / "rows.json"
        if allowed.is_file() and name not in read_json(allowed, "benchmark rows")["rows"]:
            self.log(f"seed {seed}: row {name} is not in {allowed}; skipped")
            return
        src_name = next(k for k in self.SOURCES if name.startswith(k))
        src = RunDir(self.seed_dir(seed) / f"{src_name}-pruned")
        self.wait_for(src.path / "done.json", f"seed {seed}'s pruned models", timeout)
        self.wait_for(self.work / "tune" / "choice.json", "the tuning choice", timeout)
        choice = read_json(self.work / "tune" / "choice.json", "tuning choice")
        name = resolve_row(name, choice)
        mode, distill = next((m, d) for n, m, d in rows_for(choice) if n == name)
        run = self.stage2_row(seed, name, mode, distill, choice["lr"], src, choice["steps_rule"])
        self.score_tdc(seed, name, run)

    def equal_compute(self, seed: int, base: RunDir, train_macs: float) -> None:
        """The base trained on until its training compute matches ``train_macs``."""
        model, _ = load_model(base.base_model, self.device)
        per_step = STEP_COST * float(count(model).thop) * self.s["batch"]
        steps = int(np.ceil(train_macs / per_step - 1e-9))
        out = self.seed_dir(seed) / "base-equal-compute"
        if not (self.seed_dir(seed) / "scores" / "base-equal-compute.json").is_file():
            self.log(f"seed {seed}: base to {steps} steps (equal compute)")
            continue_base(self.cfg(seed), base, steps, out, self.device, progress=False)
        self.score_base(seed, "base-equal-compute", out / "model", steps)

    # --- tuning choice and the tables -----------------------------------------------------------------
    def grid(self) -> list[tuple[float, str, bool]]:
        return [(lr, r, d) for lr in self.s["lrs"] for r in self.s["rules"] for d in self.s["distill_grid"]]

    @staticmethod
    def tune_name(lr: float, rule: str, distill: bool) -> str:
        return f"tune-lr{lr:g}-{rule}-{'distill' if distill else 'nodistill'}"

    def choose(self) -> dict[str, Any]:
        """The grid point with the lowest mean FD over the tuning seeds (paired: same noise)."""
        scores = {}
        for lr, rule, d in self.grid():
            name = self.tune_name(lr, rule, d)
            fds = []
            for seed in self.s["tune_seeds"]:
                f = self.seed_dir(seed) / "scores" / f"{name}.json"
                if f.is_file():
                    fds.append(read_json(f, "score")["fd"])
            if len(fds) == len(self.s["tune_seeds"]):
                scores[name] = {"lr": lr, "steps_rule": rule, "distill": d, "fd": fds,
                                "mean_fd": float(np.mean(fds))}
        if not scores:
            raise SystemExit("no tuning grid point finished")
        best = min(scores.values(), key=lambda r: r["mean_fd"])
        choice = {"lr": best["lr"], "steps_rule": best["steps_rule"], "distill": best["distill"], "grid": scores,
                  "tune_seeds": self.s["tune_seeds"], "rule": "lowest mean FD of group-Taylor TDC on the tuning seeds"}
        atomic_write_json(self.work / "tune" / "choice.json", choice)
        return choice

    def aggregate(self, out_dir: Path, wall_s: float) -> dict[str, Any]:
        s = self.s
        seeds = s["seeds"]
        head = str(s["sample_steps"])
        choice = read_json(self.work / "tune" / "choice.json", "tuning choice")
        names = ["base", "base-1.2x", "base-equal-compute"] + [r[0] for r in rows_for(choice)]
        scores: dict[str, dict[int, dict[str, Any]]] = {}
        for n in names:
            for seed in seeds:
                f = self.seed_dir(seed) / "scores" / f"{n}.json"
                if f.is_file():
                    scores.setdefault(n, {})[seed] = read_json(f, "score")
        ref = self.reference()
        ref_mu, ref_s = gaussian(ref)

        def fd_of(feats: np.ndarray) -> float:
            from tdc_agent.evaluation.fd import frechet_from_stats

            mu, sig = gaussian(feats)
            return frechet_from_stats(mu, sig, ref_mu, ref_s)

        eq = scores.get("base-equal-compute", {})
        complete = [sd for sd in seeds if sd in eq]
        rows = []
        for n in names:
            per = scores.get(n, {})
            have = [sd for sd in complete if sd in per]
            if not have:
                continue
            first = per[have[0]]
            row: dict[str, Any] = {
                "name": n, "seeds": have, "fd": [per[sd]["fd"] for sd in have],
                "fd_mean": float(np.mean([per[sd]["fd"] for sd in have])),
                "fd_by_steps": {k: {"fd": [per[sd]["fd_by_steps"][k] for sd in have],
                                    "fd_mean": float(np.mean([per[sd]["fd_by_steps"][k] for sd in have]))}
                                for k in map(str, s["fd_steps"])},
                "eps_loss": [per[sd]["eps_loss"] for sd in have],
                "macs_per_step": float(np.mean([per[sd]["macs_per_step"] for sd in have])),
                "macs_per_step_ratio": float(np.mean([per[sd]["macs_per_step"] / eq[sd]["macs_per_step"]
                                                      for sd in have])),
                "train_macs": float(np.mean([per[sd]["train_macs"] for sd in have])),
                "teacher_macs": float(np.mean([per[sd]["teacher_macs"] for sd in have])),
                "proxy_macs": float(np.mean([per[sd]["proxy_macs"] for sd in have])),
                "training_steps": first["training_steps"], "params": first["params"],
            }
            if "member_loss_ratios" in first:
                ratios_m = [r for sd in have for r in per[sd]["member_loss_ratios"]]
                row["member_loss_ratio_max"] = float(max(ratios_m))
                row["member_loss_ratios"] = {str(sd): per[sd]["member_loss_ratios"] for sd in have}
                row["member_extra_steps"] = {str(sd): [a - b for a, b in zip(per[sd]["member_steps"],
                                                                             per[sd]["member_planned_steps"])]
                                             for sd in have}
            try:
                row["intra_fd"] = [self.intra_fd(sd, n) for sd in have]
            except DataError as e:  # too few samples per class (the smoke scale): said in the table
                row["intra_fd_note"] = str(e)
            if n != "base-equal-compute":
                if "intra_fd" in row:
                    r_i = t_interval(paired_ratios(row["intra_fd"], [self.intra_fd(sd, "base-equal-compute")
                                                                     for sd in have]))
                    row.update({"intra_fd_ratio": r_i.mean, "intra_fd_ratio_ci95": r_i.to_list()})
                ratios = paired_ratios(row["fd"], [eq[sd]["fd"] for sd in have])
                ti = t_interval(ratios)
                boot = []
                for sd in have:
                    a = np.load(self.seed_dir(sd) / "scores" / f"{n}@{head}.npy").astype(np.float64)
                    b = np.load(self.seed_dir(sd) / "scores" / f"base-equal-compute@{head}.npy").astype(np.float64)
                    boot.append(paired_bootstrap_ratio(fd_of, a, b, s["bootstrap"], seed=sd))
                pooled = np.mean(np.stack(boot), axis=0)  # mean over seeds of each bootstrap draw
                eps_r = t_interval(paired_ratios(row["eps_loss"], [eq[sd]["eps_loss"] for sd in have]))
                row.update({"fd_ratio": ti.mean, "fd_ratio_ci95": ti.to_list(), "fd_ratios": ratios,
                            "fd_diff": float(np.mean(np.asarray(row["fd"]) - np.asarray([eq[sd]["fd"] for sd in have]))),
                            "fd_ratio_bootstrap_ci95": percentile_interval(pooled),
                            "eps_loss_ratio": eps_r.mean, "eps_loss_ratio_ci95": eps_r.to_list()})
                for k, v in row["fd_by_steps"].items():
                    r_k = t_interval(paired_ratios(v["fd"], [eq[sd]["fd_by_steps"][k] for sd in have]))
                    v.update({"fd_ratio": r_k.mean, "fd_ratio_ci95": r_k.to_list()})
                    if "intra_fd" in row:  # does the headline's intra-FD verdict hold at the other samplers?
                        i_k = t_interval(paired_ratios([self.intra_fd(sd, n, k) for sd in have],
                                                       [self.intra_fd(sd, "base-equal-compute", k) for sd in have]))
                        v.update({"intra_fd_ratio": i_k.mean, "intra_fd_ratio_ci95": i_k.to_list()})
            rows.append(row)
        floor_mean, floor_sd, half = real_floor_splits(s["floor_splits"])
        byname = {r["name"]: r for r in rows}
        # the base's FD by sampler steps, on the reported seeds and (separately) the tuning seeds
        base_by_steps: dict[str, Any] = {}
        for label, group in (("reported", seeds), ("tuning", s["tune_seeds"])):
            got = [read_json(f, "score") for sd in group
                   if (f := self.seed_dir(sd) / "scores" / "base.json").is_file()]
            if got:
                base_by_steps[label] = {"seeds": [g["seed"] for g in got], **{
                    k: float(np.mean([g["fd_by_steps"][k] for g in got])) for k in map(str, s["fd_steps"])}}
        lo_k, hi_k = str(min(s["fd_steps"])), str(max(s["fd_steps"]))
        targets: dict[str, Any] = {"seeds": {"goal": ">= 8 reported seeds", "met": len(complete) >= 8,
                                             "value": len(complete)}}
        if "reported" in base_by_steps:
            rb = base_by_steps["reported"]
            targets["base_fd_by_steps"] = {"goal": f"base FD at DDIM-{hi_k} <= 1.1 x at DDIM-{lo_k}",
                                           "value": rb[hi_k] / rb[lo_k], "met": bool(rb[hi_k] <= 1.1 * rb[lo_k])}
        if "tdc-agent" in byname and "fd_ratio_ci95" in byname["tdc-agent"]:
            r = byname["tdc-agent"]
            targets["tdc-agent"] = {"goal": "MACs/step <= 0.82 x base, FD ratio mean <= 0.95 and CI upper < 1.0",
                                    "met": bool(r["macs_per_step_ratio"] <= 0.82 and r["fd_ratio"] <= 0.95
                                                and r["fd_ratio_ci95"][1] < 1.0)}
        if "tdc-no-prune" in byname and "fd_ratio_ci95" in byname["tdc-no-prune"]:
            r = byname["tdc-no-prune"]
            targets["tdc-no-prune"] = {"goal": "FD ratio CI upper < 0.95", "met": bool(r["fd_ratio_ci95"][1] < 0.95)}
        for r in rows:
            if "member_loss_ratio_max" in r:
                targets[f"{r['name']}-members"] = {"goal": "every member <= 1.02 x the base's held-out loss",
                                                   "value": r["member_loss_ratio_max"],
                                                   "met": bool(r["member_loss_ratio_max"] <= 1.02)}
        if "base-1.2x" in byname and "base" in byname:
            b0 = [scores["base"][sd]["fd"] for sd in byname["base-1.2x"]["seeds"]]
            conv = t_interval(paired_ratios(byname["base-1.2x"]["fd"], b0))
            convergence = {"fd_ratio_1.2x_vs_base": conv.mean, "ci95": conv.to_list(),
                           "converged": bool(conv.lo <= 1.0 <= conv.hi or conv.lo > 1.0)}
        else:
            convergence = {}
        result = {
            "protocol": {k: s[k] for k in s}, "scale": self.scale, "seeds_complete": complete,
            "tuning": choice, "real_floor": {"mean": floor_mean, "sd": floor_sd, "images_per_half": half,
                                             "splits": s["floor_splits"]},
            "base_fd_by_steps": base_by_steps,
            "convergence": convergence, "rows": rows, "targets": targets,
            "machine": {"device": str(self.device), "platform": platform.platform(),
                        "gpu": torch.cuda.get_device_name(0) if self.device.type == "cuda" else None,
                        "torch": torch.__version__}, "wall_seconds": wall_s,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.table_path(out_dir), result)
        self.table_path(out_dir).with_suffix(".md").write_text(markdown(result))
        return result


def _g(x: float) -> str:
    return f"{x / 1e12:.2f} T" if x >= 1e11 else f"{x / 1e9:.2f} G"


def _ci(x: list[float]) -> str:
    return f"[{x[0]:.3f}, {x[1]:.3f}]"


def markdown(r: dict[str, Any]) -> str:
    p = r["protocol"]
    steps = [str(k) for k in p["fd_steps"]]
    head = str(p["sample_steps"])
    lines = [f"# Table I on digits ({r['scale']} scale)", "",
             f"Seeds {r['seeds_complete']} (tuned on {p['tune_seeds']}); stage 1 {p['stage1']} steps × batch {p['batch']} "
             f"on the train split; N={p['groups']}, k={p['k']}, budget rule `{p['budget_rule']}`; stage 2 "
             f"{p['stage2_fraction']:.0%} of stage 1's steps ({r['tuning']['steps_rule']} per group, each at least its "
             f"floor, plus extra steps for a member that ends worse than the base); {p['samples']} samples per model, "
             f"DDIM-{head} (headline) and DDIM-{', '.join(steps)}, same noise for every model of a seed; FD against all "
             "1797 digits. ε-loss: the held-out ε-MSE of the whole sampler (each timestep served by its member) on the "
             f"test split over the DDIM-{head} timesteps, same noise for every model of a seed.", "",
             f"Tuned recipe (on the tuning seeds only, by mean FD at DDIM-{head}): stage-2 lr {r['tuning']['lr']:g}, steps "
             f"{r['tuning']['steps_rule']}, distillation "
             f"{'on' if r['tuning']['distill'] else 'off'} (weight {p['distill']}), bias-corrected EMA {p['stage2_ema']} "
             "(the average covers only the fine-tuned weights).", "",
             f"| row | FD DDIM-{head} (mean) | FD ratio vs equal compute [95 % CI, t] | bootstrap 95 % CI | ε-loss ratio "
             "[95 % CI] | intra-FD ratio [95 % CI] | MACs / step (× base) | worst member / base loss | training MACs "
             "| of which agent |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ratio = f"{row['fd_ratio']:.3f} {_ci(row['fd_ratio_ci95'])}" if "fd_ratio" in row else "reference"
        boot = _ci(row["fd_ratio_bootstrap_ci95"]) if "fd_ratio_bootstrap_ci95" in row else ""
        eps = f"{row['eps_loss_ratio']:.4f} {_ci(row['eps_loss_ratio_ci95'])}" if "eps_loss_ratio" in row else "reference"
        intra = (f"{row['intra_fd_ratio']:.3f} {_ci(row['intra_fd_ratio_ci95'])}" if "intra_fd_ratio" in row
                 else "n/a" if "intra_fd_note" in row else "reference")
        mem = f"{row['member_loss_ratio_max']:.3f}" if "member_loss_ratio_max" in row else ""
        lines.append(f"| {row['name']} | {row['fd_mean']:.3f} | {ratio} | {boot} | {eps} | {intra} | "
                     f"{row['macs_per_step_ratio']:.3f} | {mem} | {_g(row['train_macs'])} | {_g(row['proxy_macs'])} |")
    notes = {row["intra_fd_note"] for row in r["rows"] if "intra_fd_note" in row}
    if notes:
        lines += ["", "Intra-FD not computed: " + "; ".join(sorted(notes))]
    lines += ["", "Intra-FD: the Fréchet distance per class (classes by the digits classifier, on both sides), "
              "averaged over the 10 classes (Miyato & Koyama 2018); unlike FD it does not weigh which digits "
              "were drawn, only how each class looks."]
    lines += ["", "FD by sampler steps (mean over seeds; ratios vs the equal-compute base with their 95 % CIs):", "",
              "| row | " + " | ".join(f"DDIM-{k}" for k in steps) + " |", "|---|" + "---|" * len(steps)]
    for row in r["rows"]:
        cells = []
        for k in steps:
            v = row["fd_by_steps"][k]
            cells.append(f"{v['fd_mean']:.3f}" + (f" ({v['fd_ratio']:.3f} {_ci(v['fd_ratio_ci95'])})" if "fd_ratio" in v else "")
                         + (f"; intra-FD {v['intra_fd_ratio']:.3f} {_ci(v['intra_fd_ratio_ci95'])}"
                            if "intra_fd_ratio" in v else ""))
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    for label, b in r.get("base_fd_by_steps", {}).items():
        lines.append("")
        lines.append(f"Base FD by steps, {label} seeds {b['seeds']}: " + ", ".join(f"DDIM-{k} {b[k]:.3f}" for k in steps) + ".")
    f = r["real_floor"]
    lines += ["", f"Real-vs-real floor: {f['mean']:.3f} ± {f['sd']:.3f} (FD between disjoint halves of the real digits, "
              f"{f['images_per_half']} images each, mean ± sd over {f['splits']} splits)."]
    c = r.get("convergence") or {}
    if c:
        lines += [f"Convergence: FD(base +20 % steps) / FD(base) = {c['fd_ratio_1.2x_vs_base']:.3f} "
                  f"{_ci(c['ci95'])} → "
                  f"{'no improvement resolved at this power (the CI includes 1)' if c['converged'] else 'still improving'}."]
    lines.append("")
    for k, t in r.get("targets", {}).items():
        val = f" (value {t['value']:.3f})" if isinstance(t.get("value"), float) else (
            f" (value {t['value']})" if "value" in t else "")
        lines.append(f"- Target {k}: {t['goal']}{val}: **{'met' if t['met'] else 'not met'}**.")
    lines += ["", f"Machine: {r['machine']['gpu'] or r['machine']['platform']}, torch {r['machine']['torch']}; "
              f"wall {r['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def work_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments of every tool that works on Table I's work folder (bench_allocation,
    table1_fd_attribution): ``run``/``worker``/``aggregate``, the scale, the folder, the device."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["run", "worker", "aggregate"])
    ap.add_argument("--scale", default="cpu", choices=list(SCALES))
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "table1-cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=2, help="run: worker processes (one thread each)")
    return ap


def run_seed_workers(b: Bench, script: str, seeds: list[int], jobs: int, args: list[str], log: str) -> None:
    """``script worker --seed S *args`` for every seed, ``jobs`` processes of one thread at a time;
    a failed worker stops the tool with its log's place."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    failed = run_workers([str(sd) for sd in seeds], jobs, lambda sd, _left: [
        sys.executable, script, "worker", "--scale", b.scale, "--work", str(b.work), "--device", str(b.device),
        "--seed", sd, *args], lambda sd: f"{log}_{sd}", b.work / "logs", env, b.log)
    if failed:
        raise SystemExit(f"{len(failed)} worker(s) failed: {failed} (logs in {b.work / 'logs'})")


def run_job(b: Bench, a: argparse.Namespace, timeout: float) -> None:
    if a.role == "tune":
        b.tune_worker(a.seed, a.lr, a.rule, bool(a.distill))
    elif a.role == "base":
        b.base_worker(a.seed, timeout)
    elif a.role == "equal":
        b.equal_worker(a.seed, timeout)
    elif a.role == "tunebase":  # a tuning seed's base, scored (its FD by sampler steps)
        b.score_base(a.seed, "base", b.base(a.seed).base_model, b.s["stage1"])
    else:
        b.row_worker(a.seed, a.row, timeout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["run", "worker", "choose", "aggregate"])
    ap.add_argument("--scale", default="cpu", choices=list(SCALES))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="parallel worker processes (0: one per seed / grid point)")
    ap.add_argument("--deadline-s", type=float, default=None, help="stop workers after this many seconds")
    ap.add_argument("--role", choices=["tune", "base", "row", "equal", "tunebase"])
    ap.add_argument("--choice", type=Path, default=None,
                    help="carry a recipe chosen earlier on the tuning seeds (a tune/choice.json) instead of tuning")
    ap.add_argument("--row", help="row name (role row)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--distill", type=int)
    ap.add_argument("--rule", choices=["equal", "proportional", "need"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seeds", default=None, help="run only these reported seeds (comma-separated; e.g. to finish "
                                                  "whole seeds first); the tables still report every complete seed")
    ap.add_argument("--rows", choices=["all", "headline", "core"], default="all",
                    help="headline: only the tuned recipe's rows (no with/without-distillation variants); "
                         "core: only tdc-agent and tdc-no-prune (no group-Taylor row)")
    a = ap.parse_args(argv)
    work = a.work or ROOT / "benchmarks" / "work" / f"table1-{a.scale}"
    if a.threads:
        torch.set_num_threads(a.threads)
    b = Bench(a.scale, work, a.device)
    if a.what == "worker":
        run_job(b, a, a.deadline_s or 10**9)
        return
    if a.what == "choose":
        print(json.dumps(b.choose(), indent=1))
        return
    if a.what == "aggregate":
        # tables read again from the work folder keep the wall time of the run that made them
        prev = b.table_path(a.out)
        wall = read_json(prev, "previous Table I").get("wall_seconds", 0.0) if prev.is_file() else 0.0
        print(markdown(b.aggregate(a.out, wall)))
        return
    t0 = time.time()
    digits_classifier()  # train the FD classifier once, before workers race for its cache
    if a.choice is not None and not (work / "tune" / "choice.json").is_file():
        # a recipe chosen earlier on the tuning seeds (never on reported seeds), carried over whole
        carried = read_json(a.choice, "carried tuning choice")
        atomic_write_json(work / "tune" / "choice.json", {**carried, "carried_from": str(a.choice)})
    if (work / "tune" / "choice.json").is_file() and "carried_from" in read_json(work / "tune" / "choice.json", "choice"):
        jobs = []  # the tuning seeds' bases are still scored, after the reported seeds (role tunebase)
    else:
        jobs = [["--role", "tune", "--seed", str(sd), "--lr", str(lr), "--rule", rule, "--distill", str(int(d))]
                for lr, rule, d in b.grid() for sd in b.s["tune_seeds"]]  # seeds interleaved: bases train in parallel
    # row names do not depend on the choice's values, only on which distillation setting is headline:
    # name both settings explicitly so jobs can start before the choice exists
    names = {"all": ROW_NAMES, "headline": [r for r in ROW_NAMES if not r.endswith("-other")],
             "core": list(HEADLINE)}[a.rows]
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "rows.json", {"rows": names})
    # seed by seed, so a run cut short leaves whole seeds, not 8 half ones: the base of seed k+1 is
    # queued before the rows and equal-compute base of seed k, so while seed k's rows wait for its
    # pruned models the other slot trains the next base; every job waits only on jobs queued before it
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else b.s["seeds"]
    for i, sd in enumerate(seeds):
        if i == 0:
            jobs += [["--role", "base", "--seed", str(sd)]]
        if i + 1 < len(seeds):
            jobs += [["--role", "base", "--seed", str(seeds[i + 1])]]
        jobs += [["--role", "row", "--seed", str(sd), "--row", r] for r in names]
        jobs += [["--role", "equal", "--seed", str(sd)]]
    if not any(j[1] == "tune" for j in jobs):
        jobs += [["--role", "tunebase", "--seed", str(sd)] for sd in b.s["tune_seeds"]]
    # tuning jobs come first, so with fewer slots than jobs no report worker waits on a queued grid point
    n_par = len(jobs) if a.jobs <= 0 else a.jobs
    if n_par == 1:  # one job at a time: in this process, in order (no start-up cost per job)
        for j in jobs:
            if j[1] != "tune" and not (work / "tune" / "choice.json").is_file():
                c = b.choose()
                b.log(f"tuning choice: lr {c['lr']:g}, steps rule {c['steps_rule']}, distill {c['distill']}")
            run_job(b, ap.parse_args(["worker", *j]), 10**9)
        res = b.aggregate(a.out, time.time() - t0)
        print(markdown(res))
        return
    deadline = t0 + a.deadline_s if a.deadline_s else None
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if a.jobs <= 0 or n_par > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    chosen = (work / "tune" / "choice.json").is_file()

    def choose_once(running: list[list[str]], pending: list[list[str]]) -> None:
        nonlocal chosen
        if not chosen and not any(j[1] == "tune" for j in running + pending):
            c = b.choose()
            chosen = True
            b.log(f"tuning choice: lr {c['lr']:g}, steps rule {c['steps_rule']}, distill {c['distill']}")

    def command(j: list[str], left: float | None) -> list[str]:
        return [sys.executable, __file__, "worker", "--scale", a.scale, "--work", str(work), "--device", a.device,
                *j, *(["--deadline-s", str(max(1, left))] if left else [])]

    failed = run_workers(jobs, n_par, command, lambda j: "_".join(j[1::2]), work / "logs", env, b.log,
                         deadline=deadline, after_poll=choose_once)
    if not chosen:
        b.choose()
    res = b.aggregate(a.out, time.time() - t0)
    print(markdown(res))
    if failed:
        print(f"{len(failed)} worker(s) failed: {failed}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
