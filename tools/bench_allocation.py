"""Stage 2's steps shared by need vs by group size, on Table I's seeds (issue #19, item 1).

Table I's TDC rows share stage 2's steps by the groups' sizes (``steps_rule: proportional``). Per
group, its no-pruning row is level with the equal-compute base on groups 1-2 (t 31-721, where the
ε-loss is) and far ahead on group 3 (t 722-999, where the loss is ~0.2 % of the total): the size rule
spends a quarter of stage 2 where there is nothing left to win. ``steps_rule: need`` shares the same
total by each group's part of the base's held-out ε-loss. This script trains that recipe for one or
both headline modes in a Table I work folder (next to the rows already there, same base, same pruned
starting models, same noise) and compares it per seed with the size rule and the equal-compute base:
the sampler's held-out ε-loss (paired, low variance), per group, and FD at the headline step count.

    python tools/bench_allocation.py run --jobs 2     # make bench-allocation: both phases, then the tables
    python tools/bench_allocation.py worker --seed 100 --modes tdc-no-prune --no-equal   # one seed (resumable)
    python tools/bench_allocation.py aggregate --seeds 0,1,2,3,4,5,6,7 --modes tdc-no-prune,tdc-agent

``run`` first trains the no-pruning rows of the tuning seeds (100, 101; the size-rule row too, which
Table I does not train there) -> ``allocation-tuning.{json,md}``, then both headline modes on the
reported seeds, next to Table I's rows and equal-compute bases (``make bench`` must have run) ->
``allocation.{json,md}``. FD is scored at the headline step count only. The rule was adopted
because it lowered the sampler ε-loss on both tuning seeds, a criterion fixed before they ran.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_table1 import STEP_COST, Bench, run_seed_workers, work_parser  # noqa: E402
from tdc_agent.core.errors import DataError  # noqa: E402
from tdc_agent.core.io import atomic_write_json, read_json  # noqa: E402
from tdc_agent.evaluation.stats import paired_ratios, t_interval  # noqa: E402
from tdc_agent.models.macs import count  # noqa: E402
from tdc_agent.models.store import load_model  # noqa: E402
from tdc_agent.planning.build import build_plan  # noqa: E402
from tdc_agent.workflow.pipeline import training_macs  # noqa: E402

LR = 1e-3  # Table I's tuned stage-2 lr (tune/choice.json); no distillation
SOURCES = {"tdc-no-prune": "tdc-no-prune", "tdc-agent": "tdc"}


def rows(modes: list[str]) -> list[tuple[str, str, str]]:
    """(row name, source row, steps rule): Table I's size-rule row and its need-rule twin."""
    return [(n, n, "proportional") for n in modes] + [(f"{n}-need", n, "need") for n in modes]


def worker(b: Bench, seed: int, modes: list[str], equal: bool = True) -> None:
    """Every row of ``modes`` for one seed (skipping what exists), then the equal-compute base when
    the seed has none (a tuning seed), matched to the size-rule rows' compute as Table I does."""
    b.s = {**b.s, "fd_steps": [b.s["sample_steps"]]}  # FD at the headline step count only
    base = b.base(seed)
    match = 0.0  # the training compute the equal-compute base must match
    base_macs = count(load_model(base.base_model, b.device)[0]).thop
    for name, src_name, rule in rows(modes):
        mode = SOURCES[src_name]
        with b.seed_lock(seed):
            src = b.pruned(seed, src_name, mode)
        run = b.stage2_row(seed, name, mode, False, LR, src, rule)
        b.score_tdc(seed, name, run)
        if rule == "proportional":
            cfg = b.cfg(seed, {"stage2.mode": mode, **b.recipe(rule)})
            tm = training_macs(cfg, run, build_plan(cfg), base_macs)
            match = max(match, STEP_COST * (tm["stage1"] + tm["stage2"]) + tm["teacher"] + tm["proxy"])
    if equal and not (b.seed_dir(seed) / "scores" / "base-equal-compute.json").is_file():
        b.equal_compute(seed, base, match)


def group_ratios(row: dict[str, Any], ref: dict[str, Any], bounds: list[tuple[int, int]]) -> list[float]:
    """Per group: the row's summed per-timestep ε-loss over the reference's, on the sampler's grid."""
    a, r = row["eps_loss_per_t"], ref["eps_loss_per_t"]
    out = []
    for lo, hi in bounds:
        ts = [t for t in a if lo <= int(t) <= hi]
        out.append(sum(a[t] for t in ts) / sum(r[t] for t in ts) if ts else float("nan"))  # no grid step there
    return out


def aggregate(b: Bench, seeds: list[int], modes: list[str], out: Path) -> dict[str, Any]:
    """Paired per-seed ratios (t 95 % intervals over seeds): need vs size rule, each vs the
    equal-compute base, on the sampler ε-loss, per group and on FD at the headline step count."""
    plan = build_plan(b.cfg(seeds[0]))
    bounds = [(g.t_start, g.t_end) for g in plan.groups]

    def score(sd: int, name: str) -> dict[str, Any]:
        return read_json(b.seed_dir(sd) / "scores" / f"{name}.json", "benchmark score")

    res: dict[str, Any] = {"seeds": seeds, "groups": bounds, "lr": LR, "comparisons": {}}
    has_eq = all((b.seed_dir(sd) / "scores" / "base-equal-compute.json").is_file() for sd in seeds)
    for mode in modes:
        pairs = [(f"{mode}-need", mode)]
        if has_eq:
            pairs += [(f"{mode}-need", "base-equal-compute"), (mode, "base-equal-compute")]
        for name, ref in pairs:
            a, r = [score(sd, name) for sd in seeds], [score(sd, ref) for sd in seeds]
            eps = paired_ratios([x["eps_loss"] for x in a], [x["eps_loss"] for x in r])
            fd = paired_ratios([x["fd"] for x in a], [x["fd"] for x in r])
            per_group = np.array([group_ratios(x, y, bounds) for x, y in zip(a, r)])
            intra_fd: dict[str, Any] = {}
            try:
                intra = paired_ratios([b.intra_fd(sd, name) for sd in seeds], [b.intra_fd(sd, ref) for sd in seeds])
                intra_fd = {"intra_fd_ratio": t_interval(intra).mean, "intra_fd_ratio_ci95": t_interval(intra).to_list(),
                            "intra_fd_ratios": intra}
            except DataError as e:  # too few samples per class (the smoke scale): said in the table
                res["intra_fd_note"] = str(e)
            res["comparisons"][f"{name} / {ref}"] = {
                "eps_loss_ratio": t_interval(eps).mean, "eps_loss_ratio_ci95": t_interval(eps).to_list(),
                "eps_loss_ratios": eps, "fd_ratio": t_interval(fd).mean, "fd_ratio_ci95": t_interval(fd).to_list(),
                "fd_ratios": fd, "fd": [x["fd"] for x in a], "fd_ref": [x["fd"] for x in r],
                "group_eps_loss_ratio": [float(v) for v in per_group.mean(0)],
                "group_eps_loss_ratio_ci95": [t_interval(per_group[:, i].tolist()).to_list() for i in range(len(bounds))],
                "member_steps": [x.get("member_steps") for x in a],
                "train_macs_ratio": float(np.mean([x["train_macs"] / y["train_macs"] for x, y in zip(a, r)])),
                **intra_fd,
            }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), res)
    out.with_suffix(".md").write_text(markdown(res))
    return res


def markdown(res: dict[str, Any]) -> str:
    head = ("| comparison | ε-loss ratio [95 % CI] | " + " | ".join(f"group {i} (t {lo}-{hi})" for i, (lo, hi)
                                                       in enumerate(res["groups"]))
            + " | FD ratio [95 % CI] | intra-FD ratio [95 % CI] | training compute ratio |")
    lines = [f"Seeds {', '.join(map(str, res['seeds']))}; paired per seed, t 95 % intervals over seeds.", "",
             head, "|" + "---|" * (5 + len(res["groups"]))]
    for k, c in res["comparisons"].items():
        ci = c["eps_loss_ratio_ci95"]
        groups = " | ".join(f"{m:.4f}" for m in c["group_eps_loss_ratio"])
        lines.append(f"| {k} | {c['eps_loss_ratio']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] | {groups} | "
                     f"{c['fd_ratio']:.3f} [{c['fd_ratio_ci95'][0]:.3f}, {c['fd_ratio_ci95'][1]:.3f}] | "
                     + (f"{c['intra_fd_ratio']:.3f} [{c['intra_fd_ratio_ci95'][0]:.3f}, {c['intra_fd_ratio_ci95'][1]:.3f}]"
                        if "intra_fd_ratio" in c else "n/a") + f" | {c['train_macs_ratio']:.4f} |")
    if "intra_fd_note" in res:
        lines += ["", "Intra-FD not computed: " + res["intra_fd_note"]]
    first = next(iter(res["comparisons"].values()))
    lines += ["", "Steps per group (need rule, per seed): " + "; ".join(str(s) for s in first["member_steps"])]
    return "\n".join(lines) + "\n"


def run_all(b: Bench, a: argparse.Namespace) -> None:
    """Tuning seeds (no pruning, need vs size), then every reported seed (both headline modes)."""
    missing = [sd for sd in b.s["seeds"] if not (b.seed_dir(sd) / "scores" / "base-equal-compute.json").is_file()]
    if missing:
        raise SystemExit(f"reported seeds {missing} have no equal-compute base in {b.work}: run `make bench` first")
    out_dir = a.out.parent
    for seeds, modes, extra, name in ((b.s["tune_seeds"], "tdc-no-prune", ["--no-equal"], "allocation-tuning"),
                                      (b.s["seeds"], "tdc-no-prune,tdc-agent", [], "allocation")):
        t0 = time.time()
        run_seed_workers(b, __file__, list(seeds), a.jobs, ["--modes", modes, *extra], "allocation")
        res = aggregate(b, list(seeds), modes.split(","), out_dir / name)
        b.log(f"{name}: {time.time() - t0:.0f} s")
        print(markdown(res))


def main(argv: list[str] | None = None) -> None:
    ap = work_parser(__doc__)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--seeds", default="100,101")
    ap.add_argument("--modes", default="tdc-no-prune", help="comma-separated: tdc-no-prune, tdc-agent")
    ap.add_argument("--no-equal", action="store_true", help="worker: no equal-compute base (only need vs size)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "allocation")
    a = ap.parse_args(argv)
    modes = a.modes.split(",")
    bad = [m for m in modes if m not in SOURCES]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}: choose from {list(SOURCES)}")
    b = Bench(a.scale, a.work, a.device)
    if a.what == "run":
        run_all(b, a)
    elif a.what == "worker":
        if a.seed is None:
            raise SystemExit("worker needs --seed")
        worker(b, a.seed, modes, equal=not a.no_equal)
    else:
        print(markdown(aggregate(b, [int(x) for x in a.seeds.split(",")], modes, a.out)))


if __name__ == "__main__":
    main()
