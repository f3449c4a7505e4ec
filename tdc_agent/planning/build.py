"""``tdc-agent plan``: the grouping from a config, as a table, ``plan.json`` and ``plan.png``."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ..core.io import atomic_write_json, read_json
from ..core.config import Config
from ..core.fmt import fmt_macs_sig3
from ..core.errors import CheckpointError, ConfigError
from ..core.tally import count_step
from .plan import Plan, make_plan


def build_plan(cfg: Config) -> Plan:
    """The plan a config describes (schedule + plan sections)."""
    count_step("plan")
    try:
        return make_plan(
            schedule=cfg.schedule.name, timesteps=cfg.schedule.timesteps, n_groups=cfg.plan.groups,
            k=cfg.plan.k, shape=cfg.plan.shape, direction=cfg.plan.direction,
            budget_rule=cfg.plan.budget_rule, snr_clip=cfg.plan.snr_clip,
            beta_start=cfg.schedule.beta_start, beta_end=cfg.schedule.beta_end,
        )
    except ValueError as e:
        raise ConfigError(f"Cannot build the plan: {e}.") from None


def write_plan(plan: Plan, out_dir: str | Path, base_macs: int | None = None) -> tuple[Path, Path]:
    """Write ``plan.json`` and ``plan.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    d = plan.to_dict()
    d["base_macs"] = base_macs
    atomic_write_json(out_dir / "plan.json", d, scrub=False)  # state: read back as written
    png = plot_plan(plan, out_dir / "plan.png")
    return out_dir / "plan.json", png


def load_plan(path: str | Path, cfg: Config, fresh: Plan | None = None) -> Plan:
    """Read ``plan.json`` back; it must agree with what the config would plan now (``fresh``, when
    the caller has built it already)."""
    d = read_json(path, "plan")
    fresh = fresh or build_plan(cfg)
    try:
        stored = Plan.from_dict(d, fresh.snr, fresh.budget)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"plan {path} is malformed ({e}). Delete it to re-plan.") from None
    fields = ("schedule", "timesteps", "n_groups_requested", "k", "shape", "direction", "budget_rule")
    if ([g.to_dict() for g in stored.groups] != [g.to_dict() for g in fresh.groups]
            or any(getattr(stored, f) != getattr(fresh, f) for f in fields)):
        raise CheckpointError(f"plan {path} does not match the config's schedule/plan sections. "
                              "Delete it to re-plan, or restore the original config.")
    return fresh  # the same plan; what derives from it (warnings) comes from the code, not the file


def plan_table(plan: Plan, base_macs: int | None = None) -> Table:
    """A rich table: one row per group plus expected mean MACs per step."""
    t = Table(title=f"TDC plan: {plan.schedule} schedule, T={plan.timesteps}, "
                    f"N={len(plan.groups)}, k={plan.k}, shape={plan.shape}, rule={plan.budget_rule}")
    for col in ("group", "t range", "#t", "SNR range (dB)", "limit / F"):
        t.add_column(col, justify="right")
    if base_macs:
        t.add_column("limit (MACs)", justify="right")
    for g in plan.groups:
        row = [str(g.index), f"{g.t_start}-{g.t_end}", str(g.num_timesteps),
               f"{g.snr_min:.1f} .. {g.snr_max:.1f}", f"{g.limit_fraction:.3f}"]
        if base_macs:
            row.append(fmt_macs_sig3(g.limit_fraction * base_macs))
        t.add_row(*row)
    d = plan.to_dict()["mean_budget"]

    def both(x: float) -> str:
        return f"{x:.4f}" + (f" ({fmt_macs_sig3(x * base_macs)})" if base_macs else "")

    t.caption = (
        f"mean MACs/step as a fraction of F — planned per-timestep budget: uniform t {both(d['uniform_timestep'])}, "
        f"DDIM-100 {both(d['ddim100_timestep'])}; models at group limits: uniform t "
        f"{both(d['uniform_group_limit'])}, DDIM-100 {both(d['ddim100_group_limit'])}"
    )
    return t


__all__ = ["build_plan", "write_plan", "load_plan", "plan_table"]


def plot_plan(plan: Plan, path: str | Path) -> Path:
    """SNR(t), the per-timestep budget and the group limits, with group boundaries (paper Fig. 2)."""
    import numpy as np
    import matplotlib.pyplot as plt

    from ..core.plots import save_figure

    t = np.arange(plan.timesteps)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(t, plan.snr, color="tab:blue")
    ax1.set_ylabel("SNR (dB)")
    ax1.set_title(f"{plan.schedule} schedule, N={len(plan.groups)}, k={plan.k}, shape={plan.shape}")
    ax2.plot(t, plan.budget, color="tab:orange", label="budget(t)")
    limits = np.array([g.limit_fraction for g in plan.groups])[plan.routing_table()]
    ax2.step(t, limits, where="post", color="tab:green", label=f"group limit ({plan.budget_rule})")
    ax2.set_ylabel("MACs / F")
    ax2.set_xlabel("timestep t")
    ax2.legend(loc="lower right")
    for g in plan.groups[1:]:
        for ax in (ax1, ax2):
            ax.axvline(g.t_start - 0.5, color="grey", lw=0.6, ls="--")
    return save_figure(fig, path)
