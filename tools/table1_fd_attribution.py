"""Which group's member moves Table I's FD: swap one member at a time for the equal-compute base.

Table I's FD ratios scatter ±20 % from seed to seed while the sampler's ε-loss, dominated by the
middle groups, moves by under 1 %. This asks where FD's difference between a TDC row and its
equal-compute base comes from. For each reported seed and group g, the row's progressive model
samples again with group g's timesteps served by the equal-compute base (the same noise as Table I,
DDIM at the headline step count), and

    share_g = (FD(swap g) - FD(row)) / (FD(equal-compute base) - FD(row))

is the part of the row's FD difference that its member g accounts for (1: all of it; the shares of
the four groups need not add to 1, since a member changes what the next member is given). The same
is done for intra-FD (per-class FD: how each digit looks, not which digits were drawn). Beside it,
every model's FD is split into its mean term |mu - mu_ref|² and its covariance term, and the
classifier's class proportions of the samples are compared with the reference's (χ²), so one can
see whether a group moves which digits are drawn (class balance, the mean term) or how they look.

    python tools/table1_fd_attribution.py run --rows tdc-no-prune --jobs 2   # after `make bench`
    python tools/table1_fd_attribution.py aggregate --rows tdc-no-prune

Resumable: each swap's features are stored in ``<work>/s<seed>/attribution/<row>-g<g>.npy`` and
read back. Writes ``benchmarks/results/fd-attribution.{json,md}``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_table1 import Bench, run_seed_workers, work_parser  # noqa: E402
from tdc_agent.core.io import atomic_write_json  # noqa: E402
from tdc_agent.core.errors import DataError  # noqa: E402
from tdc_agent.evaluation.fd import (  # noqa: E402
    DigitsClassifier, class_labels, digits_classifier, features, frechet_from_stats, gaussian, intra_fd)
from tdc_agent.evaluation.stats import t_interval  # noqa: E402
from tdc_agent.models.progressive import ProgressiveModel  # noqa: E402
from tdc_agent.models.store import load_model  # noqa: E402
from tdc_agent.models.unet import denoise  # noqa: E402
from tdc_agent.workflow.sampling import generate  # noqa: E402

REFERENCE = "base-equal-compute"


def swap_member(pm: ProgressiveModel, group: int, other: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                         torch.Tensor]:
    """``pm`` with the timesteps of its member ``group`` served by ``other`` (a dense denoiser)."""
    m = pm.members[group]

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.expand(x.shape[0]) if t.ndim == 0 else t
        inside = (tt >= m.t_start) & (tt <= m.t_end)
        if bool(inside.all()):
            return denoise(other, x, tt)
        if not bool(inside.any()):
            return pm(x, tt)
        out = pm(x, tt)
        out[inside] = denoise(other, x[inside], tt[inside]).to(out.dtype)
        return out

    return fn


def fd_terms(feats: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """FD split into its mean term |mu1 - mu|² and covariance term (tr s1 + tr s - 2 tr sqrt(s1 s))."""
    mu1, s1 = gaussian(feats)
    fd = frechet_from_stats(mu1, s1, mu, sigma)
    mean = float(((mu1 - mu) ** 2).sum())
    return {"fd": fd, "mean_term": mean, "cov_term": fd - mean}


def class_chi2(feats: np.ndarray, ref_props: np.ndarray, clf: DigitsClassifier) -> float:
    """χ² distance of the classifier's class proportions of ``feats`` from the reference's."""
    props = class_proportions(feats, clf)
    return float(((props - ref_props) ** 2 / ref_props).sum())


def class_proportions(feats: np.ndarray, clf: DigitsClassifier) -> np.ndarray:
    return np.bincount(class_labels(feats, clf), minlength=clf.head.out_features) / len(feats)


def attribution_shares(fd_row: float, fd_ref: float, fd_swaps: list[float]) -> list[float]:
    """Per group, the part of FD(ref) - FD(row) that swapping that group's member back undoes."""
    gap = fd_ref - fd_row
    return [(s - fd_row) / gap for s in fd_swaps]


def feats_path(b: Bench, seed: int, row: str, group: int) -> Path:
    return b.seed_dir(seed) / "attribution" / f"{row}-g{group}.npy"


def worker(b: Bench, seed: int, row: str) -> None:
    """Sample the row's model with each group swapped in turn (skips swaps already stored)."""
    steps = b.s["sample_steps"]
    pm = ProgressiveModel.load(b.seed_dir(seed) / row / "progressive", b.device).eval()
    ref_model, _ = load_model(b.seed_dir(seed) / REFERENCE / "model", b.device)
    ref_model.eval()
    clf, _ = digits_classifier()
    cfg = b.cfg(seed)
    scfg = cfg.sample.model_copy(update={"num": b.s["samples"], "batch_size": b.s["samples"], "steps": steps})
    for g in range(len(pm.members)):
        out = feats_path(b, seed, row, g)
        if out.is_file():
            continue
        t0 = time.time()
        with torch.no_grad():
            images = generate(swap_member(pm, g, ref_model), (1, 8, 8), cfg.schedule, scfg, seed, b.device,
                              progress=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.npy")
        np.save(tmp, features(images, clf).astype(np.float32))
        os.replace(tmp, out)
        b.log(f"seed {seed}: {row} with group {g} from {REFERENCE}: {time.time() - t0:.0f} s")


def aggregate(b: Bench, seeds: list[int], rows: list[str], out: Path) -> dict[str, Any]:
    """Per row and group: FD and intra-FD of the swapped sampler against the row's own, paired per
    seed, with t 95 % intervals over seeds; FD's terms and the class χ² of every model."""
    steps = b.s["sample_steps"]
    ref = b.reference()
    mu, sigma = gaussian(ref)
    clf, _ = digits_classifier()
    ref_props, ref_labels = class_proportions(ref, clf), class_labels(ref, clf)
    res: dict[str, Any] = {"protocol": {"sample_steps": steps, "samples": b.s["samples"], "seeds": seeds,
                                        "reference_row": REFERENCE}, "rows": {}}
    metrics = ["fd", "intra_fd"]

    def describe(f: np.ndarray) -> dict[str, float]:
        d = {**fd_terms(f, mu, sigma), "class_chi2": class_chi2(f, ref_props, clf)}
        if "intra_fd" in metrics:
            try:
                d["intra_fd"] = intra_fd(f, ref, class_labels(f, clf), ref_labels)
            except DataError as e:  # too few samples per class (the smoke scale): said in the table
                res["intra_fd_note"] = str(e)
                metrics.remove("intra_fd")
        return d

    def load(sd: int, name: str) -> np.ndarray:
        return np.load(b.seed_dir(sd) / "scores" / f"{name}@{steps}.npy").astype(np.float64)

    for row in rows:
        per_seed = [{"seed": sd, "reference": describe(load(sd, REFERENCE)), "row": describe(load(sd, row)),
                     "swaps": [describe(np.load(feats_path(b, sd, row, g)).astype(np.float64))
                               for g in range(b.s["groups"])]} for sd in seeds]
        groups = []
        for g in range(b.s["groups"]):
            entry: dict[str, Any] = {"group": g}
            for m in metrics:
                ratio = t_interval([p["swaps"][g][m] / p["row"][m] for p in per_seed])
                entry.update({f"swap_{m}_ratio": ratio.mean, f"swap_{m}_ratio_ci95": ratio.to_list(),
                              f"{m}_share": [attribution_shares(p["row"][m], p["reference"][m], [p["swaps"][g][m]])[0]
                                             for p in per_seed],
                              f"abs_{m}_change": float(np.mean([abs(p["swaps"][g][m] - p["row"][m]) for p in per_seed]))})
            groups.append(entry)
        summary: dict[str, Any] = {}
        for k in ("fd", "mean_term", "cov_term", "class_chi2", *metrics[1:]):
            iv = t_interval([p["row"][k] / p["reference"][k] for p in per_seed])
            summary[f"{k}_ratio"], summary[f"{k}_ratio_ci95"] = iv.mean, iv.to_list()
        res["rows"][row] = {"per_seed": per_seed, "groups": groups, **summary}
    # every sampler once: a seed's reference is the same model for every row
    refs = {p["seed"]: p["reference"] for r in res["rows"].values() for p in r["per_seed"]}
    everything = [*refs.values(), *(d for r in res["rows"].values() for p in r["per_seed"] for d in (p["row"], *p["swaps"]))]
    fd = np.array([d["fd"] for d in everything])
    res["fd_correlations"] = {k: float(np.corrcoef(fd, [d[k] for d in everything])[0, 1])
                              for k in ("mean_term", "cov_term", "class_chi2")}
    res["mean_term_share_of_fd"] = float(np.mean([d["mean_term"] / d["fd"] for d in everything]))
    # the same with each seed's mean removed: how much FD follows the class mix among one seed's samplers
    centred = []
    for sd, ref_d in refs.items():
        own = [ref_d, *(d for r in res["rows"].values() for p in r["per_seed"] if p["seed"] == sd
                        for d in (p["row"], *p["swaps"]))]
        fd_s, chi_s = np.array([d["fd"] for d in own]), np.array([d["class_chi2"] for d in own])
        centred += list(zip(fd_s - fd_s.mean(), chi_s - chi_s.mean()))
    c_fd, c_chi = np.array(centred).T
    res["fd_class_chi2_corr_within_seeds"] = float(np.corrcoef(c_fd, c_chi)[0, 1])
    res["metrics"] = metrics
    atomic_write_json(out.with_suffix(".json"), res)
    out.with_suffix(".md").write_text(markdown(res))
    return res


def _ci(v: float, ci: list[float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(res: dict[str, Any]) -> str:
    p = res["protocol"]
    names = {"fd": "FD", "intra_fd": "intra-FD"}
    metrics = res["metrics"]
    lines = [f"# Where Table I's FD differences come from (DDIM-{p['sample_steps']}, seeds {p['seeds']})", "",
             f"Each row's progressive model sampled again with one group's timesteps served by {p['reference_row']} "
             "(same noise). Swap / row ratios are paired per seed (t 95 % intervals over seeds); a share is the part "
             "of the row's gap to the reference that the swap undoes (1: all of it).", ""]
    if "intra_fd_note" in res:
        lines += [f"Intra-FD not computed: {res['intra_fd_note']}", ""]
    for row, r in res["rows"].items():
        lines += [f"## {row} vs {p['reference_row']}: " + "; ".join(
            f"{names[m]} ratio {_ci(r[m + '_ratio'], r[m + '_ratio_ci95'])}" for m in metrics), "",
            "| group swapped | " + " | ".join(f"{names[m]}(swap) / {names[m]}(row) | {names[m]} share per seed"
                                              for m in metrics) + " |",
            "|---|" + "---|---|" * len(metrics)]
        for g in r["groups"]:
            lines.append(f"| {g['group']} | " + " | ".join(
                _ci(g[f"swap_{m}_ratio"], g[f"swap_{m}_ratio_ci95"]) + " | " + ", ".join(f"{x:+.2f}" for x in g[f"{m}_share"])
                for m in metrics) + " |")
        lines += ["", "| seed | FD row / ref | FD swap g0 / g1 / g2 / g3 | mean term row / ref | cov term row / ref "
                  "| class χ² row / ref |", "|---|---|---|---|---|---|"]
        for s in r["per_seed"]:
            lines.append(f"| {s['seed']} | {s['row']['fd']:.3f} / {s['reference']['fd']:.3f} | "
                         + " / ".join(f"{w['fd']:.3f}" for w in s["swaps"])
                         + f" | {s['row']['mean_term']:.3f} / {s['reference']['mean_term']:.3f} | "
                         f"{s['row']['cov_term']:.3f} / {s['reference']['cov_term']:.3f} | "
                         f"{s['row']['class_chi2']:.4f} / {s['reference']['class_chi2']:.4f} |")
        lines += [""] + [f"- {label}, row / reference: {_ci(r[k + '_ratio'], r[k + '_ratio_ci95'])}"
                         for k, label in (("mean_term", "FD's mean term"), ("cov_term", "FD's covariance term"),
                                          ("class_chi2", "class-proportion χ²"))] + [""]
    c = res["fd_correlations"]
    lines.append(f"Over every sampler scored here (each seed's reference once), FD correlates {c['mean_term']:.2f} with its mean term, "
                 f"{c['cov_term']:.2f} with its covariance term and {c['class_chi2']:.2f} with the class-proportion χ² "
                 f"({res['fd_class_chi2_corr_within_seeds']:.2f} with each seed's mean removed); "
                 f"the mean term is {100 * res['mean_term_share_of_fd']:.0f} % of FD on average.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = work_parser(__doc__)
    ap.add_argument("--rows", default="tdc-no-prune", help="comma-separated TDC rows of Table I")
    ap.add_argument("--seed", type=int, help="worker: the seed")
    ap.add_argument("--seeds", default=None, help="default: the scale's reported seeds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fd-attribution")
    a = ap.parse_args(argv)
    b = Bench(a.scale, a.work, a.device)
    rows = a.rows.split(",")
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else list(b.s["seeds"])
    if a.what == "worker":
        if a.seed is None:
            raise SystemExit("worker needs --seed")
        torch.set_num_threads(1)
        for row in rows:
            worker(b, a.seed, row)
        return
    if a.what == "run":
        missing = [sd for sd in seeds for row in (*rows, REFERENCE)
                   if not (b.seed_dir(sd) / "scores" / f"{row}@{b.s['sample_steps']}.npy").is_file()]
        if missing:
            raise SystemExit(f"seeds {sorted(set(missing))} lack Table I's scores in {b.work}: run `make bench` first")
        run_seed_workers(b, __file__, seeds, a.jobs, ["--rows", a.rows], "attribution")
    print(markdown(aggregate(b, seeds, rows, a.out)))


if __name__ == "__main__":
    main()
