"""Benchmark: does the agent's scheme beat the classical criteria on images it never saw?

Per seed (a base trained by stage 1 on the train split, the digits default recipe at Table I's CPU
scale) and per timestep group:

1. **Agent.** Stage 2's agent pruning (builtin search by default, ``--llm`` for another), one memory
   bank shared by the run's groups, quick losses on the **val** split.
2. **Classical criteria** (random, magnitude, l1, taylor, diff-pruning, group-taylor: each prunes every
   unit alike and picks channels by its own scores), pruned to the agent's *achieved* MACs.
3. **Held-out score.** Every scheme is scored on the **test** split (disjoint from train and val),
   with fresh noise and more timesteps than the agent used. A pair (seed, group) is a win when the
   agent's test loss is below the best classical criterion's (a tie is not a win).
4. **After fine-tuning.** The agent's models and, per group, the best classical criterion's model are
   fine-tuned with the same stage-2 recipe and assembled; FD of 2000 samples from the same noise,
   paired per seed (t interval over seeds, paired bootstrap over samples).
5. **Memory transfer.** The agent runs again on each seed's base with a copy of the memory bank of
   the previous seed's run (another base, same architecture): rounds until its best val loss reaches
   the no-memory run's final best, per group.

Writes benchmarks/results/agent_quality.json and .md. Resumable (work dir per seed). Not a test.

    python tools/bench_agent_quality.py                  # 3 seeds, CPU scale (~40 min on 2 cores)
    python tools/bench_agent_quality.py --scale smoke    # the same code paths at toy size
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_table1 import SCALES, Bench  # noqa: E402
from tdc_agent.core.io import atomic_write_json, read_json  # noqa: E402
from tdc_agent.models.store import load_model  # noqa: E402
from tdc_agent.diffusion.process import ForwardProcess  # noqa: E402
from tdc_agent.evaluation.quick import quick_loss  # noqa: E402
from tdc_agent.evaluation.stats import paired_bootstrap_ratio, percentile_interval, t_interval  # noqa: E402
from tdc_agent.models.latent import held_out, training_data  # noqa: E402
from tdc_agent.planning.build import build_plan  # noqa: E402
from tdc_agent.models.macs import count  # noqa: E402
from tdc_agent.pruning.criteria import criterion_names  # noqa: E402
from tdc_agent.pruning.pruner import Pruner  # noqa: E402
from tdc_agent.pruning.serialize import save_pruned  # noqa: E402
from tdc_agent.workflow.rundir import RunDir  # noqa: E402

CLASSICAL = criterion_names()  # every registered criterion (tdc_agent/pruning/criteria.py)
SEEDS = {"cpu": [0, 1, 2], "full": [0, 1, 2], "smoke": [0, 1]}
TEST_TIMESTEPS = {"cpu": 32, "full": 32, "smoke": 3}  # the agent's quick loss uses agent.eval_timesteps (8)
TEST_NOISE_DRAWS = 3
MACS_TOLERANCE = 0.005


class QualityBench(Bench):
    def __init__(self, scale: str, work: Path, device: str, llm: str):
        super().__init__(scale, work, device)
        self.llm = llm

    def cfg(self, seed: int, overrides: dict[str, Any] | None = None):
        return super().cfg(seed, {"agent.llm": self.llm, **(overrides or {})})

    def agent_cfg(self, seed: int):
        return self.cfg(seed, {"stage2.mode": "tdc"})

    def test_loss(self, cfg, model: torch.nn.Module, timesteps: list[int], seed: int) -> float:
        """Mean ε-MSE on the whole test split, ``TEST_TIMESTEPS`` timesteps, fresh noise (other seeds
        than the agent's quick loss), averaged over noise draws."""
        test = held_out(cfg, "test")
        process = ForwardProcess(cfg.schedule, self.device)
        return float(np.mean([quick_loss(model, test, process, timesteps, TEST_TIMESTEPS[self.scale], len(test),
                                         seed=10_000 + 97 * seed + d) for d in range(TEST_NOISE_DRAWS)]))

    def agent_run(self, seed: int, name: str, memory_from: Path | None = None) -> RunDir:
        """Stage 2's agent pruning for every group of the seed's plan, in ``<seed>/<name>``
        (``memory_from``: a memory bank copied in first, for the transfer measurement)."""
        return self.pruned(seed, name, "tdc", memory_from, dirname=name)

    def pairs(self, seed: int) -> list[dict[str, Any]]:
        """Per group: the agent's and every classical criterion's test loss at the agent's MACs."""
        out_path = self.seed_dir(seed) / "scores" / "pairs.json"
        if out_path.is_file():
            return read_json(out_path, "benchmark pairs")["pairs"]
        cfg = self.agent_cfg(seed)
        plan = build_plan(cfg)
        agent = self.agent_run(seed, "agent")
        base, meta = load_model(agent.base_model, self.device)
        pruner = Pruner(base, training_data(cfg), ForwardProcess(cfg.schedule, self.device), seed)
        classical = RunDir(self.seed_dir(seed) / "classical-pruned")
        if not (classical.base_model / "model.safetensors").is_file():
            shutil.copytree(agent.base_model, classical.base_model, dirs_exist_ok=True)
        pairs = []
        for g in plan.groups:
            model, _ = load_model(agent.group(g.index) / "pruned", self.device)
            info = read_json(agent.group(g.index) / "prune.json", "agent pruning summary")
            agent_macs = float(count(model).thop)
            entry: dict[str, Any] = {
                "seed": seed, "group": g.index, "t_range": [g.t_start, g.t_end], "limit_fraction": g.limit_fraction,
                "agent_test_loss": self.test_loss(cfg, model, g.timesteps, seed), "agent_macs": agent_macs,
                "agent_val_loss": info.get("best_loss"), "base_val_loss": info.get("base_loss"),
                "agent_levels": info.get("best_levels"),
                "base_test_loss": self.test_loss(cfg, base, g.timesteps, seed), "classical": {}}
            best = None
            for crit in CLASSICAL:
                res = pruner.prune(None, agent_macs, crit, g.timesteps)
                loss = self.test_loss(cfg, res.model, g.timesteps, seed)
                entry["classical"][crit] = {"test_loss": loss, "macs": float(res.macs.thop)}
                if best is None or loss < best[1]:
                    best = (crit, loss, res)
            crit, loss, res = best
            entry.update(best_classical_name=crit, best_classical_test_loss=loss,
                         classical_macs=float(res.macs.thop),
                         macs_gap=abs(agent_macs - res.macs.thop) / agent_macs,
                         win=entry["agent_test_loss"] < loss)
            gdir = classical.group(g.index)
            save_pruned(gdir / "pruned", res, {**{k: v for k, v in meta.items() if k != "pruning"}, "group": g.index,
                                               "t_range": [g.t_start, g.t_end]})
            atomic_write_json(gdir / "prune.json", {"mode": crit, **res.summary()})
            pairs.append(entry)
            self.log(f"seed {seed} group {g.index}: agent {entry['agent_test_loss']:.5f} vs {crit} {loss:.5f} "
                     f"({'win' if entry['win'] else 'loss'})")
        atomic_write_json(out_path, {"pairs": pairs})
        return pairs

    def finetuned_fd(self, seed: int) -> dict[str, Any]:
        """FD after the same stage 2 for the agent's models and the best classical models."""
        out = {}
        for name, src in (("qa-agent", "agent"), ("qa-classical", "classical-pruned")):
            run = self.stage2_row(seed, name, "tdc", False, 1e-3, RunDir(self.seed_dir(seed) / src), "proportional")
            out[name] = self.score_tdc(seed, name, run)
        return out

    def transfer(self, seed: int, donor: int) -> list[dict[str, Any]]:
        """Rounds until the agent with ``donor``'s memory reaches the no-memory run's final best."""
        path = self.seed_dir(seed) / "scores" / "transfer.json"
        if path.is_file():
            return read_json(path, "transfer result")["groups"]
        donor_memory = self.agent_run(donor, "agent").memory
        plain = self.agent_run(seed, "agent")
        warm = self.agent_run(seed, f"agent-memory-from-s{donor}", memory_from=donor_memory)
        rounds_total = self.s["rounds"]
        groups = []
        for g in build_plan(self.agent_cfg(seed)).groups:
            a = read_json(plain.group(g.index) / "prune.json", "agent pruning summary")
            b = read_json(warm.group(g.index) / "prune.json", "agent pruning summary")
            target = min(min(r["losses"]) for r in a["rounds"])
            best, reached = math.inf, None
            curve = []
            for r in b["rounds"]:
                best = min(best, min(r["losses"]))
                curve.append(best)
                if reached is None and best <= target + 1e-12:
                    reached = r["round"]
            first_plain = min(a["rounds"][0]["losses"])
            groups.append({"seed": seed, "donor_seed": donor, "group": g.index, "no_memory_final_val": target,
                           "no_memory_round1_val": first_plain, "with_memory_best_by_round": curve,
                           "rounds_to_reach": reached, "rounds_total": rounds_total})
            self.log(f"seed {seed} group {g.index}: with memory from seed {donor} reaches the no-memory final "
                     f"loss in {reached if reached else f'>{rounds_total}'} rounds")
        atomic_write_json(path, {"groups": groups})
        return groups


def aggregate(b: QualityBench, seeds: list[int], out_dir: Path, wall_s: float) -> dict[str, Any]:
    pairs = [p for s in seeds for p in b.pairs(s)]
    wins = [p["win"] for p in pairs]
    fd = {s: b.finetuned_fd(s) for s in seeds}
    diffs = [fd[s]["qa-agent"]["fd"] - fd[s]["qa-classical"]["fd"] for s in seeds]
    ratios = [fd[s]["qa-agent"]["fd"] / fd[s]["qa-classical"]["fd"] for s in seeds]
    iv = t_interval(diffs)
    boot = []
    for s in seeds:
        fa = np.load(b.seed_dir(s) / "scores" / "qa-agent.npy")
        fc = np.load(b.seed_dir(s) / "scores" / "qa-classical.npy")
        from tdc_agent.evaluation.fd import frechet

        ref = b.reference()
        draws = paired_bootstrap_ratio(lambda f: frechet(f, ref), fa, fc, reps=b.s["bootstrap"], seed=s)
        boot.append({"seed": s, "ratio": ratios[seeds.index(s)],
                     "bootstrap_95": percentile_interval(draws)})
    transfer = [x for i, s in enumerate(seeds) for x in b.transfer(s, seeds[i - 1])] if len(seeds) > 1 else []
    reached = [x["rounds_to_reach"] for x in transfer]
    rounds_total = b.s["rounds"]
    # not reached within the run counts as one round past its end (a lower bound on the true figure)
    as_num = [r if r is not None else rounds_total + 1 for r in reached]
    gaps = [p["macs_gap"] for p in pairs]
    win_rate = sum(wins) / len(wins)
    res = {
        "protocol": {
            "scale": b.scale, "seeds": seeds, "llm": b.llm, "rounds": b.s["rounds"], "candidates": b.s["candidates"],
            "agent_eval": "val split (first half of the held-out sixth of digits), agent.eval_timesteps=8, 128 images",
            "test_eval": f"test split (second half), all its images, {TEST_TIMESTEPS[b.scale]} timesteps per group, "
                         f"{TEST_NOISE_DRAWS} fresh noise draws",
            "classical": list(CLASSICAL), "macs_tolerance": MACS_TOLERANCE,
            "finetune": "stage 2 of Table I's CPU recipe (proportional steps, lr 1e-3, no distillation)",
            "fd": f"{b.s['samples']} DDIM-{b.s['sample_steps']} samples per model, same noise per seed, digits "
                  "classifier features vs all 1797 digits",
        },
        "pairs": pairs,
        "win_rate": win_rate,
        "wins": sum(wins), "n_pairs": len(wins),
        "max_macs_gap": max(gaps), "all_within_macs_tolerance": all(g <= MACS_TOLERANCE for g in gaps),
        "best_classical_counts": {c: sum(p["best_classical_name"] == c for p in pairs) for c in CLASSICAL},
        "mean_test_loss_ratio_agent_over_best_classical": statistics.mean(
            p["agent_test_loss"] / p["best_classical_test_loss"] for p in pairs),
        "fd": {"per_seed": {str(s): {"agent": fd[s]["qa-agent"]["fd"], "best_classical": fd[s]["qa-classical"]["fd"]}
                            for s in seeds},
               "paired_difference_agent_minus_classical": {"mean": iv.mean, "ci95": iv.to_list(), "n": iv.n},
               "ratio_bootstrap": boot},
        "memory_transfer": {
            "groups": transfer,
            "rounds_to_reach_mean": statistics.mean(as_num) if as_num else None,
            "reached_within_half": sum(1 for r in reached if r is not None and r <= rounds_total / 2),
            "n": len(reached), "rounds_total": rounds_total,
        },
        "targets": {
            "win_rate_ge_0.60": win_rate >= 0.60,
            "fd_no_worse": (not math.isnan(iv.hi)) and iv.lo <= 0 or iv.hi <= 0,
            "transfer_half_rounds": bool(as_num) and statistics.mean(as_num) <= rounds_total / 2,
        },
        "wall_seconds": wall_s,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "agent_quality.json", res)
    (out_dir / "agent_quality.md").write_text(markdown(res))
    return res


def markdown(r: dict[str, Any]) -> str:
    p = r["protocol"]
    lines = [f"# Agent quality ({p['scale']} scale, seeds {p['seeds']}, {p['llm']}, {p['rounds']} rounds x "
             f"{p['candidates']} candidates)", "",
             f"Agent judged on: {p['agent_eval']}. Scored on: {p['test_eval']}.", "",
             "| seed | group | limit | agent test loss | best classical | its test loss | MACs gap | win |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["pairs"]:
        lines.append(f"| {x['seed']} | {x['group']} | {x['limit_fraction']:.3f} | {x['agent_test_loss']:.5f} | "
                     f"{x['best_classical_name']} | {x['best_classical_test_loss']:.5f} | {x['macs_gap']:.2%} | "
                     f"{'yes' if x['win'] else 'no'} |")
    fd = r["fd"]["paired_difference_agent_minus_classical"]
    t = r["targets"]
    mt = r["memory_transfer"]
    lines += ["", f"- **Win rate** {r['wins']}/{r['n_pairs']} = {r['win_rate']:.0%} (target ≥ 60 %: "
                  f"{'met' if t['win_rate_ge_0.60'] else 'NOT met'}); mean test-loss ratio agent / best classical "
                  f"{r['mean_test_loss_ratio_agent_over_best_classical']:.4f}; largest MACs gap "
                  f"{r['max_macs_gap']:.2%}.",
              f"- **FD after fine-tuning**, agent − best classical: {fd['mean']:+.3f}, 95 % CI "
              f"[{fd['ci95'][0]:+.3f}, {fd['ci95'][1]:+.3f}] over {fd['n']} seeds (target: no worse: "
              f"{'met' if t['fd_no_worse'] else 'NOT met'}). Per seed: "
              + ", ".join(f"s{s} {v['agent']:.3f} vs {v['best_classical']:.3f}" for s, v in r["fd"]["per_seed"].items())
              + ".",
              f"- **Memory transfer**: with the previous seed's memory the agent reaches the no-memory run's final "
              f"val loss in {mt['rounds_to_reach_mean']} rounds on average (of {mt['rounds_total']}; not reached "
              f"counts as {mt['rounds_total'] + 1}); within half the rounds in {mt['reached_within_half']}/{mt['n']} "
              f"groups (target ≤ half: {'met' if t['transfer_half_rounds'] else 'NOT met'}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="cpu", choices=list(SCALES))
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--llm", default="builtin")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", choices=["pairs", "transfer", "all"], default="all",
                    help="pairs: held-out losses only (no fine-tuning); all: everything, then the results")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    work = a.work or ROOT / "benchmarks" / "work" / f"agent-quality-{a.scale}"
    b = QualityBench(a.scale, work, a.device, a.llm)
    seeds = a.seeds if a.seeds is not None else SEEDS[a.scale]
    t0 = time.time()
    for s in seeds:
        b.pairs(s)
    if a.only == "pairs":
        return
    if a.only == "transfer":
        for i, s in enumerate(seeds):
            b.transfer(s, seeds[i - 1])
        return
    res = aggregate(b, seeds, a.out, time.time() - t0)
    print(markdown(res))


if __name__ == "__main__":
    main()
