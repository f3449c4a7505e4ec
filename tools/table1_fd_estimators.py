"""Table I's FD ratios under other estimators, from the features a `make bench` run saved.

For each reported seed and row, the 2000 x 64 classifier features at the headline step count
(``<work>/s<seed>/scores/<row>@<steps>.npy``) are scored against the reference three ways: FD as
Table I reports it, FD∞ (Chong & Forsyth 2020: FD on random subsets of 500..n samples, fitted
linearly in 1/n and read at 1/n = 0, which removes FD's finite-sample bias) and KID; each row's
per-seed ratios to ``base-equal-compute`` get a t 95 % interval over seeds. It asks whether the
spread of Table I's FD ratios is the estimator's (it would shrink under FD∞) or the models'.

    python tools/table1_fd_estimators.py --work benchmarks/work/table1-cpu [--steps 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_table1 import Bench  # noqa: E402
from tdc_agent.evaluation.fd import frechet_to_stats, gaussian, kid  # noqa: E402
from tdc_agent.evaluation.stats import paired_ratios, t_interval  # noqa: E402

ROWS = ("base", "base-1.2x", "tdc-no-prune", "tdc-agent")


def fd_infinity(feats: np.ndarray, mu: np.ndarray, sigma: np.ndarray, seed: int, points: int = 8,
                draws: int = 4) -> float:
    """FD extrapolated to infinitely many samples (linear in 1/n over ``points`` subset sizes)."""
    rng = np.random.default_rng(seed)
    sizes = np.linspace(500, len(feats), points).astype(int)
    vals = [np.mean([frechet_to_stats(feats[rng.choice(len(feats), n, replace=False)], mu, sigma)
                     for _ in range(draws if n < len(feats) else 1)]) for n in sizes]
    design = np.stack([np.ones(len(sizes)), 1.0 / sizes], 1)
    return float(np.linalg.lstsq(design, np.asarray(vals), rcond=None)[0][0])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="the run's work folder (holds s<seed>/scores)")
    ap.add_argument("--steps", default="100")
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="default: the scale's reported seeds that have scores")
    a = ap.parse_args(argv)
    bench = Bench("cpu", a.work, "cpu")
    ref = bench.reference()
    mu, sigma = gaussian(ref)
    seeds = a.seeds or [sd for sd in bench.s["seeds"]
                        if (bench.seed_dir(sd) / "scores" / f"base-equal-compute@{a.steps}.npy").is_file()]
    scores: dict[str, dict[int, tuple[float, float, float]]] = {}
    for row in (*ROWS, "base-equal-compute"):
        for sd in seeds:
            f = np.load(bench.seed_dir(sd) / "scores" / f"{row}@{a.steps}.npy").astype(np.float64)
            scores.setdefault(row, {})[sd] = (frechet_to_stats(f, mu, sigma), fd_infinity(f, mu, sigma, sd),
                                              kid(f, ref, seed=sd)[0])
    print(f"seeds {seeds}, DDIM-{a.steps}; ratio to base-equal-compute, mean [t 95 % CI over seeds]")
    for row in ROWS:
        for i, name in enumerate(("FD", "FD-inf", "KID")):
            r = paired_ratios([scores[row][s][i] for s in seeds], [scores["base-equal-compute"][s][i] for s in seeds])
            iv = t_interval(r)
            mean = np.mean([scores[row][s][i] for s in seeds])
            print(f"{row:14s} {name:6s} mean {mean:8.4f}  ratio {iv.mean:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]  per seed "
                  + ", ".join(f"{x:.2f}" for x in r))


if __name__ == "__main__":
    main()
