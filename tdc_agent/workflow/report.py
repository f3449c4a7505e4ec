"""``report.md`` in the run directory: plan, per-group results, agent rounds, samples, summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core.io import atomic_write_text, read_json  # noqa: E402
from ..core.config import Config  # noqa: E402
from ..core.fmt import fmt_macs_fixed  # noqa: E402
from ..planning.build import build_plan  # noqa: E402
from ..core.plots import save_figure  # noqa: E402
from .results import MODEL_NAMES, Evaluation  # noqa: E402
from .rundir import RunDir  # noqa: E402
from .stage1 import STEP_COST  # noqa: E402
from ..planning.plan import Plan  # noqa: E402


def _rounds_plot(cfg: Config, run: RunDir, n_groups: int) -> Path | None:
    """``agent_rounds.png``: :func:`rounds_figure`, saved (None when no group has rounds)."""
    fig = rounds_figure(run, n_groups)
    return None if fig is None else save_figure(fig, run.rounds_plot)


def rounds_figure(run: RunDir, n_groups: int) -> "plt.Figure | None":
    """Per agent round, the candidates' quick loss relative to the unpruned base's loss on the same
    group (mean ± std; 1 = as good as the base), one line per group (paper Fig. 5).

    Relative, because groups' losses differ by orders of magnitude (noisy timesteps have far larger
    ε-losses), so on one absolute axis all but the first group are flat lines at 0. Rounds are whole
    numbers on the x axis. A group without a recorded base loss (a run of an older version) is drawn
    in absolute loss on a second axis, and the legend says so."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn, absolute, most = False, None, 1
    for i in range(n_groups):
        d = run.agent_state(i)
        f = d / "rounds.json"
        if not f.is_file():
            continue
        rounds = read_json(f, "agent rounds")["rounds"]
        if not rounds:
            continue
        summary = read_json(d / "agent.json", "agent summary") if (d / "agent.json").is_file() else {}
        base = summary.get("base_loss")
        losses = [np.asarray(r["losses"], dtype=float) for r in rounds]
        x = np.array([r["round"] + 1 for r in rounds])
        most = max(most, int(x.max()))
        if base and base > 0:
            rel = [v / base for v in losses]
            ax.errorbar(x, [v.mean() for v in rel], yerr=[v.std() for v in rel], capsize=3, marker="o",
                        label=f"group {i}")
        else:
            absolute = absolute or ax.twinx()
            absolute.errorbar(x, [v.mean() for v in losses], yerr=[v.std() for v in losses], capsize=3,
                              marker="s", linestyle="--", label=f"group {i} (absolute: no base loss recorded)")
            absolute.set_ylabel("quick loss")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, most + 0.5)
    ax.set_xlabel("round")
    ax.set_ylabel("quick loss / base model's loss")
    handles, labels = ax.get_legend_handles_labels()
    if absolute is not None:
        h2, l2 = absolute.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7)
    return fig


def write_report(cfg: Config, run: RunDir, results: Evaluation, plan: Plan | None = None) -> Path:
    """``report.md`` (and ``agent_rounds.png``) for ``results``; ``plan``: the run's plan, when the
    caller holds it (else built from ``cfg``)."""
    plan = plan or build_plan(cfg)
    lines = [f"# TDC run `{run.path.name}`", "",
             "Training compute = 3 × forward MACs × images for every trained model (a backward costs about two "
             "forwards) + 1 × the teacher's (distillation) and the agent's (quick evaluation) forward MACs. The "
             "equal-compute base trains on from stage 1's checkpoint until its training compute matches TDC's.", "",
             f"Data `{cfg.data.name}`, model `{cfg.stage1.init or cfg.model.preset}`{' (latent: ' + cfg.latent.vae + ')' if cfg.latent.vae else ''}, {cfg.schedule.name} schedule "
             f"(T={cfg.schedule.timesteps}), N={len(plan.groups)} groups, k={cfg.plan.k}, shape `{cfg.plan.shape}`, "
             f"stage 2 mode `{cfg.stage2.mode}`, LLM `{cfg.agent.llm}`.", "",
             "## Summary (Table I form)", ""]
    p = results.protocol
    fd_note = ""
    b = results.models["base"].scores
    if b.get("metric") == "digits-fd":
        fd_note = (f"FD: Fréchet distance in the features of a digits classifier (test accuracy "
                   f"{b['classifier_test_accuracy']:.1%}) against all 1797 real digits; real-vs-real floor at the "
                   "same sample count in the next column. KID: unbiased MMD² (cubic kernel) in the same features. "
                   "Intra-FD: the FD per class (classes by the same classifier), averaged over the 10 classes; it "
                   "leaves out which digits were drawn, the part of FD that scatters most between trainings.")
        note = b.get("intra_fd_note")
        if note:
            fd_note += f" No intra-FD: {note}"
    elif b.get("metric") == "fid-inception":
        fd_note = (f"FD: FID with the FID Inception-v3 (weights sha256 {b['weights_sha256'][:12]}…) against "
                   f"{b['reference_images']} real images, after 8-bit quantisation; KID in the same features.")
    lines += ["| model | FD | real floor | KID | intra-FD | MACs / step | params | training steps | training compute (MACs) "
              "| s / image |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    steps = results.training_steps
    tm = results.training_macs
    eq_steps = results.equal_compute_steps or 0
    s1 = tm.get("stage1", 0.0)

    def tdc_compute(suffix: str) -> float:
        # a trained forward costs a backward too (STEP_COST forwards); teacher and agent forwards do not
        return STEP_COST * (s1 + tm.get("stage2" + suffix, 0.0)) + tm.get("teacher" + suffix, 0.0) + tm.get(
            "proxy" + suffix, 0.0)

    rows = [("base", "base (stage 1 only)", steps["stage1"], STEP_COST * s1),
            ("base_equal_compute", "base, equal compute (trained on for TDC's stage-2 compute)", eq_steps,
             STEP_COST * s1 * eq_steps / max(1, steps["stage1"])),
            ("tdc_no_prune", "TDC without pruning", steps["stage1"] + steps["stage2"], tdc_compute("_noprune")),
            ("tdc", f"TDC ({cfg.stage2.mode})", steps["stage1"] + steps["stage2"], tdc_compute(""))]
    for name, label, st, macs in rows:
        if name not in results.models:
            continue
        m = results.models[name]
        r = m.scores
        fd = f"{r['fd']:.3f}" if "fd" in r else "-"
        floor = f"{r['real_floor']:.3f}" if "real_floor" in r else "-"
        kid = f"{r['kid']:.4g} ± {r['kid_std']:.2g}" if "kid" in r else "-"
        intra = f"{r['intra_fd']:.3f}" if "intra_fd" in r else "-"
        lines.append(f"| {label} | {fd} | {floor} | {kid} | {intra} | {fmt_macs_fixed(m.macs_per_step)} | "
                     f"{m.params / 1e6:.3f} M | {st} | {macs / 1e12:.2f} T | {m.seconds_per_image * 1e3:.2f} ms |")
    t = results.models["tdc"]
    lines += ["", f"Protocol: {p['samples']} samples per model, {p['sampler'].upper()} {p['steps']} steps, "
              f"η={p['eta']}, seed {p['seed']} (same noise for all). {fd_note}",
              f"TDC MACs per step: achieved {fmt_macs_fixed(t.macs_per_step)} "
              f"({t.macs_per_step / results.models['base'].macs_per_step:.3f} × base); planned per-timestep budget "
              f"{fmt_macs_fixed(t.planned_macs_per_step)}; group limits {fmt_macs_fixed(t.group_limit_macs_per_step)}.",
              "", "## Plan", "", "![plan](plan.png)", "", "## Groups", "",
              "Held-out quick loss (ε-MSE on the val split at the group's timesteps, fixed noise): the base's, the "
              "member's as pruned (before fine-tuning) and after; a member above stage2.max_loss_ratio x the base's "
              "trains on for up to stage2.extra_steps (steps: planned + extra).", "",
              "| group | t range | limit / F | achieved MACs | params | pruned units | base loss | pruned loss | "
              "loss after FT | after / base | FT steps |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    worse = []
    for g in plan.groups:
        gd = run.group(g.index)
        pr = read_json(gd / "prune.json", "group pruning summary") if (gd / "prune.json").is_file() else {}
        ft = read_json(gd / "finetune.json", "group fine-tune summary") if (gd / "finetune.json").is_file() else {}
        macs = pr.get("macs_thop")
        levels = pr.get("best_levels", pr.get("levels", {})) or {}
        ratio = ft.get("loss_ratio")
        flag = ""
        if ft.get("worse_than_base"):
            flag = " **WORSE than the base**"
            worse.append(g.index)
        steps_cell = (f"{ft['planned_steps']} + {ft['extra_steps']}" if "planned_steps" in ft else str(ft.get("steps", "-")))
        lines.append(
            f"| {g.index} | {g.t_start}-{g.t_end} | {g.limit_fraction:.3f} | {fmt_macs_fixed(macs) if macs else 'base'} | "
            f"{pr.get('params', 0) / 1e6:.3f} M | {len(levels)} | {ft.get('loss_base', float('nan')):.4f} | "
            f"{ft.get('loss_before', float('nan')):.4f} | {ft.get('loss_after', float('nan')):.4f} | "
            f"{f'{ratio:.3f}' if ratio is not None else '-'}{flag} | {steps_cell} |")
    if worse:
        lines += ["", f"**Warning: groups {worse} end stage 2 worse than the base on their own timesteps** (after "
                  f"every extra step allowed, stage2.extra_steps={cfg.stage2.extra_steps}). The progressive model "
                  "ships them as trained; raise stage2.extra_steps, give the groups more budget (plan.k) or prune "
                  "less."]
    usage = [(g.index, pr["usage"]) for g in plan.groups
             if "usage" in (pr := read_json(run.group(g.index) / "prune.json", "group pruning summary")
                            if (run.group(g.index) / "prune.json").is_file() else {})]
    if usage:
        lines += ["", "## Agent usage", "", f"LLM `{cfg.agent.llm}`. Tokens as the LLM endpoint reported them; cost "
                  "from `agent.prices` (USD per million input/output tokens; `-` where the model has no price).", "",
                  "| group | LLM calls | tool calls | input tokens | output tokens | cost |", "|---|---|---|---|---|---|"]
        for i, u in usage:
            cost = f"${u['cost_usd']:.4f}" if u.get("cost_usd") is not None else "-"
            lines.append(f"| {i} | {u['llm_calls']} | {u['tool_calls']} | {u['input_tokens']:,} | "
                         f"{u['output_tokens']:,} | {cost} |")
    rounds_png = _rounds_plot(cfg, run, len(plan.groups))
    if rounds_png is not None:
        lines += ["", "## Agent rounds", "", "Quick loss of each round's candidates (mean ± std) relative to the "
                  "unpruned base's loss on the same group (1 = as good as the base), per group (the paper's "
                  "Fig. 5):", "", "![agent rounds](agent_rounds.png)"]
    names = [n for n in MODEL_NAMES if n in results.models]
    labels = {"base": "base", "base_equal_compute": "base (equal compute)", "tdc_no_prune": "TDC w/o pruning",
              "tdc": "TDC"}
    lines += ["", "## Samples", "", "Same seed and noise for every model.", "",
              "| " + " | ".join(labels[n] for n in names) + " |", "|" + "---|" * len(names),
              "| " + " | ".join(f"![{n}](samples/{n}.png)" for n in names) + " |", ""]
    path = run.report
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
